//! grpc.health.v1 as tonic-health serves it, with its `Watch` streams bounded per
//! connection and in the whole server: health is open to every peer (probes carry no
//! credentials), and each stream it holds open costs memory (24,000 took 179 MB).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::Stream;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{HealthCheckRequest, HealthCheckResponse, health_server::Health},
    server::{HealthReporter, HealthService, WatchStream},
};

use super::{
    budget::{Budget, Share},
    watch::{ConnectionStreams, StreamPermit},
};

/// tonic-health's service with bounded `Watch` streams.
pub struct BoundedHealth {
    inner: HealthService,
    per_connection: usize,
    streams: Arc<ConnectionStreams>,
    total: Arc<Budget>,
}

impl BoundedHealth {
    /// Serves `reporter`'s statuses, at most `per_connection` Watch streams per connection
    /// and `total` in all.
    pub fn new(reporter: HealthReporter, per_connection: usize, total: usize) -> Self {
        Self {
            inner: HealthService::from_health_reporter(reporter),
            per_connection,
            streams: Arc::new(ConnectionStreams::default()),
            total: Budget::new(total),
        }
    }
}

#[tonic::async_trait]
impl Health for BoundedHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Bounded;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Bounded>, Status> {
        let permit = self
            .streams
            .acquire(request.remote_addr(), self.per_connection)
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "this connection already has {} open health Watch streams (watch.max_health_streams_per_connection)",
                    self.per_connection
                ))
            })?;
        let share = self.total.take(1).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{} health Watch streams are open (watch.max_health_streams); use Check, or retry later",
                self.total.limit()
            ))
        })?;
        let inner = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(Bounded {
            inner,
            _places: (permit, share),
        }))
    }
}

/// A health Watch stream holding its places until it ends.
pub struct Bounded {
    inner: WatchStream,
    _places: (StreamPermit, Share),
}

impl Stream for Bounded {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
