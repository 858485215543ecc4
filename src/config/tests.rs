//! The config loader's unit tests: what loads, what is refused, and that every error
//! names its key.

use super::{files::within, *};
use crate::store::{Backend, RedisTarget};

#[test]
fn a_read_that_blocks_is_given_up_naming_the_key_and_the_file() {
    // A FIFO with no writer blocks its open, as a hung mount blocks a stat.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("secret");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let path = fifo.clone();
    let started = std::time::Instant::now();
    let e = within(
        Duration::from_millis(200),
        "orgs.acme.client_secret_file",
        &fifo,
        move || std::fs::read_to_string(&path).map_err(|e| error("", e.to_string())),
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.key, "orgs.acme.client_secret_file");
    assert!(e.message.contains("no answer within"), "{}", e.message);
    // And the config loader refuses the FIFO outright, unopened.
    let e = read_small_file("orgs.acme.client_secret_file", &fifo, 100).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{}", e.message);
    let e = Config::load(&fifo).unwrap_err();
    assert!(
        e.message.contains("cannot read config file"),
        "{}",
        e.message
    );
}

fn env(name: &str) -> Option<String> {
    match name {
        "ACME_SECRET" => Some("s3cret\n".into()),
        "EMPTY" => Some(" ".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &env, Path::new("."))
}

const GOOD: &str = r#"
    [server]
    listen = "127.0.0.1:6000"
    [orgs.acme]
    environment = "production"
    client_id = "acme-id"
    client_secret_env = "ACME_SECRET"
"#;

#[test]
fn a_good_config_fills_in_the_environment_urls() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
    assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    let org = &c.orgs[0];
    assert_eq!(org.name, "acme");
    assert_eq!(
        org.client.token_url.as_str(),
        "https://expense.findity.com/api/oauth/token/"
    );
    let Credentials::Client { client_id, secrets } = &org.credentials else {
        panic!()
    };
    assert_eq!(
        (client_id.as_str(), secrets[0].expose()),
        ("acme-id", "s3cret")
    );
    let two = parse(&GOOD.replace(
        "client_secret_env = \"ACME_SECRET\"",
        "client_secret_env = [\"ACME_SECRET\", \"OTHER\"]",
    ))
    .unwrap_err();
    assert!(two.message.contains("OTHER"), "{two}");
    assert!(!format!("{c:?}").contains("s3cret"));
    assert_eq!(c.cache, CachePolicy::default());
    let tuned = parse(&format!("{GOOD}\n[renewal]\nfraction = 0.8\nsafety_margin = '5m'\n[cache]\nuser_idle_timeout = '1h'\nmax_user_tokens = 10\n")).unwrap();
    assert_eq!(tuned.cache.renewal.fraction, 0.8);
    assert_eq!(tuned.cache.renewal.safety_margin, Duration::from_secs(300));
    assert_eq!(
        (tuned.cache.user_idle_timeout, tuned.cache.max_user_tokens),
        (Duration::from_secs(3600), 10)
    );
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret='abc'",
            "orgs.a.client_secret",
        ),
        (
            "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='NOPE'",
            "orgs.a.client_secret_env",
        ),
        (
            "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='EMPTY'",
            "orgs.a.client_secret_env",
        ),
        (
            "[orgs.a]\nenvironment='production'\nclient_secret_env='ACME_SECRET'",
            "orgs.a.client_id",
        ),
        (
            "[orgs.a]\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
            "orgs.a.token_url",
        ),
        (
            "[orgs.a]\nenvironment='production'\nclient_id='x'",
            "orgs.a",
        ),
        (
            "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'\nstatic_token_env='ACME_SECRET'",
            "orgs.a",
        ),
        (
            "[orgs.a]\ntoken_url='http://example.com/t'\nauthorization_grant_url='https://example.com/g'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
            "orgs.a.token_url",
        ),
        (
            "[orgs.a]\ntoken_url='ftp://example.com/t'\nauthorization_grant_url='https://example.com/g'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
            "orgs.a.token_url",
        ),
        (
            "[server]\nlisten='localhost'\n[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
            "server.listen",
        ),
        (
            "[upstream]\nrequest_timeout='soon'\n[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
            "upstream.request_timeout",
        ),
        (
            "[orgs.'a b']\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
            "orgs.a b",
        ),
        ("[server]\nlisten='127.0.0.1:1'", "orgs"),
        ("[renewal]\nfraction=1.5", "renewal.fraction"),
        ("[renewal]\njitter=-0.1", "renewal.jitter"),
        ("[renewal]\nbackoff_max='0s'", "renewal.backoff_max"),
        ("[cache]\nmax_user_tokens=0", "cache.max_user_tokens"),
        (
            "[watch]\nmax_keys_per_stream=0",
            "watch.max_keys_per_stream",
        ),
        (
            "[server]\nkeepalive_timeout='x'",
            "server.keepalive_timeout",
        ),
        (
            "[cache]\nuser_idle_timeout='later'",
            "cache.user_idle_timeout",
        ),
    ];
    for (text, key) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
    let e = parse("[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret='abc'")
        .unwrap_err();
    assert!(
        e.message.contains("client_secret_env") && !e.message.contains("abc"),
        "{e}"
    );
}

#[test]
fn limits_and_audit_have_defaults_and_the_old_concurrency_key_names_its_replacements() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_waiting_callers, 100_000);
    assert_eq!(c.audit, AuditPolicy::default());
    assert_eq!(c.audit.summary_interval, Duration::from_secs(60));
    let tuned = parse(&GOOD.replace(
        "[server]",
        "[upstream]\nmax_concurrent_flights = 3\n[audit]\nsummary_interval = '5s'\nevery_call = true\n[server]\nmax_waiting_callers = 10",
    ))
    .unwrap();
    assert_eq!(
        tuned.limits,
        Limits {
            max_waiting_callers: 10,
            max_concurrent_flights: 3,
            ..Limits::default()
        }
    );
    assert!(tuned.audit.every_call);
    assert_eq!(tuned.audit.summary_interval, Duration::from_secs(5));
    let old =
        parse(&GOOD.replace("[server]", "[server]\nmax_concurrent_requests = 1024")).unwrap_err();
    assert_eq!(old.key, "server.max_concurrent_requests");
    for replacement in [
        "server.max_waiting_callers",
        "upstream.max_concurrent_flights",
    ] {
        assert!(old.message.contains(replacement), "{old}");
    }
    for (text, key) in [
        (
            "[server]\nmax_waiting_callers = 0",
            "server.max_waiting_callers",
        ),
        (
            "[upstream]\nmax_concurrent_flights = 0",
            "upstream.max_concurrent_flights",
        ),
        ("[audit]\nsummary_interval = '0s'", "audit.summary_interval"),
    ] {
        let text = format!(
            "{text}\n[orgs.acme]\nenvironment = 'production'\nclient_id = 'x'\nclient_secret_env = 'ACME_SECRET'"
        );
        assert_eq!(parse(&text).unwrap_err().key, key, "{text}");
    }
}

#[test]
fn a_public_metrics_listener_must_be_allowed() {
    let with = |metrics: &str| parse(&GOOD.replace("[server]", &format!("{metrics}\n[server]")));
    let e = with("[metrics]\nlisten = '0.0.0.0:9090'").unwrap_err();
    assert_eq!(e.key, "metrics.listen");
    assert!(e.message.contains("metrics.allow_public"), "{e}");
    assert!(with("[metrics]\nlisten = '0.0.0.0:9090'\nallow_public = true").is_ok());
    assert!(with("[metrics]\nlisten = '127.0.0.1:9090'").is_ok());
}

#[test]
fn unknown_keys_and_bad_toml_are_refused() {
    let e = parse("[orgs.a]\nenvironmnet='production'").unwrap_err();
    assert!(
        e.message.contains("unknown field") && e.message.contains("environmnet"),
        "{e}"
    );
    assert!(
        parse("[orgs.a\n")
            .unwrap_err()
            .message
            .starts_with("invalid TOML")
    );
}

/// Secret files are regular files of a few KiB holding one line: a FIFO (which would
/// block the reader), a 1 GB sparse file, NUL bytes are refused before anything is
/// held, naming the key and the file.
#[test]
fn secret_files_must_be_small_regular_files_of_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = |file: &str| {
        format!("[orgs.a]\nenvironment='sandbox'\nclient_id='x'\nclient_secret_file='{file}'")
    };
    let refused = |file: &str| Config::parse(&config(file), &env, dir.path()).unwrap_err();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = refused("fifo");
    assert_eq!(e.key, "orgs.a.client_secret_file");
    assert!(
        e.message.contains("not a regular file") && e.message.contains("fifo"),
        "{e}"
    );
    let huge = std::fs::File::create(dir.path().join("huge")).unwrap();
    huge.set_len(1 << 30).unwrap();
    let e = refused("huge");
    assert!(
        e.message.contains("1073741824 bytes; the limit is 16384"),
        "{e}"
    );
    std::fs::write(dir.path().join("nul"), b"abc\0def\n").unwrap();
    assert!(refused("nul").message.contains("control characters"));
    std::fs::write(dir.path().join("two"), "abc\ndef\n").unwrap();
    assert!(refused("two").message.contains("control characters"));
    std::fs::write(dir.path().join("good"), "s3cret\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("good"), dir.path().join("link")).unwrap();
    let c = Config::parse(&config("link"), &env, dir.path()).unwrap();
    let Credentials::Client { secrets, .. } = &c.orgs[0].credentials else {
        panic!()
    };
    assert_eq!(
        secrets[0].expose(),
        "s3cret",
        "a symlink to a regular file is read"
    );
}

#[test]
fn loopback_http_is_allowed_and_static_tokens_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "api-key-123\n").unwrap();
    let text = "[orgs.a]\ntoken_url='http://127.0.0.1:9/t'\nauthorization_grant_url='http://localhost:9/g'\nstatic_token_file='key'";
    let c = Config::parse(text, &env, dir.path()).unwrap();
    let Credentials::Static(token) = &c.orgs[0].credentials else {
        panic!()
    };
    assert_eq!(token.expose(), "api-key-123");
    assert!(c.orgs[0].client.client_id.is_none());
    let missing = "[orgs.a]\nenvironment='sandbox'\nstatic_token_file='nope'";
    assert_eq!(
        Config::parse(missing, &env, dir.path()).unwrap_err().key,
        "orgs.a.static_token_file"
    );
}

#[test]
fn a_redis_store_takes_its_url_prefix_and_lease_and_never_shows_its_password() {
    let key = "ab".repeat(32);
    let env = |name: &str| {
        (name == "K")
            .then(|| key.clone())
            .or_else(|| self::env(name))
    };
    let text = format!(
        "{GOOD}\n[store]\nredis_url = \"redis://app:pa55word@127.0.0.1:6379/2\"\nprefix = \"tb-eu\"\nlease = \"3s\"\nencryption_key_env = \"K\""
    );
    let c = Config::parse(&text, &env, Path::new(".")).unwrap();
    let Backend::Redis(redis) = &c.store.as_ref().unwrap().backend else {
        panic!("a Redis store");
    };
    assert_eq!(redis.prefix, "tb-eu");
    assert_eq!(redis.lease, Duration::from_secs(3));
    assert_eq!(redis.timeout, Duration::from_secs(1));
    assert!(matches!(&redis.target, RedisTarget::Url(u) if u.expose().contains("pa55word")));
    let described = c.describe();
    assert!(
        described.contains("redis_url = \"redis://app:***@127.0.0.1:6379/2\""),
        "{described}"
    );
    assert!(!described.contains("pa55word"), "{described}");
    assert!(
        !format!("{c:?}").contains("pa55word"),
        "Debug shows no password"
    );
    for (url, shown) in [
        ("redis://:p@ss@h:1/0", "redis://:***@h:1/0"),
        (
            "unix:///run/redis.sock?db=1&pass=pw",
            "unix:///run/redis.sock?db=1&pass=***",
        ),
        ("redis://h:1/0", "redis://h:1/0"),
    ] {
        assert_eq!(super::store::without_password(url), shown);
    }

    let sentinel = format!(
        "{GOOD}\n[store]\nredis_sentinel = {{ master = \"mymaster\", urls = [\"redis://s1:26379\", \"redis://s2:26379\"] }}\nencryption_key_env = \"K\""
    );
    let c = Config::parse(&sentinel, &env, Path::new(".")).unwrap();
    let Backend::Redis(redis) = &c.store.as_ref().unwrap().backend else {
        panic!("a Redis store");
    };
    assert_eq!(redis.prefix, "tokenbroker");
    assert!(
        matches!(&redis.target, RedisTarget::Sentinel { master, urls, .. } if master == "mymaster" && urls.len() == 2)
    );
    let again = Config::parse(&c.describe(), &env, Path::new(".")).unwrap();
    assert!(matches!(again.store.unwrap().backend, Backend::Redis(_)));

    // The primary's own credentials, its password from the environment.
    let env = |name: &str| match name {
        "RPW" => Some("primary-pw".into()),
        other => env(other),
    };
    let text = format!(
        "{GOOD}\n[store]\nredis_sentinel = {{ master = \"m\", urls = [\"redis://s1:26379\"], db = 3, tls = true, username = \"app\", password_env = \"RPW\" }}\nencryption_key_env = \"K\""
    );
    let c = Config::parse(&text, &env, Path::new(".")).unwrap();
    let Backend::Redis(redis) = &c.store.as_ref().unwrap().backend else {
        panic!("a Redis store");
    };
    let RedisTarget::Sentinel { primary, .. } = &redis.target else {
        panic!("Sentinel");
    };
    assert_eq!((primary.db, primary.tls), (3, true));
    assert_eq!(primary.username.as_deref(), Some("app"));
    assert_eq!(
        primary.password.as_ref().map(|p| p.expose()),
        Some("primary-pw")
    );
    let described = c.describe();
    assert!(described.contains("password_env = \"RPW\""), "{described}");
    assert!(!described.contains("primary-pw"), "{described}");
    let missing = text.replace("RPW", "NOT_SET");
    let e = Config::parse(&missing, &env, Path::new(".")).unwrap_err();
    assert_eq!(e.key, "store.redis_sentinel.password_env", "{e}");
}

#[test]
fn the_store_needs_its_key_reads_hex_or_base64_and_describes_itself_without_it() {
    let key = "ab".repeat(32);
    let env = |name: &str| match name {
        "NEW" => Some(key.clone()),
        "OLD" => Some(format!("{}=", "A".repeat(43))),
        "SHORT" => Some("abcd".into()),
        _ => None,
    };
    let with = |store: &str| {
        Config::parse(
            &format!("{GOOD}\n[store]\n{store}"),
            &|n| env(n).or_else(|| self::env(n)),
            Path::new("/etc/tb"),
        )
    };
    let c = with("path = \"tokens.redb\"\nencryption_key_env = [\"NEW\", \"OLD\"]").unwrap();
    let store = c.store.as_ref().unwrap();
    let path = |b: &Backend| match b {
        Backend::File { path } => path.clone(),
        Backend::Redis(_) => panic!("a file store"),
    };
    assert_eq!(path(&store.backend), Path::new("/etc/tb/tokens.redb"));
    assert_eq!(store.keys.len(), 2);
    let described = c.describe();
    assert!(described.contains("[store]"), "{described}");
    assert!(
        described.contains("encryption_key_env = [\"NEW\", \"OLD\"]"),
        "{described}"
    );
    assert!(
        !described.contains(&key[..16]),
        "the key itself is never shown"
    );
    // What it prints loads back as the same store.
    let again = Config::parse(
        &described,
        &|n| env(n).or_else(|| self::env(n)),
        Path::new("/etc/tb"),
    )
    .unwrap();
    assert_eq!(path(&again.store.unwrap().backend), path(&store.backend));

    for (store, key, says) in [
        (
            "path = \"t.redb\"",
            "store.encryption_key_env",
            "gen-store-key",
        ),
        ("encryption_key_env = \"NEW\"", "store", "needs path"),
        (
            "path = \"t.redb\"\nredis_url = \"redis://r\"\nencryption_key_env = \"NEW\"",
            "store",
            "one of path, redis_url",
        ),
        (
            "redis_url = \"http://r\"\nencryption_key_env = \"NEW\"",
            "store.redis_url",
            "redis://",
        ),
        (
            "path = \"t.redb\"\nprefix = \"x\"\nencryption_key_env = \"NEW\"",
            "store.prefix",
            "Redis store only",
        ),
        (
            "redis_url = \"redis://r\"\nlease = \"100ms\"\nencryption_key_env = \"NEW\"",
            "store.lease",
            "at least 300ms",
        ),
        (
            "redis_url = \"redis://r\"\nlease = \"2s\"\nencryption_key_env = \"NEW\"",
            "store.lease",
            "three times store.timeout",
        ),
        (
            "redis_url = \"redis://r\"\nprefix = \"tb*\"\nencryption_key_env = \"NEW\"",
            "store.prefix",
            "pattern characters",
        ),
        (
            "path = \"t.redb\"\nencryption_key_env = \"MISSING\"",
            "store.encryption_key_env",
            "MISSING is not set",
        ),
        (
            "path = \"t.redb\"\nencryption_key_env = \"SHORT\"",
            "store.encryption_key_env",
            "SHORT",
        ),
        (
            "path = \"t.redb\"\nencryption_key_env = \"NEW\"\nencryption_key_file = \"k\"",
            "store",
            "not both",
        ),
        ("path = \"t.redb\"\nsecret = \"x\"", "", "unknown field"),
    ] {
        let e = with(store).unwrap_err();
        assert_eq!(e.key, key, "{store}: {e}");
        assert!(e.to_string().contains(says), "{store}: {e}");
    }
}

#[test]
fn client_auth_is_one_of_four_and_environment_never_fills_a_mixed_pair() {
    let org = |extra: &str| {
        parse(&format!(
            "[orgs.acme]\nclient_id = \"acme-id\"\nclient_secret_env = \"ACME_SECRET\"\n{extra}"
        ))
    };
    for (name, method) in [
        ("client_secret_basic", upstream::ClientAuth::SecretBasic),
        ("none", upstream::ClientAuth::None),
        ("findity", upstream::ClientAuth::Findity),
    ] {
        let c = org(&format!(
            "environment = \"sandbox\"\nclient_auth = \"{name}\""
        ))
        .unwrap();
        assert_eq!(c.orgs[0].client.auth, method);
        assert!(c.describe().contains(&format!("client_auth = \"{name}\"")));
    }
    let c = org("environment = \"sandbox\"").unwrap();
    assert_eq!(c.orgs[0].client.auth, upstream::ClientAuth::SecretPost);
    let e = org("environment = \"sandbox\"\nclient_auth = \"tls\"").unwrap_err();
    assert_eq!(e.key, "orgs.acme.client_auth");
    assert!(e.message.contains("client_secret_basic"), "{}", e.message);

    // A token URL of another server beside `environment`: the grant URL would be the
    // platform's. Refused, naming both.
    let e =
        org("environment = \"production\"\ntoken_url = \"https://idp.example/token\"").unwrap_err();
    assert_eq!(e.key, "orgs.acme.environment");
    assert!(
        e.message.contains("authorization_grant_url"),
        "{}",
        e.message
    );
    // A public client holds no secret.
    let c = parse("[orgs.acme]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"acme-id\"\nclient_auth = \"none\"\n").unwrap();
    assert!(
        matches!(&c.orgs[0].credentials, Credentials::Client { secrets, .. } if secrets.is_empty())
    );
    let e =
        parse("[orgs.acme]\ntoken_url = \"https://idp.example/token\"\nclient_auth = \"none\"\n")
            .unwrap_err();
    assert_eq!(e.key, "orgs.acme.client_id");
    // Without `environment`, the grant URL is optional: org tokens only.
    let c = org("token_url = \"https://idp.example/token\"").unwrap();
    assert!(c.orgs[0].client.authorization_grant_url.is_none());
    assert!(!c.describe().contains("authorization_grant_url"));
}

#[test]
fn what_token_requests_carry_is_described_and_loads_back() {
    let text = "[orgs.acme]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"acme-id\"\nclient_secret_env = \"ACME_SECRET\"\nscope = [\"read\", \"write\"]\naudience = \"https://api.example\"\nresource = \"https://api.example/v1\"\nredirect_uri = \"https://app.example/cb\"\nextra_params = { tenant = \"t1\" }\nextra_headers = { \"X-Tenant\" = \"t1\" }\nuser_grant = \"token_exchange\"\ndefault_token_lifetime = \"30m\"\n";
    let c = parse(text).unwrap();
    let described = c.describe();
    let again = parse(&described).unwrap();
    let (a, b) = (&c.orgs[0].client, &again.orgs[0].client);
    assert_eq!(a.extras.scope.as_deref(), Some("read write"));
    assert_eq!(b.extras.scope, a.extras.scope, "{described}");
    assert_eq!(b.extras.audience, a.extras.audience);
    assert_eq!(b.extras.resources, a.extras.resources);
    assert_eq!(b.extras.redirect_uri, a.extras.redirect_uri);
    assert_eq!(b.extras.params, a.extras.params);
    assert_eq!(b.extras.headers, a.extras.headers);
    assert_eq!(b.user_grant, a.user_grant);
    assert_eq!(b.default_lifetime, Some(Duration::from_secs(1800)));
    for (extra, key) in [
        (
            "extra_params = { grant_type = \"x\" }",
            "orgs.acme.extra_params",
        ),
        (
            "extra_headers = { Authorization = \"x\" }",
            "orgs.acme.extra_headers",
        ),
        ("resource = \"not a uri\"", "orgs.acme.resource"),
        ("user_grant = \"saml\"", "orgs.acme.user_grant"),
        (
            "default_token_lifetime = \"0s\"",
            "orgs.acme.default_token_lifetime",
        ),
        ("issuer = \"https://idp.example\"", "orgs.acme.issuer"),
    ] {
        let text = format!(
            "[orgs.acme]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"acme-id\"\nclient_secret_env = \"ACME_SECRET\"\n{extra}\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, key, "{extra}: {e}");
    }
}

#[test]
fn private_key_jwt_needs_its_key_alone_and_describes_the_public_half() {
    let dir = tempfile::tempdir().unwrap();
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(dir.path().join("key.pem"), &pem).unwrap();
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let load = |extra: &str| {
        Config::parse(
            &format!(
                "[orgs.acme]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"acme-id\"\n{extra}\n"
            ),
            &env,
            dir.path(),
        )
    };
    let c = load("client_auth = \"private_key_jwt\"\nclient_key_file = \"key.pem\"\nclient_key_id = \"k1\"\nclient_assertion_audience = \"https://idp.example\"").unwrap();
    let client = &c.orgs[0].client;
    assert_eq!(client.auth, upstream::ClientAuth::PrivateKeyJwt);
    assert_eq!(client.key.as_ref().map(|k| k.alg()), Some("ES256"));
    assert_eq!(
        client.assertion_audience.as_deref(),
        Some("https://idp.example")
    );
    let Credentials::Client { secrets, .. } = &c.orgs[0].credentials else {
        panic!("a key-holding org rotates its tokens")
    };
    assert!(secrets.is_empty());
    // check-config shows where the key is and its public half, never the key itself.
    let described = c.describe();
    assert!(
        described.contains("client_key_file = \"key.pem\""),
        "{described}"
    );
    assert!(described.contains("\"kid\":\"k1\""), "{described}");
    assert!(!described.contains("PRIVATE KEY"), "{described}");
    let again = Config::parse(&described, &env, dir.path()).unwrap();
    assert_eq!(
        again.orgs[0].client.key.as_ref().map(|k| k.alg()),
        Some("ES256")
    );

    for (extra, key, says) in [
        (
            "client_auth = \"private_key_jwt\"",
            "orgs.acme.client_auth",
            "client_key_file",
        ),
        (
            "client_auth = \"private_key_jwt\"\nclient_key_file = \"key.pem\"\nclient_secret_env = \"ACME_SECRET\"",
            "orgs.acme.client_secret_env",
            "drop it",
        ),
        (
            "client_secret_env = \"ACME_SECRET\"\nclient_key_file = \"key.pem\"",
            "orgs.acme.client_key_file",
            "private_key_jwt",
        ),
        (
            "client_auth = \"private_key_jwt\"\nclient_key_file = \"cert.pem\"",
            "orgs.acme.client_key_file",
            "no PEM private key",
        ),
        (
            "client_auth = \"private_key_jwt\"\nclient_key_env = \"UNSET\"",
            "orgs.acme.client_key_env",
            "not set",
        ),
        (
            "client_auth = \"private_key_jwt\"\nclient_key_file = \"key.pem\"\nclient_key_id = \"a b\"",
            "orgs.acme.client_key_id",
            "printable",
        ),
    ] {
        let e = load(extra).unwrap_err();
        assert_eq!(e.key, key, "{extra}: {e}");
        assert!(e.message.contains(says), "{extra}: {e}");
    }
}

#[test]
fn the_proxy_takes_each_orgs_api_url_from_its_environment_or_its_key() {
    let config = parse(&format!("[proxy]\nlisten = \"127.0.0.1:8081\"\n{GOOD}")).unwrap();
    let proxy = config.proxy.expect("[proxy] set");
    assert_eq!(proxy.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(
        proxy.api_urls["acme"].as_str(),
        "https://expense.findity.com/"
    );
    assert_eq!(proxy.limits, crate::proxy::ProxyLimits::default());
    assert_eq!(proxy.limits.max_retry_body_bytes, 1024 * 1024);
    assert!(parse(GOOD).unwrap().proxy.is_none(), "no [proxy], no proxy");
    let own = parse(&format!(
        "[proxy]\nlisten = \"unix:///run/tb-proxy.sock\"\nrequest_timeout = \"5s\"\nmax_concurrent_requests = 10\n{}",
        GOOD.replace(
            "environment = \"production\"",
            "environment = \"production\"\napi_url = \"http://127.0.0.1:9/base\""
        )
    ))
    .unwrap()
    .proxy
    .unwrap();
    assert_eq!(own.api_urls["acme"].as_str(), "http://127.0.0.1:9/base");
    assert_eq!(own.limits.request_timeout, Duration::from_secs(5));
    assert_eq!(own.limits.max_concurrent_requests, 10);
    // check-config shows it, and what it shows loads back as the same.
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:8081\"\nmax_retry_body_bytes = 4096\n{}",
        GOOD.replace(
            "environment = \"production\"",
            "environment = \"production\"\napi_url = \"https://api.example/v2\""
        )
    );
    let described = parse(&text).unwrap().describe();
    assert!(
        described.contains("[proxy]\nlisten = \"127.0.0.1:8081\""),
        "{described}"
    );
    assert!(
        described.contains("api_url = \"https://api.example/v2\""),
        "{described}"
    );
    let again = parse(&described).unwrap().proxy.unwrap();
    assert_eq!(again.limits.max_retry_body_bytes, 4096);
    assert_eq!(again.api_urls["acme"].as_str(), "https://api.example/v2");
}

#[test]
fn proxy_errors_name_the_key() {
    let local = "[orgs.x]\ntoken_url = \"http://127.0.0.1:1/oauth/token\"\nclient_id = \"x\"\nclient_secret_env = \"ACME_SECRET\"\n";
    let cases = [
        (
            format!("[proxy]\nlisten = \"127.0.0.1:8081\"\n{local}"),
            "orgs.x.api_url",
            "is missing",
        ),
        (
            format!(
                "[proxy]\nlisten = \"127.0.0.1:8081\"\n{local}api_url = \"http://api.example\"\n"
            ),
            "orgs.x.api_url",
            "plain HTTP",
        ),
        (
            format!(
                "[proxy]\nlisten = \"127.0.0.1:8081\"\n{local}api_url = \"https://api.example/?a=1\"\n"
            ),
            "orgs.x.api_url",
            "without ?query",
        ),
        (
            format!("[proxy]\nlisten = \"0.0.0.0:8081\"\n{GOOD}"),
            "proxy.listen",
            "reachable from other machines",
        ),
        (
            format!("[proxy]\nlisten = \"127.0.0.1:6000\"\n{GOOD}"),
            "proxy.listen",
            "server.listen already",
        ),
        (
            format!(
                "[proxy]\nlisten = \"127.0.0.1:8081\"\nmax_retry_body_bytes = 10\nmax_request_bytes = 5\n{GOOD}"
            ),
            "proxy.max_retry_body_bytes",
            "more than proxy.max_request_bytes",
        ),
        (
            format!("[proxy]\nlisten = \"127.0.0.1:8081\"\nrequest_timeout = \"0s\"\n{GOOD}"),
            "proxy.request_timeout",
            "not a positive duration",
        ),
        (
            format!("[proxy]\nlisten = \"127.0.0.1:8081\"\nmax_concurrent_requests = 0\n{GOOD}"),
            "proxy.max_concurrent_requests",
            "1 to 1000000",
        ),
    ];
    for (text, key, says) in cases {
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}
