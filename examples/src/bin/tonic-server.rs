//! A tonic gRPC server with OpenTelemetry: a span and a duration metric for
//! every call, continuing the caller's trace.
//!
//! ```text
//! cargo run -p otel-examples --bin tonic-server            # 127.0.0.1:50051
//! cargo run -p otel-examples --bin tonic-server -- 0.0.0.0:6000
//! ```
//!
//! The address also comes from `GREETER_ADDR`. Stop it with Ctrl-C: the
//! providers are shut down, which flushes what they still hold.

use std::error::Error;
use std::net::SocketAddr;

use otel_examples::telemetry::Telemetry;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

mod hello {
    tonic::include_proto!("helloworld");
}
use hello::greeter_server::{Greeter, GreeterServer};
use hello::{HelloReply, HelloRequest};

struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            // Recorded as rpc.status_code = INVALID_ARGUMENT (not a server error).
            return Err(Status::invalid_argument("name is required"));
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}!"),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("GREETER_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;

    // 1. The SDK: where telemetry goes. OTLP/HTTP when
    //    OTEL_EXPORTER_OTLP_ENDPOINT is set, stdout otherwise (see
    //    examples/src/telemetry.rs, a file to copy).
    let telemetry = Telemetry::from_env("greeter-server");
    let (tracer_provider, meter_provider) = (
        telemetry.tracer_provider.clone(),
        telemetry.meter_provider.clone(),
    );

    // 2. One instrumentation for this service (W3C Trace Context + Baggage
    //    propagation by default). Health probes are left out.
    let otel = otel_tonic::instrumentation()
        .with_tracer_provider(tracer_provider.clone())
        .with_meter_provider(meter_provider.clone())
        .with_filter(otel_tonic::skip_health_checks);

    // 3. The server layer in front of the generated services.
    println!("greeter listening on {addr}");
    Server::builder()
        .layer(otel.server_layer())
        .add_service(GreeterServer::new(MyGreeter))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    // 4. Flush and stop the exporters.
    telemetry.shutdown();
    Ok(())
}
