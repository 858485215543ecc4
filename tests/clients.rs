//! The Python and Node client libraries (`clients/python`, `clients/node`), checked by
//! `cargo test` like the rest: each one's `check.sh` builds its package, type-checks its
//! public API (`mypy --strict`, `tsc --noEmit`) and runs its tests against this build's
//! broker binary and sandbox, which the tests start themselves.
//!
//! They need their packages installed (`.ci/run` does it: `pip install -r
//! clients/python/requirements-dev.txt`, `npm install` in `clients/node`). Without them
//! these tests are skipped, saying so, unless `TOKENBROKER_CLIENT_TESTS=required` (as CI
//! sets), which makes their absence a failure.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn client_dir(language: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(language)
}

/// Whether `probe` succeeds; if not, skips (or fails when required) saying `how`.
fn installed(language: &str, probe: &mut Command, how: &str) -> bool {
    let ok = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || common::skip_unless_required(
        "TOKENBROKER_CLIENT_TESTS",
        &format!("the {language} client's dev packages are not installed"),
        how,
    )
}

/// Runs `clients/<language>/check.sh` against this build's broker and asserts it passed.
fn check(language: &str) {
    let dir = client_dir(language);
    let output = Command::new("bash")
        .arg(dir.join("check.sh"))
        .current_dir(&dir)
        .env("TOKENBROKER", env!("CARGO_BIN_EXE_tokenbroker"))
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "clients/{language}/check.sh failed:\n{text}"
    );
    let summary = text.lines().rev().find(|l| !l.trim().is_empty());
    eprintln!("{language} client: {}", summary.unwrap_or_default());
}

#[test]
fn the_python_client_passes_its_checks_against_the_real_broker() {
    let probe = "import grpc, grpc_tools, pytest, mypy, requests, httpx";
    let how = "pip install -r clients/python/requirements-dev.txt";
    if installed("Python", Command::new("python3").args(["-c", probe]), how) {
        check("python");
    }
}

#[test]
fn the_node_client_passes_its_checks_against_the_real_broker() {
    let modules = client_dir("node").join("node_modules");
    let how = "npm install in clients/node";
    let mut probe = Command::new("test");
    probe.arg("-f").arg(modules.join("typescript/package.json"));
    if installed("Node", &mut probe, how) {
        check("node");
    }
}
