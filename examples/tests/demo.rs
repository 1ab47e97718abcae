//! The demo, run as a user would: its output shows every trace crossing both
//! services, the right statuses, and the metrics summary; and with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` it exports everything over OTLP/HTTP.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn run_demo(envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo"));
    cmd.env_remove("OTEL_PROPAGATORS")
        .env_remove("OTEL_SEMCONV_STABILITY_OPT_IN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let output = common::output_within(&mut cmd, std::time::Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One span line of the waterfall: service, kind, depth, name, rest.
struct Line {
    service: String,
    kind: String,
    depth: usize,
    name: String,
    rest: String,
}

fn span_lines(block: &str) -> Vec<Line> {
    block
        .lines()
        .filter(|l| l.len() > 21 && !l[2..11].trim().is_empty())
        .map(|l| {
            let name_field = &l[21..];
            let depth = (name_field.len() - name_field.trim_start().len()) / 2;
            let mut parts = name_field.trim_start().splitn(2, ' ');
            Line {
                service: l[2..11].trim().to_string(),
                kind: l[12..20].trim().to_string(),
                depth,
                name: parts.next().unwrap_or_default().to_string(),
                rest: l.to_string(),
            }
        })
        .collect()
}

fn traces(output: &str) -> Vec<(String, String)> {
    let section = output.split("\nTraces (").nth(1).expect("traces section");
    let section = section.split("\nMetrics (").next().unwrap();
    section
        .split("\nTrace ")
        .skip(1)
        .map(|block| {
            let title = block.lines().next().unwrap().to_string();
            (title, block.to_string())
        })
        .collect()
}

#[test]
fn demo_shows_connected_traces_statuses_and_metrics() {
    let output = run_demo(&[]);
    let traces = traces(&output);
    assert_eq!(traces.len(), 7, "{output}");
    assert!(output.contains("7 traces, 35 spans."), "{output}");
    // The scenarios whose statuses are checked below are all there.
    for scenario in ["not found", "too slow", "stream"] {
        let n = traces.iter().filter(|(t, _)| t.contains(scenario)).count();
        assert!(n >= 1, "no trace titled with {scenario:?} in\n{output}");
    }
    for (title, block) in &traces {
        let lines = span_lines(block);
        let find = |service: &str, kind: &str| {
            lines
                .iter()
                .find(|l| l.service == service && l.kind == kind)
                .unwrap_or_else(|| panic!("{title}: no {service} {kind} in\n{block}"))
        };
        let driver_client = find("driver", "CLIENT");
        let frontend_server = find("frontend", "SERVER");
        let frontend_client = find("frontend", "CLIENT");
        let backend_server = find("backend", "SERVER");
        // The waterfall nests each hop under the previous one.
        assert_eq!(frontend_server.depth, driver_client.depth + 1, "{block}");
        assert_eq!(frontend_client.depth, frontend_server.depth + 1, "{block}");
        assert_eq!(backend_server.depth, frontend_client.depth + 1, "{block}");
        assert_eq!(frontend_client.name, backend_server.name, "{block}");
        assert!(frontend_server.name.starts_with("demo.shop.v1.Shop/"));
        assert!(
            backend_server
                .name
                .starts_with("demo.inventory.v1.Inventory/")
        );
        if title.contains("not found") {
            assert!(
                block.contains("rpc.status_code=not_found error.type=not_found"),
                "{block}"
            );
            assert!(block.contains("rpc.status_code=NOT_FOUND"), "{block}");
            assert!(
                backend_server.rest.contains("Unset"),
                "NOT_FOUND is not a server error"
            );
        }
        if title.contains("too slow") {
            assert!(
                block.contains("rpc.status_code=DEADLINE_EXCEEDED error.type=DEADLINE_EXCEEDED"),
                "{block}"
            );
            assert!(driver_client.rest.contains("Error"), "{block}");
            assert!(
                block.contains("rpc.status_code=deadline_exceeded"),
                "{block}"
            );
        }
        if title.contains("stream") {
            assert_eq!(backend_server.name, "demo.inventory.v1.Inventory/Scan");
        }
    }
    let metrics = output.split("\nMetrics (").nth(1).expect("metrics section");
    for method in [
        "demo.shop.v1.Shop/GetItem",
        "demo.shop.v1.Shop/ListItems",
        "demo.inventory.v1.Inventory/Lookup",
        "demo.inventory.v1.Inventory/Scan",
    ] {
        assert!(metrics.contains(method), "{method} in\n{metrics}");
    }
    assert!(
        metrics.contains("rpc.server.call.duration")
            && metrics.contains("rpc.client.call.duration")
    );
    assert!(output.contains("traceparent: 00-"), "W3C by default");
}

#[test]
fn demo_switches_to_b3_and_legacy_names() {
    let output = run_demo(&[
        ("OTEL_PROPAGATORS", "b3"),
        ("OTEL_SEMCONV_STABILITY_OPT_IN", "rpc/old"),
    ]);
    assert!(output.contains("propagation: OTEL_PROPAGATORS=b3"));
    let received = output
        .split("backend received on its first call:")
        .nth(1)
        .unwrap();
    let received = received.split("\nTraces").next().unwrap();
    assert!(received.contains("\n  b3: "), "{received}");
    assert!(!received.contains("traceparent"), "{received}");
    // Still one connected trace per call.
    assert_eq!(traces(&output).len(), 7, "{output}");
    assert!(
        output.contains("rpc.system=connect_rpc rpc.service=demo.shop.v1.Shop")
            || output.contains("rpc.method=GetItem")
    );
    assert!(output.contains("rpc.grpc.status_code=5"));
    assert!(output.contains("rpc.server.duration"));
    assert!(
        !output.contains("rpc.system.name="),
        "no stable names in Legacy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exports_over_otlp_http() {
    let (addr, received) = common::start().await;
    let endpoint = format!("http://{addr}");
    let output = tokio::task::spawn_blocking(move || {
        run_demo(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)])
    })
    .await
    .unwrap();
    assert!(output.contains("terminal + OTLP/HTTP"), "{output}");
    let r = received.lock().unwrap();
    assert_eq!(
        r.spans.len(),
        35,
        "every span arrived (the providers flush on exit)"
    );
    let names: BTreeSet<&str> = r.spans.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "demo.shop.v1.Shop/GetItem",
        "demo.inventory.v1.Inventory/Lookup",
        "demo.inventory.v1.Inventory/Scan",
    ] {
        assert!(names.contains(name), "{name}: {names:?}");
    }
    let services: BTreeSet<&str> = r.spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["backend", "driver", "frontend"]));
    for metric in ["rpc.server.call.duration", "rpc.client.call.duration"] {
        assert!(
            r.metrics.iter().any(|(_, m)| m == metric),
            "{metric}: {:?}",
            r.metrics
        );
    }
}
