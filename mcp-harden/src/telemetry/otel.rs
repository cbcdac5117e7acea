//! OpenTelemetry trace export (feature `opentelemetry`).
//!
//! Every call's `tools/call` span becomes an OpenTelemetry span through
//! [`tracing-opentelemetry`](https://docs.rs/tracing-opentelemetry): add [`Otel::layer`] to
//! your `tracing` subscriber. The span continues the caller's W3C `traceparent` (HTTP header
//! or the request's `_meta`) or starts a new trace, and the audit record carries the span's
//! own trace and span ids, so a record leads straight to its trace. (That takes this
//! layer, or `tracing-opentelemetry` 0.34 on [`Otel::tracer`], not behind a `reload` layer;
//! with any other, records keep ids of their own.)
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let otel = mcp_harden::telemetry::otel::Otlp::http("http://127.0.0.1:4318")
//!     .service_name("db-tools")
//!     .build()?;
//! tracing_subscriber::registry()
//!     .with(otel.layer()) // next to your log layer
//!     .init();
//! // ... serve ...
//! otel.shutdown()?; // flushes the last spans
//! # Ok(()) }
//! ```

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `opentelemetry` crate this feature is built with (for your own exporters and
/// samplers: its types must be the same version).
pub use opentelemetry;
/// The `opentelemetry_sdk` crate this feature is built with.
pub use opentelemetry_sdk;

/// An OTLP/HTTP trace exporter (protobuf), batched on a thread of its own.
///
/// Only plain `http://` endpoints: the usual deployment sends to an OpenTelemetry Collector
/// on the same host or pod, which forwards over TLS. For anything else (gRPC, TLS, a
/// vendor's exporter), build an `SdkTracerProvider` yourself and use [`Otel::from_provider`].
#[derive(Clone)]
pub struct Otlp {
    endpoint: String,
    service_name: String,
    service_version: Option<String>,
    timeout: Duration,
    headers: Vec<(String, String)>,
}

/// Header values may be a collector's credentials: only their names are shown.
impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .field("service_name", &self.service_name)
            .field("service_version", &self.service_version)
            .field("timeout", &self.timeout)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Otlp {
    /// Exports to a collector's OTLP/HTTP endpoint: a base URL such as
    /// `http://127.0.0.1:4318` (`/v1/traces` is appended) or the full traces URL.
    pub fn http(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: "mcp-harden".to_owned(),
            service_version: None,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
        }
    }

    /// The `service.name` resource attribute (default `mcp-harden`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// The `service.version` resource attribute.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// How long one export request may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A header sent with every export request (a collector's own authentication, say).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The traces URL this exporter posts to.
    pub fn traces_url(&self) -> Result<String, OtelError> {
        let base = self.endpoint.trim();
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            OtelError(format!(
                "the OTLP endpoint must be an http:// URL (send through a local collector for TLS), got {:?}",
                base
            ))
        })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(OtelError("the OTLP endpoint has no host".to_owned()));
        }
        Ok(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{}/v1/traces", base.trim_end_matches('/'))
        })
    }

    /// Builds the exporter and its batching provider. Call it outside async code or inside a
    /// Tokio runtime alike: the exporter runs on its own thread.
    pub fn build(self) -> Result<Otel, OtelError> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let url = self.traces_url()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(self.timeout)
            .with_headers(self.headers.into_iter().collect())
            .build()
            .map_err(|e| OtelError(format!("OTLP exporter: {e}")))?;
        let mut resource =
            opentelemetry_sdk::Resource::builder().with_service_name(self.service_name);
        if let Some(v) = self.service_version {
            resource = resource.with_attribute(opentelemetry::KeyValue::new("service.version", v));
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Otel::from_provider(provider))
    }
}

/// OpenTelemetry tracing for a server: a tracer provider and the `tracing` layer that feeds
/// it. Keep it alive while serving; [`shutdown`](Self::shutdown) flushes it at exit.
#[derive(Debug, Clone)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Uses a provider you built (any exporter, sampler or processor).
    pub fn from_provider(provider: SdkTracerProvider) -> Self {
        Self { provider }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans: add it to your
    /// subscriber (`tracing_subscriber::registry().with(otel.layer())`).
    ///
    /// It takes spans and events at INFO and above: events inside a span are exported as its
    /// span events, and below INFO libraries log their inputs (rmcp logs whole requests,
    /// secrets included, at DEBUG). For other levels build your own layer on
    /// [`tracer`](Self::tracer) with `tracing-opentelemetry` 0.34 and a filter of your choice.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::filter::LevelFilter;
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer())
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(LevelFilter::INFO)
    }

    /// The provider's tracer, named `mcp-harden`, for a `tracing-opentelemetry` layer of your
    /// own (it must be version 0.34, and not behind a `reload` layer, for the audit record's
    /// ids to be the exported span's).
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer_with_scope(
            opentelemetry::InstrumentationScope::builder("mcp-harden")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
    }

    /// The provider.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports every finished span now. Blocks the calling thread until done.
    pub fn force_flush(&self) -> Result<(), OtelError> {
        self.provider
            .force_flush()
            .map_err(|e| OtelError(format!("flush: {e}")))
    }

    /// Flushes and stops the exporter. Blocks the calling thread until done: call it after
    /// serving, outside async code (or in `spawn_blocking`).
    pub fn shutdown(self) -> Result<(), OtelError> {
        self.provider
            .shutdown()
            .map_err(|e| OtelError(format!("shutdown: {e}")))
    }
}

/// OpenTelemetry could not be set up or flushed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OpenTelemetry: {0}")]
pub struct OtelError(String);

/// Ties a call's span to OpenTelemetry when a layer records it: the caller's trace (if any)
/// becomes the span's parent, and the span's own ids become the call's, for the audit record.
/// Without an OpenTelemetry layer the ids are left as they are.
pub(crate) fn adopt(span: &tracing::Span, ids: super::TraceIds) -> super::TraceIds {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId};
    if span.is_disabled() {
        return ids;
    }
    if let Some(parent) = ids.parent_span_id {
        let (Ok(trace), Ok(parent)) = (TraceId::from_hex(&ids.trace_id), SpanId::from_hex(&parent))
        else {
            return ids;
        };
        let flags = if ids.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(trace, parent, flags, true, Default::default());
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        // No OpenTelemetry layer (or the span already started): the ids stay ours.
        if span.set_parent(cx).is_err() {
            return ids;
        }
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return ids;
    }
    let trace = u128::from_be_bytes(sc.trace_id().to_bytes());
    let own = u64::from_be_bytes(sc.span_id().to_bytes());
    super::TraceIds {
        trace_id: super::TraceId::from_u128(trace),
        span_id: super::SpanId::from_u64(own),
        parent_span_id: ids.parent_span_id,
        sampled: sc.is_sampled(),
    }
}
