//! Stateful HTTP sessions: whose each one is, and how many there may be.
//!
//! rmcp ties a session to no caller and bounds neither their number nor their owners'.
//! [`OwnedSessions`] wraps rmcp's [`LocalSessionManager`] and keeps, beside its map, the
//! owner of every session it holds ([`Sessions`]):
//!
//! - a session is counted from the moment a request reserves it ([`Sessions::reserve`],
//!   before rmcp runs), attributed when rmcp creates it within that same request (so before
//!   anyone can know its id, and even if the client leaves before the reply), and forgotten
//!   when rmcp closes it: a DELETE, or the end of its worker (idle past the keep-alive, a
//!   failed handshake, shutdown). The table is rmcp's map, owners added: no sweep, no entry
//!   that outlives its session.
//! - the reservation is refused when the server holds `max_total` sessions, or the caller
//!   `max_per_caller` (counted by its rate-limit key: `jwt:alice`; anonymous callers by
//!   source address).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{ServerSseMessage, SessionManager};
use rmcp::transport::streamable_http_server::SessionId;

use crate::auth::{AuthMethod, Principal};

tokio::task_local! {
    /// The session the request being served has reserved: taken by
    /// [`OwnedSessions::create_session`], which rmcp runs within that request's future.
    static OPENING: Cell<Option<Opening>>;
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
}

/// Every live session's owner, and the bounds on how many there are.
pub(super) struct Sessions {
    table: Mutex<Table>,
    max_total: usize,
    max_per_caller: usize,
}

#[derive(Default)]
struct Table {
    /// The sessions rmcp holds, by id, and whose they are.
    live: HashMap<SessionId, Owner>,
    /// Sessions held or being opened, per caller (none: no entry).
    per_caller: HashMap<Arc<str>, usize>,
    /// Sessions reserved by a request and not yet created by rmcp.
    opening: usize,
}

impl Table {
    fn release(&mut self, caller: &str) {
        if let Some(n) = self.per_caller.get_mut(caller) {
            *n -= 1;
            if *n == 0 {
                self.per_caller.remove(caller);
            }
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
    /// The server holds its most sessions.
    Server,
    /// The caller holds its most sessions.
    Caller,
}

impl Full {
    /// The metrics label and the audit reason.
    pub(super) fn label(self) -> &'static str {
        match self {
            Full::Server => "server",
            Full::Caller => "caller",
        }
    }
}

impl Sessions {
    pub(super) fn new(max_total: usize, max_per_caller: usize) -> Self {
        Self {
            table: Mutex::default(),
            max_total,
            max_per_caller,
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

    /// Reserves a session for `who`, unless the server or the caller holds its most.
    pub(super) fn reserve(self: &Arc<Self>, who: &Principal) -> Result<Opening, Full> {
        let mut table = self.table();
        if table.live.len() + table.opening >= self.max_total {
            return Err(Full::Server);
        }
        let held = table.per_caller.get(&**who.rate_key()).copied();
        if held.unwrap_or(0) >= self.max_per_caller {
            return Err(Full::Caller);
        }
        *table.per_caller.entry(who.rate_key().clone()).or_insert(0) += 1;
        table.opening += 1;
        Ok(Opening {
            sessions: self.clone(),
            owner: Some(Owner::of(who)),
        })
    }

    /// rmcp closed session `id` (or a DELETE asked it to): its owner's count goes down.
    fn closed(&self, id: &str) {
        let mut table = self.table();
        if let Some(owner) = table.live.remove(id) {
            table.release(&owner.caller);
            crate::telemetry::http_sessions(table.live.len());
        }
    }
}

/// A session reserved by a request: created by rmcp within it ([`Opening::opened`]) or, if
/// not (not an `initialize`, a refusal, the client gone), released when dropped.
pub(super) struct Opening {
    sessions: Arc<Sessions>,
    owner: Option<Owner>,
}

impl Opening {
    /// Runs `future` (rmcp's handling of the request) with this reservation, which it takes
    /// if it creates a session.
    pub(super) fn scope<F: std::future::Future>(
        self,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> {
        OPENING.scope(Cell::new(Some(self)), future)
    }

    /// rmcp created session `id` for this reservation.
    fn opened(mut self, id: SessionId) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        let mut table = self.sessions.table();
        table.opening -= 1;
        if let Some(old) = table.live.insert(id, owner) {
            // Not seen: rmcp's ids are random. Its count must not leak all the same.
            table.release(&old.caller);
        }
        crate::telemetry::http_sessions(table.live.len());
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            let mut table = self.sessions.table();
            table.opening -= 1;
            table.release(&owner.caller);
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

/// Why a session operation failed (rmcp answers a 500 with no detail of it).
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionsError {
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
    /// rmcp asked for a session outside a request that reserved one: refused, as there is
    /// no owner to give it.
    #[error("no session was reserved for this request")]
    Unreserved,
}

impl SessionManager for OwnedSessions {
    type Error = SessionsError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let opening = OPENING
            .try_with(Cell::take)
            .ok()
            .flatten()
            .ok_or(SessionsError::Unreserved)?;
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
        self.sessions.closed(id);
        Ok(self.inner.close_session(id).await?)
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

    fn sessions(total: usize, per_caller: usize) -> Arc<Sessions> {
        Arc::new(Sessions::new(total, per_caller))
    }

    fn counts(s: &Sessions) -> (usize, usize, usize) {
        let t = s.table();
        (t.live.len(), t.opening, t.per_caller.values().sum())
    }

    #[test]
    fn a_caller_holds_at_most_its_bound_counting_reservations() {
        let s = sessions(10, 2);
        let alice = Principal::local("alice", ["db:read"]);
        let bob = Principal::local("bob", ["db:read"]);
        let first = s.reserve(&alice).expect("room");
        let second = s.reserve(&alice).expect("room");
        // Two reserved, none created yet: the third is refused all the same.
        assert_eq!(s.reserve(&alice).err(), Some(Full::Caller));
        assert!(s.reserve(&bob).is_ok(), "another caller is not affected");
        first.opened("s1".into());
        assert_eq!(s.check("s1", &alice), SessionCheck::Owner);
        assert_eq!(s.check("s1", &bob), SessionCheck::Foreign);
        assert_eq!(s.check("s2", &alice), SessionCheck::Unknown);
        // A reservation that opened nothing frees its place.
        drop(second);
        let third = s.reserve(&alice).expect("room again");
        assert_eq!(s.reserve(&alice).err(), Some(Full::Caller));
        drop(third);
        // So does a session rmcp closes, once.
        s.closed("s1");
        s.closed("s1");
        assert_eq!(s.check("s1", &alice), SessionCheck::Unknown);
        assert_eq!(counts(&s), (0, 0, 0), "nothing left behind");
        assert!(
            s.table().per_caller.is_empty(),
            "no entry for a caller without sessions"
        );
    }

    #[test]
    fn the_server_holds_at_most_its_bound() {
        let s = sessions(3, 10);
        let callers: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| Principal::local(*n, ["x"]))
            .collect();
        let a = s.reserve(&callers[0]).expect("room");
        a.opened("a".into());
        let _b = s.reserve(&callers[1]).expect("room");
        let c = s.reserve(&callers[2]).expect("room");
        assert_eq!(s.reserve(&callers[3]).err(), Some(Full::Server));
        c.opened("c".into());
        assert_eq!(s.reserve(&callers[3]).err(), Some(Full::Server));
        s.closed("a");
        assert!(s.reserve(&callers[3]).is_ok());
    }

    #[test]
    fn a_caller_is_its_method_and_subject() {
        let s = sessions(10, 1);
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
    async fn a_session_is_created_only_within_a_request_that_reserved_it() {
        let s = sessions(10, 10);
        let m = OwnedSessions::new(LocalSessionManager::default(), s.clone());
        assert!(matches!(
            m.create_session().await,
            Err(SessionsError::Unreserved)
        ));
        let alice = Principal::local("alice", ["x"]);
        let opening = s.reserve(&alice).expect("room");
        let (id, _transport) = opening.scope(m.create_session()).await.expect("created");
        assert_eq!(s.check(&id, &alice), SessionCheck::Owner);
        assert_eq!(counts(&s), (1, 0, 1));
        // A second creation in the same request has no reservation left.
        let opening = s.reserve(&alice).expect("room");
        let twice = opening.scope(async {
            let first = m.create_session().await.map(|(id, _)| id);
            let second = m.create_session().await.map(|(id, _)| id);
            (first, second)
        });
        let (first, second) = twice.await;
        assert!(first.is_ok());
        assert!(matches!(second, Err(SessionsError::Unreserved)));
        m.close_session(&id).await.expect("closes");
        assert_eq!(s.check(&id, &alice), SessionCheck::Unknown);
        assert_eq!(counts(&s), (1, 0, 1));
        // A reservation whose request is dropped before rmcp creates anything is released.
        let opening = s.reserve(&alice).expect("room");
        drop(opening.scope(std::future::pending::<()>()));
        assert_eq!(counts(&s), (1, 0, 1));
    }
}
