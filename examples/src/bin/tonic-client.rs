//! A tonic gRPC client with OpenTelemetry: a client span and a duration
//! metric for every call, and the trace context sent to the server, so the
//! server's span (see `tonic-server`) joins the same trace.
//!
//! ```text
//! cargo run -p otel-examples --bin tonic-client                     # http://127.0.0.1:50051
//! cargo run -p otel-examples --bin tonic-client -- http://host:6000 Ada
//! ```
//!
//! The server URL also comes from `GREETER_URL`.

use std::error::Error;

use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use otel_examples::telemetry::Telemetry;
use tonic::transport::Endpoint;

mod hello {
    tonic::include_proto!("helloworld");
}
use hello::HelloRequest;
use hello::greeter_client::GreeterClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .or_else(|| std::env::var("GREETER_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let name = args.next().unwrap_or_else(|| "world".into());

    // 1. The SDK: OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, stdout
    //    otherwise (examples/src/telemetry.rs).
    let telemetry = Telemetry::from_env("greeter-client");
    let (tracer_provider, meter_provider) = (
        telemetry.tracer_provider.clone(),
        telemetry.meter_provider.clone(),
    );
    let otel = otel_tonic::instrumentation()
        .with_tracer_provider(tracer_provider.clone())
        .with_meter_provider(meter_provider.clone());

    // 2. Wrap the Channel with the client layer. Make the generated client
    //    `with_origin` (same URL), so spans carry server.address/server.port.
    let channel = Endpoint::from_shared(url.clone())?.connect().await?;
    let channel = tower::ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(channel);
    let mut client = GreeterClient::with_origin(channel, url.parse()?);

    // 3. Calls made while a span is current become its children: here one
    //    "greet" span groups a call that succeeds and one that fails.
    let tracer = tracer_provider.tracer("greeter-client");
    let span = tracer.start("greet");
    let cx = Context::current_with_span(span);
    {
        let _guard = cx.clone().attach();
        let reply = client.say_hello(HelloRequest { name }).await?;
        println!("reply: {}", reply.into_inner().message);
        let empty = HelloRequest {
            name: String::new(),
        };
        if let Err(status) = client.say_hello(empty).await {
            println!("error: {:?} {}", status.code(), status.message());
        }
    }
    cx.span().end();

    // 4. Flush and stop the exporters.
    telemetry.shutdown();
    Ok(())
}
