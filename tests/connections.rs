//! Connections an attacker or a crowd opens and never uses: the broker binary under a real
//! open-file limit (`ulimit -n`), real silent sockets, and a real client that must still be
//! served once the silent ones are dropped at their handshake deadline.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tokenbroker::{
    proto::{GetOrgTokenRequest, token_service_client::TokenServiceClient},
    sandbox::Sandbox,
};

const BIN: &str = env!("CARGO_BIN_EXE_tokenbroker");

/// A broker under `ulimit -n open_files` with `server_toml` added to `[server]`, and a
/// receiver of its log lines.
struct Broker {
    child: Child,
    log: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
    _sandbox: Sandbox,
}

impl Broker {
    async fn start(open_files: u32, server_toml: &str) -> (Self, String) {
        let sandbox = common::demo_sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            common::demo_toml(
                &sandbox,
                &format!("[server]\nlisten = \"127.0.0.1:0\"\n{server_toml}"),
            ),
        )
        .unwrap();
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!("ulimit -n {open_files} && exec \"$0\" \"$@\""),
            ])
            .arg(BIN)
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("DEMO_SECRET", "demo-secret")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = common::stderr_lines(&mut child);
        let broker = Self {
            child,
            log,
            _dir: dir,
            _sandbox: sandbox,
        };
        let lines = broker.read_until("tokenbroker listening");
        let addr = lines
            .last()
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
            .unwrap_or_else(|| panic!("no addr in {lines:#?}"))
            .to_owned();
        (broker, addr)
    }

    /// Reads log lines until one contains `needle`; returns every line read.
    fn read_until(&self, needle: &str) -> Vec<String> {
        common::read_until(&self.log, needle)
    }

    /// CPU seconds the process has used (user + system, from `/proc/PID/stat`).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command's closing parenthesis; utime and stime are the 12th
        // and 13th of them, in clock ticks (100 per second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` TCP connections to `addr` that never send a byte.
async fn silent_connections(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    held
}

/// One GetOrgToken on a fresh connection, within `within`.
async fn served(addr: &str, within: Duration) -> Result<(), String> {
    tokio::time::timeout(within, async {
        let mut client = TokenServiceClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| e.to_string())?;
        client
            .get_org_token(GetOrgTokenRequest::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
    .map_err(|_| format!("not served within {within:?}"))?
}

#[tokio::test]
async fn at_the_connection_limit_silent_connections_are_dropped_and_a_new_client_is_served() {
    // The default limit: three quarters of 256 open files.
    let (broker, addr) = Broker::start(256, "handshake_timeout = \"1s\"").await;
    let lines = broker.read_until("connection limits");
    let limits = lines.last().unwrap();
    assert!(
        limits.contains("max_connections=192") && limits.contains("open_file_limit=256"),
        "{limits}"
    );
    // More silent sockets than the broker has descriptors: the limit keeps it below them.
    let _silent = silent_connections(&addr, 400).await;
    served(&addr, Duration::from_secs(30)).await.unwrap();
    let mut rest = Vec::new();
    while let Ok(line) = broker.log.try_recv() {
        rest.push(line);
    }
    assert!(
        !rest.iter().any(|l| l.contains("cannot accept")),
        "never out of descriptors: {rest:#?}"
    );
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_says_so_backs_off_and_recovers() {
    // A limit set above the descriptors there are: the accepts themselves fail (EMFILE).
    let (broker, addr) =
        Broker::start(64, "max_connections = 1000\nhandshake_timeout = \"6s\"").await;
    let warned = broker.read_until("connection limits").join("\n");
    let warned = warned + &broker.read_until("leaves fewer than 32").join("\n");
    assert!(warned.contains("max_connections=1000"), "{warned}");
    let _silent = silent_connections(&addr, 100).await;
    broker.read_until("cannot accept connections");
    // Backing off, not spinning: a spinning accept loop burns a core (about 2 s of CPU
    // in these 2 s); the backoff, a few milliseconds.
    let before = broker.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = broker.cpu_seconds() - before;
    assert!(
        used < 0.5,
        "{used} s of CPU in 2 s while out of descriptors"
    );
    // The silent ones are dropped at their deadline; the loop accepts again and serves.
    served(&addr, Duration::from_secs(40)).await.unwrap();
    broker.read_until("accepting connections again");
}
