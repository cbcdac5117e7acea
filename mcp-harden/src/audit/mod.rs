//! Audit: one [`AuditRecord`] per call, whatever happened, through an [`AuditSink`].
//!
//! The default sink, [`TracingAuditSink`], emits each record as one JSON string in a
//! `tracing` event with target `mcp_harden::audit`. Where it goes is the subscriber's choice;
//! on stdio it must be stderr, never stdout, which carries the protocol.

pub mod budget;
pub mod file;
mod redact;

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

pub use crate::telemetry::{SpanId, TraceId};
pub use file::{FileAuditConfig, FileAuditSink, Fsync, QueueFull};
pub use redact::{
    is_credential_name, is_credential_name_const, pair_role, redact_credentials, redact_entries,
    redact_entry, redact_items, PairSeen, REDACTED,
};

/// The version of the audit record format.
pub const AUDIT_RECORD_VERSION: u32 = 3;

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The tool ran and returned a result.
    Success,
    /// Refused before the tool ran for an identity or permission reason (a security event).
    Denied,
    /// Refused before the tool ran for another reason (rate, arguments, unknown tool, an
    /// HTTP request body not received in time).
    Rejected,
    /// The tool ran and failed (its own error, a timeout, a panic, a cancellation).
    Failed,
}

impl Outcome {
    /// A refusal before any tool ran with `code`: a security event (identity, permission)
    /// is `Denied`, anything else `Rejected`.
    pub(crate) fn of_refusal(code: crate::errors::ErrorCode) -> Self {
        if code.is_security_event() {
            Outcome::Denied
        } else {
            Outcome::Rejected
        }
    }
}

/// The client application as it named itself (untrusted, recorded as given, cut to 128
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditClient {
    /// The client's name.
    pub name: String,
    /// The client's version.
    pub version: String,
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A `tools/call`, whatever its outcome.
    ToolCall,
    /// An HTTP request refused for its credentials (missing, invalid, throttled).
    Authentication,
    /// An HTTP request refused for how it arrived: a foreign `Host` or `Origin` (before
    /// authentication), or a POST body not received in time.
    Transport,
    /// An HTTP request refused for its session: one that belongs to another principal
    /// (reason `session_owned_by_another_principal`), or a new one beyond the server's or
    /// the caller's bound (`too_many_sessions`, `too_many_sessions_for_caller`).
    Session,
    /// Refusals not recorded one by one, over a record budget (for requests of unknown or
    /// anonymous callers over HTTP,
    /// [`HttpConfig::refusal_records_per_source`](crate::server::http::HttpConfig::refusal_records_per_source);
    /// for identified callers' rejected calls,
    /// [`HardenedBuilder::rejected_records_per_caller`](crate::HardenedBuilder::rejected_records_per_caller)):
    /// one summary ([`AuditRecord::unrecorded`]) stands for them, reason `record_budget`.
    Unrecorded,
}

/// Refusals summed up in one record ([`AuditEvent::Unrecorded`]) instead of one record
/// each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Unrecorded {
    /// How many refusals (requests or calls).
    pub count: u64,
    /// When the first arrived (also the record's `time`).
    pub first: Timestamp,
    /// When the last arrived.
    pub last: Timestamp,
    /// How many for each event, reason and tool, in order of first appearance.
    pub reasons: Vec<UnrecordedReason>,
    /// From how many sources (IPv4 addresses, IPv6 /64 networks; over HTTP, refusals of
    /// unknown or anonymous callers), at most 4 096 told apart.
    #[serde(skip_serializing_if = "is_zero")]
    pub distinct_sources: u64,
    /// Whether further sources sent some too, counted in `count` but not told apart.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_sources: bool,
    /// The sources that sent most, most first (at most 10).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_sources: Vec<SourceCount>,
    /// From how many callers (identified callers' rejected calls, and over HTTP their
    /// session and late-body refusals; calls without any identity count as one caller), at
    /// most 4 096 told apart.
    #[serde(skip_serializing_if = "is_zero")]
    pub distinct_callers: u64,
    /// Whether further callers made some too, counted in `count` but not told apart.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_callers: bool,
    /// The callers that made most, most first (at most 10).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_callers: Vec<CallerCount>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How many refusals of a summary one caller made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CallerCount {
    /// The caller: its subject and authentication method (its tier and key id, which may
    /// change from one call to the next, are left out).
    pub caller: AuditPrincipal,
    /// How many.
    pub count: u64,
}

/// How many refusals of one event, reason and tool a summary stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UnrecordedReason {
    /// The event the refusals would have been recorded as.
    pub event: AuditEvent,
    /// Their reason, as their own records would have had it: a refused request's
    /// (`missing_credentials`, `foreign_host`, …) or a refused call's (`unknown_tool`,
    /// `invalid_arguments`, `rate_limited`, …).
    pub reason: &'static str,
    /// The tool the calls named, for calls the pipeline refused that named a registered one
    /// (requests the HTTP guard refused have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<&'static str>,
    /// How many.
    pub count: u64,
}

/// How many refusals of a summary came from one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SourceCount {
    /// An IPv4 address, or an IPv6 /64 network's first address (serialized as the network:
    /// `2001:db8::/64`).
    #[serde(serialize_with = "source_key")]
    pub source: std::net::IpAddr,
    /// How many.
    pub count: u64,
}

/// The caller as recorded: never a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPrincipal {
    /// The subject, or `None` when the caller had no identity.
    pub subject: Option<Arc<str>>,
    /// How the caller was authenticated.
    pub auth_method: &'static str,
    /// The caller's tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Arc<str>>,
    /// The id of the credential (an API key's id), never the credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Arc<str>>,
}

impl AuditPrincipal {
    pub(crate) fn of(p: Option<&crate::Principal>) -> Self {
        match p {
            // The principal's own strings, shared: no copy per record.
            Some(p) => Self {
                subject: Some(p.subject_arc().clone()),
                auth_method: p.method().as_str(),
                tier: p.tier_arc().cloned(),
                key_id: p.key_id_arc().cloned(),
            },
            None => Self {
                subject: None,
                auth_method: "none",
                tier: None,
                key_id: None,
            },
        }
    }
}

/// Serializes a summary's source: an IPv4 address as it is, an IPv6 one as its /64.
fn source_key<S: serde::Serializer>(ip: &std::net::IpAddr, s: S) -> Result<S::Ok, S::Error> {
    match ip {
        std::net::IpAddr::V4(v4) => s.collect_str(v4),
        std::net::IpAddr::V6(v6) => s.collect_str(&format_args!("{v6}/64")),
    }
}

/// One record per tool call, and one per refused HTTP request; refusals over a record budget
/// are summed up instead ([`AuditEvent::Unrecorded`]). A summary's principal is
/// `{"subject": null, "auth_method": "none"}`, as an unauthenticated refusal's: filter on
/// `event`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// The record format version ([`AUDIT_RECORD_VERSION`]).
    pub version: u32,
    /// When the call arrived, RFC 3339 UTC with milliseconds (a summary: when the first
    /// refusal it stands for arrived).
    pub time: Timestamp,
    /// The call's trace id (32 hex digits): the caller's when it sent a W3C `traceparent`.
    pub trace_id: TraceId,
    /// The call's span id (16 hex digits); absent for refused HTTP requests and summaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<SpanId>,
    /// The caller's span, when it sent a `traceparent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    /// The client application, from its `initialize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<AuditClient>>,
    /// What the record is about.
    pub event: AuditEvent,
    /// The caller.
    pub principal: AuditPrincipal,
    /// The tool name as requested (tool calls, and scope challenges over HTTP), cut to 128
    /// characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<Cow<'static, str>>,
    /// The arguments with secrets and credential-like fields redacted (tool calls only).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub arguments: serde_json::Value,
    /// What happened.
    pub outcome: Outcome,
    /// The error code sent to the client, if the call did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// Whether the client was told it may retry.
    pub retryable: bool,
    /// Why a request was refused before reaching a tool (e.g. `expired`, `wrong_audience`,
    /// `foreign_origin`), or a call before its tool ran (`unknown_tool`, `invalid_arguments`,
    /// `rate_limited`, `insufficient_scope`, …); a summary's is `record_budget`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Server-side detail of a failure (the tool error's text, a panic message). Never sent
    /// to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Time from arrival to reply, in microseconds (a summary: from the first refusal it
    /// stands for to the last).
    pub duration_us: u64,
    /// The transport the call came through (`stdio`, `local`, `http`; a summary of refusals
    /// from several: `mixed`).
    pub transport: &'static str,
    /// The peer's address, over HTTP (serialized as `ip:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::SocketAddr>,
    /// What a summary record ([`AuditEvent::Unrecorded`]) stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecorded: Option<Box<Unrecorded>>,
}

impl AuditRecord {
    /// The record as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"version":{AUDIT_RECORD_VERSION},"error":"audit record not serializable: {e}"}}"#)
        })
    }
}

/// Where audit records go. Implement it for a SIEM, a database or a test collector.
///
/// A sink that writes through a bounded queue also implements [`reserve`](Self::reserve):
/// every call takes a slot before it runs, so that when the queue is full the call is
/// refused (`UNAVAILABLE`, retryable) instead of its record being lost.
pub trait AuditSink: Send + Sync + 'static {
    /// Records one call or security event. Called once per call, after the reply is decided.
    fn record(&self, record: &AuditRecord);

    /// Takes a slot for one call's record before the call runs; `Err` refuses the call.
    /// The default has no queue and always succeeds.
    fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        Ok(AuditSlot(None))
    }

    /// Records a call into the slot [`reserve`](Self::reserve) gave it. The default calls
    /// [`record`](Self::record).
    fn record_reserved(&self, slot: AuditSlot, record: &AuditRecord) {
        drop(slot);
        self.record(record);
    }

    /// Waits until every record handed to the sink before the call is written (and synced,
    /// per the sink's policy), or `timeout` passes; returns whether it finished. A blocking
    /// call, meant for shutdown: records still queued when the process exits are lost. The
    /// default has no queue and returns `true`.
    fn flush(&self, timeout: std::time::Duration) -> bool {
        let _ = timeout;
        true
    }
}

/// A slot in an audit sink's queue, held by a call from before it runs until its record is
/// written.
#[derive(Debug, Default)]
pub struct AuditSlot(pub(crate) Option<tokio::sync::OwnedSemaphorePermit>);

impl AuditSlot {
    /// A slot that holds nothing (for sinks without a queue).
    pub fn unreserved() -> Self {
        Self(None)
    }

    /// A slot holding a permit of the sink's own semaphore, released when the record is
    /// written (the slot dropped).
    pub fn with_permit(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self(Some(permit))
    }
}

/// The audit sink cannot take another record now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log cannot take another record now")]
pub struct AuditUnavailable;

/// Two sinks: `(FileAuditSink, TracingAuditSink)` writes the chained file and logs. The
/// first decides reservations (put the queued sink first); both get every record.
impl<A: AuditSink, B: AuditSink> AuditSink for (A, B) {
    fn record(&self, record: &AuditRecord) {
        self.0.record(record);
        self.1.record(record);
    }
    fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        self.0.reserve()
    }
    fn record_reserved(&self, slot: AuditSlot, record: &AuditRecord) {
        self.0.record_reserved(slot, record);
        self.1.record(record);
    }
    /// Flushes both, the second with what is left of `timeout`.
    fn flush(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let first = self.0.flush(timeout);
        let left = deadline.map_or(timeout, |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        let second = self.1.flush(left);
        first && second
    }
}

/// The default sink: one `tracing` event per record, target `mcp_harden::audit`, level
/// INFO (WARN for denials and every other security event), field `record` holding the record as JSON.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingAuditSink;

impl AuditSink for TracingAuditSink {
    fn record(&self, record: &AuditRecord) {
        // A summary is a security event when what it stands for is.
        let security = match record.event {
            AuditEvent::ToolCall | AuditEvent::Unrecorded => record.outcome == Outcome::Denied,
            _ => true,
        };
        let enabled = if security {
            tracing::enabled!(target: "mcp_harden::audit", tracing::Level::WARN)
        } else {
            tracing::enabled!(target: "mcp_harden::audit", tracing::Level::INFO)
        };
        if !enabled {
            return;
        }
        let json = record.to_json();
        match (security, record.event == AuditEvent::Unrecorded) {
            (true, true) => {
                tracing::warn!(target: "mcp_harden::audit", record = %json, "refusals summed up")
            }
            (true, false) => {
                tracing::warn!(target: "mcp_harden::audit", record = %json, "security event")
            }
            (false, true) => {
                tracing::info!(target: "mcp_harden::audit", record = %json, "refusals summed up")
            }
            (false, false) => {
                tracing::info!(target: "mcp_harden::audit", record = %json, "tool call")
            }
        }
    }
}

/// Hands `record` to `sink` (into `slot` if the call reserved one). A panicking sink loses
/// the record, never the reply: the loss is logged.
pub(crate) fn deliver(sink: &dyn AuditSink, slot: Option<AuditSlot>, record: &AuditRecord) {
    crate::telemetry::audit(crate::telemetry::AuditResult::Recorded);
    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match slot {
        Some(slot) => sink.record_reserved(slot, record),
        None => sink.record(record),
    }));
    if delivered.is_err() {
        tracing::error!(target: "mcp_harden::audit", trace_id = %record.trace_id, "the audit sink panicked; the record is lost");
    }
}

/// The low `4 * N` bits of `v` as `N` lowercase hex digits, zero-padded, written into `buf`
/// (no allocation).
pub(crate) fn hex_into<const N: usize>(v: u128, buf: &mut [u8; N]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Two digits per byte, lowest byte last.
    let mut v = v;
    for pair in buf.rchunks_mut(2) {
        let byte = (v & 0xff) as usize;
        if let [hi, lo] = pair {
            *hi = DIGITS[byte >> 4];
            *lo = DIGITS[byte & 0xf];
            v >>= 8;
        } else {
            pair[0] = DIGITS[byte & 0xf];
            v >>= 4;
        }
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// The longest prefix of `s` of at most `max` characters, without copying.
pub(crate) fn cut_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// A UTC time as RFC 3339 with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`), kept inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp([u8; 24]);
inline_text!(Timestamp);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        rfc3339(now.as_secs(), now.subsec_millis())
    }
}

/// `secs` since the epoch plus `millis` as `YYYY-MM-DDTHH:MM:SS.mmmZ`. This runs once per
/// call: the date and time of the last second formatted on this thread are kept, and only
/// the milliseconds are written anew within the same second.
fn rfc3339(secs: u64, millis: u32) -> Timestamp {
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 24])> =
            const { std::cell::Cell::new((u64::MAX, *b"0000-00-00T00:00:00.000Z")) };
    }
    let (last, mut b) = LAST.get();
    let put = |b: &mut [u8; 24], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    if last != secs {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        put(&mut b, 0, 4, y.clamp(0, 9999) as u64);
        put(&mut b, 5, 2, u64::from(m));
        put(&mut b, 8, 2, u64::from(d));
        put(&mut b, 11, 2, rem / 3600);
        put(&mut b, 14, 2, (rem % 3600) / 60);
        put(&mut b, 17, 2, rem % 60);
        LAST.set((secs, b));
    }
    put(&mut b, 20, 3, u64::from(millis.min(999)));
    Timestamp(b)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(hex_into(0xabc, &mut [0u8; 16]), "0000000000000abc");
        assert_eq!(
            hex_into(u128::MAX, &mut [0u8; 32]),
            "ffffffffffffffffffffffffffffffff"
        );
        assert_eq!(hex_into(0x1234, &mut [0u8; 5]), "01234");
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_556_465, 7), "2026-11-24T21:41:05.007Z");
        assert_eq!(rfc3339(1_795_556_465, 999), "2026-11-24T21:41:05.999Z");
        assert_eq!(rfc3339(1_795_556_466, 0), "2026-11-24T21:41:06.000Z");
        assert_eq!(rfc3339(951_782_400, 1), "2000-02-29T00:00:00.001Z");
        assert_eq!(
            serde_json::to_string(&rfc3339(0, 0)).ok().as_deref(),
            Some("\"1970-01-01T00:00:00.000Z\"")
        );
        assert_eq!(cut_chars("héllo", 2), "hé");
        assert_eq!(cut_chars("hé", 5), "hé");
        let t = Timestamp::now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
        assert!(
            t.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                13 | 16 => b == b':',
                19 => b == b'.',
                10 => b == b'T',
                23 => b == b'Z',
                _ => b.is_ascii_digit(),
            }),
            "{t}"
        );
    }
}
