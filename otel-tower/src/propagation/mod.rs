//! Context propagation: W3C Trace Context, W3C Baggage and B3, the default
//! rule, `OTEL_PROPAGATORS`, and the propagation-only layers.
//!
//! Every propagator here implements
//! [`opentelemetry::propagation::TextMapPropagator`], so it can be handed to
//! [`Instrumentation::with_propagator`](crate::Instrumentation) or installed
//! globally with [`opentelemetry::global::set_text_map_propagator`].
//!
//! ```
//! use opentelemetry::propagation::TextMapPropagator;
//! use otel_tower::propagation::{B3, Baggage, CompositePropagator, TraceContext};
//!
//! // Accept both W3C and B3 from callers; W3C wins when both are valid.
//! let propagator = CompositePropagator::new(vec![
//!     Box::new(B3::single()),
//!     Box::new(TraceContext::new()),
//!     Box::new(Baggage::new()),
//! ]);
//! let fields: Vec<&str> = propagator.fields().collect();
//! assert_eq!(fields, ["b3", "traceparent", "tracestate", "baggage"]);
//! ```

mod b3;
mod baggage;
mod carrier;
mod hex;
mod layers;
mod trace_context;

use std::fmt;
use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter,
};

pub use b3::{B3, B3Decision};
pub use baggage::{Baggage, MAX_BYTES as BAGGAGE_MAX_BYTES, MAX_MEMBERS as BAGGAGE_MAX_MEMBERS};
pub use carrier::{HeaderExtractor, HeaderInjector};
pub use layers::{ExtractFuture, ExtractLayer, ExtractService, InjectLayer, InjectService};
pub use trace_context::TraceContext;

pub(crate) use baggage::percent_decode;

/// A shareable, type-erased propagator, as the layers hold it.
pub type SharedPropagator = Arc<dyn TextMapPropagator + Send + Sync>;

/// Runs several propagators as one.
///
/// Extraction runs them in order, each on the result of the previous one, so
/// a later propagator that finds a valid context replaces what an earlier one
/// found, while one that finds nothing leaves it alone. Injection runs all of
/// them. [`fields`](TextMapPropagator::fields) is the de-duplicated union.
pub struct CompositePropagator {
    propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>>,
    fields: Vec<String>,
}

impl fmt::Debug for CompositePropagator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositePropagator")
            .field("fields", &self.fields)
            .finish()
    }
}

impl CompositePropagator {
    /// Combines `propagators`, run in the given order.
    pub fn new(propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>>) -> Self {
        let mut fields: Vec<String> = Vec::new();
        for p in &propagators {
            for f in p.fields() {
                if !fields.iter().any(|known| known == f) {
                    fields.push(f.to_string());
                }
            }
        }
        CompositePropagator {
            propagators,
            fields,
        }
    }

    /// W3C Trace Context followed by W3C Baggage: what the layers use when
    /// nothing else is configured.
    pub fn w3c() -> Self {
        Self::new(vec![
            Box::new(TraceContext::new()),
            Box::new(Baggage::new()),
        ])
    }
}

impl TextMapPropagator for CompositePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        for p in &self.propagators {
            p.inject_context(cx, injector);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let mut cx = cx.clone();
        for p in &self.propagators {
            cx = p.extract_with_context(&cx, extractor);
        }
        cx
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// The propagator the layers use when none is given: the global propagator
/// if the application installed one, else W3C Trace Context + Baggage.
///
/// opentelemetry's global default is a no-op with no fields; this detects it
/// on each use, so a global installed after the layers were built is still
/// honoured.
#[derive(Debug)]
pub struct DefaultPropagator {
    fallback: CompositePropagator,
}

impl Default for DefaultPropagator {
    fn default() -> Self {
        DefaultPropagator {
            fallback: CompositePropagator::w3c(),
        }
    }
}

impl DefaultPropagator {
    /// Creates the default propagator.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl Fn(&dyn TextMapPropagator) -> T) -> T {
        opentelemetry::global::get_text_map_propagator(|global| {
            if global.fields().next().is_some() {
                f(global)
            } else {
                f(&self.fallback)
            }
        })
    }
}

impl TextMapPropagator for DefaultPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        // `get_text_map_propagator` takes `FnMut`; the injector is reborrowed
        // through a cell so the closure stays `Fn`.
        let injector = std::cell::RefCell::new(injector);
        self.with(|p| p.inject_context(cx, *injector.borrow_mut()));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        self.with(|p| p.extract_with_context(cx, extractor))
    }

    fn fields(&self) -> FieldIter<'_> {
        // The global's fields cannot be borrowed past the lock; report the
        // fallback's, which is what is used unless a global is installed.
        self.fallback.fields()
    }
}

/// Builds a propagator from `OTEL_PROPAGATORS`.
///
/// The variable is a comma-separated, case-insensitive list of
/// `tracecontext`, `baggage`, `b3` (single header), `b3multi` (multi header)
/// and `none`; duplicates are ignored, and so are unknown names (`jaeger`,
/// `xray`, typos), with one warning through `tracing`. Unset or empty means
/// `tracecontext,baggage`; `none` alone (or only unknown names) means no
/// propagation. Extraction runs in the listed order and a later valid result
/// wins: with `b3,tracecontext` a request carrying both is continued from its
/// `traceparent`.
///
/// The layers never read the variable on their own: pass the result to
/// [`Instrumentation::with_propagator`](crate::Instrumentation::with_propagator).
pub fn from_env() -> CompositePropagator {
    from_env_value(std::env::var("OTEL_PROPAGATORS").ok().as_deref())
}

/// [`from_env`] for a given value of `OTEL_PROPAGATORS` (`None`: unset).
pub fn from_env_value(value: Option<&str>) -> CompositePropagator {
    let value = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("tracecontext,baggage");
    let mut names: Vec<String> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "tracecontext" | "baggage" | "b3" | "b3multi" | "none" => {
                if !names.contains(&lower) {
                    names.push(lower);
                }
            }
            _ => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(
            ignored = ?unknown,
            "OTEL_PROPAGATORS: unsupported propagators ignored (supported: tracecontext, baggage, b3, b3multi, none)"
        );
    }
    let propagators = names
        .iter()
        .filter_map(|name| -> Option<Box<dyn TextMapPropagator + Send + Sync>> {
            match name.as_str() {
                "tracecontext" => Some(Box::new(TraceContext::new())),
                "baggage" => Some(Box::new(Baggage::new())),
                "b3" => Some(Box::new(B3::single())),
                "b3multi" => Some(Box::new(B3::multi())),
                _ => None,
            }
        })
        .collect();
    CompositePropagator::new(propagators)
}
