//! Real OAuth servers nobody here wrote, for the tests of standard OAuth: `oidc-provider`
//! (npm) and `authlib` (PyPI), each behind a small wrapper in `tests/oauth_servers/` that
//! adds the platform-style grant endpoint and request counts. Each runs as a child process
//! on 127.0.0.1 and an ephemeral port, and exits when the test drops it (or dies: the
//! wrappers exit when their stdin closes).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tempfile::TempDir;

/// How long a server may take to print its ready line.
const STARTUP: Duration = Duration::from_secs(20);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// panva's `oidc-provider` 9 (Node), OpenID-certified.
    OidcProvider,
    /// `authlib` 1.9's authorization server on Flask (Python).
    Authlib,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_servers")
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::OidcProvider => "oidc-provider",
            Self::Authlib => "authlib",
        }
    }

    fn command(self, config: &Path) -> Command {
        let mut command = match self {
            Self::OidcProvider => {
                let mut c = Command::new("node");
                c.arg(root().join("oidc-provider/server.mjs"));
                c
            }
            Self::Authlib => {
                let mut c = Command::new("python3");
                c.arg(root().join("authlib/server.py"));
                c
            }
        };
        command.arg(config);
        command
    }

    /// Whether the server's packages are installed (`.ci/run` installs both). Without
    /// them the tests are skipped, saying so, unless `TOKENBROKER_OAUTH_SERVER_TESTS=
    /// required` (as CI sets), which makes their absence a failure.
    pub fn available(self) -> bool {
        let installed = match self {
            Self::OidcProvider => root()
                .join("oidc-provider/node_modules/oidc-provider/package.json")
                .exists(),
            Self::Authlib => Command::new("python3")
                .args(["-c", "import authlib, flask"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        };
        if installed {
            return true;
        }
        let how = match self {
            Self::OidcProvider => "npm install in tests/oauth_servers/oidc-provider",
            Self::Authlib => "pip install -r tests/oauth_servers/authlib/requirements.txt",
        };
        super::skip_unless_required(
            "TOKENBROKER_OAUTH_SERVER_TESTS",
            &format!("{} is not installed", self.name()),
            how,
        )
    }
}

/// A running server.
pub struct OAuthServer {
    pub kind: Kind,
    /// `http://127.0.0.1:PORT` (https with TLS): the issuer, and the base of its URLs.
    pub issuer: String,
    child: Child,
    /// Held so the server lives; it exits when this closes.
    _stdin: ChildStdin,
    _dir: TempDir,
}

impl OAuthServer {
    /// Starts `kind` with `config` (the wrapper's JSON, see its README) and waits for its
    /// ready line.
    pub fn start(kind: Kind, config: &serde_json::Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let mut child = kind
            .command(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", kind.name()));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(STARTUP)
            .unwrap_or_else(|_| panic!("{} printed no ready line", kind.name()));
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{}'s ready line {line:?}: {e} (its stderr, above, says why)",
                kind.name()
            )
        });
        let issuer = ready["issuer"].as_str().unwrap().to_owned();
        Self {
            kind,
            issuer,
            child,
            _stdin: stdin,
            _dir: dir,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        match self.kind {
            Kind::OidcProvider => format!("{}/token", self.issuer),
            Kind::Authlib => format!("{}/oauth/token", self.issuer),
        }
    }

    /// The wrapper's platform-style grant endpoint.
    pub fn grant_url(&self) -> String {
        format!("{}/authorization-grant", self.issuer)
    }

    /// What the server counted: `token_requests`, `by_grant`, `refresh_reused`, `errors`.
    pub async fn stats(&self) -> serde_json::Value {
        self.get("/_stats").await
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        http.get(format!("{}{path}", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests of `grant` type the server saw.
    pub async fn requests(&self, grant: &str) -> u64 {
        self.stats().await["by_grant"][grant].as_u64().unwrap_or(0)
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
