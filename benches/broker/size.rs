//! The run's size: full or quick, and the flags that change it.

use super::*;

/// The run's size: full, or a quick smoke run.
pub(crate) struct Size {
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
    pub(crate) phase: Duration,
    pub(crate) users_held: usize,
    pub(crate) cold_callers: usize,
    pub(crate) cold_users: usize,
    pub(crate) refreshers: usize,
    pub(crate) subscribers: usize,
    pub(crate) connections: usize,
    /// Forced rotations the subscribers are measured over.
    pub(crate) rotations: usize,
    pub(crate) soak: Duration,
    /// The scenario groups to run (`--only org,users,cold,watch,soak`); all when empty.
    pub(crate) only: Vec<String>,
    /// Callers waiting at once on one cold key, for the memory they cost.
    pub(crate) waiters: usize,
    /// Extra TOML for the org and users brokers (`--broker-toml`, `\n` for new lines).
    pub(crate) broker_toml: String,
}

impl Size {
    /// Whether the scenario group `name` runs.
    pub(crate) fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    pub(crate) fn from_args() -> (Self, PathBuf) {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let soak = value("--soak")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 5 } else { 600 });
        let only: Vec<String> = value("--only")
            .map(|o| o.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let users = value("--users").and_then(|s| s.parse().ok());
        let broker_toml = value("--broker-toml")
            .unwrap_or_default()
            .replace("\\n", "\n");
        let out = value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench/broker.json"));
        let size = if quick {
            Size {
                quick,
                rounds: 2,
                phase: Duration::from_millis(500),
                users_held: users.unwrap_or(2_000),
                cold_callers: 1_000,
                cold_users: 100,
                refreshers: 200,
                subscribers: 1_000,
                connections: 10,
                rotations: 1,
                soak: Duration::from_secs(soak),
                only: only.clone(),
                waiters: 2_000,
                broker_toml: broker_toml.clone(),
            }
        } else {
            Size {
                quick,
                rounds: value("--rounds").and_then(|s| s.parse().ok()).unwrap_or(10),
                phase: value("--phase-ms")
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_secs(2)),
                users_held: users.unwrap_or(100_000),
                cold_callers: 10_000,
                cold_users: 1_000,
                refreshers: 1_000,
                subscribers: 10_000,
                connections: 100,
                rotations: value("--rotations")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(5),
                soak: Duration::from_secs(soak),
                only: only.clone(),
                waiters: 100_000,
                broker_toml,
            }
        };
        (size, out)
    }
}
