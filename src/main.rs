//! The `tokenbroker` command: parses the command line, loads the config (or, asked with
//! `demo`, starts demo mode), runs the library until SIGTERM or Ctrl-C, and turns the outcome into an exit code.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tokenbroker::{
    Listener,
    config::{Config, Listen},
    demo,
    sandbox::{Sandbox, SandboxConfig, SandboxOrg},
};
use tokio::net::TcpListener;
use tracing::{error, info};

/// jemalloc rather than the system allocator: with 100,000 user tokens held, its size
/// classes keep the heap smaller and its per-call allocations stay fast (BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): a background thread purges freed pages while the broker is idle
/// (without one, jemalloc purges only as it allocates, so memory freed when streams
/// close stayed), dirty pages are purged after 5 s, and purged pages are released at once
/// (`MADV_DONTNEED`, which RSS shows) rather than lazily. Measured in BENCHMARKS.md: of
/// the memory 100,000 watched keys took, 4 % was left 15 s after their streams closed,
/// 114 % before.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocConf =
    JemallocConf(c"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer, as jemalloc reads `malloc_conf`.
#[cfg(feature = "jemalloc")]
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static C string literal, never written.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
unsafe impl Sync for JemallocConf {}

/// One gRPC service that holds your expense platform's OAuth credentials and hands out
/// fresh access tokens (org and per-user) to every other service.
///
/// Run it with --config FILE (or TOKENBROKER_CONFIG=FILE). To try it first, `tokenbroker demo`
/// runs it against its built-in sandbox of the platform on 127.0.0.1:50051, no config
/// needed. Logs go to stderr; set the level with RUST_LOG (e.g. RUST_LOG=debug).
///
/// Signals: SIGHUP (or a change to the config file) reloads the config; SIGTERM or Ctrl-C
/// ends watch streams, drains calls and exits 0; a second one exits at once.
#[derive(Debug, Parser)]
#[command(name = "tokenbroker", version)]
struct Cli {
    /// The TOML config file (see README.md, "Configuration"). Secrets are read from the
    /// environment variables or files it names, never from the file itself.
    #[arg(long, env = "TOKENBROKER_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Log format: `text` (for people) or `json` (one object per line). Level: RUST_LOG.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Listen address, IP:PORT or unix:///path, overriding `server.listen` (default
    /// 127.0.0.1:50051).
    #[arg(long, value_name = "ADDR")]
    listen: Option<Listen>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Try the broker with no config: it runs against its built-in sandbox of the platform
    /// (org "demo", 100 users) with the token-injecting proxy in front of its API, and
    /// prints grpcurl and curl commands to call it. Its tokens work only
    /// at that sandbox; never a deployment.
    Demo {
        /// Listen address, IP:PORT or unix:///path (default 127.0.0.1:50051).
        #[arg(long, value_name = "ADDR")]
        listen: Option<Listen>,
    },
    /// Validate the config (--config FILE) and print it as the broker would run it, with
    /// defaults filled in and secrets shown as [redacted]. Exit code 0: valid; 2: invalid.
    CheckConfig,
    /// Print a fresh random key for the token store (32 bytes as 64 hex digits): put it in
    /// the variable `store.encryption_key_env` names, or in the file
    /// `store.encryption_key_file` names.
    GenStoreKey,
    /// Print the SHA-256 of an API key read from standard input: the value for a caller's
    /// `api_key_sha256`, so the key itself never goes in the config.
    HashKey,
    /// Run only the built-in sandbox of the platform (OAuth endpoints, strict single use),
    /// for your own tests. Org "demo", client id "demo-client", secret "demo-secret".
    Sandbox {
        /// Listen address IP:PORT.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
        /// `expires_in` of every token issued, e.g. 1h, 30s.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        token_lifetime: Duration,
        /// How many users to seed (person ids and ExternalSourceIDs EMP-00001...).
        #[arg(long, default_value_t = 100)]
        users: u32,
        #[command(flatten)]
        standard: StandardServer,
    },
}

/// How far the sandbox plays a standard OAuth server rather than the platform.
#[derive(clap::Args, Debug)]
struct StandardServer {
    /// Demand client authentication on refresh and code exchange too, as standard servers
    /// do (RFC 6749 §6, §4.1.3); the platform asks only the client id there.
    #[arg(long)]
    strict_client_auth: bool,
    /// A scope the client may ask for on client credentials (repeat for several); any
    /// other is `invalid_scope`. None given: any scope is granted.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Leave `expires_in` out of token answers (it is only RECOMMENDED).
    #[arg(long)]
    omit_expires_in: bool,
    /// A PEM file with the EC P-256 public key (`openssl pkey -pubout`) of the client's
    /// `private_key_jwt` key: the client may then authenticate with ES256 assertions.
    #[arg(long, value_name = "FILE")]
    client_public_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // One thread writes the log, so a call never waits on stderr; a caller waits rather
    // than a line is dropped when it falls far behind (audit lines must not be lost), and
    // everything logged is written before the process exits (the guard's drop).
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("tokenbroker-log")
        // Buffered: the writer thread writes what it has taken off its queue in one go,
        // and flushes whenever the queue runs dry.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Some(Command::Sandbox {
            listen,
            token_lifetime,
            users,
            standard,
        }) => sandbox(listen, token_lifetime, users, standard).await,
        Some(Command::HashKey) => hash_key(),
        Some(Command::GenStoreKey) => {
            println!("{}", tokenbroker::secret::StoreKey::generate().to_hex());
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig) => check_config(cli.config),
        Some(Command::Demo { .. }) if cli.config.is_some() => {
            eprintln!(
                "tokenbroker: demo mode runs without a config; drop --config (and TOKENBROKER_CONFIG), or run without `demo`"
            );
            ExitCode::from(2)
        }
        Some(Command::Demo { listen }) => broker(None, listen.or(cli.listen)).await,
        None if cli.config.is_none() => {
            // A deployment that lost its config must not come up healthy against a fake
            // platform: demo mode is asked for by name.
            eprintln!(
                "tokenbroker: no config: run with --config FILE (or TOKENBROKER_CONFIG=FILE); to try the broker against its built-in sandbox, run `tokenbroker demo`"
            );
            ExitCode::from(2)
        }
        None => broker(cli.config, cli.listen).await,
    }
}

/// Runs the broker: from the config at `config_path`, or in demo mode without one.
async fn broker(config_path: Option<PathBuf>, listen: Option<Listen>) -> ExitCode {
    let config_path_for_reload = config_path.clone();
    // The demo sandbox lives as long as the broker.
    let (config, _sandbox) = match config_path {
        Some(path) => match Config::load(&path).and_then(|c| match listen.clone() {
            Some(listen) => c.with_listen(listen),
            None => Ok(c),
        }) {
            Ok(config) => (config, None),
            Err(e) => {
                eprintln!("tokenbroker: invalid config {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => {
            let listen = listen
                .clone()
                .unwrap_or_else(|| Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 50051))));
            match demo::start(listen).await {
                Ok((config, sandbox)) => (config, Some(sandbox)),
                Err(e) => {
                    error!(error = %e, "could not start the demo sandbox");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let listener = match Listener::bind(&config.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %config.listen, error = %e, "cannot listen; is another broker running? choose another address with --listen");
            return ExitCode::FAILURE;
        }
    };
    // Demo mode's proxy on an ephemeral loopback port, bound here to be named in the usage.
    let mut demo_proxy = None;
    if let Some(sandbox) = &_sandbox {
        let proxy = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot listen for the demo proxy");
                return ExitCode::FAILURE;
            }
        };
        let proxy_addr = proxy
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        info!(
            "{}",
            demo::usage(&listener.local_addr(), &proxy_addr, sandbox)
        );
        demo_proxy = Some(proxy);
    }
    let server = match tokenbroker::Server::new(config).await {
        Ok(server) => server,
        // A setting to change, as for an invalid config.
        Err(e @ (tokenbroker::Error::Store(_) | tokenbroker::Error::Discovery(_))) => {
            error!(error = %e, "tokenbroker failed to start");
            return ExitCode::from(2);
        }
        Err(e) => {
            error!(error = %e, "tokenbroker failed to start");
            return ExitCode::FAILURE;
        }
    };
    let server = match demo_proxy {
        Some(proxy) => server.with_proxy_listener(proxy),
        None => server,
    };
    if let Some(path) = config_path_for_reload {
        tokio::spawn(reload_on_change(path, listen, server.reloader()));
    }
    match server.serve(listener, shutdown_signal()).await {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "tokenbroker failed");
            ExitCode::FAILURE
        }
    }
}

/// How long a reload may take to read the config and its secret files.
const RELOAD_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Re-reads the config on SIGHUP, and when the file changes (checked every 2 s). A config
/// that does not load is refused with its reason, and the running one stays.
async fn reload_on_change(path: PathBuf, listen: Option<Listen>, reloader: tokenbroker::Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = stamp(&path);
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "cannot handle SIGHUP; reload by changing the file");
            None
        }
    };
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    loop {
        let why = tokio::select! {
            _ = async { match &mut hangup { Some(s) => s.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = poll.tick() => {
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                "the config file changed"
            }
        };
        // Off the runtime's threads, and given up on after a while: a secret on a hung
        // mount must not freeze the calls being served.
        let (load_path, load_listen) = (path.clone(), listen.clone());
        let load = tokio::task::spawn_blocking(move || {
            Config::load(&load_path).and_then(|c| match load_listen {
                Some(listen) => c.with_listen(listen),
                None => Ok(c),
            })
        });
        let loaded = match tokio::time::timeout(RELOAD_READ_TIMEOUT, load).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => Err(tokenbroker::config::ConfigError {
                key: String::new(),
                message: format!("reading the config failed: {e}"),
            }),
            Err(_) => Err(tokenbroker::config::ConfigError {
                key: String::new(),
                message: format!(
                    "reading the config or its secret files took over {}s (a hung mount?)",
                    RELOAD_READ_TIMEOUT.as_secs()
                ),
            }),
        };
        match loaded {
            Ok(config) => {
                info!(reason = why, "reloading the config");
                reloader.apply(config).await;
            }
            Err(e) => {
                error!(reason = why, error = %e, "config reload refused; the running config stays")
            }
        }
    }
}

/// Validates the config and prints it, secrets redacted.
fn check_config(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = path else {
        eprintln!(
            "tokenbroker check-config: give the file with --config FILE (or TOKENBROKER_CONFIG)"
        );
        return ExitCode::from(2);
    };
    match Config::load(&path) {
        Ok(config) => {
            print!("{}", config.describe());
            eprintln!("tokenbroker: {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokenbroker: invalid config {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// Prints the SHA-256 of the API key read from standard input, for `api_key_sha256`.
fn hash_key() -> ExitCode {
    let mut key = String::new();
    if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
        eprintln!(
            "tokenbroker hash-key: give the API key on standard input, e.g. `printf %s \"$KEY\" | tokenbroker hash-key`"
        );
        return ExitCode::from(2);
    }
    println!("{}", tokenbroker::auth::api_key_hash(key.trim()));
    ExitCode::SUCCESS
}

async fn sandbox(
    listen: SocketAddr,
    token_lifetime: Duration,
    users: u32,
    standard: StandardServer,
) -> ExitCode {
    let mut config = SandboxConfig::demo();
    config.token_lifetime = token_lifetime;
    config.orgs = vec![SandboxOrg {
        users,
        ..config.orgs[0].clone()
    }];
    config.strict_client_auth = standard.strict_client_auth;
    config.scopes = standard.scopes;
    config.omit_expires_in = standard.omit_expires_in;
    if let Some(file) = &standard.client_public_key {
        let point = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|pem| tokenbroker::sandbox::p256_public_point(&pem));
        match point {
            Ok(point) => {
                config
                    .client_keys
                    .insert(config.orgs[0].client_id.clone(), point);
            }
            Err(e) => {
                error!(file = %file.display(), error = %e, "--client-public-key: not a usable key");
                return ExitCode::from(2);
            }
        }
    }
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(%listen, error = %e, "cannot listen; choose another address with --listen");
            return ExitCode::FAILURE;
        }
    };
    let sandbox = match Sandbox::start(config, listener).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "sandbox failed to start");
            return ExitCode::FAILURE;
        }
    };
    info!(
        addr = %sandbox.addr(),
        token_url = %sandbox.token_url(),
        authorization_grant_url = %sandbox.authorization_grant_url(),
        "sandbox listening: org \"demo\", client_id \"demo-client\", client secret \"demo-secret\"; counters at /sandbox/stats"
    );
    shutdown_signal().await;
    ExitCode::SUCCESS
}

/// Completes on the first SIGTERM or Ctrl-C (SIGINT); a second one exits at once. The
/// handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives while the server starts is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            error!("cannot install signal handlers; stop the broker with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM; shutting down"),
            _ = int.recv() => info!("interrupted; shutting down"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("tokenbroker: second signal; exiting without draining");
            std::process::exit(130);
        });
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// clap's own checks of the definition (a clash of argument names between the command
    /// and a subcommand panics only when the clashing subcommand runs, otherwise).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        for args in [
            &["tokenbroker", "demo", "--listen", "127.0.0.1:0"][..],
            &["tokenbroker", "sandbox", "--listen", "127.0.0.1:0"],
            &[
                "tokenbroker",
                "--config",
                "x.toml",
                "--listen",
                "unix:///tmp/x.sock",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
    }
}
