//! The store on a real file: what survives a reopen, the take's rules, removals, the lock
//! on the file, and what wrong or rotated keys do.

use super::*;
use crate::secret::StoreKey;

fn settings(dir: &std::path::Path, keys: &[&StoreKey]) -> StoreSettings {
    StoreSettings {
        backend: Backend::File {
            path: dir.join("state/tokens.redb"),
        },
        keys: keys.iter().map(|k| (*k).clone()).collect(),
        key_setting: "store.encryption_key_env",
    }
}

fn token(generation: u64, access: &AccessToken) -> NewToken<'_> {
    NewToken {
        generation,
        access_token: access,
        token_type: "Bearer",
        issued: SystemTime::now(),
        lifetime: Duration::from_secs(3600),
        reason: "issued",
        scope: None,
        refresh_token: None,
    }
}

async fn open(settings: &StoreSettings) -> Result<(Store, Vec<Loaded>), StoreError> {
    Store::open(settings, Arc::new(Unobserved)).await
}

#[tokio::test]
async fn tokens_survive_a_reopen_and_a_refresh_token_is_taken_once_at_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let key = StoreKey::generate();
    let settings = settings(dir.path(), &[&key]);
    {
        let (store, loaded) = open(&settings).await.unwrap();
        assert!(loaded.is_empty());
        let (access, refresh) = (AccessToken::new("at-1"), RefreshToken::new("rt-1"));
        let new = NewToken {
            refresh_token: Some(&refresh),
            ..token(3, &access)
        };
        store.install("acme", Some("EMP-1"), new).await.unwrap();
        store
            .install("acme", None, token(1, &AccessToken::new("org-at")))
            .await
            .unwrap();
        // A second process is refused while this one holds the file.
        assert!(matches!(
            open(&settings).await,
            Err(StoreError::Locked { .. })
        ));
        // Not at that generation: nothing.
        assert!(
            store
                .take_refresh("acme", Some("EMP-1"), 2)
                .await
                .unwrap()
                .is_none()
        );
    }
    let mode = std::fs::metadata(dir.path().join("state/tokens.redb"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let (store, mut loaded) = open(&settings).await.unwrap();
    loaded.sort_by(|a, b| a.user.cmp(&b.user));
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[1].user.as_deref(), Some("EMP-1"));
    assert_eq!(loaded[1].token.access_token.expose(), "at-1");
    assert_eq!(loaded[1].token.generation, 3);
    let taken = store.take_refresh("acme", Some("EMP-1"), 3).await.unwrap();
    assert_eq!(taken.unwrap().expose(), "rt-1");
    assert!(
        store
            .take_refresh("acme", Some("EMP-1"), 3)
            .await
            .unwrap()
            .is_none(),
        "once"
    );
    drop(store);
    // Taken for good: a reopened store has none either.
    let (store, _) = open(&settings).await.unwrap();
    assert!(
        store
            .take_refresh("acme", Some("EMP-1"), 3)
            .await
            .unwrap()
            .is_none()
    );
    // Removals: a user, then a whole org.
    store.remove("acme", Some("EMP-1"));
    store
        .install("other", None, token(1, &AccessToken::new("x")))
        .await
        .unwrap();
    store.remove_org("acme");
    store
        .install("other", Some("u"), token(1, &AccessToken::new("y")))
        .await
        .unwrap();
    drop(store);
    let (_, loaded) = open(&settings).await.unwrap();
    let orgs: Vec<&str> = loaded.iter().map(|l| l.org.as_str()).collect();
    assert_eq!(orgs, ["other", "other"]);
}

#[tokio::test]
async fn a_wrong_key_refuses_to_open_and_an_unreadable_record_is_dropped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (StoreKey::generate(), StoreKey::generate());
    {
        let (store, _) = open(&settings(dir.path(), &[&a])).await.unwrap();
        for user in ["u1", "u2"] {
            store
                .install("acme", Some(user), token(1, &AccessToken::new(user)))
                .await
                .unwrap();
        }
    }
    let e = open(&settings(dir.path(), &[&b])).await.unwrap_err();
    assert!(matches!(e, StoreError::WrongKey { records: 2, .. }), "{e}");
    assert!(e.to_string().contains("store.encryption_key_env"), "{e}");
    // Nothing was lost to the wrong key: [b, a] opens both, and seals anew with b.
    let (store, loaded) = open(&settings(dir.path(), &[&b, &a])).await.unwrap();
    assert_eq!(loaded.len(), 2);
    store
        .install("acme", Some("u1"), token(2, &AccessToken::new("u1-b")))
        .await
        .unwrap();
    drop(store);
    // With b alone: u1 (sealed with b) loads; u2 (a's) is dropped and will be issued anew.
    let (store, loaded) = open(&settings(dir.path(), &[&b])).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].token.access_token.expose(), "u1-b");
    drop(store);
    let (_, loaded) = open(&settings(dir.path(), &[&b, &a])).await.unwrap();
    assert_eq!(loaded.len(), 1, "the unreadable record was removed");
}
