//! How many refusals are recorded one by one.
//!
//! Every refusal has its own audit record. Unbounded, that lets whoever can cause refusals
//! write to the audit log as fast as they can send requests: fill the disk, or, with rotated
//! files retained in a bounded number, rotate the records of earlier calls out of existence.
//! Two budgets bound it, each with GCRA per key and for all keys together:
//!
//! - over HTTP, per source (an IPv4 address, an IPv6 /64): every request the guard refuses
//!   without knowing who sent it (no credential, a bad one, a throttled source, a foreign
//!   `Host` or `Origin`), and every refusal of an anonymous caller (a late body, a session,
//!   an unknown tool, arguments refused, a rate limit, a missing scope);
//! - on every transport, per caller and reason: an identified caller's calls rejected before
//!   they ran for a reason that is not a security event (a rate limit, a busy tool,
//!   arguments refused, an unknown tool), which an agent looping on its own mistake can
//!   cause by the thousand a minute, and over HTTP its other such refusals (no room for a
//!   session, a late body).
//!
//! A refusal over a budget is still answered and counted in the metrics, but not recorded
//! on its own; the refusals held back are recorded as one summary record
//! ([`AuditEvent::Unrecorded`]: how many, when, for which reasons, from whom) once the
//! summary interval has passed since the first of them, and when the server stops. An
//! identified caller's security events (a missing scope, a session of another's) and every
//! call that runs are always recorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, as the timer's: a paused clock (in tests) moves both alike.
use tokio::time::Instant;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};

use crate::audit::{
    AuditEvent, AuditPrincipal, AuditRecord, AuditSink, CallerCount, Outcome, SourceCount,
    Timestamp, Unrecorded, UnrecordedReason, AUDIT_RECORD_VERSION,
};
use crate::auth::{AuthMethod, Principal};
use crate::limits::rate::{per_minute_quota, SweepPace};
use crate::telemetry::{AuditResult, TraceIds};

/// Refusals held back are summed up in one record at most this often by default (and at
/// shutdown).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The shortest summary interval a server accepts.
pub const MIN_SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// The longest summary interval a server accepts.
pub const MAX_SUMMARY_INTERVAL: Duration = Duration::from_secs(3600);

/// The default budget per key (a source, or a caller and reason): 30 records a minute,
/// bursts of 20.
pub const DEFAULT_PER_KEY: (u32, u32) = (30, 20);

/// The default budget for all keys together: 300 records a minute, bursts of 100.
pub const DEFAULT_TOTAL: (u32, u32) = (300, 100);

/// Whether `interval` is one a server accepts.
pub(crate) fn usable_interval(interval: Duration) -> bool {
    (MIN_SUMMARY_INTERVAL..=MAX_SUMMARY_INTERVAL).contains(&interval)
}

/// Most sources, and most callers, told apart in one summary; refusals from any further one
/// are counted, but not by whom.
const MAX_TOLD_APART: usize = 4_096;

/// Most sources, and most callers, named in a summary (those that sent most).
const TOP: usize = 10;

/// The budgets a refusal may be recorded within.
pub(crate) struct Budgets<'a> {
    /// Over HTTP: unknown and anonymous callers' refusals, per source.
    pub per_source: Option<&'a RefusalRecords>,
    /// Rejections that are not security events, per caller and reason.
    pub per_caller: &'a RefusalRecords,
}

/// A refusal, as the budgets see it.
pub(crate) struct Refused<'a> {
    /// The caller, if it has any identity.
    pub principal: Option<&'a Principal>,
    /// Its address, over HTTP.
    pub source: Option<IpAddr>,
    pub transport: &'static str,
    pub event: AuditEvent,
    pub reason: &'static str,
    /// The registered tool a refused call named, if any.
    pub tool: Option<&'static str>,
    pub outcome: Outcome,
}

impl Budgets<'_> {
    /// Whether `r` is recorded on its own (if not, it is held back for the next summary):
    /// an unknown or anonymous caller's refusal over HTTP within the budget per source; any
    /// other rejection that is not a security event within the budget per caller and
    /// reason; an identified caller's security event always. The one rule for the HTTP
    /// guard's refusals and the pipeline's alike.
    pub(crate) fn admit(&self, r: Refused<'_>) -> bool {
        let anonymous = r
            .principal
            .is_none_or(|p| p.method() == AuthMethod::Anonymous);
        match (self.per_source, r.source) {
            (Some(budget), Some(ip)) if anonymous => {
                budget.admit(Who::Source(ip), r.event, r.reason, r.tool, r.outcome)
            }
            _ if r.outcome == Outcome::Rejected => self.per_caller.admit(
                Who::Caller(r.principal, r.transport),
                r.event,
                r.reason,
                r.tool,
                r.outcome,
            ),
            _ => true,
        }
    }
}

/// Whose refusal it is: what a budget is kept per.
enum Who<'a> {
    /// A source address (an IPv6 one is counted by its /64).
    Source(IpAddr),
    /// A caller, by its rate-limit key (`jwt:alice`; `None`: a call without any identity),
    /// and the transport its call came through.
    Caller(Option<&'a Principal>, &'static str),
}

/// A budget's key: a source, or a caller and a reason (so that a caller cannot spend its
/// budget on one kind of rejection, an unknown tool say, to hide another, arguments refused).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    Caller(Arc<str>, &'static str),
}

/// The record budget for refusals, and the refusals held back since the last summary.
pub(crate) struct RefusalRecords {
    /// This budget, for the timer that records a summary when it is due.
    me: std::sync::Weak<RefusalRecords>,
    per_key: DefaultKeyedRateLimiter<Key>,
    total: DefaultDirectRateLimiter,
    pace: SweepPace,
    held: Mutex<Held>,
    /// Held while a summary is taken and delivered: one being delivered reaches the sink
    /// before another is taken (a forced one at shutdown comes after it), while refusals,
    /// which take only `held`, never wait on the sink.
    delivering: Mutex<()>,
    /// How long after the first refusal held back its summary is due (its timer's wait).
    every: Duration,
    /// Where summaries go: the server's sink, held so that the last summary is recorded
    /// when the last holder of the budget lets go of it.
    sink: Arc<dyn AuditSink>,
}

/// Refusals held back since the last summary.
#[derive(Default)]
struct Held {
    /// When the first and the last arrived.
    first: Option<(Timestamp, Instant)>,
    last: Option<(Timestamp, Instant)>,
    count: u64,
    /// Whether any was a security event (identity, permission).
    denied: bool,
    reasons: Vec<UnrecordedReason>,
    sources: HashMap<IpAddr, u64>,
    callers: HashMap<Arc<str>, (AuditPrincipal, u64)>,
    /// Whether a refusal came from a source, or a caller, beyond [`MAX_TOLD_APART`].
    more_sources: bool,
    more_callers: bool,
    /// The transport of the refusals held back (`mixed` if they came through several).
    transport: Option<&'static str>,
}

/// The key of calls without any identity: they share one budget.
static NO_ONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("none"));

impl RefusalRecords {
    /// `per_key` and `total` are `(per_minute, burst)` (a burst of 0: `per_minute`);
    /// `every`, how long after the first refusal held back the summary is due (a timer on
    /// the current Tokio runtime records it then; without a runtime, the summary waits for
    /// [`summarize`](Self::summarize) with `force`, or the drop); summaries go to `sink`.
    /// `None` if a rate is zero.
    pub(crate) fn new(
        per_key: (u32, u32),
        total: (u32, u32),
        every: Duration,
        sink: Arc<dyn AuditSink>,
    ) -> Option<Arc<Self>> {
        let (per_key, total) = (
            per_minute_quota(per_key.0, per_key.1)?,
            per_minute_quota(total.0, total.1)?,
        );
        Some(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            per_key: RateLimiter::keyed(per_key),
            total: RateLimiter::direct(total),
            pace: SweepPace::new(),
            held: Mutex::new(Held::default()),
            delivering: Mutex::new(()),
            every,
            sink,
        }))
    }

    /// Whether a refusal of `who`'s is recorded on its own; if not, it is held back for the
    /// next summary (and counted as `unrecorded` in the audit records metric).
    ///
    /// The key's budget is asked first, so that one over its own does not use up
    /// everyone's; while the total is used up, a key's own budget is still spent on its
    /// refusals held back (governor gives nothing back).
    /// `tool`: the registered tool a refused call named, if any.
    fn admit(
        &self,
        who: Who<'_>,
        event: AuditEvent,
        reason: &'static str,
        tool: Option<&'static str>,
        outcome: Outcome,
    ) -> bool {
        let (key, transport) = match who {
            Who::Source(ip) => (Key::Source(crate::server::http::source_key(ip)), "http"),
            Who::Caller(p, transport) => (
                Key::Caller(
                    p.map_or_else(|| NO_ONE.clone(), |p| p.rate_key().clone()),
                    reason,
                ),
                transport,
            ),
        };
        if self.pace.due() {
            self.per_key.retain_recent();
            self.pace.swept(self.per_key.len());
        }
        if self.per_key.check_key(&key).is_ok() && self.total.check().is_ok() {
            return true;
        }
        crate::telemetry::audit(AuditResult::Unrecorded);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock: `last` is the latest, whatever the threads' order.
        let now = (Timestamp::now(), Instant::now());
        if held.first.is_none() {
            held.first = Some(now);
            // Recorded when due, whatever comes next (a quiet stdio server, a flood that
            // stopped).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (me, every) = (self.me.clone(), self.every);
                runtime.spawn(async move {
                    tokio::time::sleep(every).await;
                    if let Some(me) = me.upgrade() {
                        me.summarize(false);
                    }
                });
            }
        }
        held.last = Some(now);
        held.transport = match held.transport {
            Some(t) if t != transport => Some("mixed"),
            _ => Some(transport),
        };
        held.count += 1;
        held.denied |= outcome == Outcome::Denied;
        match held
            .reasons
            .iter_mut()
            .find(|r| r.event == event && r.reason == reason && r.tool == tool)
        {
            Some(r) => r.count += 1,
            None => held.reasons.push(UnrecordedReason {
                event,
                reason,
                tool,
                count: 1,
            }),
        }
        let told_apart = held.sources.len() + held.callers.len();
        match key {
            Key::Source(ip) => match held.sources.get_mut(&ip) {
                Some(n) => *n += 1,
                None if told_apart < MAX_TOLD_APART => {
                    held.sources.insert(ip, 1);
                }
                None => held.more_sources = true,
            },
            Key::Caller(k, _) => match held.callers.get_mut(&k) {
                Some((_, n)) => *n += 1,
                None if told_apart < MAX_TOLD_APART => {
                    // As the caller's records name it, but for its tier and key id, which
                    // may differ from one of its calls to the next.
                    let mut principal = match who {
                        Who::Caller(p, _) => AuditPrincipal::of(p),
                        Who::Source(_) => AuditPrincipal::of(None),
                    };
                    principal.tier = None;
                    principal.key_id = None;
                    held.callers.insert(k, (principal, 1));
                }
                None => held.more_callers = true,
            },
        }
        false
    }

    /// Records the summary of the refusals held back, when one is due (the summary interval
    /// after the first of them: its timer), or now with `force` (shutdown, drop).
    ///
    /// A summary being recorded (by its timer, say) is in the sink before another can be
    /// taken, so a forced one at shutdown comes after it, and before the flush that follows.
    pub(crate) fn summarize(&self, force: bool) {
        let _delivering = self.delivering.lock().unwrap_or_else(|p| p.into_inner());
        let taken = self.take(
            &mut self.held.lock().unwrap_or_else(|p| p.into_inner()),
            force,
        );
        if let Some(summary) = taken.and_then(Self::build) {
            crate::audit::deliver(&*self.sink, None, &summary);
        }
    }

    /// The summary of the refusals held back, when one is due, or now with `force` (which
    /// always looks, under the lock). Taking it starts the count again.
    #[cfg(test)]
    fn summary(&self, force: bool) -> Option<AuditRecord> {
        let taken = self.take(
            &mut self.held.lock().unwrap_or_else(|p| p.into_inner()),
            force,
        );
        taken.and_then(Self::build)
    }

    /// The batch held back, when due or with `force`, from `held` (locked): the count
    /// starts again.
    fn take(&self, held: &mut Held, force: bool) -> Option<Held> {
        let (_, since) = held.first?;
        // A timer may find its batch taken (forced) and another just begun.
        if !force && since.elapsed() < self.every {
            return None;
        }
        Some(std::mem::take(held))
    }

    /// The summary record of a batch taken.
    fn build(held: Held) -> Option<AuditRecord> {
        let ((first, first_at), (last, last_at)) = (held.first?, held.last?);
        let mut top_sources: Vec<SourceCount> = held
            .sources
            .iter()
            .map(|(&source, &count)| SourceCount { source, count })
            .collect();
        // Most first; ties in address order, so that a summary reads the same every time.
        top_sources.sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.source.cmp(&b.source)));
        top_sources.truncate(TOP);
        let mut top_callers: Vec<(&Arc<str>, CallerCount)> = held
            .callers
            .iter()
            .map(|(k, (caller, count))| {
                (
                    k,
                    CallerCount {
                        caller: caller.clone(),
                        count: *count,
                    },
                )
            })
            .collect();
        top_callers.sort_unstable_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        top_callers.truncate(TOP);
        let trace = TraceIds::continue_or_start(None);
        Some(AuditRecord {
            version: AUDIT_RECORD_VERSION,
            time: first,
            trace_id: trace.trace_id,
            span_id: None,
            parent_span_id: None,
            client: None,
            event: AuditEvent::Unrecorded,
            principal: AuditPrincipal::of(None),
            tool: None,
            arguments: serde_json::Value::Null,
            outcome: if held.denied {
                Outcome::Denied
            } else {
                Outcome::Rejected
            },
            error_code: None,
            retryable: false,
            reason: Some("record_budget"),
            detail: None,
            duration_us: u64::try_from((last_at - first_at).as_micros()).unwrap_or(u64::MAX),
            transport: held.transport.unwrap_or("none"),
            source: None,
            unrecorded: Some(Box::new(Unrecorded {
                count: held.count,
                first,
                last,
                reasons: held.reasons,
                distinct_sources: held.sources.len() as u64,
                more_sources: held.more_sources,
                top_sources,
                distinct_callers: held.callers.len() as u64,
                more_callers: held.more_callers,
                top_callers: top_callers.into_iter().map(|(_, c)| c).collect(),
            })),
        })
    }
}

/// The refusals held back since the last summary are summed up when the last holder of the
/// budget lets go of it (a server dropped, calls refused after serving ended).
impl Drop for RefusalRecords {
    fn drop(&mut self) {
        self.summarize(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps what it is given.
    #[derive(Default)]
    struct Keep(Mutex<Vec<AuditRecord>>);

    impl AuditSink for Keep {
        fn record(&self, r: &AuditRecord) {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r.clone());
        }
    }

    /// A sink for budgets whose summaries the tests take with `summary`.
    fn sink() -> Arc<dyn AuditSink> {
        Arc::new(Keep::default())
    }

    const ALICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const BOB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn refuse(r: &RefusalRecords, ip: IpAddr, reason: &'static str) -> bool {
        r.admit(
            Who::Source(ip),
            AuditEvent::Authentication,
            reason,
            None,
            Outcome::Denied,
        )
    }

    #[test]
    fn a_source_over_its_budget_is_summed_up() {
        let r =
            RefusalRecords::new((1, 3), (1_000, 1_000), SUMMARY_EVERY, sink()).expect("budgets");
        let recorded = (0..10)
            .filter(|_| refuse(&r, ALICE, "missing_credentials"))
            .count();
        assert_eq!(recorded, 3, "the burst is recorded, the rest held back");
        // Another source has a budget of its own.
        assert!(refuse(&r, BOB, "invalid_token"));

        assert!(r.summary(false).is_none(), "not due before SUMMARY_EVERY");
        let summary = r.summary(true).expect("forced");
        assert_eq!(summary.event, AuditEvent::Unrecorded);
        assert_eq!(summary.outcome, Outcome::Denied);
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!(u.count, 7);
        assert_eq!(u.distinct_sources, 1);
        assert!(!u.more_sources);
        assert_eq!(
            u.top_sources,
            vec![SourceCount {
                source: ALICE,
                count: 7
            }]
        );
        assert_eq!(
            u.reasons,
            vec![UnrecordedReason {
                event: AuditEvent::Authentication,
                reason: "missing_credentials",
                tool: None,
                count: 7
            }]
        );
        assert!(u.first <= u.last);
        assert_eq!(summary.time, u.first);
        let json = summary.to_json();
        assert!(json.contains(r#""event":"unrecorded""#), "{json}");
        assert!(json.contains(r#""source":"192.0.2.1","count":7"#), "{json}");

        // Taken: the count starts again.
        assert!(r.summary(true).is_none());
        assert!(!refuse(&r, ALICE, "missing_credentials"));
        let again = r.summary(true).expect("a new summary");
        assert_eq!(again.unrecorded.as_deref().map(|u| u.count), Some(1));
    }

    #[test]
    fn all_sources_share_a_total_budget() {
        let r =
            RefusalRecords::new((1_000, 1_000), (1, 5), SUMMARY_EVERY, sink()).expect("budgets");
        let recorded = (0..40u8)
            .filter(|i| {
                let ip = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, *i));
                r.admit(
                    Who::Source(ip),
                    AuditEvent::Transport,
                    "foreign_host",
                    None,
                    Outcome::Rejected,
                )
            })
            .count();
        assert_eq!(recorded, 5);
        let summary = r.summary(true).expect("held back");
        assert_eq!(
            summary.outcome,
            Outcome::Rejected,
            "no security event held back"
        );
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!((u.count, u.distinct_sources), (35, 35));
        assert_eq!(u.top_sources.len(), TOP);
        // Ties in address order.
        assert_eq!(
            u.top_sources[0].source,
            IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 5))
        );
    }

    #[test]
    fn reasons_are_counted_apart_and_sources_by_slash_64() {
        let r =
            RefusalRecords::new((1, 1), (1_000, 1_000), SUMMARY_EVERY, sink()).expect("budgets");
        let v6 =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        assert!(refuse(&r, v6(1), "invalid_token"));
        // Same /64: same budget.
        assert!(!refuse(&r, v6(2), "invalid_token"));
        assert!(!refuse(&r, v6(3), "throttled"));
        assert!(!r.admit(
            Who::Source(v6(4)),
            AuditEvent::Session,
            "too_many_sessions",
            None,
            Outcome::Rejected
        ));
        let summary = r.summary(true).expect("held back");
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!(u.distinct_sources, 1);
        assert_eq!(u.top_sources[0].source, v6(0));
        let reasons: Vec<_> = u
            .reasons
            .iter()
            .map(|r| (r.event, r.reason, r.count))
            .collect();
        assert_eq!(
            reasons,
            [
                (AuditEvent::Authentication, "invalid_token", 1),
                (AuditEvent::Authentication, "throttled", 1),
                (AuditEvent::Session, "too_many_sessions", 1),
            ]
        );
    }

    #[test]
    fn sources_beyond_the_cap_are_counted_not_told_apart() {
        let r = RefusalRecords::new((1, 1), (u32::MAX, u32::MAX), SUMMARY_EVERY, sink())
            .expect("budgets");
        let n = MAX_TOLD_APART as u32 + 10;
        for i in 0..n {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(refuse(&r, ip, "invalid_token"), "first from each source");
            assert!(!refuse(&r, ip, "invalid_token"));
        }
        let summary = r.summary(true).expect("held back");
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!(u.count, u64::from(n));
        assert_eq!(u.distinct_sources, MAX_TOLD_APART as u64);
        assert!(u.more_sources);
    }

    #[test]
    fn a_source_over_its_own_budget_leaves_the_total_alone() {
        let r = RefusalRecords::new((1, 2), (1, 3), SUMMARY_EVERY, sink()).expect("budgets");
        let recorded = (0..10)
            .filter(|_| refuse(&r, ALICE, "invalid_token"))
            .count();
        assert_eq!(recorded, 2);
        // One of the total's three is left for another source, however many Alice sent.
        assert!(refuse(&r, BOB, "invalid_token"));
        assert!(!refuse(&r, BOB, "invalid_token"), "the total is used up");
    }

    #[test]
    fn a_summary_is_due_the_interval_after_the_first_refusal_held_back() {
        let every = Duration::from_millis(50);
        let r = RefusalRecords::new((1, 1), (1_000, 1_000), every, sink()).expect("budgets");
        assert!(refuse(&r, ALICE, "invalid_token"));
        assert!(r.summary(false).is_none(), "nothing held back");
        assert!(!refuse(&r, ALICE, "invalid_token"));
        assert!(r.summary(false).is_none(), "not due yet");
        std::thread::sleep(every);
        assert!(!refuse(&r, ALICE, "invalid_token"));
        let summary = r.summary(false).expect("due");
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!(u.count, 2);
        assert!(
            summary.duration_us >= 50_000,
            "first to last: {}",
            summary.duration_us
        );
        // The next one is due the interval after the next refusal held back.
        assert!(!refuse(&r, ALICE, "invalid_token"));
        assert!(r.summary(false).is_none());
    }

    #[test]
    fn an_ipv6_source_is_written_as_its_slash_64() {
        let r =
            RefusalRecords::new((1, 1), (1_000, 1_000), SUMMARY_EVERY, sink()).expect("budgets");
        let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
        assert!(refuse(&r, ip, "invalid_token"));
        assert!(!refuse(&r, ip, "invalid_token"));
        let json = r.summary(true).expect("held back").to_json();
        assert!(json.contains(r#""source":"2001:db8:1:2::/64""#), "{json}");
    }

    #[test]
    fn callers_are_counted_by_their_rate_key_and_named_as_their_records_name_them() {
        let r =
            RefusalRecords::new((1, 2), (1_000, 1_000), SUMMARY_EVERY, sink()).expect("budgets");
        let alice = Principal::local("alice", ["db:read"]);
        let bob = Principal::local("bob", ["db:read"]);
        let reject = |p: Option<&Principal>, transport| {
            r.admit(
                Who::Caller(p, transport),
                AuditEvent::ToolCall,
                "rate_limited",
                None,
                Outcome::Rejected,
            )
        };
        let recorded = (0..10).filter(|_| reject(Some(&alice), "stdio")).count();
        assert_eq!(recorded, 2);
        assert!(
            reject(Some(&bob), "stdio"),
            "another caller has its own budget"
        );
        assert!(reject(Some(&bob), "stdio"));
        assert!(!reject(Some(&bob), "local"));
        assert!(reject(None, "stdio"), "no identity: one budget of its own");
        let summary = r.summary(true).expect("held back");
        assert_eq!(summary.transport, "mixed");
        assert_eq!(summary.outcome, Outcome::Rejected);
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!((u.count, u.distinct_callers, u.distinct_sources), (9, 2, 0));
        let top: Vec<_> = u
            .top_callers
            .iter()
            .map(|c| (c.caller.subject.as_deref(), c.caller.auth_method, c.count))
            .collect();
        assert_eq!(
            top,
            [(Some("alice"), "local", 8), (Some("bob"), "local", 1)]
        );
        let json = summary.to_json();
        assert!(
            json.contains(
                r#""top_callers":[{"caller":{"subject":"alice","auth_method":"local"},"count":8}"#
            ),
            "{json}"
        );
        assert!(!json.contains("top_sources"), "{json}");
    }

    #[test]
    fn a_caller_cannot_spend_one_reason_s_budget_to_hide_another() {
        let r =
            RefusalRecords::new((1, 1), (1_000, 1_000), SUMMARY_EVERY, sink()).expect("budgets");
        let alice = Principal::local("alice", ["db:read"]);
        let reject = |reason, tool| {
            r.admit(
                Who::Caller(Some(&alice), "stdio"),
                AuditEvent::ToolCall,
                reason,
                tool,
                Outcome::Rejected,
            )
        };
        assert!(reject("unknown_tool", None));
        assert!(!reject("unknown_tool", None));
        assert!(
            reject("invalid_arguments", Some("query")),
            "a budget of its own"
        );
        assert!(!reject("invalid_arguments", Some("query")));
        assert!(!reject("invalid_arguments", Some("other")));
        let summary = r.summary(true).expect("held back");
        let reasons: Vec<_> = summary
            .unrecorded
            .as_deref()
            .expect("the summary")
            .reasons
            .iter()
            .map(|r| (r.reason, r.tool, r.count))
            .collect();
        assert_eq!(
            reasons,
            [
                ("unknown_tool", None, 1),
                ("invalid_arguments", Some("query"), 1),
                ("invalid_arguments", Some("other"), 1)
            ]
        );
        assert!(summary
            .to_json()
            .contains(r#""reason":"invalid_arguments","tool":"query","count":1"#));
    }

    #[test]
    fn callers_beyond_the_cap_are_counted_not_told_apart() {
        let r = RefusalRecords::new((1, 1), (u32::MAX, u32::MAX), SUMMARY_EVERY, sink())
            .expect("budgets");
        let n = MAX_TOLD_APART + 3;
        for i in 0..n {
            let p = Principal::local(format!("caller-{i}"), ["x"]);
            let who = || Who::Caller(Some(&p), "local");
            assert!(r.admit(
                who(),
                AuditEvent::ToolCall,
                "rate_limited",
                None,
                Outcome::Rejected
            ));
            assert!(!r.admit(
                who(),
                AuditEvent::ToolCall,
                "rate_limited",
                None,
                Outcome::Rejected
            ));
        }
        let summary = r.summary(true).expect("held back");
        let u = summary.unrecorded.as_deref().expect("the summary");
        assert_eq!(u.count, n as u64);
        assert_eq!(u.distinct_callers, MAX_TOLD_APART as u64);
        assert!(u.more_callers);
        // Ties (one each) in key order.
        assert_eq!(u.top_callers[0].caller.subject.as_deref(), Some("caller-0"));
    }

    #[tokio::test]
    async fn a_timer_records_the_summary_when_it_is_due() {
        let keep = Arc::new(Keep::default());
        let every = Duration::from_millis(100);
        let r = RefusalRecords::new((1, 1), (1_000, 1_000), every, keep.clone()).expect("budgets");
        assert!(refuse(&r, ALICE, "invalid_token"));
        assert!(!refuse(&r, ALICE, "invalid_token"));
        tokio::time::sleep(every * 5).await;
        let kept = keep.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(kept.len(), 1, "recorded by its timer, nothing else asked");
        assert_eq!(kept[0].unrecorded.as_deref().map(|u| u.count), Some(1));
        // Dropped with nothing held: nothing more.
        drop(r);
        assert_eq!(keep.0.lock().unwrap_or_else(|p| p.into_inner()).len(), 1);
    }

    /// The one rule: which budget a refusal is recorded within, if any.
    #[test]
    fn each_refusal_meets_the_budget_its_caller_and_outcome_call_for() {
        let tight =
            || RefusalRecords::new((1, 1), (1_000, 1_000), SUMMARY_EVERY, sink()).expect("budgets");
        let (per_source, per_caller) = (tight(), tight());
        let budgets = Budgets {
            per_source: Some(&per_source),
            per_caller: &per_caller,
        };
        let alice = Principal::local("alice", ["x"]);
        let anonymous = Principal::anonymous();
        let refused = |principal, outcome| Refused {
            principal,
            source: Some(ALICE),
            transport: "http",
            event: AuditEvent::ToolCall,
            reason: "rate_limited",
            tool: None,
            outcome,
        };
        // An identified caller's security event: always.
        for _ in 0..3 {
            assert!(budgets.admit(refused(Some(&alice), Outcome::Denied)));
        }
        // Its rejections: per caller and reason (the burst of 1, then held back).
        assert!(budgets.admit(refused(Some(&alice), Outcome::Rejected)));
        assert!(!budgets.admit(refused(Some(&alice), Outcome::Rejected)));
        // Unknown and anonymous callers, security events included: per source.
        assert!(budgets.admit(refused(None, Outcome::Denied)));
        assert!(!budgets.admit(refused(Some(&anonymous), Outcome::Rejected)));
        assert!(!budgets.admit(refused(None, Outcome::Denied)));
        let by_source = per_source.summary(true).expect("held back");
        assert_eq!(
            by_source
                .unrecorded
                .as_deref()
                .map(|u| (u.count, u.distinct_sources)),
            Some((2, 1))
        );
        let by_caller = per_caller.summary(true).expect("held back");
        assert_eq!(
            by_caller
                .unrecorded
                .as_deref()
                .map(|u| (u.count, u.distinct_callers)),
            Some((1, 1))
        );
        // Without a budget per source (not HTTP): no identity is one caller for rejections,
        // and its security events are always recorded.
        let budgets = Budgets {
            per_source: None,
            per_caller: &per_caller,
        };
        let local = |outcome| Refused {
            source: None,
            transport: "stdio",
            ..refused(None, outcome)
        };
        assert!(budgets.admit(local(Outcome::Denied)));
        assert!(budgets.admit(local(Outcome::Denied)));
        assert!(budgets.admit(local(Outcome::Rejected)));
        assert!(!budgets.admit(local(Outcome::Rejected)));
    }

    #[test]
    fn a_zero_rate_is_refused() {
        assert!(RefusalRecords::new((0, 1), (1, 1), SUMMARY_EVERY, sink()).is_none());
        assert!(RefusalRecords::new((1, 1), (0, 1), SUMMARY_EVERY, sink()).is_none());
    }
}
