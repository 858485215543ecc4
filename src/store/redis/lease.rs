//! A replica's lease on a key: taken by the claim script, renewed every third of its period
//! while the flight lives, released (publishing `released`, so the replicas that wait try
//! again at once) when dropped. For efficiency only: a lease that lapses costs at most a
//! second flight, never a second presentation of a refresh token.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;

use super::{Shared, messages::message, scripts::millis};

/// One replica's right to fly for a key, renewed every third of its period while held and
/// released (waking the replicas that wait) when dropped.
#[derive(Debug)]
pub struct Lease {
    _release: oneshot::Sender<()>,
}

impl Lease {
    /// The lease `id` now held on the key: renewed until dropped, then released.
    pub(super) fn held(shared: &Arc<Shared>, org: &str, user: Option<&str>, id: String) -> Self {
        let (release, released) = oneshot::channel();
        let shared = Arc::clone(shared);
        let key = shared.key("lease", org, user);
        let message = message("released", 0, org, user);
        tokio::spawn(async move {
            let mut released = released;
            let every = shared.lease / 3;
            loop {
                tokio::select! {
                    _ = &mut released => break,
                    () = tokio::time::sleep(every) => {
                        let mut script = shared.scripts.renew.prepare_invoke();
                        script.key(&key).arg(&id).arg(millis(shared.lease));
                        let renewed: Result<i64, _> =
                            shared.invoke(&script).await;
                        if let Err(e) = renewed {
                            debug!(error = %e, "could not renew a lease");
                        }
                    }
                }
            }
            let mut script = shared.scripts.release.prepare_invoke();
            script.key(&key).arg(&id).arg(shared.channel()).arg(message);
            let released: Result<i64, _> = shared.invoke(&script).await;
            if let Err(e) = released {
                debug!(error = %e, "could not release a lease; it lapses by itself");
            }
        });
        Self { _release: release }
    }
}
