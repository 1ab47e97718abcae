//! A template microservice: a Connect server that may call a downstream copy
//! of itself, with OpenTelemetry on both sides. Copy it and replace the Ping
//! service with yours. Besides this file it needs `examples/src/telemetry.rs`
//! (the providers), a build script like `examples/build_connect.rs` with your
//! `.proto`, and the dependencies and build-dependencies listed in
//! `examples/Cargo.toml`.
//!
//! Configuration (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LISTEN_ADDR` | `127.0.0.1:8080` | where to serve |
//! | `DOWNSTREAM_URL` | unset | if set, every Ping is forwarded there first |
//! | `OTEL_SERVICE_NAME` | `microservice` | `service.name` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset | OTLP/HTTP export; stdout otherwise |
//! | `OTEL_PROPAGATORS` | `tracecontext,baggage` | propagation on the wire |
//!
//! Two chained instances:
//!
//! ```text
//! LISTEN_ADDR=127.0.0.1:8081 OTEL_SERVICE_NAME=b cargo run -p otel-examples --bin microservice &
//! LISTEN_ADDR=127.0.0.1:8080 OTEL_SERVICE_NAME=a DOWNSTREAM_URL=http://127.0.0.1:8081 \
//!     cargo run -p otel-examples --bin microservice &
//! cargo run -p otel-examples --bin connect-client -- http://127.0.0.1:8080
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connectrpc::client::{ClientConfig, HttpClient};
use connectrpc::{
    ConnectError, ConnectRpcService, ErrorCode, RequestContext, ServiceRequest, ServiceResult,
    ServiceStream,
};
use opentelemetry::trace::TracerProvider as _;
use otel_examples::telemetry::Telemetry;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod proto {
    connectrpc::include_generated!("_connectrpc_ping.rs");
}
use proto::observability::ping::v1::*;

type Downstream = PingServiceClient<otel_connect::OtelTransport<HttpClient>>;

struct Service {
    downstream: Option<Downstream>,
}

#[allow(refining_impl_trait)]
impl PingService for Service {
    async fn ping(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PingRequest>,
    ) -> ServiceResult<PingResponse> {
        let request = request.to_owned_message();
        // A `tracing` event, recorded on TraceLayer's `request` span (itself
        // a child of the RPC span).
        tracing::info!(id = request.id, "ping");
        let id = match &self.downstream {
            // The outgoing call continues the incoming trace (its span is a
            // child of the `request` span, which is current here).
            Some(downstream) => downstream.ping(request.clone()).await?.into_owned().id,
            None => request.id,
        };
        Ok(PingResponse {
            id,
            data: request.data,
            ..Default::default()
        }
        .into())
    }

    async fn fail(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, FailRequest>,
    ) -> ServiceResult<FailResponse> {
        let code = ErrorCode::from_grpc_code(request.code as u32).unwrap_or(ErrorCode::Unknown);
        Err(ConnectError::new(code, "failed as requested"))
    }

    async fn ping_stream(
        &self,
        _ctx: RequestContext,
        _requests: connectrpc::InboundStream<PingStreamRequest>,
    ) -> ServiceResult<ServiceStream<PingStreamResponse>> {
        Err(ConnectError::new(
            ErrorCode::Unimplemented,
            "not in this template",
        ))
    }

    async fn count_up(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CountUpRequest>,
    ) -> ServiceResult<ServiceStream<CountUpResponse>> {
        // A server stream: the RPC span lasts until its last message.
        let numbers = (1..=request.number.clamp(0, 1000)).map(|number| {
            Ok(CountUpResponse {
                number,
                ..Default::default()
            })
        });
        Ok(connectrpc::Response::new(
            Box::pin(futures::stream::iter(numbers)) as ServiceStream<_>,
        ))
    }

    async fn sum(
        &self,
        _ctx: RequestContext,
        _requests: connectrpc::InboundStream<SumRequest>,
    ) -> ServiceResult<SumResponse> {
        Err(ConnectError::new(
            ErrorCode::Unimplemented,
            "not in this template",
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let listen: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;

    // 1. Telemetry: OTLP when configured, stdout otherwise.
    let telemetry = Telemetry::from_env("microservice");
    // `tracing` spans (tower-http's TraceLayer, handler spans) become
    // OpenTelemetry spans, nested under the RPC span.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(telemetry.tracer_provider.tracer("microservice")),
        )
        .init();

    // 2. One instrumentation for the service's inbound and outbound calls.
    let mut otel = otel_connect::new_interceptor()
        .with_tracer_provider(telemetry.tracer_provider.clone())
        .with_meter_provider(telemetry.meter_provider.clone())
        .without_server_peer_attributes();
    if std::env::var("OTEL_PROPAGATORS").is_ok() {
        otel = otel.with_propagator(otel_tower::propagation::from_env());
    }

    // 3. The downstream client, through OtelTransport.
    let downstream = match std::env::var("DOWNSTREAM_URL") {
        Ok(url) => {
            let config = ClientConfig::new(url.parse()?);
            Some(PingServiceClient::new(
                otel_connect::OtelTransport::new(HttpClient::plaintext(), &otel),
                config,
            ))
        }
        Err(_) => None,
    };

    // 4. The server stack, outermost first: our RPC layer (spans, metrics,
    //    context), then request ids, tower-http's TraceLayer (its `tracing`
    //    span is a child of the RPC span) and a timeout.
    let router = Arc::new(Service { downstream }).register(connectrpc::Router::new());
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback_service(ConnectRpcService::new(router))
        .layer(
            ServiceBuilder::new()
                .layer(otel.server_layer())
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
                )
                .layer(TimeoutLayer::with_status_code(
                    http::StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(10),
                )),
        );

    // 5. Serve until Ctrl-C / SIGTERM, then flush telemetry.
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {listen}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    telemetry.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
