//! Early answers keep the connection: a response given before its request's body was read
//! (a 401 from the key extractor, a 404, a 431…) would leave the body unread, and hyper then
//! closes the connection the client may be about to reuse. The body of such a request is read
//! to its end (bounded in size and time) before the answer goes out; a body too large for
//! that gets `connection: close`, so the client knows not to reuse the connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// The most bytes of an unread body drained to keep its connection.
const DRAIN_BYTES: usize = 1024 * 1024;

/// How long an unread body may take to drain.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// A request body the handler reads through while the middleware keeps hold of what it left.
struct Shared(Arc<Mutex<Option<Body>>>);

impl http_body::Body for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Ok(mut slot) = self.0.lock() else {
            return Poll::Ready(None);
        };
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            *slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .map_or(true, |slot| slot.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(http_body::Body::size_hint))
            .unwrap_or_default()
    }
}

/// The middleware.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_none_or(|n| n == 0) && !headers.contains_key(TRANSFER_ENCODING) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let mut response = next
        .run(Request::from_parts(parts, Body::new(Shared(slot.clone()))))
        .await;
    let left = slot.lock().ok().and_then(|mut s| s.take());
    let Some(body) = left.filter(|b| !http_body::Body::is_end_stream(b)) else {
        return response;
    };
    let drained = declared.is_none_or(|n| n <= DRAIN_BYTES as u64)
        && matches!(
            tokio::time::timeout(
                DRAIN_TIME,
                http_body_util::Limited::new(body, DRAIN_BYTES).collect()
            )
            .await,
            Ok(Ok(_))
        );
    if !drained {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
