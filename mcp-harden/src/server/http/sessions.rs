//! Stateful HTTP sessions: whose each one is, and how many there may be.
//!
//! rmcp ties a session to no caller and bounds neither their number nor their owners'.
//! [`OwnedSessions`] wraps rmcp's [`LocalSessionManager`] and keeps, beside its map, the
//! owner of every session it holds ([`Sessions`]):
//!
//! - rmcp creates a session within the request that opens it; the guard runs that request
//!   with its caller in a task-local ([`Opener`]), so that `create_session` can take a place
//!   for the caller first and attribute the session as soon as rmcp has made it: before
//!   anyone can know its id, and even if the client leaves before the reply. A request that
//!   opens no session (rmcp serves some session-less requests directly) takes no place.
//! - a place is refused when the caller holds `max_per_caller` sessions (counted by its
//!   rate-limit key: `jwt:alice`; an anonymous caller by source address, an IPv6 one by
//!   /64), when anonymous callers together hold `max_anonymous`, or when the server holds
//!   `max_total`; the guard turns the refusal into its answer ([`Opener::refused`]).
//! - a session is forgotten once rmcp has closed it: a DELETE, or the end of its worker
//!   (idle past the keep-alive, a failed handshake, shutdown), which always closes it.
//!   The table is rmcp's map with owners: no sweep, and no entry outlives its session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{ServerSseMessage, SessionManager};
use rmcp::transport::streamable_http_server::SessionId;

use crate::auth::{AuthMethod, Principal};

tokio::task_local! {
    /// The caller of the request being served, for [`OwnedSessions::create_session`], which
    /// rmcp runs within that request's future.
    static OPENER: Opener;
}

/// The caller of a request that may open a session, and the bound that refused it one.
pub(super) struct Opener {
    principal: Arc<Principal>,
    refused: Arc<OnceLock<Full>>,
}

impl Opener {
    pub(super) fn new(principal: Arc<Principal>) -> Self {
        Self {
            principal,
            refused: Arc::default(),
        }
    }

    /// Where a refusal will be noted: read it once the request has been served.
    pub(super) fn refused(&self) -> Arc<OnceLock<Full>> {
        self.refused.clone()
    }

    /// Runs `future` (rmcp's handling of the request) as this caller's.
    pub(super) fn scope<F: std::future::Future>(
        self,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> {
        OPENER.scope(self, future)
    }
}

/// Who owns a session: how they authenticated and as whom.
#[derive(Debug)]
struct Owner {
    method: AuthMethod,
    subject: Arc<str>,
    key_id: Option<Arc<str>>,
    /// What the per-caller bound counts by: the principal's rate-limit key.
    caller: Arc<str>,
}

impl Owner {
    fn of(p: &Principal) -> Self {
        Self {
            method: p.method(),
            subject: p.subject_arc().clone(),
            key_id: p.key_id_arc().cloned(),
            caller: p.rate_key().clone(),
        }
    }

    /// Whether `p` is this owner (compared in place: nothing is built per request).
    fn is(&self, p: &Principal) -> bool {
        self.method == p.method()
            && *self.subject == **p.subject_arc()
            && self.key_id.as_deref() == p.key_id_arc().map(|k| &**k)
    }

    fn anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }
}

/// Every live session's owner, and the bounds on how many there are.
pub(super) struct Sessions {
    table: Mutex<Table>,
    bounds: Bounds,
}

/// The most sessions held at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// By the server.
    pub total: usize,
    /// By one caller.
    pub per_caller: usize,
    /// By anonymous callers together.
    pub anonymous: usize,
}

#[derive(Default)]
struct Table {
    /// The sessions rmcp holds, by id, and whose they are.
    live: HashMap<SessionId, Owner>,
    /// Sessions held or being opened, per caller (none: no entry).
    per_caller: HashMap<Arc<str>, usize>,
    /// Sessions held or being opened by anonymous callers.
    anonymous: usize,
    /// Sessions being opened: a place taken, the session not yet made by rmcp.
    opening: usize,
}

impl Table {
    fn release(&mut self, owner: &Owner) {
        if let Some(n) = self.per_caller.get_mut(&owner.caller) {
            *n -= 1;
            if *n == 0 {
                self.per_caller.remove(&owner.caller);
            }
        }
        if owner.anonymous() {
            self.anonymous -= 1;
        }
    }
}

/// Whether a principal may use a session.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SessionCheck {
    Owner,
    Foreign,
    Unknown,
}

/// Which bound refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// The caller holds its most sessions.
    Caller,
    /// Anonymous callers together hold their most sessions.
    Anonymous,
    /// The server holds its most sessions.
    Server,
}

impl Full {
    /// The metrics label.
    pub(super) fn label(self) -> &'static str {
        match self {
            Full::Caller => "caller",
            Full::Anonymous => "anonymous",
            Full::Server => "server",
        }
    }
}

impl Sessions {
    pub(super) fn new(bounds: Bounds) -> Self {
        Self {
            table: Mutex::default(),
            bounds,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Every change below completes under the lock or not at all: a poisoned table is
        // still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `who` owns session `id`.
    pub(super) fn check(&self, id: &str, who: &Principal) -> SessionCheck {
        match self.table().live.get(id) {
            Some(owner) if owner.is(who) => SessionCheck::Owner,
            Some(_) => SessionCheck::Foreign,
            None => SessionCheck::Unknown,
        }
    }

    /// Takes a place for a session of `who`'s, unless a bound is reached (the caller's first,
    /// as the caller can act on it).
    fn reserve(self: &Arc<Self>, who: &Principal) -> Result<Opening, Full> {
        let owner = Owner::of(who);
        let mut table = self.table();
        let held = table.per_caller.get(&owner.caller).copied().unwrap_or(0);
        if held >= self.bounds.per_caller {
            return Err(Full::Caller);
        }
        if owner.anonymous() && table.anonymous >= self.bounds.anonymous {
            return Err(Full::Anonymous);
        }
        if table.live.len() + table.opening >= self.bounds.total {
            return Err(Full::Server);
        }
        *table.per_caller.entry(owner.caller.clone()).or_insert(0) += 1;
        table.anonymous += usize::from(owner.anonymous());
        table.opening += 1;
        Ok(Opening {
            sessions: self.clone(),
            owner: Some(owner),
        })
    }

    /// rmcp has closed session `id`: its owner's place is free.
    fn closed(&self, id: &str) {
        let mut table = self.table();
        if let Some(owner) = table.live.remove(id) {
            table.release(&owner);
            crate::telemetry::http_session(false);
        }
    }
}

/// A place taken for a session: the session made by rmcp ([`Opening::opened`]) or, if not
/// (rmcp failed, the request was dropped), the place freed when this is dropped.
struct Opening {
    sessions: Arc<Sessions>,
    owner: Option<Owner>,
}

impl Opening {
    /// rmcp made session `id` in this place.
    fn opened(mut self, id: SessionId) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        let mut table = self.sessions.table();
        table.opening -= 1;
        match table.live.insert(id, owner) {
            // Not seen: rmcp's ids are random. The place must not leak all the same.
            Some(old) => table.release(&old),
            None => crate::telemetry::http_session(true),
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            let mut table = self.sessions.table();
            table.opening -= 1;
            table.release(&owner);
        }
    }
}

/// rmcp's [`LocalSessionManager`], each session's owner kept in [`Sessions`].
pub(super) struct OwnedSessions {
    inner: LocalSessionManager,
    sessions: Arc<Sessions>,
}

impl OwnedSessions {
    pub(super) fn new(inner: LocalSessionManager, sessions: Arc<Sessions>) -> Self {
        Self { inner, sessions }
    }
}

/// Why a session operation failed (rmcp answers a 500 with no detail of it; the guard
/// answers a refusal in its place).
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionsError {
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
    /// rmcp asked for a session outside a request run by the guard: refused, as there is
    /// no owner to give it.
    #[error("no caller for this session")]
    NoCaller,
    /// A bound is reached.
    #[error("no room for another session ({})", .0.label())]
    Full(Full),
}

impl SessionManager for OwnedSessions {
    type Error = SessionsError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let (principal, refused) = OPENER
            .try_with(|o| (o.principal.clone(), o.refused.clone()))
            .map_err(|_| SessionsError::NoCaller)?;
        let opening = self.sessions.reserve(&principal).map_err(|full| {
            let _ = refused.set(full);
            SessionsError::Full(full)
        })?;
        let (id, transport) = self.inner.create_session().await?;
        opening.opened(id.clone());
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        // rmcp's map first: if this future is dropped before it is done, the worker's end
        // closes the session again, and the place is freed then, never before.
        let closed = self.inner.close_session(id).await;
        self.sessions.closed(id);
        Ok(closed?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.resume(id, last_event_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(total: usize, per_caller: usize, anonymous: usize) -> Arc<Sessions> {
        Arc::new(Sessions::new(Bounds {
            total,
            per_caller,
            anonymous,
        }))
    }

    /// (live, opening, places counted per caller, anonymous places)
    fn counts(s: &Sessions) -> (usize, usize, usize, usize) {
        let t = s.table();
        (
            t.live.len(),
            t.opening,
            t.per_caller.values().sum(),
            t.anonymous,
        )
    }

    fn anonymous(source: &str) -> Principal {
        Principal::new(
            format!("anonymous@{source}"),
            Vec::<String>::new(),
            AuthMethod::Anonymous,
        )
    }

    #[test]
    fn a_caller_holds_at_most_its_bound_counting_places_being_opened() {
        let s = sessions(10, 2, 10);
        let alice = Principal::local("alice", ["db:read"]);
        let bob = Principal::local("bob", ["db:read"]);
        let first = s.reserve(&alice).expect("room");
        let second = s.reserve(&alice).expect("room");
        // Two places taken, no session made yet: the third is refused all the same.
        assert_eq!(s.reserve(&alice).err(), Some(Full::Caller));
        assert!(s.reserve(&bob).is_ok(), "another caller is not affected");
        first.opened("s1".into());
        assert_eq!(s.check("s1", &alice), SessionCheck::Owner);
        assert_eq!(s.check("s1", &bob), SessionCheck::Foreign);
        assert_eq!(s.check("s2", &alice), SessionCheck::Unknown);
        // A place whose session was never made is freed.
        drop(second);
        let third = s.reserve(&alice).expect("room again");
        assert_eq!(s.reserve(&alice).err(), Some(Full::Caller));
        drop(third);
        // So is a session rmcp closes, once.
        s.closed("s1");
        s.closed("s1");
        assert_eq!(s.check("s1", &alice), SessionCheck::Unknown);
        assert_eq!(counts(&s), (0, 0, 0, 0), "nothing left behind");
        assert!(
            s.table().per_caller.is_empty(),
            "no entry for a caller without sessions"
        );
    }

    #[test]
    fn the_server_and_anonymous_callers_hold_at_most_their_bounds() {
        let s = sessions(4, 10, 2);
        let callers: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| Principal::local(*n, ["x"]))
            .collect();
        // Anonymous callers from two sources fill their pool; a third source is refused.
        let a1 = s.reserve(&anonymous("192.0.2.1")).expect("room");
        a1.opened("a1".into());
        let _a2 = s.reserve(&anonymous("192.0.2.2")).expect("room");
        assert_eq!(
            s.reserve(&anonymous("192.0.2.3")).err(),
            Some(Full::Anonymous)
        );
        // Identified callers still have the rest of the server.
        let c0 = s.reserve(&callers[0]).expect("room");
        c0.opened("c0".into());
        let _c1 = s.reserve(&callers[1]).expect("room");
        assert_eq!(s.reserve(&callers[2]).err(), Some(Full::Server));
        s.closed("c0");
        assert!(s.reserve(&callers[2]).is_ok());
        s.closed("a1");
        assert!(s.reserve(&anonymous("192.0.2.3")).is_ok());
    }

    #[test]
    fn a_caller_at_its_bound_is_told_so_before_the_server_is_full() {
        let s = sessions(1, 1, 1);
        let alice = Principal::local("alice", ["x"]);
        s.reserve(&alice).expect("room").opened("s".into());
        assert_eq!(s.reserve(&alice).err(), Some(Full::Caller));
        let bob = Principal::local("bob", ["x"]);
        assert_eq!(s.reserve(&bob).err(), Some(Full::Server));
    }

    #[test]
    fn a_caller_is_its_method_and_subject() {
        let s = sessions(10, 1, 10);
        let local = Principal::local("ci-bot", ["x"]);
        let anon = Principal::new("ci-bot", Vec::<String>::new(), AuthMethod::Anonymous);
        let _held = s.reserve(&local).expect("room");
        assert_eq!(s.reserve(&local).err(), Some(Full::Caller));
        assert!(
            s.reserve(&anon).is_ok(),
            "the same subject by another method"
        );
    }

    #[tokio::test]
    async fn a_session_is_made_only_for_a_caller_with_room() {
        let s = sessions(10, 1, 10);
        let m = OwnedSessions::new(LocalSessionManager::default(), s.clone());
        assert!(matches!(
            m.create_session().await,
            Err(SessionsError::NoCaller)
        ));
        let alice = Arc::new(Principal::local("alice", ["x"]));
        let opener = Opener::new(alice.clone());
        let refused = opener.refused();
        let (id, _transport) = opener.scope(m.create_session()).await.expect("created");
        assert_eq!(refused.get(), None);
        assert_eq!(s.check(&id, &alice), SessionCheck::Owner);
        assert_eq!(counts(&s), (1, 0, 1, 0));
        // At her bound: refused, and the refusal noted for the guard.
        let opener = Opener::new(alice.clone());
        let refused = opener.refused();
        let again = opener.scope(m.create_session()).await;
        assert!(matches!(again, Err(SessionsError::Full(Full::Caller))));
        assert_eq!(refused.get(), Some(&Full::Caller));
        // A request served without making a session takes no place.
        Opener::new(alice.clone()).scope(async {}).await;
        m.close_session(&id).await.expect("closes");
        assert_eq!(s.check(&id, &alice), SessionCheck::Unknown);
        assert_eq!(counts(&s), (0, 0, 0, 0));
        assert!(
            !m.has_session(&id).await.expect("answers"),
            "rmcp's map too"
        );
    }
}
