//! Properties of the config loader over generated input (proptest).

use proptest::prelude::*;

use super::*;

/// Lines that look like this config: its keys, any values, any tables.
fn configish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("listen"),
        Just("environment"),
        Just("token_url"),
        Just("authorization_grant_url"),
        Just("client_id"),
        Just("client_secret_env"),
        Just("client_secret_file"),
        Just("static_token_env"),
        Just("request_timeout"),
        Just("fraction"),
        Just("max_user_tokens"),
        Just("name"),
        Just("orgs"),
        Just("permissions"),
        Just("api_key_sha256"),
        Just("unix_uids"),
        Just("drain_timeout"),
    ];
    let value = prop_oneof![
        "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:?}")
        } else {
            "1.0".into()
        }),
        Just("[\"*\"]".to_owned()),
        Just("\"https://example.com/t\"".to_owned()),
        Just("\"http://10.0.0.1/t\"".to_owned()),
    ];
    let table = prop_oneof![
        Just("[server]"),
        Just("[orgs.acme]"),
        Just("[orgs.\"b c\"]"),
        Just("[renewal]"),
        Just("[cache]"),
        Just("[[callers]]"),
        Just("[server.tls]"),
        Just("[upstream]"),
        Just("[watch]"),
    ];
    let line = prop_oneof![
        table.prop_map(str::to_owned),
        (key, value).prop_map(|(k, v)| format!("{k} = {v}"))
    ];
    prop::collection::vec(line, 0..14).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn any_text_gives_a_config_or_an_error_naming_what_is_wrong(text in "\\PC{0,200}") {
        if let Err(e) = Config::parse(&text, &|_| Some("s".into()), Path::new("/nonexistent")) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn configish_text_gives_a_config_or_an_error_naming_what_is_wrong(text in configish()) {
        match Config::parse(&text, &|_| Some("s".into()), Path::new("/nonexistent")) {
            Ok(config) => prop_assert!(!config.orgs.is_empty()),
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }
}
