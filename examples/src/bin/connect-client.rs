//! A connectrpc client with OpenTelemetry: a client span and a duration
//! metric per call, and the trace context sent to the server.
//!
//! ```text
//! cargo run -p otel-examples --bin connect-server &
//! cargo run -p otel-examples --bin connect-client                       # Connect
//! cargo run -p otel-examples --bin connect-client -- http://127.0.0.1:8080 grpc
//! ```
//!
//! The server URL also comes from `PING_URL`, the protocol (`connect`,
//! `grpc` or `grpc-web`) from `PING_PROTOCOL`.

use std::error::Error;

use connectrpc::Protocol;
use connectrpc::client::{ClientConfig, Http2Connection};
use opentelemetry::Context;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use otel_examples::telemetry::Telemetry;

mod proto {
    connectrpc::include_generated!("_connectrpc_ping.rs");
}
use proto::observability::ping::v1::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let url: http::Uri = args
        .next()
        .or_else(|| std::env::var("PING_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into())
        .parse()?;
    let protocol = match args
        .next()
        .or_else(|| std::env::var("PING_PROTOCOL").ok())
        .as_deref()
    {
        None | Some("connect") => Protocol::Connect,
        Some("grpc") => Protocol::Grpc,
        Some("grpc-web") => Protocol::GrpcWeb,
        Some(other) => return Err(format!("unknown protocol {other:?}").into()),
    };

    // 1. The SDK, as in the server (OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set).
    let telemetry = Telemetry::from_env("ping-client");
    let (tracer_provider, meter_provider) = (
        telemetry.tracer_provider.clone(),
        telemetry.meter_provider.clone(),
    );

    // 2. The instrumentation, and `OtelTransport` around connectrpc's own
    //    transport (here one HTTP/2 connection; `HttpClient` works the same).
    let otel = otel_connect::new_interceptor()
        .with_tracer_provider(tracer_provider.clone())
        .with_meter_provider(meter_provider.clone());
    let connection = Http2Connection::connect_plaintext(url.clone())
        .await?
        .shared(64);
    let transport = otel_connect::OtelTransport::new(connection, &otel);
    let client = PingServiceClient::new(transport, ClientConfig::new(url).with_protocol(protocol));

    // 3. Calls made while a span is current become its children, so the
    //    three calls below (and the server's spans) share one trace.
    let tracer = tracer_provider.tracer("ping-client");
    let cx = Context::current_with_span(tracer.start("ping-client run"));
    async {
        let reply = client
            .ping(PingRequest {
                id: 1,
                ..Default::default()
            })
            .await?;
        println!("ping -> id {}", reply.into_owned().id);

        // An error: the client span records rpc.status_code and error.type.
        let failed = client
            .fail(FailRequest {
                code: 5,
                ..Default::default()
            })
            .await;
        println!("fail -> {:?}", failed.err().map(|e| e.code));

        // A server stream: one span for the whole stream.
        let mut stream = client
            .count_up(CountUpRequest {
                number: 3,
                ..Default::default()
            })
            .await?;
        while let Some(message) = stream.message().await? {
            println!("count_up -> {}", message.to_owned_message().number);
        }
        Ok::<_, connectrpc::ConnectError>(())
    }
    .with_context(cx.clone())
    .await?;
    cx.span().end();

    // 4. Flush and stop the exporters.
    telemetry.shutdown();
    Ok(())
}
