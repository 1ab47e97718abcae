//! The response body wrapper and the response future: they feed the call
//! every frame and end it on the first end-of-RPC event.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::Context;

use crate::call::{Call, fail_on_panic};

/// Which context a response future, then its body, make current while they
/// run (the server side; the client makes none current).
pub(crate) enum Current {
    /// None.
    Nothing,
    /// The call's own context: held once, by the call.
    Call,
    /// This context (a server call that is not observed: the caller's).
    Context(Context),
}

impl Current {
    /// The context to attach, if any, while the call (if any) still runs.
    #[inline]
    fn get<'a>(&'a self, call: Option<&'a Call>) -> Option<&'a Context> {
        match self {
            Current::Nothing => None,
            Current::Call => call.filter(|c| !c.is_done()).map(|c| &c.cx),
            Current::Context(cx) => call.is_none_or(|c| !c.is_done()).then_some(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that passes every frame through unchanged while the
    /// RPC it belongs to is observed. Same `Data` and `Error` as the inner
    /// body; `Unpin` when the inner body is.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
        current: Current,
    }

}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("observed", &self.call.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, call: Option<Call>, current: Current) -> Self {
        ResponseBody {
            inner,
            call,
            current,
        }
    }
}

#[inline]
fn feed_data<D: Buf>(call: &mut Call, data: &D) {
    if data.chunk().len() == data.remaining() {
        call.on_data(data.chunk());
        return;
    }
    let mut slices = [IoSlice::new(&[]); 64];
    let n = data.chunks_vectored(&mut slices);
    let seen: usize = slices[..n].iter().map(|s| s.len()).sum();
    if seen < data.remaining() {
        // Only part of the frame can be borrowed: count the bytes, stop
        // parsing rather than parse out of step.
        call.lose_sync();
    }
    for slice in &slices[..n] {
        call.on_data(slice);
    }
    if seen < data.remaining() {
        call.on_data_len(data.remaining() - seen);
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // The context is current while the body runs, until the RPC is over.
        let _guard = this
            .current
            .get(this.call.as_ref())
            .map(|c| c.clone().attach());
        let mut inner = this.inner;
        let call = match this.call.as_mut() {
            Some(call) if !call.is_done() => call,
            _ => return inner.poll_frame(cx),
        };
        let result = ready!(fail_on_panic(Some(&mut *call), || inner
            .as_mut()
            .poll_frame(cx)));
        // A data frame is taken apart and made again around the same data,
        // straight into the value returned: its few words then travel in
        // registers. Returned whole, the frame would go through a copy on
        // the stack, whose wide reads stall on the narrow stores that just
        // wrote it, on every message.
        match result {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    feed_data(call, &data);
                    if inner.is_end_stream() {
                        call.on_end();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.on_trailers(trailers);
                    }
                    if inner.is_end_stream() {
                        call.on_end();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            Some(Err(e)) => {
                call.on_body_error();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                call.on_end();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The response future of the server and client services.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
        current: Current,
        // Whether `current` stays current while the body is polled.
        body_context: bool,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("observed", &self.call.is_some())
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, call: Option<Call>, current: Current, body_context: bool) -> Self {
        ResponseFuture {
            inner,
            call,
            current,
            body_context,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _guard = this
                .current
                .get(this.call.as_ref())
                .map(|c| c.clone().attach());
            let inner = this.inner;
            ready!(fail_on_panic(this.call.as_mut(), || inner.poll(cx)))
        };
        let current = if *this.body_context {
            std::mem::replace(this.current, Current::Nothing)
        } else {
            Current::Nothing
        };
        Poll::Ready(match result {
            Ok(mut response) => {
                if let Some(c) = this.call.as_mut() {
                    c.on_response(response.status(), response.headers_mut());
                    // 204 and 304 carry no body on the wire, whatever the
                    // service returned: the call is over.
                    let bodiless = matches!(
                        response.status(),
                        http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
                    );
                    if bodiless || response.body().is_end_stream() {
                        c.on_end();
                    }
                }
                let (head, body) = response.into_parts();
                Ok(http::Response::from_parts(
                    head,
                    // Taken here, as the body is made: one move of the call.
                    ResponseBody::new(body, this.call.take(), current),
                ))
            }
            Err(e) => {
                if let Some(mut call) = this.call.take() {
                    call.on_service_error(String::new());
                }
                Err(e)
            }
        })
    }
}
