//! Real Redis for the tests of a shared store: a `redis-server` of the test's own (port and
//! data folder), a replica of it, three sentinels over them, and a TCP relay that cuts one
//! client off while the others keep talking.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// The Debian build of Redis 7.0 the tests run (a sentinel too, with `--sentinel`).
const SERVER: &str = "/usr/bin/redis-server";
/// Its client, for the tests' own commands and assertions.
const CLI: &str = "/usr/bin/redis-cli";
/// How long a server or sentinel may take to answer PING (or sentinels to meet) once started.
const STARTUP: Duration = Duration::from_secs(10);

/// Whether the replica tests can run here: `redis-server` is installed (Debian's package
/// `redis-server`; `.ci/run` installs it). Without it they are skipped, saying so, unless
/// `TOKENBROKER_REDIS_TESTS=required` (as CI sets), which makes its absence a failure.
pub fn available() -> bool {
    Path::new(SERVER).exists()
        || super::skip_unless_required(
            "TOKENBROKER_REDIS_TESTS",
            &format!("{SERVER} is missing"),
            "apt-get install redis-server",
        )
}

/// A `redis-server` the test started itself, on 127.0.0.1 and an ephemeral port, persisting
/// every write (`appendfsync always`) in its own folder, removed with it. Tests point the
/// broker at [`Redis::url`], then pause, kill or restart it to see how the broker copes.
pub struct Redis {
    port: u16,
    dir: TempDir,
    /// Options after the common ones (`--replicaof` for a replica).
    extra: Vec<String>,
    /// The running server; `None` once killed.
    child: Option<Child>,
}

impl Redis {
    /// A primary on a free port, answering PING (async: waits without blocking the runtime).
    pub async fn start() -> Self {
        Self::with(Vec::new()).await
    }

    /// A replica of the server on 127.0.0.1:`primary_port`, for the tests with sentinels.
    pub async fn start_replica_of(primary_port: u16) -> Self {
        Self::with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary_port.to_string(),
        ])
        .await
    }

    /// A primary started with the options `extra` after the common ones (TLS, say).
    pub async fn start_with(extra: Vec<String>) -> Self {
        Self::with(extra).await
    }

    async fn with(extra: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tokenbroker-redis-")
            .tempdir()
            .expect("a temporary folder for redis");
        let [port] = free_ports::<1>();
        let mut redis = Self {
            port,
            dir,
            extra,
            child: None,
        };
        redis.launch().await;
        redis
    }

    /// Starts the server on its port and folder, and waits until it answers PING.
    async fn launch(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let log = self.log_path();
        let log_arg = log.display().to_string();
        let mut args: Vec<String> = [
            "--port",
            port.as_str(),
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.as_str(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            log_arg.as_str(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        self.child = Some(spawn_ready(&args, self.port, &log).await);
    }

    /// The URL the broker's config names: `redis://127.0.0.1:P/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address, for a [`Relay`] in front of it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Everything the server logged (shown when a test's expectation of it fails).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as a
    /// server stuck in a long fork or a network partition looks. Don't call
    /// [`Redis::command`] while it is paused: redis-cli would wait for ever.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Thaws a [`Redis::pause`]d server (SIGCONT): it answers what it was sent meanwhile.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Kills the server (SIGKILL, paused or not) and waits until it is gone: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with its data (what its
    /// append-only file kept): a crash and a restart.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Kills the server, deletes its data (the log stays) and starts it again, empty, on the
    /// same port: a store that lost everything, as a new one in its place.
    pub async fn restart_empty(&mut self) {
        self.kill();
        let log = self.log_path();
        for entry in std::fs::read_dir(self.dir.path()).expect("redis's folder lists") {
            let path = entry.expect("an entry of redis's folder").path();
            if path == log {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.expect("redis's data is deleted");
        }
        self.launch().await;
    }

    /// `redis-cli -p P args`: its stdout, trimmed (raw, one reply a line), for assertions
    /// such as `KEYS *` or `INFO replication`. Blocks the thread while it runs.
    pub fn command(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is running (not killed)")
            .id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three sentinels (`redis-server --sentinel`) watching one primary with quorum 2, quick to
/// call it down (1 s): tests of failover start them over a [`Redis`] and its replica, then
/// point the broker at [`Sentinels::urls`].
pub struct Sentinels {
    master: String,
    ports: [u16; 3],
    dir: TempDir,
    children: Vec<Child>,
}

impl Sentinels {
    /// Three sentinels monitoring `master_name` at 127.0.0.1:`primary_port` (async); waits
    /// until each answers PING and knows the other two, so a failover can get its quorum.
    pub async fn start(master_name: &str, primary_port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tokenbroker-sentinels-")
            .tempdir()
            .expect("a temporary folder for the sentinels");
        let mut sentinels = Self {
            master: master_name.to_owned(),
            ports: free_ports(),
            dir,
            children: Vec::new(),
        };
        for (i, port) in sentinels.ports.into_iter().enumerate() {
            let folder = sentinels.dir.path();
            let config = folder.join(format!("sentinel-{}.conf", i + 1));
            let log = folder.join(format!("sentinel-{}.log", i + 1));
            let m = master_name;
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nprotected-mode no\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {m} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                folder.display(),
                log.display()
            );
            // The sentinel rewrites this file with what it learns, so it is its own copy.
            std::fs::write(&config, text).expect("the sentinel's config is written");
            let args = [config.display().to_string(), "--sentinel".to_owned()];
            let child = spawn_ready(&args, port, &log).await;
            sentinels.children.push(child);
        }
        sentinels.wait_until_acquainted().await;
        sentinels
    }

    /// Waits until every sentinel has heard the other two (their hellos every 2 s).
    async fn wait_until_acquainted(&self) {
        let deadline = Instant::now() + STARTUP;
        for port in self.ports {
            loop {
                let master = cli(port, &["SENTINEL", "master", &self.master]);
                if field(&master, "num-other-sentinels") == Some("2") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {port} did not meet the other two in {STARTUP:?}: {master}\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The sentinels' URLs, `redis://127.0.0.1:P`, for the broker's config.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The primary's port as the first sentinel that answers names it
    /// (`SENTINEL get-master-addr-by-name`), or `None` if none does.
    pub fn master_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|&port| {
            let reply = cli(port, &["SENTINEL", "get-master-addr-by-name", &self.master]);
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Waits (async) until the sentinels name a primary other than `old_port`, and returns
    /// its port: the end of a failover. Panics with their logs after `timeout`.
    pub async fn wait_for_master_other_than(&self, old_port: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            match self.master_port() {
                Some(port) if port != old_port => return port,
                seen => assert!(
                    Instant::now() < deadline,
                    "the sentinels still name {seen:?} after {timeout:?}\n{}",
                    self.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Forces a failover (`SENTINEL failover` on the first sentinel), asked again (async)
    /// until it answers OK — at first it may not have seen the replica yet (NOGOODSLAVE).
    /// [`Sentinels::wait_for_master_other_than`] waits for its end.
    pub async fn failover(&self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let answer = cli(self.ports[0], &["SENTINEL", "failover", &self.master]);
            if answer == "OK" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SENTINEL failover {} answered {answer:?}\n{}",
                self.master,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every sentinel's log, for the message of a failed wait.
    pub fn logs(&self) -> String {
        (1..=self.ports.len())
            .map(|n| {
                let log = self.dir.path().join(format!("sentinel-{n}.log"));
                format!("--- sentinel-{n}.log\n{}", read_log(&log))
            })
            .collect()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP relay on 127.0.0.1:0 to a target (a [`Redis`]): a test gives one broker the
/// relay's [`Relay::url`] and then [`Relay::cut`]s it off Redis while others keep theirs.
pub struct Relay {
    addr: SocketAddr,
    /// How many cuts so far, and whether the relay is cut now: a connection ends at the
    /// first cut after it came, even one undone by a [`Relay::restore`] before it saw it.
    cut: watch::Sender<(u64, bool)>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// A relay forwarding each connection to `target`, connected when it comes (async).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("the relay binds 127.0.0.1:0");
        let addr = listener.local_addr().expect("the relay's address");
        let (cut, cut_seen) = watch::channel((0, false));
        let accept = tokio::spawn(async move {
            loop {
                let inbound = match listener.accept().await {
                    Ok((inbound, _)) => inbound,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (cuts, is_cut) = *cut_seen.borrow();
                if is_cut {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, target, cut_seen.clone(), cuts));
            }
        });
        Self { addr, cut, accept }
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of database `db` through the relay: `redis://127.0.0.1:R/db`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://{}/{db}", self.addr)
    }

    /// Closes every connection through the relay and drops each new one at once until
    /// [`Relay::restore`]: the client sees Redis go away. The closing happens on the
    /// connections' tasks, as soon as the runtime runs them.
    pub fn cut(&self) {
        self.cut.send_modify(|(cuts, is_cut)| {
            *cuts += 1;
            *is_cut = true;
        });
    }

    /// Forwards new connections again after a [`Relay::cut`].
    pub fn restore(&self) {
        self.cut.send_modify(|(_, is_cut)| *is_cut = false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept loop stops; the connections end as the sender drops with `self`.
        self.accept.abort();
    }
}

/// Relays `inbound` to `target` both ways until either side closes or the relay is cut
/// after the `cuts` it had seen when `inbound` came (or dropped); then both sockets close.
async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<(u64, bool)>,
    cuts: u64,
) {
    let relay = async {
        if let Ok(mut outbound) = TcpStream::connect(target).await {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
    };
    let cut_off = async {
        // Ok once cut, Err once the relay is dropped: both end the connection.
        let _ = cut.wait_for(|&(now, _)| now != cuts).await;
    };
    tokio::select! {
        () = relay => {}
        () = cut_off => {}
    }
}

/// `N` distinct free loopback ports: each bound at once on 127.0.0.1:0, read, released.
/// A loopback port free now, for a test's own listener (a Redis TLS port, say).
pub fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<StdListener> = (0..N)
        .map(|_| StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("a bound listener's address")
            .port()
    })
}

/// Starts `redis-server args` and waits until it answers PING on `port`; starts it again if
/// it exits first (the port of a server just killed may not be free yet). Panics after
/// [`STARTUP`] with its stderr and `log`.
async fn spawn_ready(args: &[String], port: u16, log: &Path) -> Child {
    let deadline = Instant::now() + STARTUP;
    loop {
        let mut child = Command::new(SERVER)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-server starts");
        let exited = loop {
            if answers_ping(port).await {
                return child;
            }
            if child.try_wait().expect("redis-server's status").is_some() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !exited || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!(
                "redis-server {args:?} did not answer PING on port {port} in {STARTUP:?}\n\
                 stderr: {stderr}\nlog:\n{}",
                read_log(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the server on `port` answers PING with PONG (not LOADING, not nothing), asked
/// by hand in RESP on a blocking thread.
async fn answers_ping(port: u16) -> bool {
    let asked = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = StdStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut answer = [0u8; 64];
        let read = stream.read(&mut answer)?;
        Ok(answer[..read].starts_with(b"+PONG"))
    })
    .await;
    matches!(asked, Ok(Ok(true)))
}

/// `redis-cli -h 127.0.0.1 -p port args`: its stdout, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new(CLI)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The value after `key` in a reply redis-cli printed as alternate key and value lines.
fn field<'a>(reply: &'a str, key: &str) -> Option<&'a str> {
    let mut lines = reply.lines().map(str::trim);
    lines.find(|line| *line == key)?;
    lines.next()
}

/// `path`'s text, or why there is none.
fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {signal} {pid} failed");
}
