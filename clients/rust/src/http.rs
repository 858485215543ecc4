//! The reqwest helper: a request sent with the source's token, and on a 401 one `Refresh`
//! naming that token and one more try, when the body can be sent again.

use reqwest::{RequestBuilder, Response, StatusCode};

use crate::{Error, TokenSource};

/// Sends reqwest requests with a [`TokenSource`]'s token.
pub trait RequestBuilderExt {
    /// Sends the request with `Authorization: Bearer <token>`. On a 401 it calls
    /// [`TokenSource::refresh`] with that token and sends the request once more, when its
    /// body can be cloned (none, bytes or text; not a stream). A second 401 is returned
    /// as it is.
    fn send_with_token(
        self,
        source: &TokenSource,
    ) -> impl Future<Output = Result<Response, Error>> + Send;
}

impl RequestBuilderExt for RequestBuilder {
    async fn send_with_token(self, source: &TokenSource) -> Result<Response, Error> {
        let again = self.try_clone();
        let token = source.token().await?;
        let answer = self.bearer_auth(token.secret()).send().await?;
        let Some(again) = again.filter(|_| answer.status() == StatusCode::UNAUTHORIZED) else {
            return Ok(answer);
        };
        let fresh = source.refresh(&token).await?;
        Ok(again.bearer_auth(fresh.secret()).send().await?)
    }
}
