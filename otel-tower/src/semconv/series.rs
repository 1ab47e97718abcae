//! The Stable duration series of a method's successful calls, resolved once
//! per configuration instead of on every call.
//!
//! A histogram record with attributes builds them and then has the SDK hash
//! them to find the series, on every call; most calls are successful calls of
//! a few methods, whose attributes never change. A [`Series`] keeps them
//! built, and with the `experimental_metrics_bound_instruments` feature holds
//! the histogram bound to them, so a record goes straight to the series'
//! aggregator.

use std::sync::OnceLock;

use opentelemetry::metrics::Histogram;
use opentelemetry::{KeyValue, StringValue};

use crate::wire::RpcSystem;

/// One attribute set of a histogram: recorded through `record` with the
/// histogram it was made from.
pub(crate) struct Series {
    #[cfg(not(feature = "experimental_metrics_bound_instruments"))]
    attrs: Box<[KeyValue]>,
    #[cfg(feature = "experimental_metrics_bound_instruments")]
    bound: opentelemetry::metrics::BoundHistogram<f64>,
}

#[cfg(not(feature = "experimental_metrics_bound_instruments"))]
impl Series {
    fn new(_histogram: &Histogram<f64>, attrs: Vec<KeyValue>) -> Self {
        Series {
            attrs: attrs.into_boxed_slice(),
        }
    }

    pub fn record(&self, histogram: &Histogram<f64>, value: f64) {
        histogram.record(value, &self.attrs);
    }
}

#[cfg(feature = "experimental_metrics_bound_instruments")]
impl Series {
    fn new(histogram: &Histogram<f64>, attrs: Vec<KeyValue>) -> Self {
        Series {
            bound: histogram.bind(&attrs),
        }
    }

    pub fn record(&self, _histogram: &Histogram<f64>, value: f64) {
        self.bound.record(value);
    }
}

/// Where a client called a method: the attributes a client's series adds.
pub(crate) struct Target<'a> {
    pub system: RpcSystem,
    pub server_address: Option<&'a StringValue>,
    pub server_port: Option<u16>,
}

/// A [`Target`] kept by a series.
struct OwnedTarget {
    system: RpcSystem,
    server_address: Option<StringValue>,
    server_port: Option<u16>,
}

impl OwnedTarget {
    fn of(target: &Target<'_>) -> Self {
        OwnedTarget {
            system: target.system,
            server_address: target.server_address.cloned(),
            server_port: target.server_port,
        }
    }

    fn is(&self, target: &Target<'_>) -> bool {
        self.system == target.system
            && self.server_address.as_ref() == target.server_address
            && self.server_port == target.server_port
    }
}

/// The series of one method's successful calls, for one configuration.
#[derive(Default)]
pub(crate) struct OkSeries {
    /// Server: one per RPC system (gRPC, then Connect).
    server: [OnceLock<Series>; 2],
    /// Client: the first target the method was called on. A client usually
    /// calls a method on one authority (its channel's); calls to others
    /// build their attributes each time.
    client: OnceLock<(OwnedTarget, Series)>,
}

impl OkSeries {
    /// The server's series for `system`, made from `attrs` the first time.
    pub fn server(
        &self,
        system: RpcSystem,
        histogram: &Histogram<f64>,
        attrs: impl FnOnce() -> Vec<KeyValue>,
    ) -> &Series {
        let i = match system {
            RpcSystem::Grpc => 0,
            RpcSystem::ConnectRpc => 1,
        };
        self.server[i].get_or_init(|| Series::new(histogram, attrs()))
    }

    /// The client's series for `target`, made from `attrs` if no target has
    /// one yet; `None` when the method's series is another target's.
    pub fn client(
        &self,
        target: &Target<'_>,
        histogram: &Histogram<f64>,
        attrs: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<&Series> {
        let (first, series) = self
            .client
            .get_or_init(|| (OwnedTarget::of(target), Series::new(histogram, attrs())));
        first.is(target).then_some(series)
    }
}
