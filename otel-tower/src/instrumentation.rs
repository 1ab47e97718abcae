//! `Instrumentation`: the options, resolved once into a shared `Config`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::HeaderName;
use opentelemetry::metrics::MeterProvider;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider;
use opentelemetry::{InstrumentationScope, Key, KeyValue, StringValue};

use crate::intern::InternTable;
use crate::propagation::{DefaultPropagator, Propagation};
use crate::request::RpcRequest;
use crate::semconv::series::OkSeries;
use crate::semconv::{MethodNames, MethodRef, Semconv, Side, SideInstruments, keys};
use crate::wire::{Procedure, RpcSystem};
use crate::{ClientLayer, ServerLayer};

type Predicate = Arc<dyn Fn(&RpcRequest<'_>) -> bool + Send + Sync>;
type AttributePredicate = Arc<dyn Fn(&RpcRequest<'_>, &KeyValue) -> bool + Send + Sync>;
/// Makes the tracer of a provider given at configuration time, keeping its
/// concrete type (see [`StartSpan`]).
type TracerFactory = Arc<dyn Fn(InstrumentationScope) -> Arc<dyn StartSpan> + Send + Sync>;
type PeerAddrFn = Arc<dyn Fn(&http::Extensions) -> Option<SocketAddr> + Send + Sync>;

/// How many distinct methods a configuration holds as known to exist (their
/// names final when a call begins): its known methods, or those that have
/// succeeded through it. Only success admits a method, so scanners probing
/// random paths cannot fill it.
const METHOD_CACHE_CAP: usize = 1024;

/// Longest path admitted as a method known to exist. Real procedure paths
/// are far shorter; a longer one (a catch-all route answering any path) is
/// parsed per call instead, so that no path can make the process keep
/// kilobytes of names for good.
const MAX_ADMITTED_PATH: usize = 512;

/// How many distinct methods the process keeps pre-built names for. The
/// names are leaked (`&'static`, so that a call clones them without touching
/// a reference count, and spans exported after a layer is gone can still
/// point at them), so they are kept once per process and shared by every
/// configuration: building layers over and over (`otel_tower::client()` per
/// request, say) reuses them instead of leaking a copy per configuration.
const METHOD_NAMES_CAP: usize = 4096;

/// The process's interned method names, by path. A method's names depend on
/// its path alone: an interned method is `_OTHER` only when its path does
/// not parse (a configuration with known methods never looks here for
/// another method).
static METHOD_NAMES: std::sync::LazyLock<InternTable<MethodNames>> =
    std::sync::LazyLock::new(|| InternTable::new(METHOD_NAMES_CAP));

#[derive(Clone)]
struct Options {
    tracer_provider: Option<TracerFactory>,
    meter_provider: Option<Arc<dyn MeterProvider + Send + Sync>>,
    propagator: Option<Propagation>,
    filter: Option<Predicate>,
    attribute_filter: Option<AttributePredicate>,
    tracing: bool,
    metrics: bool,
    server_peer_attributes: bool,
    public_endpoint: Option<Predicate>,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    trace_events: Option<bool>,
    propagate_response_header: bool,
    body_context: bool,
    rpc_system: Option<RpcSystem>,
    semconv: Option<Semconv>,
    known_methods: Option<Vec<String>>,
    peer_addr_fn: Option<PeerAddrFn>,
    scope_name: &'static str,
    scope_version: &'static str,
}

/// One configuration for a service's inbound and outbound calls.
///
/// Build it once, then make a [`ServerLayer`] and a [`ClientLayer`] from it.
/// It is cheap to clone. Options are resolved (providers turned into a
/// tracer and instruments, `OTEL_SEMCONV_STABILITY_OPT_IN` read) the first
/// time a layer is made, never per request.
///
/// ```
/// use opentelemetry_sdk::trace::SdkTracerProvider;
/// use opentelemetry_sdk::metrics::SdkMeterProvider;
///
/// let otel = otel_tower::Instrumentation::new()
///     .with_tracer_provider(SdkTracerProvider::builder().build())
///     .with_meter_provider(SdkMeterProvider::builder().build())
///     .without_server_peer_attributes();
/// let server = otel.server_layer();
/// let client = otel.client_layer();
/// # let _ = (server, client);
/// ```
#[derive(Clone)]
pub struct Instrumentation {
    options: Arc<Options>,
    built: Arc<OnceLock<Arc<Config>>>,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        f.debug_struct("Instrumentation")
            .field("scope", &o.scope_name)
            .field("tracing", &o.tracing)
            .field("metrics", &o.metrics)
            .field("semconv", &o.semconv)
            .field("rpc_system", &o.rpc_system)
            .field("server_peer_attributes", &o.server_peer_attributes)
            .finish_non_exhaustive()
    }
}

impl Default for Instrumentation {
    fn default() -> Self {
        Self::new()
    }
}

impl Instrumentation {
    /// Every default: global providers, the default propagator (see
    /// [`propagation`](crate::propagation)), Stable conventions unless
    /// `OTEL_SEMCONV_STABILITY_OPT_IN` says otherwise, trusted callers.
    pub fn new() -> Self {
        Instrumentation {
            options: Arc::new(Options {
                tracer_provider: None,
                meter_provider: None,
                propagator: None,
                filter: None,
                attribute_filter: None,
                tracing: true,
                metrics: true,
                server_peer_attributes: true,
                public_endpoint: None,
                request_headers: Vec::new(),
                response_headers: Vec::new(),
                trace_events: None,
                propagate_response_header: false,
                body_context: true,
                rpc_system: None,
                semconv: None,
                known_methods: None,
                peer_addr_fn: None,
                scope_name: "otel-tower",
                scope_version: env!("CARGO_PKG_VERSION"),
            }),
            built: Arc::new(OnceLock::new()),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Options)) -> Self {
        f(Arc::make_mut(&mut self.options));
        self.built = Arc::new(OnceLock::new());
        self
    }

    /// Creates spans with this provider (default: the global provider at the
    /// time the first layer is made).
    pub fn with_tracer_provider<P>(self, provider: P) -> Self
    where
        P: TracerProvider + Send + Sync + 'static,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        let factory: TracerFactory = Arc::new(move |scope| {
            Arc::new(ConcreteTracer(provider.tracer_with_scope(scope))) as Arc<dyn StartSpan>
        });
        self.edit(|o| o.tracer_provider = Some(factory))
    }

    /// Records metrics with this provider (default: the global provider).
    pub fn with_meter_provider<P>(self, provider: P) -> Self
    where
        P: MeterProvider + Send + Sync + 'static,
    {
        self.edit(|o| o.meter_provider = Some(Arc::new(provider)))
    }

    /// Extracts and injects context with this propagator (default: the
    /// global propagator if one is installed, else W3C Trace Context +
    /// Baggage).
    pub fn with_propagator<P>(self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.edit(|o| o.propagator = Some(Propagation::new(propagator)))
    }

    /// Instruments only the calls for which `filter` returns true. Calls it
    /// rejects get no span and no metrics, but the caller's context is still
    /// propagated, so a filtered hop never splits a trace.
    pub fn with_filter<F>(self, filter: F) -> Self
    where
        F: Fn(&RpcRequest<'_>) -> bool + Send + Sync + 'static,
    {
        self.edit(|o| o.filter = Some(Arc::new(filter)))
    }

    /// Drops every span and metric attribute for which `filter` returns false.
    pub fn with_attribute_filter<F>(self, filter: F) -> Self
    where
        F: Fn(&RpcRequest<'_>, &KeyValue) -> bool + Send + Sync + 'static,
    {
        self.edit(|o| o.attribute_filter = Some(Arc::new(filter)))
    }

    /// No spans at all; tracing then costs nothing per call (context is
    /// still propagated).
    pub fn without_tracing(self) -> Self {
        self.edit(|o| o.tracing = false)
    }

    /// No metrics at all.
    pub fn without_metrics(self) -> Self {
        self.edit(|o| o.metrics = false)
    }

    /// Server: keeps the call's context current while the inner service
    /// runs and its future is polled, but not while the response body is
    /// polled.
    ///
    /// By default the context is also current during every poll of the
    /// response body, so spans that a streaming handler creates while
    /// producing messages are children of the server span. That costs about
    /// 25-30 ns per response frame (a clone of the context and a thread-local
    /// push and pop). Services whose response bodies run no instrumented
    /// code (unary handlers, or streams that create no spans) can turn it
    /// off; the call is still observed to its end either way.
    pub fn without_body_context(self) -> Self {
        self.edit(|o| o.body_context = false)
    }

    /// Omits the client's socket address (`network.peer.*`, and in Legacy
    /// `net.peer.*`) from server spans and server metrics, to keep metric
    /// cardinality and span size down. Client-side attributes are untouched.
    pub fn without_server_peer_attributes(self) -> Self {
        self.edit(|o| o.server_peer_attributes = false)
    }

    /// Treats every caller as untrusted: the server span starts a new trace
    /// with a link to the caller's span instead of being its child
    /// (otelconnect-go's default). Baggage still reaches the handler. With
    /// no server span (tracing off), the caller's span is left out of the
    /// handler's context all the same. Calls that
    /// [`with_filter`](Self::with_filter) leaves out keep the caller's
    /// context, as the filter promises.
    pub fn with_public_endpoint(self) -> Self {
        self.edit(|o| o.public_endpoint = Some(Arc::new(|_| true)))
    }

    /// Like [`with_public_endpoint`](Self::with_public_endpoint), for the
    /// calls where `f` returns true.
    pub fn with_public_endpoint_fn<F>(self, f: F) -> Self
    where
        F: Fn(&RpcRequest<'_>) -> bool + Send + Sync + 'static,
    {
        self.edit(|o| o.public_endpoint = Some(Arc::new(f)))
    }

    /// Records these request headers as span attributes
    /// (`rpc.request.metadata.<name>`, all values). Spans only, never metrics.
    ///
    /// # Panics
    ///
    /// On a name that is not a valid HTTP header name, here at configuration
    /// time.
    pub fn with_trace_request_header<I, N>(self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let names = header_names(names);
        self.edit(|o| add_unique(&mut o.request_headers, names))
    }

    /// Records these response headers and trailers as span attributes
    /// (`rpc.response.metadata.<name>`). Spans only, never metrics.
    ///
    /// # Panics
    ///
    /// On a name that is not a valid HTTP header name.
    pub fn with_trace_response_header<I, N>(self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let names = header_names(names);
        self.edit(|o| add_unique(&mut o.response_headers, names))
    }

    /// Records message events on spans (default: off in Stable mode, on in
    /// Legacy and Both).
    pub fn with_trace_events(self) -> Self {
        self.edit(|o| o.trace_events = Some(true))
    }

    /// Records no message events.
    pub fn without_trace_events(self) -> Self {
        self.edit(|o| o.trace_events = Some(false))
    }

    /// The server writes its span's context into the response headers (with
    /// the configured propagator), so a caller can link to it.
    pub fn with_propagate_response_header(self) -> Self {
        self.edit(|o| o.propagate_response_header = true)
    }

    /// Reports every call under one convention, whatever its wire protocol.
    pub fn with_rpc_system(self, system: RpcSystem) -> Self {
        self.edit(|o| o.rpc_system = Some(system))
    }

    /// Chooses the semantic conventions, overriding
    /// `OTEL_SEMCONV_STABILITY_OPT_IN`.
    pub fn with_semconv(self, semconv: Semconv) -> Self {
        self.edit(|o| o.semconv = Some(semconv))
    }

    /// The methods (`package.Service/Method`) this service knows; any other
    /// method is reported as `_OTHER`. The method is then decided when the
    /// call starts, so `rpc.method` is among the attributes samplers see
    /// (without this option, a method that has not yet succeeded through
    /// the layer gets it when the call ends, since an UNIMPLEMENTED answer
    /// makes it `_OTHER`).
    ///
    /// A leading `/` is ignored, so connectrpc's procedure paths
    /// (`/package.Service/Method`) can be given as they are.
    ///
    /// # Panics
    ///
    /// On a name that is not `<service>/<method>` with both parts non-empty
    /// (it could never match a call), here at configuration time.
    pub fn with_known_methods<I, M>(self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        let methods: Vec<String> = methods.into_iter().map(known_method).collect();
        self.edit(|o| o.known_methods = Some(methods))
    }

    /// Where the server finds the client's socket address in the request
    /// extensions (default: a [`SocketAddr`] extension, if any).
    pub fn with_peer_addr_fn<F>(self, f: F) -> Self
    where
        F: Fn(&http::Extensions) -> Option<SocketAddr> + Send + Sync + 'static,
    {
        self.edit(|o| o.peer_addr_fn = Some(Arc::new(f)))
    }

    /// Sets the instrumentation scope name and version (the adapter crates
    /// use this to report `otel-tonic` / `otel-connect`).
    pub fn with_instrumentation_scope(self, name: &'static str, version: &'static str) -> Self {
        self.edit(|o| {
            o.scope_name = name;
            o.scope_version = version;
        })
    }

    /// The server layer.
    pub fn server_layer(&self) -> ServerLayer {
        ServerLayer::from_config(self.config())
    }

    /// The client layer.
    pub fn client_layer(&self) -> ClientLayer {
        ClientLayer::from_config(self.config())
    }

    /// The resolved configuration, built once.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.built
            .get_or_init(|| Arc::new(Config::build(&self.options)))
            .clone()
    }
}

fn header_names<I, N>(names: I) -> Vec<HeaderName>
where
    I: IntoIterator<Item = N>,
    N: AsRef<str>,
{
    names
        .into_iter()
        .map(|n| {
            let n = n.as_ref();
            HeaderName::from_bytes(n.as_bytes())
                .unwrap_or_else(|_| panic!("otel-tower: {n:?} is not a valid HTTP header name"))
        })
        .collect()
}

/// A `with_known_methods` name as calls report it: `service/method`.
fn known_method(name: impl Into<String>) -> String {
    let name = name.into();
    let bare = name.strip_prefix('/').unwrap_or(&name);
    match bare.split_once('/') {
        Some((service, method))
            if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            bare.to_string()
        }
        _ => panic!(
            "with_known_methods: {name:?} is not a `package.Service/Method` name, \
             so no call could match it"
        ),
    }
}

/// Adds the names not in `list` yet: a header listed twice (in any case)
/// is still one attribute.
fn add_unique(list: &mut Vec<HeaderName>, names: Vec<HeaderName>) {
    for name in names {
        if !list.contains(&name) {
            list.push(name);
        }
    }
}

/// A header captured as a span attribute, with its key in every convention.
pub(crate) struct CapturedHeader {
    pub name: HeaderName,
    pub stable: Key,
    pub legacy_grpc: Key,
    pub legacy_grpc_web: Key,
    pub legacy_connect: Key,
}

impl CapturedHeader {
    fn new(name: HeaderName, direction: &str) -> Self {
        let lower = name.as_str();
        let underscored = lower.replace('-', "_");
        let key = |s: String| Key::from(Arc::<str>::from(s));
        CapturedHeader {
            stable: key(format!("rpc.{direction}.metadata.{lower}")),
            legacy_grpc: key(format!("rpc.grpc.{direction}.metadata.{underscored}")),
            legacy_grpc_web: key(format!("rpc.grpc_web.{direction}.metadata.{underscored}")),
            legacy_connect: key(format!(
                "rpc.connect_rpc.{direction}.metadata.{underscored}"
            )),
            name,
        }
    }

    /// The Legacy key: otelconnect-go's `rpc.<rpc.system>.<direction>.metadata.<name>`.
    pub fn legacy_key(&self, system: RpcSystem, grpc_web: bool) -> &Key {
        match system {
            RpcSystem::Grpc if grpc_web => &self.legacy_grpc_web,
            RpcSystem::Grpc => &self.legacy_grpc,
            RpcSystem::ConnectRpc => &self.legacy_connect,
        }
    }
}

/// Most distinct authorities interned for `server.address`/`server.port`,
/// for the whole process (the host names are leaked, see
/// [`METHOD_NAMES_CAP`]).
const HOST_CACHE_CAP: usize = 1024;

/// The process's interned `server.address` and `server.port` values, by
/// authority (`host:port` as the request carries it), so an authority is
/// parsed once.
static HOSTS: std::sync::LazyLock<InternTable<(&'static str, Option<u16>)>> =
    std::sync::LazyLock::new(|| InternTable::new(HOST_CACHE_CAP));

/// Longest host reported: a DNS name has at most 253 bytes (an IPv6
/// literal with its brackets is shorter). A longer one is no host a client
/// could have addressed (`Host` has no length limit of its own).
const MAX_HOST_LEN: usize = 253;

/// Longest authority interned: such a host, a colon and a port.
const MAX_INTERNED_AUTHORITY_LEN: usize = MAX_HOST_LEN + 6;

/// `server.address` (brackets of an IPv6 literal removed) and `server.port`
/// of an authority; `None` for a host longer than any real one. Interned
/// hosts are leaked on purpose, at most `HOST_CACHE_CAP` of them per
/// process, so cloning the value per call never touches a shared reference
/// count. An authority carrying user information (`user:secret@host`) is
/// never interned: credentials are not kept for the life of the process.
pub(crate) fn host_port(authority: &http::uri::Authority) -> Option<(StringValue, Option<u16>)> {
    let key = authority.as_str();
    // Only what passed the checks below is ever inserted, so a hit needs
    // none of them (and a key too long to be there is not even hashed).
    let short = key.len() <= MAX_INTERNED_AUTHORITY_LEN;
    if short && let Some((host, port)) = HOSTS.get(key) {
        return Some((StringValue::from(*host), *port));
    }
    let host = authority.host();
    if host.len() > MAX_HOST_LEN {
        return None;
    }
    let internable = short && !key.contains('@');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = authority.port_u16();
    let interned = internable
        .then(|| {
            HOSTS.insert(key, || {
                (&*Box::leak(host.to_owned().into_boxed_str()), port)
            })
        })
        .flatten();
    Some(match interned {
        Some((host, port)) => (StringValue::from(*host), *port),
        None => (StringValue::from(Arc::<str>::from(host)), port),
    })
}

/// Interned method names: parsed once per distinct path.
pub(crate) struct MethodCache {
    /// The methods known to exist for this configuration, whose names are
    /// final when a call begins: its known methods, or (without them) the
    /// methods that have succeeded through it.
    table: InternTable<KnownMethod>,
    known: Option<HashSet<String>>,
}

/// A method known to exist for one configuration.
pub(crate) struct KnownMethod {
    /// Its names, shared by the whole process.
    pub names: &'static MethodNames,
    /// Its successful calls' Stable duration series, for this
    /// configuration's instruments.
    pub ok_series: OkSeries,
}

impl KnownMethod {
    fn new(names: &'static MethodNames) -> Self {
        KnownMethod {
            names,
            ok_series: OkSeries::default(),
        }
    }
}

impl MethodCache {
    fn new(known: Option<&[String]>) -> Self {
        let cache = MethodCache {
            table: InternTable::new(known.map_or(METHOD_CACHE_CAP, <[String]>::len)),
            known: known.map(|k| k.iter().cloned().collect()),
        };
        for m in known.unwrap_or_default() {
            let path = format!("/{m}");
            if let Some(names) = intern(&path) {
                cache.table.insert(&path, || KnownMethod::new(names));
            }
        }
        cache
    }

    /// The names for a request path, and where the method is in the table
    /// of methods known to exist, if it is there (its names are then final).
    pub fn lookup(&self, path: &str) -> (MethodRef, Option<usize>) {
        // A path longer than any admitted is not hashed (it can be 64 KiB);
        // a known method that long is still recognised by the parse below.
        let short = path.len() <= MAX_ADMITTED_PATH;
        if short && let Some((slot, known)) = self.table.get_with_slot(path) {
            return (MethodRef::Interned(known.names), Some(slot));
        }
        // Names another configuration interned: shared, not yet final here.
        if short
            && self.known.is_none()
            && let Some(names) = METHOD_NAMES.get(path)
        {
            return (MethodRef::Interned(names), None);
        }
        (
            MethodRef::Parsed(Box::new(parse(path, self.known.as_ref(), |s| {
                StringValue::from(Arc::<str>::from(s))
            }))),
            None,
        )
    }

    /// The known method in `slot`, as returned by [`MethodCache::lookup`].
    pub fn known(&self, slot: usize) -> Option<&KnownMethod> {
        self.table.at(slot)
    }

    /// Whether a method's name is decided up front (known-methods mode).
    pub fn has_known_methods(&self) -> bool {
        self.known.is_some()
    }

    /// Records that a method exists (it succeeded): later calls find its
    /// names interned and final. Known-methods configurations hold theirs
    /// from the start.
    pub fn admit(&self, path: &str) {
        // A full table admits nothing more: the process-wide names are not
        // interned for a method this configuration would not hold.
        if self.known.is_some()
            || path.len() > MAX_ADMITTED_PATH
            || self.table.is_full()
            || self.table.get(path).is_some()
        {
            return;
        }
        if let Some(names) = intern(path) {
            self.table.insert(path, || KnownMethod::new(names));
        }
    }
}

/// The process-wide names of `path`, interned now if they were not yet
/// (unless the table is full).
fn intern(path: &str) -> Option<&'static MethodNames> {
    METHOD_NAMES.insert(path, || {
        let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
        let mut names = parse(path, None, |s| StringValue::from(leak(s)));
        if let Some(p) = Procedure::parse(path) {
            names.span_name = Cow::Borrowed(leak(p.full));
        }
        names
    })
}

/// The names of `path`; `known`: the configuration's known methods, if set
/// (any other method is `_OTHER`, as is a path that does not parse).
fn parse(
    path: &str,
    known: Option<&HashSet<String>>,
    intern: impl Fn(&str) -> StringValue,
) -> MethodNames {
    match Procedure::parse(path) {
        Some(p) => {
            let full = intern(p.full);
            MethodNames {
                span_name: Cow::Owned(p.full.to_owned()),
                service: intern(p.service),
                short: intern(p.method),
                full,
                other: known.is_some_and(|k| !k.contains(p.full)),
            }
        }
        None => MethodNames {
            full: intern(path),
            service: StringValue::from(""),
            short: StringValue::from(""),
            span_name: Cow::Borrowed(keys::OTHER),
            other: true,
        },
    }
}

/// A span owned by its call alone, outside any context.
pub(crate) type OwnedSpan = Box<dyn opentelemetry::global::ObjectSafeSpan + Send + Sync>;

/// What a call's span starts with. Smaller than a `SpanBuilder` (most of
/// whose fields a call never sets), so that handing it to the tracer
/// behind [`StartSpan`] copies less; the builder is made at the SDK call.
pub(crate) struct SpanStart {
    pub name: std::borrow::Cow<'static, str>,
    pub kind: opentelemetry::trace::SpanKind,
    pub start_time: std::time::SystemTime,
    pub attributes: Vec<KeyValue>,
    pub links: Option<Vec<opentelemetry::trace::Link>>,
}

impl SpanStart {
    fn into_builder(self) -> opentelemetry::trace::SpanBuilder {
        opentelemetry::trace::SpanBuilder {
            name: self.name,
            span_kind: Some(self.kind),
            start_time: Some(self.start_time),
            attributes: Some(self.attributes),
            links: self.links,
            ..Default::default()
        }
    }
}

/// Starts a call's span.
///
/// A layer holds its tracer behind this trait rather than as a
/// `BoxedTracer`: the span is then created with its concrete type and boxed
/// once, by the [`Context`](opentelemetry::Context) or the call that owns it,
/// instead of once by the boxed tracer and again by its owner.
pub(crate) trait StartSpan: Send + Sync {
    /// Starts a span (sampled against `parent`) and returns `into` with
    /// that span as its active span, and whether the span records (known
    /// here without taking the context's lock on the span).
    fn start(
        &self,
        span: SpanStart,
        parent: &opentelemetry::Context,
        into: &opentelemetry::Context,
    ) -> (opentelemetry::Context, bool);

    /// Starts a span (sampled against `parent`) that no context will hold.
    fn start_owned(&self, span: SpanStart, parent: &opentelemetry::Context) -> OwnedSpan;
}

struct ConcreteTracer<T>(T);

impl<T> StartSpan for ConcreteTracer<T>
where
    T: opentelemetry::trace::Tracer + Send + Sync,
    T::Span: Send + Sync + 'static,
{
    fn start(
        &self,
        span: SpanStart,
        parent: &opentelemetry::Context,
        into: &opentelemetry::Context,
    ) -> (opentelemetry::Context, bool) {
        use opentelemetry::trace::{Span, TraceContextExt};
        let span = self.0.build_with_context(span.into_builder(), parent);
        if span.is_recording() {
            (into.with_span(span), true)
        } else {
            // A span that records nothing is only its span context: the
            // context carries that alone, without boxing the span behind a
            // lock. Children, propagation and `is_recording` see the same;
            // the span itself is dropped now rather than ended with the
            // call, which for a non-recording span (the SDK's, the API's
            // no-op) does nothing.
            (
                into.with_remote_span_context(span.span_context().clone()),
                false,
            )
        }
    }

    fn start_owned(&self, span: SpanStart, parent: &opentelemetry::Context) -> OwnedSpan {
        Box::new(self.0.build_with_context(span.into_builder(), parent))
    }
}

/// The resolved configuration every layer and call shares.
pub(crate) struct Config {
    pub tracer: Option<Arc<dyn StartSpan>>,
    pub server_instruments: Option<SideInstruments>,
    pub client_instruments: Option<SideInstruments>,
    pub propagator: Propagation,
    pub filter: Option<Predicate>,
    pub attribute_filter: Option<AttributePredicate>,
    pub server_peer_attributes: bool,
    pub public_endpoint: Option<Predicate>,
    pub request_headers: Vec<CapturedHeader>,
    pub response_headers: Vec<CapturedHeader>,
    pub trace_events: bool,
    pub propagate_response_header: bool,
    /// Whether the server's context is current while the body is polled.
    pub body_context: bool,
    pub rpc_system: Option<RpcSystem>,
    pub mode: Semconv,
    pub methods: MethodCache,
    pub peer_addr_fn: PeerAddrFn,
}

impl Config {
    fn build(o: &Options) -> Config {
        let mode = o.semconv.unwrap_or_else(|| {
            Semconv::from_opt_in(
                std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN")
                    .ok()
                    .as_deref(),
            )
        });
        let mut scope = InstrumentationScope::builder(o.scope_name).with_version(o.scope_version);
        if mode.stable() {
            scope = scope.with_schema_url(keys::SCHEMA_URL);
        }
        let scope = scope.build();
        let tracer = o.tracing.then(|| match &o.tracer_provider {
            Some(factory) => factory(scope.clone()),
            None => Arc::new(ConcreteTracer(
                opentelemetry::global::tracer_provider().tracer_with_scope(scope.clone()),
            )),
        });
        let (server_instruments, client_instruments) = if o.metrics {
            let meter = match &o.meter_provider {
                Some(p) => p.meter_with_scope(scope.clone()),
                None => opentelemetry::global::meter_with_scope(scope.clone()),
            };
            (
                Some(SideInstruments::new(&meter, mode, Side::Server)),
                Some(SideInstruments::new(&meter, mode, Side::Client)),
            )
        } else {
            (None, None)
        };
        Config {
            tracer,
            server_instruments,
            client_instruments,
            propagator: o
                .propagator
                .clone()
                .unwrap_or_else(|| Propagation::new(DefaultPropagator::new())),
            filter: o.filter.clone(),
            attribute_filter: o.attribute_filter.clone(),
            server_peer_attributes: o.server_peer_attributes,
            public_endpoint: o.public_endpoint.clone(),
            request_headers: o
                .request_headers
                .iter()
                .map(|n| CapturedHeader::new(n.clone(), "request"))
                .collect(),
            response_headers: o
                .response_headers
                .iter()
                .map(|n| CapturedHeader::new(n.clone(), "response"))
                .collect(),
            trace_events: o.trace_events.unwrap_or(mode.legacy()),
            propagate_response_header: o.propagate_response_header,
            body_context: o.body_context,
            rpc_system: o.rpc_system,
            mode,
            methods: MethodCache::new(o.known_methods.as_deref()),
            peer_addr_fn: o.peer_addr_fn.clone().unwrap_or_else(|| {
                Arc::new(|ext: &http::Extensions| ext.get::<SocketAddr>().copied())
            }),
        }
    }

    pub fn instruments(&self, side: Side) -> Option<&SideInstruments> {
        match side {
            Side::Server => self.server_instruments.as_ref(),
            Side::Client => self.client_instruments.as_ref(),
        }
    }
}
