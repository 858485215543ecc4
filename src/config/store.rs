//! `[store]`: where tokens are kept across restarts (an encrypted file) and the keys that
//! seal it.

use super::*;
use crate::{secret::StoreKey, store::StoreSettings};

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    /// The store file; a relative path is taken from the config file's folder.
    pub(super) path: Option<PathBuf>,
    /// Environment variables holding the keys (32 bytes, hex or base64), newest first.
    pub(super) encryption_key_env: Option<OneOrMany<String>>,
    /// Files holding the keys, newest first.
    pub(super) encryption_key_file: Option<OneOrMany<PathBuf>>,
}

/// Where one key is read from: an environment variable or a file.
type KeySource = (Option<String>, Option<PathBuf>);

/// The store `raw` describes, its keys read.
pub(super) fn store_settings(
    raw: RawStore,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<StoreSettings, ConfigError> {
    let Some(path) = raw.path else {
        return Err(error(
            "store.path",
            "is required: the file the tokens are kept in (e.g. \"/var/lib/tokenbroker/tokens.redb\"); delete [store] to keep tokens in memory only",
        ));
    };
    let (key_setting, sources): (&'static str, Vec<KeySource>) = match (
        &raw.encryption_key_env,
        &raw.encryption_key_file,
    ) {
        (Some(envs), None) => (
            "store.encryption_key_env",
            envs.to_vec().into_iter().map(|v| (Some(v), None)).collect(),
        ),
        (None, Some(files)) => (
            "store.encryption_key_file",
            files
                .to_vec()
                .into_iter()
                .map(|f| (None, Some(f)))
                .collect(),
        ),
        (Some(_), Some(_)) => {
            return Err(error(
                "store",
                "set one of encryption_key_env and encryption_key_file, not both",
            ));
        }
        (None, None) => {
            return Err(error(
                "store.encryption_key_env",
                "is required with store.path: the variable holding the key that seals the stored tokens (make one with `tokenbroker gen-store-key`), or set store.encryption_key_file",
            ));
        }
    };
    if sources.is_empty() {
        return Err(error(key_setting, "lists no key"));
    }
    let mut keys = Vec::with_capacity(sources.len());
    for (var, file) in &sources {
        let text = read_secret(key_setting, var.as_deref(), file.as_deref(), env, base)?;
        let key = StoreKey::parse(&text).map_err(|problem| {
            let name = var
                .clone()
                .or_else(|| file.as_ref().map(|f| f.display().to_string()))
                .unwrap_or_default();
            error(key_setting, format!("the key in {name} {problem}"))
        })?;
        keys.push(key);
    }
    Ok(StoreSettings {
        path: base.join(path),
        keys,
        key_setting,
    })
}

/// `[store]` as TOML, its keys named by where they come from (never the keys).
pub(super) fn describe(raw: &RawStore) -> String {
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut out = String::from("\n[store]\n");
    if let Some(path) = &raw.path {
        out.push_str(&format!("path = {:?}\n", path.display().to_string()));
    }
    if let Some(envs) = &raw.encryption_key_env {
        out.push_str(&format!("encryption_key_env = {}\n", list(envs.to_vec())));
    }
    if let Some(files) = &raw.encryption_key_file {
        let files = files
            .to_vec()
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        out.push_str(&format!("encryption_key_file = {}\n", list(files)));
    }
    out
}
