//! Secrets and files: a secret from its environment variable or file, and every file the
//! config names read small, regular and within a deadline.

use super::*;

pub(super) fn read_secret(
    key: &str,
    env_name: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<String, ConfigError> {
    let value = match (env_name, file) {
        (Some(var), _) => env(var).ok_or_else(|| {
            error(
                key,
                format!(
                    "environment variable {var} is not set; export it before starting the broker"
                ),
            )
        })?,
        (None, Some(path)) => read_small_file(key, &base.join(path), MAX_SECRET_FILE_BYTES)?,
        (None, None) => return Err(error(key, "is not set")),
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(error(key, "the secret is empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(error(
            key,
            "the secret holds control characters (a NUL byte, a line break inside it...); write it on one line",
        ));
    }
    Ok(value)
}

/// The largest secret file read (a client secret, a token or an API key is far smaller).
pub(crate) const MAX_SECRET_FILE_BYTES: u64 = 16 * 1024;

/// Reads the regular file (or symlink to one) at `path`, of at most `max` bytes, as text.
/// Anything else is refused before it is opened: a FIFO or a device would block or never
/// end, and a huge file would be read into memory whole.
///
/// The read runs on a thread of its own and is given up after [`READ_TIMEOUT`]: a file on
/// a hung network mount blocks even its `stat`, and a start-up, a `check-config` or a
/// reload must say so rather than hang with it. (The stuck thread is left behind.)
pub(crate) fn read_small_file(key: &str, path: &Path, max: u64) -> Result<String, ConfigError> {
    let (key, path) = (key.to_owned(), path.to_owned());
    within(READ_TIMEOUT, &key.clone(), &path.clone(), move || {
        read_small_file_now(&key, &path, max)
    })
}

/// How long reading one config or secret file may take.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `read` on a thread of its own; past `timeout`, an error naming `key` and `path`.
pub(super) fn within(
    timeout: Duration,
    key: &str,
    path: &Path,
    read: impl FnOnce() -> Result<String, ConfigError> + Send + 'static,
) -> Result<String, ConfigError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("config-read".into())
        .spawn(move || {
            let _ = tx.send(read());
        });
    if let Err(e) = spawned {
        return Err(error(key, format!("cannot read {}: {e}", path.display())));
    }
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(error(
            key,
            format!(
                "cannot read {}: no answer within {}s (a hung network mount?)",
                path.display(),
                timeout.as_secs()
            ),
        ))
    })
}

pub(super) fn read_small_file_now(key: &str, path: &Path, max: u64) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot = |why: String| error(key, format!("cannot read {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if !meta.is_file() {
        return Err(cannot("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(cannot(format!("{} bytes; the limit is {max}", meta.len())));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| cannot(e.to_string()))?;
    if text.len() as u64 > max {
        return Err(cannot(format!("more than {max} bytes")));
    }
    Ok(text)
}
