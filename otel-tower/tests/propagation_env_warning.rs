//! `OTEL_PROPAGATORS`: unknown names give exactly one `tracing` warning.
//!
//! Alone in its test binary on purpose. `tracing` caches, per call site,
//! whether any subscriber is interested, and with one scoped subscriber
//! alive it decides from the default of whichever thread registers the call
//! site first: a parallel test that reached the warning on a thread without
//! a subscriber could cache "never" while this test's subscriber was
//! installed, and the warning would go uncounted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use otel_tower::propagation::from_env_value;

/// A `tracing` subscriber that counts WARN events, installed per thread.
struct WarnCounter(Arc<AtomicUsize>);

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Warnings `from_env_value(Some(value))` emits.
fn warnings(value: &str) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::with_default(WarnCounter(count.clone()), || {
        let _ = from_env_value(Some(value));
    });
    count.load(Ordering::SeqCst)
}

#[test]
fn from_env_value_warns_once_for_unknown_names() {
    assert_eq!(warnings("jaeger,xray,ottrace,tracecontxt,b3"), 1);
    assert_eq!(warnings("jaeger"), 1);
    assert_eq!(warnings("tracecontext,baggage,b3,b3multi,none"), 0);
    assert_eq!(warnings("B3,b3"), 0);
}
