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

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter,
};
use opentelemetry::trace::{SpanContext, TraceContextExt};

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
    /// The same list as natives, when it was built from ours only.
    native: Option<Vec<Native>>,
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
            native: None,
        }
    }

    /// A composite of our own propagators, which the layers can run straight
    /// on the `HeaderMap`.
    fn from_natives(natives: Vec<Native>) -> Self {
        let mut composite = Self::new(natives.iter().map(Native::boxed).collect());
        composite.native = Some(natives);
        composite
    }

    /// W3C Trace Context followed by W3C Baggage: what the layers use when
    /// nothing else is configured.
    pub fn w3c() -> Self {
        Self::from_natives(vec![Native::TraceContext, Native::Baggage])
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
/// honoured. The server and client layers look less often: each thread at
/// most once a second while no global is installed (the global sits behind
/// a process-wide lock that every call would otherwise take), so a global
/// installed while calls are being served is in use within a second.
/// Installed as the global itself, it acts as W3C Trace Context + Baggage.
#[derive(Debug)]
pub struct DefaultPropagator {
    fallback: CompositePropagator,
    /// The installed global's fields, copied the first time they are asked
    /// for (they cannot be borrowed past the global's lock).
    global_fields: std::sync::OnceLock<Vec<String>>,
    /// Whether this very value was found installed as the global: from then
    /// on it acts as its fallback without looking at the global (a global
    /// stays installed until it is replaced and dropped).
    is_global: std::sync::atomic::AtomicBool,
}

impl Default for DefaultPropagator {
    fn default() -> Self {
        DefaultPropagator {
            fallback: CompositePropagator::w3c(),
            global_fields: std::sync::OnceLock::new(),
            is_global: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl DefaultPropagator {
    /// Creates the default propagator.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl Fn(&dyn TextMapPropagator) -> T) -> T {
        if self.is_global.load(std::sync::atomic::Ordering::Relaxed) {
            return f(&self.fallback);
        }
        with_global(|global| {
            if self.is(global) {
                f(&self.fallback)
            } else if global.fields().next().is_some() {
                f(global)
            } else {
                f(&self.fallback)
            }
        })
        // A default installed as the global, called by one of ours.
        .unwrap_or_else(|| f(&self.fallback))
    }

    /// Whether `global` is this very value (and remembers it if so).
    fn is(&self, global: &dyn TextMapPropagator) -> bool {
        let same = std::ptr::addr_eq(global as *const dyn TextMapPropagator, self as *const Self);
        if same {
            self.is_global
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        same
    }
}

thread_local! {
    /// Set while this thread runs the global propagator on behalf of ours.
    static IN_GLOBAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the global propagator; `None` when this thread is already
/// inside it for us. A [`DefaultPropagator`] installed as the global would
/// otherwise consult itself without end (and take the global's lock again
/// while holding it); inside, it acts as its fallback. Called through the
/// global by other code, it finds itself there once (taking the lock a
/// second time, that once) and then stops looking.
fn with_global<T>(mut f: impl FnMut(&dyn TextMapPropagator) -> T) -> Option<T> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_GLOBAL.set(false);
        }
    }
    if IN_GLOBAL.replace(true) {
        return None;
    }
    let _leave = Leave;
    Some(opentelemetry::global::get_text_map_propagator(&mut f))
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
        if self.is_global.load(std::sync::atomic::Ordering::Relaxed) {
            return self.fallback.fields();
        }
        let global: Vec<String> = with_global(|g| {
            if self.is(g) {
                Vec::new()
            } else {
                g.fields().map(str::to_owned).collect()
            }
        })
        .unwrap_or_default();
        if global.is_empty() {
            return self.fallback.fields();
        }
        // A global installed once at startup (the usual case) is reported
        // exactly; one replaced later keeps the first one's field list.
        FieldIter::new(self.global_fields.get_or_init(|| global))
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
    let natives = names
        .iter()
        .filter_map(|name| match name.as_str() {
            "tracecontext" => Some(Native::TraceContext),
            "baggage" => Some(Native::Baggage),
            "b3" => Some(Native::B3(B3::single())),
            "b3multi" => Some(Native::B3(B3::multi())),
            _ => None,
        })
        .collect();
    CompositePropagator::from_natives(natives)
}

/// One of our propagators, run by the layers directly on an `http::HeaderMap`
/// (no `Extractor` allocations).
#[derive(Debug, Clone)]
pub(crate) enum Native {
    TraceContext,
    Baggage,
    B3(B3),
}

impl Native {
    fn boxed(&self) -> Box<dyn TextMapPropagator + Send + Sync> {
        match self {
            Native::TraceContext => Box::new(TraceContext::new()),
            Native::Baggage => Box::new(Baggage::new()),
            Native::B3(b3) => Box::new(b3.clone()),
        }
    }

    fn extract(&self, cx: &Context, headers: &http::HeaderMap) -> Context {
        match self {
            Native::TraceContext => trace_context::extract_from(cx, &headers),
            Native::Baggage => baggage::extract_from(cx, &headers),
            Native::B3(b3) => b3.extract_with_context(cx, &HeaderExtractor(headers)),
        }
    }
}

/// What the default propagator runs when the application installed none.
const DEFAULT_NATIVES: &[Native] = &[Native::TraceContext, Native::Baggage];

/// How long a thread trusts what it last saw of the global propagator.
const GLOBAL_RECHECK: Duration = Duration::from_secs(1);

thread_local! {
    static GLOBAL_SEEN: Cell<Option<(Instant, bool)>> = const { Cell::new(None) };
}

/// Whether the application installed a global propagator, for the layers.
///
/// The global sits behind a process-wide lock: asking on every call would
/// make every core write the lock's cache line. A thread asks again once
/// [`GLOBAL_RECHECK`] has passed (by the call's clock reading `now`) since
/// it last asked, so a propagator installed while calls are being served
/// is in use within that time. Once one is installed, each call runs it.
fn global_installed(now: Instant) -> bool {
    GLOBAL_SEEN.with(|seen| {
        if let Some((at, installed)) = seen.get()
            && now
                .checked_duration_since(at)
                .is_none_or(|d| d < GLOBAL_RECHECK)
        {
            return installed;
        }
        // Inside the global already (a propagator of ours installed as it):
        // not installed, as far as this call can tell.
        let installed = with_global(|g| g.fields().next().is_some()).unwrap_or(false);
        seen.set(Some((now, installed)));
        installed
    })
}

fn extract_natives(natives: &[Native], cx: &Context, headers: &http::HeaderMap) -> Context {
    let Some((first, rest)) = natives.split_first() else {
        return cx.clone();
    };
    let mut cx = first.extract(cx, headers);
    for n in rest {
        cx = n.extract(&cx, headers);
    }
    cx
}

/// Header values as the propagators' parsers read them: every value of a
/// name, in order, as its bytes. A parser that reads text takes them through
/// [`text`]; `traceparent`'s reads the bytes (its grammar is ASCII, so any
/// other byte fails it) without checking every byte twice.
pub(crate) trait Source<'a> {
    /// Calls `f` with each value of `name`.
    fn each(&self, name: &http::HeaderName, f: &mut dyn FnMut(&'a [u8]));
}

/// A header value as text: itself when every byte is visible ASCII (or a
/// tab), else U+FFFD, which no propagation grammar accepts, so that the value
/// still counts without being decoded.
pub(crate) fn text(value: &[u8]) -> &str {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        // ASCII is UTF-8.
        std::str::from_utf8(value).unwrap_or("\u{FFFD}")
    } else {
        "\u{FFFD}"
    }
}

impl<'a> Source<'a> for &'a dyn Extractor {
    fn each(&self, name: &http::HeaderName, f: &mut dyn FnMut(&'a [u8])) {
        for v in self.get_all(name.as_str()).unwrap_or_default() {
            f(v.as_bytes());
        }
    }
}

impl<'a> Source<'a> for &'a http::HeaderMap {
    fn each(&self, name: &http::HeaderName, f: &mut dyn FnMut(&'a [u8])) {
        crate::wire::headers::each(self, name, |v| f(v.as_bytes()));
    }
}

/// The propagator a layer runs, with a direct path for ours.
#[derive(Clone)]
pub(crate) struct Propagation {
    shared: SharedPropagator,
    path: Path,
}

#[derive(Clone)]
enum Path {
    Native(Vec<Native>),
    Default,
    Foreign,
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Propagation")
            .field("propagator", &self.shared)
            .finish()
    }
}

impl Propagation {
    /// Wraps a propagator, recognising ours.
    pub(crate) fn new<P: TextMapPropagator + Send + Sync + 'static>(propagator: P) -> Self {
        let any: &dyn std::any::Any = &propagator;
        let path = if any.is::<TraceContext>() {
            Path::Native(vec![Native::TraceContext])
        } else if any.is::<Baggage>() {
            Path::Native(vec![Native::Baggage])
        } else if let Some(b3) = any.downcast_ref::<B3>() {
            Path::Native(vec![Native::B3(b3.clone())])
        } else if let Some(c) = any.downcast_ref::<CompositePropagator>() {
            c.native.clone().map_or(Path::Foreign, Path::Native)
        } else if any.is::<DefaultPropagator>() {
            Path::Default
        } else {
            Path::Foreign
        };
        Propagation {
            shared: Arc::new(propagator),
            path,
        }
    }

    /// The native propagators this call runs, if it runs ours: the
    /// configured ones, or the default's when no global is installed.
    fn natives(&self, now: Instant) -> Option<&[Native]> {
        match &self.path {
            Path::Native(natives) => Some(natives),
            Path::Default if !global_installed(now) => Some(DEFAULT_NATIVES),
            Path::Default | Path::Foreign => None,
        }
    }

    /// Extracts the caller's context from request headers, on top of `cx`;
    /// `now` is the call's start.
    pub(crate) fn extract(&self, cx: &Context, headers: &http::HeaderMap, now: Instant) -> Context {
        match self.natives(now) {
            Some(natives) => extract_natives(natives, cx, headers),
            // The default's `with` re-checks the global under its lock.
            None => self
                .shared
                .extract_with_context(cx, &HeaderExtractor(headers)),
        }
    }

    /// Injects `cx` into request (or response) headers; `now` is the call's
    /// start.
    pub(crate) fn inject(&self, cx: &Context, headers: &mut http::HeaderMap, now: Instant) {
        match self.natives(now) {
            Some(natives) => inject_natives(natives, cx, cx.span().span_context(), headers),
            None => self.shared.inject_context(cx, &mut HeaderInjector(headers)),
        }
    }

    /// Injects `sc` as the span to continue, with the rest (baggage, verbatim
    /// trace state, B3 debug) from `cx`: a client's span is held apart from
    /// any context. A custom propagator sees `sc` as the context's span
    /// context only, not the span itself (which it has no use for).
    pub(crate) fn inject_span(
        &self,
        cx: &Context,
        sc: &SpanContext,
        headers: &mut http::HeaderMap,
        now: Instant,
    ) {
        match self.natives(now) {
            Some(natives) => inject_natives(natives, cx, sc, headers),
            None => {
                let cx = cx.with_remote_span_context(sc.clone());
                self.shared
                    .inject_context(&cx, &mut HeaderInjector(headers))
            }
        }
    }
}

/// Injects `sc` (and what `cx` carries) with our propagators, straight into
/// the `HeaderMap`.
fn inject_natives(
    natives: &[Native],
    cx: &Context,
    sc: &SpanContext,
    headers: &mut http::HeaderMap,
) {
    for n in natives {
        match n {
            Native::TraceContext => trace_context::inject_into(cx, sc, headers),
            Native::Baggage => baggage::inject_to(cx, &mut HeaderInjector(headers)),
            Native::B3(b3) => b3.inject_into(cx, sc, headers),
        }
    }
}
