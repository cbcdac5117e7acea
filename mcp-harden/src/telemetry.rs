//! Metrics through the [`metrics`] facade: whatever recorder the application installs
//! receives them (none installed: they cost next to nothing). With the `prometheus` feature,
//! `install_prometheus` serves them for scraping on an address of their own.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `mcp_harden_tool_calls_total` | counter | `tool`, `status` (`success` or the error code), `tier` |
//! | `mcp_harden_tool_call_duration_seconds` | histogram | `tool` |
//! | `mcp_harden_tool_errors_total` | counter | `tool`, `code` |
//! | `mcp_harden_tool_calls_in_flight` | gauge | `tool` |
//! | `mcp_harden_auth_failures_total` | counter | `reason` |
//! | `mcp_harden_rate_limited_total` | counter | `tool`, `limit` (`tool`, `principal`, `global`) |
//! | `mcp_harden_audit_records_total` | counter | `result`: `recorded` (handed to the sink: tool calls, security events and summaries of refusals), `dropped` (of those, lost by the file sink: its queue full or its writer stopped), `refused` (calls refused for want of an audit slot), `unrecorded` (refusals beyond a record budget: of unknown or anonymous callers over HTTP, or identified callers' rejected calls; summed up in an `unrecorded` record instead) |
//! | `mcp_harden_http_sessions` | gauge | (none): stateful HTTP sessions held |
//! | `mcp_harden_http_sessions_refused_total` | counter | `limit` (`caller`, `anonymous`, `server`) |
//! | `mcp_harden_rate_store_unavailable_total` | counter | `fail` (`closed`, `open`, `local`), `reason` (`failed`, `resting`): rate decisions the shared store did not make |
//!
//! Label values are bounded: tool names are the registered ones, tiers the configured ones
//! (`other` for any other, `none` without a tier), codes and reasons fixed sets. No argument,
//! subject or credential is ever a label.

use std::time::Duration;

#[cfg(feature = "opentelemetry")]
pub mod otel;

/// Metric names.
pub mod names {
    /// Calls by tool, status and tier.
    pub const CALLS: &str = "mcp_harden_tool_calls_total";
    /// Call latency by tool.
    pub const DURATION: &str = "mcp_harden_tool_call_duration_seconds";
    /// Failed calls by tool and code.
    pub const ERRORS: &str = "mcp_harden_tool_errors_total";
    /// Calls running now, by tool.
    pub const IN_FLIGHT: &str = "mcp_harden_tool_calls_in_flight";
    /// Failed authentications by reason.
    pub const AUTH_FAILURES: &str = "mcp_harden_auth_failures_total";
    /// Rate-limit refusals by tool and limit.
    pub const RATE_LIMITED: &str = "mcp_harden_rate_limited_total";
    /// Audit records by result (`recorded`, `dropped`, `refused`).
    pub const AUDIT_RECORDS: &str = "mcp_harden_audit_records_total";
    /// Stateful HTTP sessions held.
    pub const HTTP_SESSIONS: &str = "mcp_harden_http_sessions";
    /// New HTTP sessions refused, by the bound that refused them.
    pub const HTTP_SESSIONS_REFUSED: &str = "mcp_harden_http_sessions_refused_total";
    /// Rate decisions the shared store did not make, by the fail mode that made them.
    pub const RATE_STORE_UNAVAILABLE: &str = "mcp_harden_rate_store_unavailable_total";
}

/// Where the per-call metrics are registered from (the macros' equivalent).
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// A tool's per-call metric keys, built once with the server: a call hands them to whatever
/// recorder is current (installed before or after the server was built), without building
/// labels or allocating.
pub(crate) struct ToolMetrics {
    tool: &'static str,
    /// The server's tier labels (shared by its tools).
    tiers: std::sync::Arc<TierLabels>,
    /// `calls_total{status="success"}` by tier, in the order of [`TierLabels`].
    calls_ok: Box<[metrics::Key]>,
    duration: metrics::Key,
    in_flight: metrics::Key,
}

/// The tier labels: `none`, `other`, then each configured tier.
pub(crate) type TierLabels = [metrics::SharedString];

/// The label index of a principal's tier in [`TierLabels`].
fn tier_index(tiers: &TierLabels, tier: Option<&str>) -> usize {
    match tier {
        None => 0,
        Some(t) => tiers
            .iter()
            .skip(2)
            .position(|l| l.as_ref() == t)
            .map_or(1, |i| i + 2),
    }
}

/// `none`, `other` and the configured tiers, as labels.
pub(crate) fn tier_labels<'a>(
    configured: impl Iterator<Item = &'a std::sync::Arc<str>>,
) -> std::sync::Arc<TierLabels> {
    ["none", "other"]
        .into_iter()
        .map(metrics::SharedString::const_str)
        .chain(configured.map(|t| metrics::SharedString::from(t.clone())))
        .collect()
}

impl ToolMetrics {
    pub(crate) fn new(tool: &'static str, tiers: &std::sync::Arc<TierLabels>) -> Self {
        let key = |name: &'static str, labels: Vec<metrics::Label>| {
            metrics::Key::from_parts(name, labels)
        };
        Self {
            tool,
            tiers: tiers.clone(),
            calls_ok: tiers
                .iter()
                .map(|t| {
                    key(
                        names::CALLS,
                        vec![
                            metrics::Label::new("tool", tool),
                            metrics::Label::new("status", "success"),
                            metrics::Label::new("tier", t.clone()),
                        ],
                    )
                })
                .collect(),
            duration: key(names::DURATION, vec![metrics::Label::new("tool", tool)]),
            in_flight: key(names::IN_FLIGHT, vec![metrics::Label::new("tool", tool)]),
        }
    }

    /// One finished call by a caller of `tier`: `code` is the error code of a failed one.
    pub(crate) fn finished(
        &self,
        code: Option<&'static str>,
        tier: Option<&str>,
        elapsed: Duration,
    ) {
        let tier = tier_index(&self.tiers, tier);
        metrics::with_recorder(|r| {
            r.register_histogram(&self.duration, &METADATA)
                .record(elapsed.as_secs_f64());
            if let (None, Some(key)) = (code, self.calls_ok.get(tier)) {
                r.register_counter(key, &METADATA).increment(1);
            }
        });
        if let Some(code) = code {
            let tool = self.tool;
            let tier = self
                .tiers
                .get(tier)
                .cloned()
                .unwrap_or(metrics::SharedString::const_str("other"));
            metrics::counter!(names::CALLS, "tool" => tool, "status" => code, "tier" => tier)
                .increment(1);
            metrics::counter!(names::ERRORS, "tool" => tool, "code" => code).increment(1);
        }
    }

    /// Counts a call as running until the returned guard is dropped.
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        metrics::with_recorder(|r| r.register_gauge(&self.in_flight, &METADATA).increment(1.0));
        InFlight(&self.in_flight)
    }
}

/// Counts a call as running until dropped.
pub(crate) struct InFlight<'a>(&'a metrics::Key);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        metrics::with_recorder(|r| r.register_gauge(self.0, &METADATA).decrement(1.0));
    }
}

/// One failed authentication.
pub(crate) fn auth_failure(reason: &'static str) {
    metrics::counter!(names::AUTH_FAILURES, "reason" => reason).increment(1);
}

/// A stateful HTTP session opened (`true`) or closed (`false`): a gauge moved rather than set,
/// so that several servers in one process add up.
pub(crate) fn http_session(opened: bool) {
    let gauge = metrics::gauge!(names::HTTP_SESSIONS);
    if opened {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

/// A new HTTP session refused by `limit` (`caller`, `anonymous` or `server`).
pub(crate) fn http_sessions_refused(limit: &'static str) {
    metrics::counter!(names::HTTP_SESSIONS_REFUSED, "limit" => limit).increment(1);
}

/// One rate-limit refusal.
pub(crate) fn rate_limited(tool: &'static str, limit: &'static str) {
    metrics::counter!(names::RATE_LIMITED, "tool" => tool, "limit" => limit).increment(1);
}

/// One rate decision the shared store did not make, made by `fail` (`closed`, `open`,
/// `local`): the store failed it (`reason` `failed`) or was not asked (`resting`).
pub(crate) fn rate_store_unavailable(fail: &'static str, reason: &'static str) {
    metrics::counter!(names::RATE_STORE_UNAVAILABLE, "fail" => fail, "reason" => reason)
        .increment(1);
}

/// One audit record handed to the sink, one call refused for want of a slot, or one record
/// the file sink dropped.
pub(crate) fn audit(result: AuditResult) {
    static RECORDED: [metrics::Label; 1] =
        [metrics::Label::from_static_parts("result", "recorded")];
    static REFUSED: [metrics::Label; 1] = [metrics::Label::from_static_parts("result", "refused")];
    static DROPPED: [metrics::Label; 1] = [metrics::Label::from_static_parts("result", "dropped")];
    static UNRECORDED: [metrics::Label; 1] =
        [metrics::Label::from_static_parts("result", "unrecorded")];
    // Statics, not consts: a key caches its hash.
    static KEYS: [metrics::Key; 4] = [
        metrics::Key::from_static_parts(names::AUDIT_RECORDS, &RECORDED),
        metrics::Key::from_static_parts(names::AUDIT_RECORDS, &REFUSED),
        metrics::Key::from_static_parts(names::AUDIT_RECORDS, &DROPPED),
        metrics::Key::from_static_parts(names::AUDIT_RECORDS, &UNRECORDED),
    ];
    let key = &KEYS[result as usize];
    metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
}

/// The `result` label of the audit records counter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AuditResult {
    /// A record handed to the sink: a tool call's, or a security event's.
    Recorded = 0,
    /// A call refused for want of an audit slot.
    Refused = 1,
    /// A record the file sink handed back unwritten (its queue full, its writer stopped).
    Dropped = 2,
    /// A refusal beyond a record budget, summed up instead of recorded.
    Unrecorded = 3,
}

/// Installs a Prometheus recorder and serves `/metrics` on `addr` (its own listener, apart
/// from the MCP endpoint). Call once, inside a Tokio runtime.
#[cfg(feature = "prometheus")]
pub fn install_prometheus(addr: std::net::SocketAddr) -> Result<(), PrometheusError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::DURATION.to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ],
        )
        .map_err(|e| PrometheusError(e.to_string()))?
        .install()
        .map_err(|e| PrometheusError(e.to_string()))
}

/// The Prometheus endpoint could not be started.
#[cfg(feature = "prometheus")]
#[derive(Debug, thiserror::Error)]
#[error("Prometheus exporter: {0}")]
pub struct PrometheusError(String);

/// The W3C trace-context header (a constant: no name parsing per request).
pub(crate) const TRACEPARENT: axum::http::HeaderName =
    axum::http::HeaderName::from_static("traceparent");

/// The trace context of one call: the caller's W3C `traceparent` continued (from the HTTP
/// header, or from the request's `_meta` as in MCP's trace-context proposal), or a new trace.
#[derive(Debug, Clone)]
pub(crate) struct TraceIds {
    /// The call's trace.
    pub trace_id: TraceId,
    /// This call's span.
    pub span_id: SpanId,
    /// The caller's span, when a trace was continued.
    pub parent_span_id: Option<SpanId>,
    /// Whether the caller sampled its trace (`traceparent` flags); new traces are.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub sampled: bool,
}

impl TraceIds {
    /// Continues `traceparent` if it is valid, or starts a new trace.
    pub(crate) fn continue_or_start(traceparent: Option<&str>) -> Self {
        let span_id = SpanId::random();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => Self {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled,
            },
            None => Self {
                trace_id: TraceId::random(),
                span_id,
                parent_span_id: None,
                sampled: true,
            },
        }
    }

    /// The `traceparent` of an HTTP request head or of a request's `_meta`.
    pub(crate) fn of_request(
        parts: Option<&axum::http::request::Parts>,
        meta: &rmcp::model::JsonObject,
    ) -> Self {
        let header = parts.and_then(|p| traceparent(&p.headers));
        let in_meta = meta.get("traceparent").and_then(serde_json::Value::as_str);
        Self::continue_or_start(header.or(in_meta))
    }
}

/// The `traceparent` header of a request, if it is text (validated by whoever continues it).
pub(crate) fn traceparent(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(&TRACEPARENT)?.to_str().ok()
}

/// A W3C trace id: 32 lowercase hex digits, not all zero, kept inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 32]);
inline_text!(TraceId);

/// A span id: 16 lowercase hex digits, not all zero, kept inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 16]);
inline_text!(SpanId);

impl TraceId {
    /// A new random trace id.
    pub fn random() -> Self {
        Self::from_u128(id_bits::<u128>())
    }
    /// The id of these 128 bits (an all-zero value, which W3C forbids, becomes 1).
    pub fn from_u128(v: u128) -> Self {
        let mut b = [0u8; 32];
        crate::audit::hex_into(v.max(1), &mut b);
        Self(b)
    }
    /// Reads 32 lowercase hex digits, not all zero.
    pub fn parse(s: &str) -> Option<Self> {
        lower_hex(s).map(Self)
    }
}

impl SpanId {
    /// A new random span id.
    pub fn random() -> Self {
        Self::from_u64(id_bits::<u64>())
    }
    /// The id of these 64 bits (zero becomes 1).
    pub fn from_u64(v: u64) -> Self {
        let mut b = [0u8; 16];
        crate::audit::hex_into(u128::from(v.max(1)), &mut b);
        Self(b)
    }
    /// Reads 16 lowercase hex digits, not all zero.
    pub fn parse(s: &str) -> Option<Self> {
        lower_hex(s).map(Self)
    }
}

/// `N` lowercase hex digits, not all zero.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b: [u8; N] = s.as_bytes().try_into().ok()?;
    let hex = b
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    (hex && b.iter().any(|&c| c != b'0')).then_some(b)
}

/// Random bits for trace and span ids: a per-thread `SmallRng` seeded once from the
/// thread's cryptographic generator. Ids must be unique, not secret (W3C Trace Context
/// asks for randomness, as OpenTelemetry's SDKs do with a fast generator).
fn id_bits<T>() -> T
where
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    use rand::{Rng as _, SeedableRng as _};
    thread_local! {
        static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
    }
    IDS.with_borrow_mut(|rng| rng.random())
}

/// `00-<trace id>-<parent id>-<flags>` (W3C Trace Context level 1; later versions' extra
/// fields are ignored), refusing all-zero ids (the ids' own parsers) and version `ff`.
fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex2 = |p: &str| p.len() == 2 && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex2(version) || version == "ff" || !hex2(flags) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1);
    Some((TraceId::parse(trace)?, SpanId::parse(parent)?, sampled))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are hex text kept inline: parsed strictly, serialized as strings, never zero.
    #[test]
    fn inline_ids() {
        let t = TraceId::random();
        assert_eq!(t.len(), 32);
        assert_eq!(TraceId::parse(&t), Some(t));
        assert_ne!(TraceId::random(), t);
        assert_eq!(serde_json::to_string(&t).ok(), Some(format!("\"{t}\"")));
        assert_eq!(format!("{t:?}"), format!("\"{t}\""));
        for bad in [
            "0".repeat(32),
            "A".repeat(32),
            "a".repeat(31),
            "g".repeat(32),
        ] {
            assert_eq!(TraceId::parse(&bad), None, "{bad}");
        }
        assert_eq!(TraceId::from_u128(0).as_str(), format!("{:032x}", 1));
        assert_eq!(TraceId::from_u128(u128::MAX).as_str(), "f".repeat(32));
        let s = SpanId::parse("00f067aa0ba902b7");
        assert_eq!(
            s.map(|s| s.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(SpanId::from_u64(0).as_str(), "0000000000000001");
        assert_eq!(SpanId::parse(&"0".repeat(16)), None);
        assert_eq!(SpanId::random().len(), 16);
    }

    #[test]
    fn traceparents() {
        let t = TraceIds::continue_or_start(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(&*t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(t.span_id.len(), 16);
        assert_eq!(TraceId::random().len(), 32);
        assert!(t.sampled);
        let unsampled = TraceIds::continue_or_start(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled);
        assert_eq!(&*unsampled.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let t = TraceIds::continue_or_start(Some(bad));
            assert!(t.parent_span_id.is_none(), "{bad}");
            assert_ne!(&*t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        let future = TraceIds::continue_or_start(Some(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        ));
        assert_eq!(&*future.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
