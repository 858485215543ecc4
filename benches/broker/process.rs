//! The broker and the sandbox as child processes: started, waited for, measured (RSS, CPU)
//! and stopped.

use super::*;

/// A child process, killed when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first, so a profiler wrapping the broker writes its report.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts the binary with `args` and waits for the log line with `needle`, whose
    /// `addr=` field is the address it listens on.
    pub(crate) fn start(args: &[&str], needle: &str) -> Self {
        // BENCH_BROKER_WRAPPER (say "valgrind --tool=massif") runs the broker under a
        // profiler; the sandbox always runs bare.
        let wrapper = std::env::var("BENCH_BROKER_WRAPPER")
            .ok()
            .filter(|_| args.first() != Some(&"sandbox"));
        let mut words: Vec<&str> = wrapper
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        words.push(BIN);
        let mut child = Command::new(words[0])
            .args(&words[1..])
            .args(args)
            .env("RUST_LOG", "info") // as deployed: an audit line per token handed out
            .env("DEMO_SECRET", "demo-secret")
            // The key of the store scenario's brokers (a fixed one: nothing real in them).
            .env("BENCH_STORE_KEY", "00".repeat(32))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the tokenbroker binary starts");
        let mut log = BufReader::new(child.stderr.take().expect("stderr"));
        let addr = loop {
            let mut line = String::new();
            if log.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("{args:?} exited before {needle:?}");
            }
            if line.contains(needle) {
                break line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr=")
                    .to_owned();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe: in large reads,
        // not line by line, so that the drain costs the shared cores as little as a log
        // collector would.
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        Self { child, addr }
    }

    /// CPU time the process has used so far (user + system), in milliseconds.
    pub(crate) fn cpu_ms(&self) -> f64 {
        cpu_ms(&format!("/proc/{}/stat", self.child.id()))
    }

    pub(crate) fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

/// User + system CPU time in milliseconds from a `/proc/.../stat` file.
pub(crate) fn cpu_ms(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name; clock
    // ticks are 100 a second on Linux.
    (ticks(11) + ticks(12)) * 10.0
}

pub(crate) fn sandbox(users: usize, lifetime: &str) -> Process {
    Process::start(
        &[
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--users",
            &users.to_string(),
            "--token-lifetime",
            lifetime,
        ],
        "sandbox listening",
    )
}

/// The upstream budget every benchmark broker runs with (not the default).
pub(crate) const BUDGET: &str =
    "upstream.max_requests_per_second = 100000.0\nupstream.burst = 100000\n";

pub(crate) fn broker(sandbox: &Process, extra: &str) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = broker_in(dir.path(), sandbox, extra);
    (process, dir)
}

/// A broker whose config (and anything it names by a relative path) is in `dir`.
pub(crate) fn broker_in(dir: &std::path::Path, sandbox: &Process, extra: &str) -> Process {
    // Non-default, and said so with every figure: the scenarios measure the broker with
    // thousands of cold keys, which the default upstream budget (10/s) would pace to
    // minutes each.
    broker_with_budget(dir, sandbox, &format!("{BUDGET}{extra}"))
}

/// [`broker_in`] at the default upstream budget (10/s, burst 10), with `extra`.
pub(crate) fn broker_with_budget(dir: &std::path::Path, sandbox: &Process, extra: &str) -> Process {
    let config = format!(
        "{extra}\n[orgs.demo]\ntoken_url = \"http://{0}/oauth/token\"\nauthorization_grant_url = \"http://{0}/oauth/authorization-grant\"\nclient_id = \"demo-client\"\nclient_secret_env = \"DEMO_SECRET\"\n",
        sandbox.addr
    );
    broker_from(dir, &config, "tokenbroker listening")
}

/// A broker run from the TOML `config`, written to `dir`, once it logs `needle` (whose
/// `addr=` is the process's address).
pub(crate) fn broker_from(dir: &std::path::Path, config: &str, needle: &str) -> Process {
    let path = dir.join("broker.toml");
    std::fs::write(&path, config).expect("config written");
    Process::start(
        &[
            "--config",
            path.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        needle,
    )
}

pub(crate) async fn stats(sandbox: &Process) -> Value {
    reqwest::get(format!("http://{}/sandbox/stats", sandbox.addr))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

pub(crate) fn count(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or(0)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Waits until a freshly started broker answers health checks.
pub(crate) trait Ready: Sized {
    async fn await_ready(self) -> Self;
}

impl Ready for (Process, tempfile::TempDir) {
    async fn await_ready(self) -> Self {
        (self.0.await_ready().await, self.1)
    }
}

impl Ready for Process {
    async fn await_ready(self) -> Self {
        for _ in 0..1200 {
            if let Ok(channel) = Endpoint::from_shared(format!("http://{}", self.addr))
                .expect("url")
                .connect()
                .await
                && HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the broker at {} never answered", self.addr);
    }
}
