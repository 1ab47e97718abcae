//! `ExtractLayer` and `InjectLayer`: propagation alone, without spans or metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use tower_layer::Layer;
use tower_service::Service;

use super::{DefaultPropagator, HeaderExtractor, Propagation, SharedPropagator};

/// Server side: extracts the caller's context from the request headers, puts
/// it into the request extensions and makes it the current context while the
/// inner service runs. Nothing else: no span, no metric.
///
/// Use it when you create your own spans (for example with `tracing`) and only
/// need the trace to continue. The full [`ServerLayer`](crate::ServerLayer)
/// already does this.
#[derive(Clone, Debug)]
pub struct ExtractLayer {
    propagator: SharedPropagator,
}

impl Default for ExtractLayer {
    fn default() -> Self {
        Self::new(DefaultPropagator::new())
    }
}

impl ExtractLayer {
    /// Extracts with `propagator`.
    pub fn new(propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        ExtractLayer {
            propagator: Arc::new(propagator),
        }
    }
}

impl<S> Layer<S> for ExtractLayer {
    type Service = ExtractService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ExtractService {
            inner,
            propagator: self.propagator.clone(),
        }
    }
}

/// The service made by [`ExtractLayer`].
#[derive(Clone, Debug)]
pub struct ExtractService<S> {
    inner: S,
    propagator: SharedPropagator,
}

impl<S, B> Service<http::Request<B>> for ExtractService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ExtractFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let cx = Context::map_current(|current| {
            self.propagator
                .extract_with_context(current, &HeaderExtractor(req.headers()))
        });
        req.extensions_mut().insert(cx.clone());
        let future = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        ExtractFuture { future, cx }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ExtractService`]: polls the inner future with
    /// the extracted context attached.
    #[derive(Debug)]
    pub struct ExtractFuture<F> {
        #[pin]
        future: F,
        cx: Context,
    }
}

impl<F: Future> Future for ExtractFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _guard = this.cx.clone().attach();
        this.future.poll(task)
    }
}

/// Client side: injects the current context (or an
/// [`opentelemetry::Context`] found in the request extensions) into the
/// request headers. Nothing else: no span, no metric; other headers are left
/// alone. With this crate's propagators (alone, from
/// [`from_env`](super::from_env) or [`CompositePropagator::w3c`](super::CompositePropagator::w3c)),
/// the headers a propagator writes replace all of its own the request had
/// (a `tracestate` or `x-b3-*` header of another trace is not left beside
/// the new ones), as the [`ClientLayer`](crate::ClientLayer)'s do.
#[derive(Clone, Debug)]
pub struct InjectLayer {
    propagator: Propagation,
}

impl Default for InjectLayer {
    fn default() -> Self {
        Self::new(DefaultPropagator::new())
    }
}

impl InjectLayer {
    /// Injects with `propagator`.
    pub fn new(propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        InjectLayer {
            propagator: Propagation::new(propagator),
        }
    }
}

impl<S> Layer<S> for InjectLayer {
    type Service = InjectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectService {
            inner,
            propagator: self.propagator.clone(),
        }
    }
}

/// The service made by [`InjectLayer`].
#[derive(Clone, Debug)]
pub struct InjectService<S> {
    inner: S,
    propagator: Propagation,
}

impl<S, B> Service<http::Request<B>> for InjectService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let cx = req.extensions().get::<Context>().cloned();
        let (headers, propagator) = (req.headers_mut(), &self.propagator);
        let now = std::time::Instant::now();
        match cx {
            Some(cx) => propagator.inject(&cx, headers, now),
            None => Context::map_current(|cx| propagator.inject(cx, headers, now)),
        }
        self.inner.call(req)
    }
}
