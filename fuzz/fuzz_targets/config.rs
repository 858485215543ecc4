//! The config loader on any text: a config or an error naming a key, never a panic.
//! Secrets named by environment variable all resolve; files are looked up under a folder
//! that does not exist.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenbroker::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (!name.is_empty()).then(|| format!("{name}-value"));
    if let Ok(config) = Config::parse(text, &env, std::path::Path::new("/nonexistent-fuzz")) {
        // What check-config prints, for every config that loads.
        let _ = config.describe();
    }
});
