//! A Connect server (connectrpc behind axum) with OpenTelemetry: a span and
//! a duration metric for every call over Connect, gRPC or gRPC-Web,
//! continuing the caller's trace.
//!
//! ```text
//! cargo run -p otel-examples --bin connect-server            # 127.0.0.1:8080
//! cargo run -p otel-examples --bin connect-server -- 0.0.0.0:9000
//! ```
//!
//! The address also comes from `PING_ADDR`. Stop it with Ctrl-C: the
//! providers are shut down, which flushes what they still hold.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connectrpc::{
    ConnectError, ConnectRpcService, ErrorCode, InboundStream, RequestContext, ServiceRequest,
    ServiceResult, ServiceStream,
};
use futures::StreamExt;
use otel_examples::telemetry::Telemetry;

mod proto {
    connectrpc::include_generated!("_connectrpc_ping.rs");
}
use proto::observability::ping::v1::*;

struct Ping;

#[allow(refining_impl_trait)]
impl PingService for Ping {
    async fn ping(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, PingRequest>,
    ) -> ServiceResult<PingResponse> {
        let request = request.to_owned_message();
        tokio::time::sleep(Duration::from_millis(
            request.sleep_ms.clamp(0, 10_000) as u64
        ))
        .await;
        Ok(PingResponse {
            id: request.id,
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
        // The client's fault (not_found, ...) leaves the server span Unset;
        // internal, unavailable, ... make it an Error.
        let code = ErrorCode::from_grpc_code(request.code as u32).unwrap_or(ErrorCode::Unknown);
        Err(ConnectError::new(code, "failed as requested"))
    }

    async fn ping_stream(
        &self,
        _ctx: RequestContext,
        requests: InboundStream<PingStreamRequest>,
    ) -> ServiceResult<ServiceStream<PingStreamResponse>> {
        let echo = requests.map(|item| {
            Ok(PingStreamResponse {
                data: item?.to_owned_message().data,
                ..Default::default()
            })
        });
        Ok(connectrpc::Response::new(Box::pin(echo) as ServiceStream<_>))
    }

    async fn count_up(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CountUpRequest>,
    ) -> ServiceResult<ServiceStream<CountUpResponse>> {
        let numbers = futures::stream::iter(1..=request.number.min(1000)).map(|number| {
            Ok(CountUpResponse {
                number,
                ..Default::default()
            })
        });
        Ok(connectrpc::Response::new(
            Box::pin(numbers) as ServiceStream<_>
        ))
    }

    async fn sum(
        &self,
        _ctx: RequestContext,
        mut requests: InboundStream<SumRequest>,
    ) -> ServiceResult<SumResponse> {
        let mut sum = 0i64;
        while let Some(item) = requests.next().await {
            sum = sum.saturating_add(item?.to_owned_message().number);
        }
        Ok(SumResponse {
            sum,
            ..Default::default()
        }
        .into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PING_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;

    // 1. The SDK: where telemetry goes. OTLP/HTTP when
    //    OTEL_EXPORTER_OTLP_ENDPOINT is set, stdout otherwise (see
    //    examples/src/telemetry.rs, a file to copy).
    let telemetry = Telemetry::from_env("ping-server");
    let (tracer_provider, meter_provider) = (
        telemetry.tracer_provider.clone(),
        telemetry.meter_provider.clone(),
    );

    // 2. One instrumentation for this service, like otelconnect-go's
    //    `NewInterceptor(WithTracerProvider(..), WithMeterProvider(..))`.
    let otel = otel_connect::new_interceptor()
        .with_tracer_provider(tracer_provider.clone())
        .with_meter_provider(meter_provider.clone());

    // 3. connectrpc's service behind axum, with the layer on top. Other
    //    routes (here a health check) pass through untouched.
    let router = Arc::new(Ping).register(connectrpc::Router::new());
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback_service(ConnectRpcService::new(router))
        .layer(otel.server_layer());

    // `into_make_service_with_connect_info` gives the layer the client's
    // address (network.peer.*).
    println!("ping server listening on {addr}");
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;

    // 4. Flush and stop the exporters.
    telemetry.shutdown();
    Ok(())
}
