//! The `tokenbroker` command: parses the command line, loads the config (or starts demo
//! mode), runs the library until SIGTERM or Ctrl-C, and turns the outcome into an exit code.

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

/// One gRPC service that holds your expense platform's OAuth credentials and hands out
/// fresh access tokens (org and per-user) to every other service.
///
/// With no --config (and no TOKENBROKER_CONFIG) it starts in demo mode against its built-in
/// sandbox of the platform, listening on 127.0.0.1:50051. Logs go to stderr; set the level
/// with RUST_LOG (e.g. RUST_LOG=debug).
#[derive(Debug, Parser)]
#[command(name = "tokenbroker", version)]
struct Cli {
    /// The TOML config file (see README.md, "Configuration"). Secrets are read from the
    /// environment variables or files it names, never from the file itself.
    #[arg(long, env = "TOKENBROKER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, IP:PORT or unix:///path, overriding `server.listen` (default
    /// 127.0.0.1:50051).
    #[arg(long, value_name = "ADDR")]
    listen: Option<Listen>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Some(Command::Sandbox {
            listen,
            token_lifetime,
            users,
        }) => sandbox(listen, token_lifetime, users).await,
        Some(Command::HashKey) => hash_key(),
        None => broker(cli.config, cli.listen).await,
    }
}

async fn broker(config_path: Option<PathBuf>, listen: Option<Listen>) -> ExitCode {
    // The demo sandbox lives as long as the broker.
    let (config, _sandbox) = match config_path {
        Some(path) => match Config::load(&path).and_then(|c| match listen {
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
            let listen =
                listen.unwrap_or_else(|| Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 50051))));
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
    if let Some(sandbox) = &_sandbox {
        info!("{}", demo::usage(&listener.local_addr(), sandbox));
    }
    match tokenbroker::run(config, listener, shutdown_signal()).await {
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

async fn sandbox(listen: SocketAddr, token_lifetime: Duration, users: u32) -> ExitCode {
    let mut config = SandboxConfig::demo();
    config.token_lifetime = token_lifetime;
    config.orgs = vec![SandboxOrg {
        users,
        ..config.orgs[0].clone()
    }];
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

/// Completes on the first SIGTERM or Ctrl-C (SIGINT); a second one exits at once.
async fn shutdown_signal() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        eprintln!("tokenbroker: second signal; exiting without draining");
        std::process::exit(130);
    });
}

async fn first_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("interrupted; shutting down"),
        () = term => info!("SIGTERM; shutting down"),
    }
}
