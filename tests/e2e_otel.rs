//! OpenTelemetry (feature `opentelemetry`): every call's span is exported with OTel's
//! attribute names, continues the caller's W3C trace, and shares its trace and span ids with
//! the audit record; over OTLP/HTTP, the span reaches a collector.

use std::time::Duration;

use mcp_harden::prelude::*;
use mcp_harden::telemetry::otel::{Otel, Otlp};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rmcp::model::{CallToolRequestParams, MetaObject, RequestMetaObject};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt as _;

mod common;
use common::{collector, connect, first_export, holds, trace_id_bytes, Collect};

struct App;

/// Echo a word back.
#[tool(scopes = "echo", rate = "unlimited")]
async fn echo(_ctx: Ctx<App>, #[arg(max_len = 32)] word: String) -> String {
    word
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn server(sink: Collect) -> Hardened<App> {
    Hardened::builder(App)
        .tool::<echo>()
        .local_principal(Principal::local("tracer", ["echo"]))
        .audit_sink(sink)
        .build()
        .expect("builds")
}

fn call(word: &str, traceparent: Option<&str>) -> CallToolRequestParams {
    let mut params = common::params("echo", serde_json::json!({ "word": word }));
    if let Some(tp) = traceparent {
        let Value::Object(meta) = serde_json::json!({ "traceparent": tp }) else {
            unreachable!()
        };
        params.meta = Some(RequestMetaObject(MetaObject(meta)));
    }
    params
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            OtelValue::String(s) => s.as_str().to_owned(),
            other => other.to_string(),
        })
}

fn hex_trace(id: TraceId) -> String {
    format!("{id:032x}")
}

fn hex_span(id: SpanId) -> String {
    format!("{id:016x}")
}

#[tokio::test]
async fn spans_continue_the_callers_trace_and_share_ids_with_the_audit_record() {
    let exporter = InMemorySpanExporter::default();
    let otel = Otel::from_provider(
        SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build(),
    );
    // Current-thread runtime: the server's tasks run on this thread, under this subscriber.
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(otel.layer()));
    let sink = Collect::default();
    let client = connect(server(sink.clone())).await;

    let sampled = format!("00-{TRACE}-{PARENT}-01");
    let r = client
        .call_tool(call("w0rd-alpha", Some(&sampled)))
        .await
        .expect("answers");
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let _ = client
        .call_tool(call("w0rd-beta", None))
        .await
        .expect("answers");
    let _ = client
        .call_tool(call("w0rd-gamma", None))
        .await
        .expect("answers");
    let bad = client
        .call_tool(call(&"w0rd-".repeat(8), None))
        .await
        .expect("answers");
    assert_eq!(bad.is_error, Some(true));
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let _ = client
        .call_tool(call("w0rd-delta", Some(&unsampled)))
        .await
        .expect("answers");
    let _ = client.cancel().await;
    otel.force_flush().expect("flushes");

    let records = sink.records();
    assert_eq!(records.len(), 5);
    let spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| s.name == "tools/call echo")
        .collect();
    assert_eq!(
        spans.len(),
        4,
        "one span per sampled call (the unsampled caller's is not exported)"
    );

    // 1. The caller's trace continues: same trace id, the caller's span as remote parent.
    let first = &spans[0];
    assert_eq!(hex_trace(first.span_context.trace_id()), TRACE);
    assert_eq!(hex_span(first.parent_span_id), PARENT);
    assert!(first.parent_span_is_remote);
    assert_eq!(first.span_kind, SpanKind::Server);
    assert_eq!(first.status, Status::Unset);
    for (key, want) in [
        ("gen_ai.tool.name", "echo"),
        ("mcp.method.name", "tools/call"),
        ("gen_ai.operation.name", "execute_tool"),
        ("network.transport", "local"),
    ] {
        assert_eq!(attribute(first, key).as_deref(), Some(want), "{key}");
    }
    // ... and the audit record names the very same trace and span.
    assert_eq!(&*records[0].trace_id, TRACE);
    assert_eq!(
        records[0].span_id.as_deref(),
        Some(hex_span(first.span_context.span_id()).as_str())
    );
    assert_eq!(records[0].parent_span_id.as_deref(), Some(PARENT));

    // 2. Without a traceparent each call is a trace of its own (never the session's), and
    // the record carries the ids OpenTelemetry gave its span.
    let (second, third) = (&spans[1], &spans[2]);
    assert_eq!(second.parent_span_id, SpanId::INVALID, "a root span");
    assert_ne!(
        second.span_context.trace_id(),
        third.span_context.trace_id()
    );
    for (span, record) in [(second, &records[1]), (third, &records[2])] {
        assert_eq!(*record.trace_id, hex_trace(span.span_context.trace_id()));
        assert_eq!(
            record.span_id.as_deref(),
            Some(hex_span(span.span_context.span_id()).as_str())
        );
        assert!(record.parent_span_id.is_none());
    }

    // 3. A refused call: an error status and its code as `error.type`.
    let refused = &spans[3];
    assert!(
        matches!(refused.status, Status::Error { .. }),
        "{:?}",
        refused.status
    );
    assert_eq!(
        attribute(refused, "error.type").as_deref(),
        Some("INVALID_ARGUMENTS")
    );
    assert_eq!(
        *records[3].trace_id,
        hex_trace(refused.span_context.trace_id())
    );

    // 4. The caller chose not to sample: nothing exported, yet the record keeps its trace.
    assert_eq!(&*records[4].trace_id, TRACE);
    let unexported = records[4].span_id.as_deref().expect("a span id");
    assert!(spans
        .iter()
        .all(|s| hex_span(s.span_context.span_id()) != unexported));

    // No argument value is exported: not as an attribute, not in an event, of any span
    // (rmcp's own included: at DEBUG it logs whole requests).
    let exported = exporter.get_finished_spans().expect("spans");
    assert!(
        exported.len() > spans.len(),
        "rmcp's session span is exported too"
    );
    for span in &exported {
        let attributes = span.attributes.iter();
        let events = span.events.iter().flat_map(|e| e.attributes.iter());
        for kv in attributes.chain(events) {
            let v = kv.value.to_string();
            assert!(!v.contains("w0rd-"), "{}: {} = {v}", span.name, kv.key);
        }
    }
}

#[tokio::test]
async fn otlp_http_export_reaches_a_collector() {
    let (addr, bodies) = collector();
    let otel = Otlp::http(format!("http://{addr}"))
        .service_name("otel-e2e")
        .timeout(Duration::from_secs(5))
        .build()
        .expect("exporter");
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(otel.layer()));
    let client = connect(server(Collect::default())).await;
    let _ = client
        .call_tool(call(
            "w0rd-exported",
            Some(&format!("00-{TRACE}-{PARENT}-01")),
        ))
        .await
        .expect("answers");
    let _ = client.cancel().await;
    // Blocking: off this (the server's) thread.
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .expect("joins")
        .expect("flushes to the collector");

    let body = first_export(&bodies).await;
    // The protobuf request holds the trace id's 16 bytes, the span's name and the service.
    assert!(holds(&body, &trace_id_bytes(TRACE)), "trace id");
    assert!(holds(&body, b"tools/call echo"), "span name");
    assert!(holds(&body, b"otel-e2e"), "service name");
    assert!(!holds(&body, b"w0rd-"), "no argument value");
}

#[test]
fn otlp_endpoints() {
    let url = |e: &str| Otlp::http(e).traces_url();
    assert_eq!(
        url("http://127.0.0.1:4318").expect("base"),
        "http://127.0.0.1:4318/v1/traces"
    );
    assert_eq!(
        url("http://collector:4318/").expect("base"),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        url("http://collector:4318/v1/traces").expect("full"),
        "http://collector:4318/v1/traces"
    );
    for bad in [
        "https://collector:4318",
        "collector:4318",
        "http://",
        "http:///v1/traces",
    ] {
        assert!(url(bad).is_err(), "{bad}");
        assert!(Otlp::http(bad).build().is_err(), "{bad}");
    }
}
