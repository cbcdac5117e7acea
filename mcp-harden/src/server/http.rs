//! Streamable HTTP: rmcp's `StreamableHttpService` mounted in axum, behind a guard that
//! validates `Host` and `Origin`, authenticates every request with a bearer credential,
//! throttles failed attempts per source address, and implements the MCP authorization
//! specification's resource-server side (RFC 9728 metadata, RFC 6750 challenges, RFC 8707
//! audiences, step-up on `insufficient_scope`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::uri::{Authority, Scheme};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::Hardened;
use crate::audit::{
    AuditEvent, AuditPrincipal, AuditRecord, Outcome, Timestamp, AUDIT_RECORD_VERSION,
};
use crate::auth::{AuthContext, AuthFailure, Authenticator, Authenticators, Principal};
use crate::errors::{ErrorCode, ToolError};
use crate::spec::Scopes;

mod sessions;
use crate::audit::budget::{Budgets, RefusalRecords, Refused};
use sessions::{Bounds, Full, Opener, OwnedSessions, SessionCheck, Sessions};

/// How a `tools/call` is answered when the caller's token lacks a scope the tool needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ScopeChallenge {
    /// HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` when
    /// the metadata names an authorization server (a client can step up there); otherwise
    /// the `FORBIDDEN` tool error, which the model can read and explain.
    #[default]
    Auto,
    /// Always the HTTP 403 challenge.
    Http,
    /// Always the `FORBIDDEN` tool error (as on stdio).
    ToolError,
}

/// The configuration of [`Hardened::serve_http`].
///
/// Secure by default: binds where told (use a loopback address unless you mean otherwise),
/// accepts only loopback `Host`s and `Origin`s plus the host of the resource URL,
/// requires a bearer credential on every MCP request, caps bodies at 1 MiB, speaks
/// HTTP/1.1 only (with or without TLS), closes connections whose request head does not
/// arrive within 30 s, answers 408 to a POST whose body has not arrived 30 s after its
/// head, bounds sessions (32 per caller, 100 anonymous, 1 000 in all; idle ones close
/// after 5 minutes), and audits refusals of unknown or anonymous callers one by one within
/// a budget (30 a minute per source, 300 in all), summing up the rest.
///
/// ```no_run
/// # use mcp_harden::server::http::HttpConfig;
/// # use mcp_harden::auth::JwtAuthenticator;
/// # fn f() -> Result<HttpConfig, Box<dyn std::error::Error>> {
/// let jwt = JwtAuthenticator::builder()
///     .jwks_file("/etc/mcp/jwks.json")
///     .issuer("https://auth.example.com")
///     .build()?;
/// let config = HttpConfig::new("127.0.0.1:8080".parse()?)
///     .resource_url("https://mcp.example.com/mcp")
///     .authorization_server("https://auth.example.com")
///     .authenticator(jwt);
/// # Ok(config) }
/// ```
#[must_use]
pub struct HttpConfig {
    bind: SocketAddr,
    path: String,
    resource_url: Option<String>,
    authenticators: Authenticators,
    authorization_servers: Vec<String>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Vec<String>,
    stateful: bool,
    tls: Option<Tls>,
    max_body_bytes: usize,
    max_credential_bytes: usize,
    auth_failures: (u32, u32),
    refusal_records_per_source: (u32, u32),
    refusal_records_total: (u32, u32),
    refusal_summary_interval: Duration,
    challenge: ScopeChallenge,
    grace: Duration,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    allow_anonymous: bool,
    max_sessions: usize,
    max_sessions_per_caller: usize,
    max_anonymous_sessions: usize,
    session_idle_timeout: Duration,
}

enum Tls {
    Files(PathBuf, PathBuf),
    Pem(Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("bind", &self.bind)
            .field("path", &self.path)
            .field("resource_url", &self.resource_url)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpConfig {
    /// Serve on `bind` (e.g. `127.0.0.1:8080`; port 0 picks a free port).
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            path: "/mcp".to_owned(),
            resource_url: None,
            authenticators: Authenticators::default(),
            authorization_servers: Vec::new(),
            allowed_hosts: None,
            allowed_origins: None,
            trusted_proxies: Vec::new(),
            stateful: true,
            tls: None,
            max_body_bytes: 1024 * 1024,
            max_credential_bytes: 8 * 1024,
            auth_failures: (10, 10),
            refusal_records_per_source: crate::audit::budget::DEFAULT_PER_KEY,
            refusal_records_total: crate::audit::budget::DEFAULT_TOTAL,
            refusal_summary_interval: crate::audit::budget::SUMMARY_EVERY,
            challenge: ScopeChallenge::Auto,
            grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            allow_anonymous: false,
            max_sessions: 1_000,
            max_sessions_per_caller: 32,
            max_anonymous_sessions: 100,
            session_idle_timeout: Duration::from_secs(300),
        }
    }

    /// Adds an authenticator. Several compose: the first that recognises a credential's
    /// format decides. At least one is required (or [`allow_anonymous`](Self::allow_anonymous)).
    ///
    /// One [`JwtAuthenticator`](crate::auth::JwtAuthenticator) and one
    /// [`ApiKeyAuthenticator`](crate::auth::ApiKeyAuthenticator) at most: the first of a kind
    /// decides every credential of that kind, so a second would never be asked, and binding
    /// refuses it. Give one JWT authenticator every key of its issuer (a JWKS).
    pub fn authenticator<A: Authenticator>(mut self, authenticator: A) -> Self {
        self.authenticators.push(Arc::new(authenticator));
        self
    }

    /// The path the MCP endpoint is mounted at (default `/mcp`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// This server's public resource URL (RFC 9728 `resource`; the default token audience),
    /// e.g. `https://mcp.example.com/mcp` behind a proxy. Default: `http(s)://<bound
    /// address><path>`. Its host is allowed in `Host` and `Origin`.
    pub fn resource_url(mut self, url: impl Into<String>) -> Self {
        self.resource_url = Some(url.into());
        self
    }

    /// An OAuth authorization server that issues tokens for this resource, published in the
    /// protected-resource metadata. Repeat for several.
    pub fn authorization_server(mut self, url: impl Into<String>) -> Self {
        self.authorization_servers.push(url.into());
        self
    }

    /// The `Host` values accepted (replacing the loopback default): `example.com` (any port)
    /// or `example.com:443`. The resource URL's host is always accepted.
    pub fn allowed_hosts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.allowed_hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// The browser `Origin`s accepted (replacing the loopback default): `https://app.example.com`
    /// (default port), `http://localhost:3000`, or `http://localhost:*` (any port). A request
    /// without `Origin` (not from a browser) is not affected.
    pub fn allowed_origins<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        origins: I,
    ) -> Self {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Stateless mode: no `Mcp-Session-Id`, every request stands alone (default: stateful
    /// sessions, each bound to the principal that opened it).
    pub fn stateless(mut self) -> Self {
        self.stateful = false;
        self
    }

    /// The most sessions the server holds at once (default 1 000), shared by every caller:
    /// size it for the callers you expect, as 32 callers at their own bound fill the
    /// default. A session beyond it is refused with HTTP 503 (`too_many_sessions`, audited
    /// as a [`Session`](crate::audit::AuditEvent::Session) event) until one ends: a DELETE,
    /// or [`session_idle_timeout`](Self::session_idle_timeout). Each session holds a task and
    /// its channels in rmcp, about 90 KB of heap (rmcp 3.11; the `allocs` benchmark), so the
    /// default bounds them to about 90 MB. At least 1; stateful mode only.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions;
        self
    }

    /// The most sessions one caller holds at once (default 32). A caller is what its rate
    /// limits count (`jwt:alice`; an anonymous caller is its source address, an IPv6 one
    /// its /64). A session beyond it is refused with HTTP 429 (`too_many_sessions`,
    /// audited) until one of the caller's ends. A client that leaves before reading the
    /// reply to its `initialize` cannot end that session: its place is freed by the idle
    /// timeout. At least 1; stateful mode only.
    pub fn max_sessions_per_caller(mut self, sessions: usize) -> Self {
        self.max_sessions_per_caller = sessions;
        self
    }

    /// The most sessions anonymous callers hold together (default 100), so that callers
    /// without credentials, from however many addresses, cannot take the server's sessions
    /// from those with (see [`allow_anonymous`](Self::allow_anonymous)). A session beyond it
    /// is refused with HTTP 503 (`too_many_sessions`, audited). At least 1; stateful mode
    /// only.
    pub fn max_anonymous_sessions(mut self, sessions: usize) -> Self {
        self.max_anonymous_sessions = sessions;
        self
    }

    /// How long a session may go without a message before it is closed and its place freed
    /// (default 5 minutes, rmcp's). A call that sends no progress sends nothing until it
    /// answers, and an open event stream without traffic does not count, so keep this longer
    /// than the longest tool timeout. More than zero and at most a day; stateful mode only.
    pub fn session_idle_timeout(mut self, timeout: Duration) -> Self {
        self.session_idle_timeout = timeout;
        self
    }

    /// Serve HTTPS with this certificate chain and private key (PEM files), TLS 1.3
    /// preferred, 1.2 minimum.
    pub fn tls_pem_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some(Tls::Files(cert.into(), key.into()));
        self
    }

    /// Serve HTTPS with this certificate chain and private key (PEM bytes).
    pub fn tls_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls = Some(Tls::Pem(cert.into(), key.into()));
        self
    }

    /// The largest request body accepted (default 1 MiB); larger gets HTTP 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The longest bearer credential accepted (default 8 KiB).
    pub fn max_credential_bytes(mut self, bytes: usize) -> Self {
        self.max_credential_bytes = bytes;
        self
    }

    /// Failed authentications allowed per source address (IPv6: per /64): `per_minute`
    /// sustained with bursts of `burst` (default 10 and 10). Beyond that the source gets
    /// HTTP 429 without its credentials being checked, until the limit lets it through.
    pub fn auth_failure_limit(mut self, per_minute: u32, burst: u32) -> Self {
        self.auth_failures = (per_minute, burst);
        self
    }

    /// Refusals of unknown or anonymous callers recorded one by one per source address
    /// (IPv6: per /64): `per_minute` sustained with bursts of `burst` (default 30 and 20,
    /// [`DEFAULT_PER_KEY`](crate::audit::budget::DEFAULT_PER_KEY); a burst of 0 means
    /// `per_minute`).
    ///
    /// Every request refused before its caller is known (no credential, a bad one, a
    /// throttled source, a foreign `Host` or `Origin`) and every refusal of an anonymous
    /// caller (a late body, a session, an unknown tool, arguments refused, a rate limit, a
    /// missing scope) has an audit record (and, refused by the guard, a log line). Beyond
    /// this budget, or
    /// [`refusal_records_total`](Self::refusal_records_total), a refusal is still answered
    /// and counted (`mcp_harden_audit_records_total{result="unrecorded"}`), and summed up in
    /// one [`Unrecorded`](crate::audit::AuditEvent::Unrecorded) record once
    /// [`refusal_summary_interval`](Self::refusal_summary_interval) has passed since the
    /// first of them, and when serving ends: how many, when, for which reasons, and the
    /// sources that sent most. Without a budget, anyone who can reach the port could write to
    /// the audit log as fast as they send requests, filling the disk or rotating older
    /// records away; with the defaults, these refusals add at most 300 records a minute
    /// (about 430 000 a day) after a first burst of 100, plus a summary every 10 s (and
    /// identified callers' rejections as many again:
    /// [`HardenedBuilder::rejected_records_per_caller`](crate::HardenedBuilder::rejected_records_per_caller),
    /// which also bounds an identified caller's other refusals here, no room for a session
    /// or a late body). An identified caller's security events and every call that runs are
    /// always recorded.
    ///
    /// The source's budget is asked first; while the total is used up, a source's own is
    /// still spent on its refusals held back. A rate of 0 a minute is refused by
    /// [`bind_http`](Hardened::bind_http) ([`HttpError::Config`]); `u32::MAX` for both
    /// budgets records every refusal.
    pub fn refusal_records_per_source(mut self, per_minute: u32, burst: u32) -> Self {
        self.refusal_records_per_source = (per_minute, burst);
        self
    }

    /// Refusals of unknown or anonymous callers recorded one by one from all sources
    /// together (default 300 a minute, bursts of 100,
    /// [`DEFAULT_TOTAL`](crate::audit::budget::DEFAULT_TOTAL); a burst of 0 means
    /// `per_minute`); see [`refusal_records_per_source`](Self::refusal_records_per_source).
    pub fn refusal_records_total(mut self, per_minute: u32, burst: u32) -> Self {
        self.refusal_records_total = (per_minute, burst);
        self
    }

    /// How long after the first refusal held back over the per-source record budget its
    /// summary is recorded (default 10 s; at least 1 s, at most an hour, or
    /// [`bind_http`](Hardened::bind_http) refuses it with [`HttpError::Config`]); see
    /// [`refusal_records_per_source`](Self::refusal_records_per_source). Identified callers'
    /// rejections have their own interval
    /// ([`HardenedBuilder::rejected_summary_interval`](crate::HardenedBuilder::rejected_summary_interval)).
    pub fn refusal_summary_interval(mut self, interval: Duration) -> Self {
        self.refusal_summary_interval = interval;
        self
    }

    /// How a call lacking a scope is answered (default [`ScopeChallenge::Auto`]).
    pub fn scope_challenge(mut self, challenge: ScopeChallenge) -> Self {
        self.challenge = challenge;
        self
    }

    /// How long shutdown waits for in-flight calls (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a client may take to send a request's head (default 30 s, hyper's own
    /// default, which axum-server turns off), counted from when the server starts waiting
    /// for it: on a new connection (over TLS, after the handshake, which has 10 s of its
    /// own), and on a kept-alive one from the end of the previous response. A client that
    /// takes longer has its connection closed without an answer: a head trickled a byte at a
    /// time (slowloris) or a kept-alive connection left idle cannot hold a connection longer.
    /// Bodies have their own limit, [`body_read_timeout`](Self::body_read_timeout).
    /// More than zero and at most an hour, or [`bind_http`](Hardened::bind_http) refuses
    /// the configuration.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a POST's body may take to arrive in full, counted from the end of its head
    /// (default 30 s: a 1 MiB body at 35 kB/s). A total, not a gap between chunks: a body
    /// trickled a byte at a time cannot hold the connection, or delay shutdown, for longer.
    /// A late body runs nothing, is audited as a
    /// [`Transport`](crate::audit::AuditEvent::Transport) event (outcome `rejected`, reason
    /// `request_body_timeout`, code `TIMEOUT`) and is answered `408 Request Timeout` with
    /// `Connection: close` (a client still sending may see the connection reset instead:
    /// closing a socket with unread data resets it). More than zero and at most an hour, or
    /// [`bind_http`](Hardened::bind_http) refuses the configuration.
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// Proxies (addresses or networks, e.g. `10.0.0.0/8`, `127.0.0.1`) whose
    /// `X-Forwarded-For` is believed. A request from one of them is the client's the header
    /// names: the right-most entry that is not itself a trusted proxy (entries to its left
    /// were written by the client, and may be anything). That address, with port 0, is what
    /// the failed-authentication limit counts, what anonymous callers are told apart by and
    /// what the audit records as `source`. Without it behind a proxy, every client has the
    /// proxy's address: ten bad credentials a minute from anyone would throttle everyone.
    /// None by default: the header is ignored. A request from a trusted proxy without a
    /// usable header keeps the proxy's address.
    ///
    /// Every host in a listed network can name any client, so list only the proxies, and
    /// only proxies that append the address they received from (as nginx's
    /// `$proxy_add_x_forwarded_for` and most load balancers do) or overwrite the header: a
    /// layer-4 balancer that passes the client's header on must not be listed. At most 32
    /// entries are read. [`bind_http`](Hardened::bind_http) refuses a network with host bits
    /// and `/0`.
    pub fn trusted_proxies<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        proxies: I,
    ) -> Self {
        self.trusted_proxies = proxies.into_iter().map(Into::into).collect();
        self
    }

    /// Admit requests without credentials as an anonymous principal that can call only
    /// `public` tools. Off by default.
    pub fn allow_anonymous(mut self) -> Self {
        self.allow_anonymous = true;
        self
    }
}

/// Why the HTTP server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The configuration is unusable.
    #[error("HTTP configuration: {0}")]
    Config(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed while serving.
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}

/// The identity the guard attached to a request; read by the handler from the request head.
#[derive(Clone)]
pub(crate) struct Authenticated {
    pub principal: Arc<Principal>,
    pub source: SocketAddr,
    /// For an anonymous caller: the guard's record budget per source, which its refused
    /// calls are audited within.
    pub per_source: Option<Arc<RefusalRecords>>,
}

/// A bound HTTP server, not yet serving: its address is known (useful with port 0).
pub struct HttpServer<S> {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    app: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    hardened: Hardened<S>,
    rmcp_ct: CancellationToken,
    grace: Duration,
    header_read_timeout: Duration,
    gate: Arc<Gate>,
}

impl<S> std::fmt::Debug for HttpServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .field("resource", &self.gate.resource)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> Hardened<S> {
    /// Serves over Streamable HTTP until SIGINT or SIGTERM, then lets in-flight calls finish
    /// (up to the grace period).
    pub async fn serve_http(self, config: HttpConfig) -> Result<(), HttpError> {
        self.bind_http(config).await?.serve().await
    }

    /// Binds the HTTP server without serving yet.
    pub async fn bind_http(&self, config: HttpConfig) -> Result<HttpServer<S>, HttpError> {
        if config.authenticators.is_empty() && !config.allow_anonymous {
            return Err(HttpError::Config(
                "no authenticator: add one with .authenticator(...) (a JwtAuthenticator or an ApiKeyAuthenticator)".into(),
            ));
        }
        if let Some(why) = config.authenticators.repeated_builtin() {
            return Err(HttpError::Config(why.into()));
        }
        if !config.path.starts_with('/')
            || config.path.len() < 2
            || config.path.contains(['?', '#'])
        {
            return Err(HttpError::Config(format!(
                "the path `{}` must start with / and name a route",
                config.path
            )));
        }
        for (timeout, what) in [
            (config.header_read_timeout, "request-head"),
            (config.body_read_timeout, "request-body"),
        ] {
            if timeout.is_zero() || timeout > MAX_READ_TIMEOUT {
                return Err(HttpError::Config(format!(
                    "the {what} timeout ({timeout:?}) must be more than zero and at most an hour"
                )));
            }
        }
        if config.max_sessions == 0
            || config.max_sessions_per_caller == 0
            || config.max_anonymous_sessions == 0
        {
            return Err(HttpError::Config(
                "max_sessions, max_sessions_per_caller and max_anonymous_sessions must be at least 1"
                    .into(),
            ));
        }
        if config.session_idle_timeout.is_zero() || config.session_idle_timeout > MAX_SESSION_IDLE {
            return Err(HttpError::Config(format!(
                "the session idle timeout ({:?}) must be more than zero and at most a day",
                config.session_idle_timeout
            )));
        }
        let tls = match &config.tls {
            None => None,
            Some(t) => Some(tls_config(t).await?),
        };
        let listener =
            std::net::TcpListener::bind(config.bind).map_err(|source| HttpError::Bind {
                addr: config.bind,
                source,
            })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let resource = match &config.resource_url {
            Some(u) => u.clone(),
            None if local_addr.ip().is_unspecified() => {
                return Err(HttpError::Config(format!(
                    "bound to {local_addr}: set .resource_url(\"https://your.host{}\") so tokens can name this server",
                    config.path
                )))
            }
            None => format!("{scheme}://{local_addr}{}", config.path),
        };
        let resource_uri: Uri = resource.parse().map_err(|_| {
            HttpError::Config(format!("the resource URL `{resource}` is not a URL"))
        })?;
        let (Some(res_scheme), Some(res_authority)) =
            (resource_uri.scheme(), resource_uri.authority())
        else {
            return Err(HttpError::Config(format!(
                "the resource URL `{resource}` must be absolute"
            )));
        };
        if res_scheme != &Scheme::HTTP && res_scheme != &Scheme::HTTPS
            || resource_uri.query().is_some()
        {
            return Err(HttpError::Config(format!(
                "the resource URL `{resource}` must be http(s) without a query"
            )));
        }
        let res_path = resource_uri.path().trim_end_matches('/');
        let metadata_url = format!(
            "{res_scheme}://{res_authority}/.well-known/oauth-protected-resource{res_path}"
        );

        let mut hosts: Vec<HostRule> = match &config.allowed_hosts {
            Some(h) => h
                .iter()
                .map(|h| HostRule::parse(h))
                .collect::<Result<_, _>>()?,
            None => LOOPBACK
                .iter()
                .map(|h| HostRule::parse(h))
                .collect::<Result<_, _>>()?,
        };
        hosts.push(HostRule {
            host: res_authority.host().to_ascii_lowercase(),
            port: None,
        });
        let mut origins: Vec<OriginRule> = match &config.allowed_origins {
            Some(o) => o
                .iter()
                .map(|o| OriginRule::parse(o))
                .collect::<Result<_, _>>()?,
            None => LOOPBACK
                .iter()
                .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
                .map(|o| OriginRule::parse(&o))
                .collect::<Result<_, _>>()?,
        };
        origins.push(OriginRule::parse(&format!(
            "{res_scheme}://{res_authority}"
        ))?);

        let mut scopes: Vec<&'static str> = self
            .inner
            .tools
            .values()
            .filter_map(|e| match e.spec.scopes {
                Scopes::Required(r) => Some(r.iter().copied()),
                Scopes::Public => None,
            })
            .flatten()
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut metadata = serde_json::json!({
            "resource": resource,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": self.inner.info.server_info.name,
        });
        if !config.authorization_servers.is_empty() {
            metadata["authorization_servers"] = serde_json::json!(config.authorization_servers);
        }
        let challenge = match config.challenge {
            ScopeChallenge::Auto if config.authorization_servers.is_empty() => false,
            ScopeChallenge::Auto | ScopeChallenge::Http => true,
            ScopeChallenge::ToolError => false,
        };
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .map(|p| trusted_network(p))
            .collect::<Result<Vec<_>, _>>()?;
        let (per_minute, burst) = config.auth_failures;
        let throttle = AuthThrottle::new(per_minute, burst).ok_or_else(|| {
            HttpError::Config("the failed-authentication limit must be at least 1/min".into())
        })?;
        if !crate::audit::budget::usable_interval(config.refusal_summary_interval) {
            return Err(HttpError::Config(format!(
                "the refusal summary interval ({:?}) must be at least 1 s and at most an hour",
                config.refusal_summary_interval
            )));
        }
        let refusals = RefusalRecords::new(
            config.refusal_records_per_source,
            config.refusal_records_total,
            config.refusal_summary_interval,
            self.inner.audit.clone(),
        )
        .ok_or_else(|| {
            HttpError::Config("the refusal record budgets must be at least 1/min".into())
        })?;

        // The session table rmcp's session manager keeps (stateless mode never asks it for a
        // session, and the guard then has none to check).
        let sessions = Arc::new(Sessions::new(Bounds {
            total: config.max_sessions,
            per_caller: config.max_sessions_per_caller,
            anonymous: config.max_anonymous_sessions,
        }));
        let gate = Arc::new(Gate {
            hardened: self.http_instance_boxed(),
            authenticators: config.authenticators,
            resource,
            metadata_url,
            metadata: Bytes::from(metadata.to_string()),
            hosts,
            origins,
            throttle,
            refusals,
            trusted_proxies,
            max_credential: config.max_credential_bytes,
            max_body: config.max_body_bytes,
            body_timeout: config.body_read_timeout,
            challenge,
            allow_anonymous: config.allow_anonymous,
            sessions: config.stateful.then(|| sessions.clone()),
        });

        let rmcp_ct = CancellationToken::new();
        let rmcp_config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(config.stateful)
            .with_max_request_body_bytes(config.max_body_bytes)
            .with_cancellation_token(rmcp_ct.clone())
            // The guard checks Host and Origin (and audits refusals) before anything else.
            .disable_allowed_hosts()
            .disable_allowed_origins();
        let factory_base = self.http_instance();
        let mut local = LocalSessionManager::default();
        local.session_config.keep_alive = Some(config.session_idle_timeout);
        let owned = OwnedSessions::new(local, sessions);
        let service = StreamableHttpService::new(
            move || Ok(factory_base.http_instance()),
            Arc::new(owned),
            rmcp_config,
        );
        let metadata_suffix = format!(
            "/.well-known/oauth-protected-resource{}",
            config.path.trim_end_matches('/')
        );
        let app = Router::new()
            .route(
                "/.well-known/oauth-protected-resource",
                get(metadata_handler),
            )
            .route(&metadata_suffix, get(metadata_handler))
            // Host and Origin for every route so far and the fallback (a 404 of ours)...
            .layer(middleware::from_fn_with_state(gate.clone(), edge_guard))
            // ...and the whole guard for the MCP endpoint, which is not behind that layer.
            .route_service(
                &config.path,
                Guarded {
                    gate: gate.clone(),
                    inner: service,
                },
            )
            .with_state(gate.clone());
        Ok(HttpServer {
            listener,
            local_addr,
            app,
            tls,
            hardened: self.clone(),
            rmcp_ct,
            grace: config.grace,
            header_read_timeout: config.header_read_timeout,
            gate,
        })
    }
}

impl<S: Send + Sync + 'static> HttpServer<S> {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The resource URL: what tokens must name as their audience (unless configured
    /// otherwise).
    pub fn resource_url(&self) -> &str {
        &self.gate.resource
    }

    /// Where the protected-resource metadata is published.
    pub fn metadata_url(&self) -> &str {
        &self.gate.metadata_url
    }

    /// The endpoint's router, guard included, to drive without a listener (the benchmarks).
    /// Requests need a `ConnectInfo<SocketAddr>` extension for the peer address. Refusals
    /// held back over the record budget are summed up by a timer on the runtime they were
    /// refused on, and, without [`serve`](Self::serve), last when the router and this
    /// server are dropped.
    #[doc(hidden)]
    pub fn router(&self) -> Router {
        self.app.clone()
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn serve(self) -> Result<(), HttpError> {
        self.serve_until(shutdown_signal()).await
    }

    /// Serves until `signal` completes, then stops accepting connections, lets in-flight
    /// calls finish (up to the grace period), closes the sessions, records the summary of
    /// any refusals held back over the record budget, waits up to
    /// [`AUDIT_FLUSH`](super::AUDIT_FLUSH) for the audit sink to write what it holds, and
    /// returns.
    pub async fn serve_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpError> {
        let hardened = self.hardened.clone();
        let gate = self.gate.clone();
        let served = self.serve_then_drain(signal).await;
        // Refusals held back over the record budget: their summary before the flush (one
        // being recorded by its timer now is delivered before this returns).
        gate.refusals.summarize(true);
        hardened.flush_audit(super::AUDIT_FLUSH).await;
        served
    }

    /// [`serve_until`](Self::serve_until) but the audit sink's flush.
    async fn serve_then_drain(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpError> {
        let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
        let make = self.app.into_make_service_with_connect_info::<SocketAddr>();
        // HTTP/1.1 only, as over TLS (ALPN offers only `http/1.1`): no cleartext HTTP/2, and
        // no protocol sniffing (an extra read of every connection's first 24 bytes).
        let mut http = axum_server::from_tcp(self.listener)?
            .handle(handle.clone())
            .http1_only();
        http.http_builder()
            .http1()
            .header_read_timeout(Some(self.header_read_timeout));
        let mut server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match self.tls {
                Some(tls) => Box::pin(
                    http.acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls))
                        .serve(make),
                ),
                None => Box::pin(http.serve(make)),
            };
        tracing::info!(target: "mcp_harden::http", addr = %self.local_addr, resource = %self.gate.resource, "serving MCP over HTTP");
        tokio::select! {
            r = &mut server => return r.map_err(HttpError::Serve),
            () = signal => {}
        }
        tracing::info!(target: "mcp_harden::http", grace_ms = self.grace.as_millis() as u64, "shutting down: no new connections; waiting for in-flight calls");
        handle.graceful_shutdown(Some(self.grace));
        let inflight = self.hardened.inner.inflight.clone();
        inflight.close();
        let calls_done = tokio::time::timeout(self.grace, inflight.wait());
        tokio::pin!(calls_done);
        let served = tokio::select! {
            r = &mut server => Some(r),
            _ = &mut calls_done => None,
        };
        if served.is_some() {
            // The last connection closed first, but a call whose client has gone away runs
            // on in its session: wait for it all the same (up to the grace period).
            let _ = (&mut calls_done).await;
        }
        // Every call has answered: end the sessions and their streams.
        self.rmcp_ct.cancel();
        inflight.reopen();
        match served {
            Some(r) => r.map_err(HttpError::Serve),
            None => match tokio::time::timeout(Duration::from_secs(5), server).await {
                Ok(r) => r.map_err(HttpError::Serve),
                Err(_) => Ok(()),
            },
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn tls_config(tls: &Tls) -> Result<axum_server::tls_rustls::RustlsConfig, HttpError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match tls {
        Tls::Pem(c, k) => (c.clone(), k.clone()),
        Tls::Files(c, k) => (
            tokio::fs::read(c)
                .await
                .map_err(|e| HttpError::Tls(format!("cannot read {}: {e}", c.display())))?,
            tokio::fs::read(k)
                .await
                .map_err(|e| HttpError::Tls(format!("cannot read {}: {e}", k.display())))?,
        ),
    };
    let certs = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpError::Tls(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(HttpError::Tls("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| HttpError::Tls(format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(config),
    ))
}

/// The longest request-head or -body timeout accepted: longer is no defence (and each is
/// added to the current instant, which must not overflow).
const MAX_READ_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest session idle timeout accepted.
const MAX_SESSION_IDLE: Duration = Duration::from_secs(24 * 3600);

const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// An accepted `Host`: a host name or address, with or without a port.
#[derive(Debug)]
struct HostRule {
    host: String,
    port: Option<u16>,
}

impl HostRule {
    fn parse(s: &str) -> Result<Self, HttpError> {
        let a: Authority = s
            .parse()
            .map_err(|_| HttpError::Config(format!("`{s}` is not a host or host:port")))?;
        Ok(Self {
            host: a.host().to_ascii_lowercase(),
            port: a.port_u16(),
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// An accepted `Origin`: scheme, host, and a port (or any port).
#[derive(Debug)]
struct OriginRule {
    scheme: String,
    host: String,
    /// `None` = any port.
    port: Option<u16>,
}

impl OriginRule {
    fn parse(s: &str) -> Result<Self, HttpError> {
        let bad = || {
            HttpError::Config(format!(
                "`{s}` is not an origin like https://app.example.com or http://localhost:*"
            ))
        };
        let (any, s2) = match s.strip_suffix(":*") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (scheme, host, port) = split_origin(s2).ok_or_else(bad)?;
        Ok(Self {
            scheme,
            host,
            port: if any { None } else { Some(port) },
        })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.host == host && self.port.is_none_or(|p| p == port)
    }
}

/// `scheme://host[:port]` with the scheme's default port; nothing else (no path).
fn split_origin(s: &str) -> Option<(String, String, u16)> {
    let uri: Uri = s.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || authority.as_str().contains('@')
    {
        return None;
    }
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    Some((
        scheme,
        authority.host().to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default),
    ))
}

/// A `Host` value, `host[:port]`, split without allocating; `None` unless it is one (a
/// userinfo part, an empty host or a port that is not a number are refused). The host is not
/// validated further: it must equal an allowed one, which were.
fn split_host(s: &str) -> Option<(&str, Option<u16>)> {
    if s.contains('@') {
        return None;
    }
    let (host, port) = if s.starts_with('[') {
        let (host, rest) = s.split_at(s.find(']')? + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let port = match port {
        // `host:` is a host with an empty port (RFC 3986), as `http` reads it.
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// What limits and budgets count a source address by: IPv4 per address; IPv6 per /64 (one
/// host usually owns a whole /64).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Failed authentications per source (GCRA); a source over the limit is refused without
/// its credentials being checked until the limiter would admit it again.
struct AuthThrottle {
    limiter: DefaultKeyedRateLimiter<IpAddr, StateInformationMiddleware>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    /// Whether `blocked` has entries: the common case (none) takes no lock.
    any_blocked: AtomicBool,
    clock: DefaultClock,
    pace: crate::limits::rate::SweepPace,
}

/// Most blocked sources remembered; beyond it expired entries are swept, then those whose
/// blocks end soonest are forgotten down to seven eighths.
const MAX_BLOCKED: usize = 100_000;

impl AuthThrottle {
    fn new(per_minute: u32, burst: u32) -> Option<Self> {
        let quota = crate::limits::rate::per_minute_quota(per_minute, burst)?;
        Some(Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            blocked: Mutex::new(HashMap::new()),
            any_blocked: AtomicBool::new(false),
            clock: DefaultClock::default(),
            pace: crate::limits::rate::SweepPace::new(),
        })
    }

    /// How long `ip` must still wait, if it is blocked.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if !self.any_blocked.load(Ordering::Acquire) {
            return None;
        }
        let key = source_key(ip);
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(&key)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            blocked.remove(&key);
            self.any_blocked
                .store(!blocked.is_empty(), Ordering::Release);
            None
        }
    }

    /// Counts one failure; returns how long the source is now blocked, if it is. The
    /// failure that uses up the burst blocks the source: with a burst of 3, the 4th attempt
    /// is refused without its credentials being checked.
    fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let key = source_key(ip);
        if self.pace.due() {
            self.limiter.retain_recent();
            self.pace.swept(self.limiter.len());
        }
        let denied = match self.limiter.check_key(&key) {
            Ok(state) if state.remaining_burst_capacity() > 0 => return None,
            // The burst is used up: ask when the next attempt would be admitted (a refused
            // check changes nothing).
            Ok(_) => self.limiter.check_key(&key).err()?,
            Err(denied) => denied,
        };
        let wait = denied.wait_time_from(self.clock.now());
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.len() >= MAX_BLOCKED {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            // Still nearly full (that many sources blocked at once): forget some, so that
            // every new one is blocked too and the next sweep is an eighth of the table
            // away. A forgotten source has its credentials checked once more, and its
            // limiter state blocks it again.
            let over = blocked.len().saturating_sub(MAX_BLOCKED / 8 * 7);
            if over > 0 {
                // Those whose blocks end soonest.
                let mut by_end: Vec<(Instant, IpAddr)> =
                    blocked.iter().map(|(k, until)| (*until, *k)).collect();
                by_end.select_nth_unstable(over - 1);
                for (_, k) in &by_end[..over] {
                    blocked.remove(k);
                }
            }
        }
        blocked.insert(key, Instant::now() + wait);
        self.any_blocked
            .store(!blocked.is_empty(), Ordering::Release);
        Some(wait)
    }
}

/// Everything the guard needs, shared by all requests.
struct Gate {
    hardened: Box<dyn GateServer>,
    authenticators: Authenticators,
    resource: String,
    metadata_url: String,
    metadata: Bytes,
    hosts: Vec<HostRule>,
    origins: Vec<OriginRule>,
    throttle: AuthThrottle,
    /// How many refusals are recorded one by one (shared with the calls of anonymous
    /// callers, through [`Authenticated`]).
    refusals: Arc<RefusalRecords>,
    /// Whose `X-Forwarded-For` is believed (see [`HttpConfig::trusted_proxies`]).
    trusted_proxies: Vec<ipnet::IpNet>,
    max_credential: usize,
    max_body: usize,
    /// How long a POST's body may take after its head.
    body_timeout: Duration,
    challenge: bool,
    allow_anonymous: bool,
    /// Stateful mode: which principal opened each session.
    sessions: Option<Arc<Sessions>>,
}

/// What the guard needs of the server, without its state type.
trait GateServer: Send + Sync + 'static {
    fn audit(&self, record: &AuditRecord);
    /// The scopes `tool` requires, if it exists and is not public.
    fn required_scopes(&self, tool: &str) -> Option<&'static [&'static str]>;
    /// Counts a reply in progress: shutdown waits for it.
    fn inflight(&self) -> tokio_util::task::task_tracker::TaskTrackerToken;
    /// The record budget of identified callers' rejected calls.
    fn rejected(&self) -> &RefusalRecords;
}

impl<S: Send + Sync + 'static> GateServer for Hardened<S> {
    fn audit(&self, record: &AuditRecord) {
        crate::audit::deliver(&*self.inner.audit, None, record);
    }
    fn required_scopes(&self, tool: &str) -> Option<&'static [&'static str]> {
        match self.inner.tools.get(tool)?.spec.scopes {
            Scopes::Required(r) => Some(r),
            Scopes::Public => None,
        }
    }
    fn inflight(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.inner.inflight.token()
    }
    fn rejected(&self) -> &RefusalRecords {
        &self.inner.rejected
    }
}

impl<S: Send + Sync + 'static> Hardened<S> {
    fn http_instance_boxed(&self) -> Box<dyn GateServer> {
        Box::new(self.http_instance())
    }
}

/// A security event that happened before any tool ran.
struct Event<'a> {
    event: AuditEvent,
    principal: Option<&'a Principal>,
    tool: Option<&'a str>,
    reason: &'static str,
    code: ErrorCode,
    source: SocketAddr,
    started: Instant,
    /// The request's W3C `traceparent`, which the record continues.
    traceparent: Option<&'a str>,
}

impl Gate {
    /// Audits and logs a refusal, unless it is over its record budget (then it is summed up
    /// later); returns whether it was recorded. An identified caller's security events are
    /// always recorded.
    fn record(&self, e: Event<'_>) -> bool {
        if e.event == AuditEvent::Authentication {
            crate::telemetry::auth_failure(e.reason);
        }
        let outcome = Outcome::of_refusal(e.code);
        let budgets = Budgets {
            per_source: Some(&self.refusals),
            per_caller: self.hardened.rejected(),
        };
        let admitted = budgets.admit(Refused {
            principal: e.principal,
            source: Some(e.source.ip()),
            transport: "http",
            event: e.event,
            reason: e.reason,
            tool: None,
            outcome,
        });
        if !admitted {
            return false;
        }
        let trace = crate::telemetry::TraceIds::continue_or_start(e.traceparent);
        tracing::warn!(target: "mcp_harden::security", event = ?e.event, reason = e.reason, source = %e.source, "request refused");
        let record = AuditRecord {
            version: AUDIT_RECORD_VERSION,
            time: Timestamp::now(),
            trace_id: trace.trace_id,
            span_id: Some(trace.span_id),
            parent_span_id: trace.parent_span_id,
            client: None,
            event: e.event,
            principal: AuditPrincipal::of(e.principal),
            tool: e
                .tool
                .map(|t| std::borrow::Cow::Owned(crate::audit::cut_chars(t, 128).to_owned())),
            arguments: serde_json::Value::Null,
            // A late body is not a security event (and may be sent again).
            outcome,
            error_code: Some(e.code.as_str()),
            retryable: !e.code.is_security_event(),
            reason: Some(e.reason),
            detail: None,
            duration_us: u64::try_from(e.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            transport: "http",
            source: Some(e.source),
            unrecorded: None,
        };
        self.hardened.audit(&record);
        true
    }

    /// A new session refused for want of room: audited, counted, and answered 429 (the
    /// caller's own bound) or 503.
    fn no_room(
        &self,
        full: Full,
        principal: &Principal,
        source: SocketAddr,
        started: Instant,
        traceparent: Option<HeaderValue>,
    ) -> Response {
        crate::telemetry::http_sessions_refused(full.label());
        let (reason, code, status, description) = match full {
            Full::Caller => (
                "too_many_sessions_for_caller",
                ErrorCode::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                "this caller holds as many sessions as it may: end one (DELETE) or wait for \
                 an idle one to expire",
            ),
            Full::Anonymous => (
                "too_many_anonymous_sessions",
                ErrorCode::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "this server holds as many sessions without credentials as it may: try again \
                 later, or authenticate",
            ),
            Full::Server => (
                "too_many_sessions",
                ErrorCode::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "this server holds as many sessions as it may: try again later",
            ),
        };
        self.record(Event {
            event: AuditEvent::Session,
            principal: Some(principal),
            tool: None,
            reason,
            code,
            source,
            started,
            traceparent: traceparent.as_ref().and_then(|v| v.to_str().ok()),
        });
        error_response(status, "too_many_sessions", description)
    }

    /// `Bearer resource_metadata="…"` plus RFC 6750 parameters.
    fn challenge(&self, params: &str) -> HeaderValue {
        let v = if params.is_empty() {
            format!("Bearer resource_metadata=\"{}\"", self.metadata_url)
        } else {
            format!(
                "Bearer {params}, resource_metadata=\"{}\"",
                self.metadata_url
            )
        };
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// Host and Origin: a refusal (recorded) unless both are allowed.
    #[allow(clippy::result_large_err)] // the refusal itself: boxing it would only allocate
    fn admit(&self, req: &Request, started: Instant) -> Result<(), Response> {
        let refuse = |reason, description| {
            self.record(Event {
                event: AuditEvent::Transport,
                principal: None,
                tool: None,
                reason,
                code: ErrorCode::Forbidden,
                source: self.client_of(req),
                started,
                traceparent: crate::telemetry::traceparent(req.headers()),
            });
            error_response(StatusCode::FORBIDDEN, "forbidden", description)
        };
        if !self.host_allowed(req.headers(), req.uri()) {
            return Err(refuse("foreign_host", "Host not allowed"));
        }
        if !self.origin_allowed(req.headers()) {
            return Err(refuse("foreign_origin", "Origin not allowed"));
        }
        Ok(())
    }

    /// The caller: a source over its failed-authentication limit is refused first, then
    /// the bearer credential is verified (or, where allowed, its absence makes the caller
    /// anonymous).
    #[allow(clippy::result_large_err)] // likewise
    fn authenticate(
        &self,
        req: &Request,
        source: SocketAddr,
        started: Instant,
    ) -> Result<Arc<Principal>, Response> {
        let headers = req.headers();
        let refuse = |reason| Event {
            event: AuditEvent::Authentication,
            principal: None,
            tool: None,
            reason,
            code: ErrorCode::Unauthenticated,
            source,
            started,
            traceparent: crate::telemetry::traceparent(headers),
        };
        if let Some(wait) = self.throttle.blocked(source.ip()) {
            self.record(refuse(AuthFailure::Throttled.reason()));
            return Err(throttled(wait));
        }
        match bearer(headers, self.max_credential) {
            Ok(token) => {
                let cx = AuthContext::new(&self.resource, source);
                self.authenticators
                    .authenticate(token, &cx)
                    .map_err(|failure| self.refuse_credentials(failure, source, started, headers))
            }
            // Anonymous callers are told apart by source address (IPv6: /64), so that one of
            // them cannot use up a public tool's rate for all the others.
            Err(AuthFailure::Missing) if self.allow_anonymous => Ok(Arc::new(Principal::new(
                format!("anonymous@{}", source_key(source.ip())),
                std::iter::empty::<&str>(),
                crate::auth::AuthMethod::Anonymous,
            ))),
            Err(AuthFailure::Missing) => {
                self.record(refuse(AuthFailure::Missing.reason()));
                let mut r = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    AuthFailure::Missing.client_message(),
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, self.challenge(""));
                Err(r)
            }
            Err(failure) => Err(self.refuse_credentials(failure, source, started, headers)),
        }
    }

    /// The client's address: the TCP peer's or, when the peer is a trusted proxy, the one
    /// it forwarded (port 0).
    fn client_of(&self, req: &Request) -> SocketAddr {
        let peer = peer_of(req.extensions());
        if self.trusted_proxies.is_empty() {
            return peer;
        }
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer.ip().to_canonical()) {
            return peer;
        }
        match forwarded_client(req.headers(), trusted) {
            Some(ip) => SocketAddr::new(ip, 0),
            None => {
                tracing::debug!(target: "mcp_harden::http", proxy = %peer, "no usable X-Forwarded-For from a trusted proxy: its own address counts");
                peer
            }
        }
    }

    fn host_allowed(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let allowed = |h: &str| {
            split_host(h)
                .is_some_and(|(host, port)| self.hosts.iter().any(|r| r.matches(host, port)))
        };
        // An absolute-form target (`POST http://host/mcp`) names the host that counts for
        // HTTP (RFC 9112 §3.2.2, which would ignore Host): stricter, both must be allowed.
        if uri.authority().is_some_and(|a| !allowed(a.as_str())) {
            return false;
        }
        let mut all = headers.get_all(header::HOST).iter();
        match (all.next(), all.next()) {
            (Some(h), None) => h.to_str().is_ok_and(allowed),
            // More than one is refused (RFC 9112 §3.2 asks for a 400; this is the guard's
            // 403, audited as a foreign host): another hop may read the other one.
            (Some(_), Some(_)) => false,
            // Only an HTTP/1.0 request may come without a Host: its target's, checked above.
            (None, _) => uri.authority().is_some(),
        }
    }

    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let mut all = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = all.next() else {
            return true;
        };
        if all.next().is_some() {
            return false;
        }
        let Some((scheme, host, port)) = origin.to_str().ok().and_then(split_origin) else {
            return false;
        };
        self.origins.iter().any(|r| r.matches(&scheme, &host, port))
    }
}

/// The guard's refusal: `{"error", "error_description"}` (the OAuth shape, RFC 6750 §3),
/// for its own refusals and the transport's alike.
fn error_response(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn metadata_handler(State(gate): State<Arc<Gate>>) -> Response {
    let mut r = (StatusCode::OK, gate.metadata.clone()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    r
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A trusted proxy's address or network, as compared with peers and forwarded entries
/// (IPv4-mapped IPv6 as IPv4). Refused: a network with host bits (`10.0.0.5/8`, most likely
/// a typo) and one that is everything (`0.0.0.0/0`: every client could name itself).
fn trusted_network(p: &str) -> Result<ipnet::IpNet, HttpError> {
    let bad = |why: &str| HttpError::Config(format!("the trusted proxy `{p}` {why}"));
    let net = p
        .parse::<ipnet::IpNet>()
        .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| bad("is not an address or a network like 10.0.0.0/8"))?;
    if net != net.trunc() {
        return Err(bad(
            "has host bits set: write its network (e.g. 10.0.0.0/8)",
        ));
    }
    if net.prefix_len() == 0 {
        return Err(bad("is every address: any client could name itself"));
    }
    let net = match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .map_err(|_| bad("is not a network"))?,
            None => net,
        },
        _ => net,
    };
    Ok(net)
}

/// The client named by `X-Forwarded-For` (all its lines, as one list): from the right, the
/// first entry that is not a trusted proxy, or the left-most if all are. `None` when there
/// is no entry or one that must be read is not an address (a proxy's mistake: the right-most
/// entries are the trusted proxies' own).
fn forwarded_client(headers: &HeaderMap, trusted: impl Fn(&IpAddr) -> bool) -> Option<IpAddr> {
    let mut leftmost = None;
    let entries = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','));
    // Entries left of the client's are never read (they may be anything, even bytes that
    // are not text); at most MAX_FORWARDED_HOPS are.
    for (n, entry) in entries.enumerate() {
        if n == MAX_FORWARDED_HOPS {
            return None;
        }
        let entry = std::str::from_utf8(entry).ok()?;
        let ip = forwarded_ip(entry.trim_matches([' ', '\t']))?;
        if !trusted(&ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// The most `X-Forwarded-For` entries read: more trusted proxies in a row than that is a
/// header made up (and each entry costs a parse).
const MAX_FORWARDED_HOPS: usize = 32;

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn forwarded_ip(s: &str) -> Option<IpAddr> {
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(a) => a.ip(),
            Err(_) => s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
        },
    };
    Some(ip.to_canonical())
}

/// The bearer credential of a request, or why there is none.
fn bearer(headers: &HeaderMap, max: usize) -> Result<&str, AuthFailure> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next().ok_or(AuthFailure::Missing)?;
    if all.next().is_some() {
        return Err(AuthFailure::MalformedHeader);
    }
    if value.len().saturating_sub("Bearer ".len()) > max {
        return Err(AuthFailure::Oversized);
    }
    let value = value.to_str().map_err(|_| AuthFailure::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::MalformedHeader);
    }
    let token = token.trim_matches(' ');
    // `to_str` admitted only visible ASCII and tabs: what is left to refuse inside the token
    // is a space or a tab.
    if token.is_empty() || has_blank(token.as_bytes()) {
        return Err(AuthFailure::MalformedHeader);
    }
    Ok(token)
}

/// Whether `bytes` holds a space or a tab: one vectorised search for both (`<[u8]>::contains`
/// is a word-at-a-time scan, and was run once per byte sought).
fn has_blank(bytes: &[u8]) -> bool {
    memchr::memchr2(b' ', b'\t', bytes).is_some()
}

/// Host and Origin, in front of the routes beside the MCP endpoint (the metadata, and the
/// fallback's 404s); the endpoint checks them itself ([`Guarded`]).
async fn edge_guard(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    match gate.admit(&req, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused,
    }
}

/// The peer address axum's `ConnectInfo` carries (unspecified when there is none).
fn peer_of(extensions: &axum::http::Extensions) -> SocketAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0)
}

/// The MCP endpoint: rmcp's service behind the guard. Host, Origin, the bearer credential,
/// the scope challenge and the session's owner are checked before rmcp sees the request; a
/// POST's reply stream is tracked for graceful shutdown; rmcp's plain-text refusals get a
/// fixed description ([`transport_refusal`]).
///
/// A service of its own rather than a `from_fn` middleware: the checks run synchronously
/// in `call` and the reply needs no second boxed future, stream or service clone (about
/// 1.5 µs per request, measured with `benches/http_server.rs`).
#[derive(Clone)]
struct Guarded<T> {
    gate: Arc<Gate>,
    inner: T,
}

impl<T, B> tower_service::Service<Request> for Guarded<T>
where
    T: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    T::Future: Unpin + Send + 'static,
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<T::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let gate = &self.gate;
        if let Err(refused) = gate.admit(&req, started) {
            return GuardFuture::Done(Some(refused));
        }
        let source = gate.client_of(&req);
        let principal = match gate.authenticate(&req, source, started) {
            Ok(p) => p,
            Err(refused) => return GuardFuture::Done(Some(refused)),
        };
        if req.method() != Method::POST {
            let req = req.map(TimedBody::untimed);
            return dispatch(gate, &mut self.inner, req, principal, source, started, None);
        }
        // A POST's body has a deadline: its timer records a late one, and the reply is a 408.
        let state = Arc::new(AtomicU8::new(BODY_OK));
        let timer = BodyTimer {
            deadline: tokio::time::Instant::from_std(started) + gate.body_timeout,
            sleep: None,
            state: state.clone(),
            gate: gate.clone(),
            principal: principal.clone(),
            source,
            started,
            traceparent: req.headers().get(&crate::telemetry::TRACEPARENT).cloned(),
        };
        let req = req.map(|body| TimedBody {
            body,
            timer: Some(timer),
        });
        if gate.challenge {
            // The body must be read to see which tool is called: the one path that waits.
            let (gate, mut inner) = (gate.clone(), self.inner.clone());
            // Shutdown waits for the request from its head on, as on the path without the
            // challenge (where the reply's token is taken at once).
            let reading = gate.hardened.inflight();
            return GuardFuture::Boxed(Box::pin(async move {
                let _reading = reading;
                let (parts, body) = req.into_parts();
                let Ok(bytes) = axum::body::to_bytes(Body::new(body), gate.max_body).await else {
                    return unread_body(state.load(Ordering::Relaxed))
                        .unwrap_or_else(|| transport_refusal(StatusCode::PAYLOAD_TOO_LARGE));
                };
                if let Some((tool, missing, id)) = lacking_scope(&gate, &bytes, &principal) {
                    gate.record(Event {
                        event: AuditEvent::ToolCall,
                        principal: Some(&principal),
                        tool: Some(&tool),
                        reason: "insufficient_scope",
                        code: ErrorCode::Forbidden,
                        source,
                        started,
                        traceparent: crate::telemetry::traceparent(&parts.headers),
                    });
                    return gate.insufficient_scope(&principal, missing, id);
                }
                let req = Request::from_parts(parts, TimedBody::untimed(Body::from(bytes)));
                let Ok(()) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await;
                let Ok(response) =
                    dispatch(&gate, &mut inner, req, principal, source, started, None).await;
                response
            }));
        }
        let body = Some(state);
        dispatch(gate, &mut self.inner, req, principal, source, started, body)
    }
}

/// The session check (or, for a POST without a session, its caller for the session it may
/// open: [`Opener`]), then the call into rmcp with the caller's identity attached. `body` says whether rmcp's reply
/// is to a POST body that could not be read (see [`BodyTimer`]).
fn dispatch<T, B>(
    gate: &Arc<Gate>,
    inner: &mut T,
    mut req: Request<TimedBody>,
    principal: Arc<Principal>,
    source: SocketAddr,
    started: Instant,
    body: Option<Arc<AtomicU8>>,
) -> GuardFuture<T::Future>
where
    T: tower_service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>,
    T::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut opener = None;
    if let Some(sessions) = &gate.sessions {
        match req.headers().get(&SESSION_HEADER) {
            // Not UTF-8: no session of ours.
            Some(id) => match sessions.check(id.to_str().unwrap_or("\u{fffd}"), &principal) {
                SessionCheck::Owner => {}
                SessionCheck::Foreign => {
                    gate.record(Event {
                        event: AuditEvent::Session,
                        principal: Some(&principal),
                        tool: None,
                        reason: "session_owned_by_another_principal",
                        code: ErrorCode::Forbidden,
                        source,
                        started,
                        traceparent: crate::telemetry::traceparent(req.headers()),
                    });
                    return GuardFuture::Done(Some(session_not_found()));
                }
                SessionCheck::Unknown => return GuardFuture::Done(Some(session_not_found())),
            },
            // Only a POST can open a session (rmcp refuses the others without one).
            None if req.method() == Method::POST => {
                let traceparent = req.headers().get(&crate::telemetry::TRACEPARENT).cloned();
                opener = Some((Opener::new(principal.clone()), traceparent));
            }
            None => {}
        }
    }
    let after = After {
        reply: (req.method() == Method::POST).then(|| gate.hardened.inflight()),
        body,
    };
    let per_source =
        (principal.method() == crate::auth::AuthMethod::Anonymous).then(|| gate.refusals.clone());
    let Some((opener, traceparent)) = opener else {
        req.extensions_mut().insert(Authenticated {
            principal,
            source,
            per_source,
        });
        return GuardFuture::Call(inner.call(req), Some(after));
    };
    req.extensions_mut().insert(Authenticated {
        principal: principal.clone(),
        source,
        per_source,
    });
    let call = inner.call(req);
    let gate = gate.clone();
    // rmcp makes a session, if this request opens one, within this future: as the caller's.
    GuardFuture::Boxed(Box::pin(async move {
        let refused = opener.refused();
        let Ok(response) = opener.scope(call).await;
        match refused.get() {
            Some(&full) => gate.no_room(full, &principal, source, started, traceparent),
            None => after.finish(response),
        }
    }))
}

/// The guard's reply: a refusal made at once, rmcp's reply to a checked request, or a
/// boxed path: the scope challenge's (which reads the body first) or a request that may
/// open a session (which rmcp runs with its caller).
enum GuardFuture<F> {
    Done(Option<Response>),
    Call(F, Option<After>),
    Boxed(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl<F, B> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            // Polled again after it answered: an empty 500 (futures must not be, but no panic).
            Self::Done(r) => Poll::Ready(Ok(r
                .take()
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response()))),
            Self::Call(inner, after) => {
                let Ok(response) = std::task::ready!(Pin::new(inner).poll(cx));
                Poll::Ready(Ok(match after.take() {
                    Some(after) => after.finish(response),
                    None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }))
            }
            Self::Boxed(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

/// What the guard does with rmcp's reply.
struct After {
    /// A POST's reply in progress (see [`Tracked`]).
    reply: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
    /// A POST's body: whether it could be read (see [`BodyTimer`]).
    body: Option<Arc<AtomicU8>>,
}

impl After {
    fn finish<B>(self, response: Response<B>) -> Response
    where
        B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        // rmcp answers a failed read with a 500 and the error's text: ours instead.
        if let Some(refusal) = self
            .body
            .and_then(|b| unread_body(b.load(Ordering::Relaxed)))
        {
            return refusal;
        }
        // rmcp's own refusals (headers it cannot serve, a body that is not one JSON-RPC
        // message, an internal failure) are plain text, some carrying an error's text or the
        // request's own: a fixed description instead. Its JSON-RPC errors pass as they are.
        if !response.status().is_success()
            && !content_type_is(response.headers(), "application/json")
        {
            return rewrite_refusal(response);
        }
        let reply = self
            .reply
            .filter(|_| content_type_is(response.headers(), "text/event-stream"));
        response.map(|body| Body::new(Tracked { body, reply }))
    }
}

/// A POST's reply travels on its event stream after the handler has returned: shutdown
/// must wait for the stream to end (the reply sent), not only for the call. The body holds
/// the tracker's token until its last frame.
struct Tracked<B> {
    body: B,
    reply: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.reply = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The request body handed to rmcp: a POST's is timed from the end of its head (see
/// [`HttpConfig::body_read_timeout`]); a body already read, or another method's, is not.
///
/// No timer is set while the body arrives without waiting (a small request usually
/// arrives with its head): one starts the first time the body is not ready.
struct TimedBody {
    body: Body,
    timer: Option<BodyTimer>,
}

/// A POST body's deadline, and what recording a late body needs.
struct BodyTimer {
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `BODY_OK`, `BODY_LATE` or `BODY_FAILED`; shared with the guard's [`After`] (or the
    /// scope challenge), which answers for a body that could not be read.
    state: Arc<AtomicU8>,
    gate: Arc<Gate>,
    principal: Arc<Principal>,
    source: SocketAddr,
    started: Instant,
    traceparent: Option<HeaderValue>,
}

impl TimedBody {
    fn untimed(body: Body) -> Self {
        Self { body, timer: None }
    }
}

/// A POST body as read so far: no error yet...
const BODY_OK: u8 = 0;
/// ...not received in full by its deadline...
const BODY_LATE: u8 = 1;
/// ...or broken off by the client or malformed (e.g. a bad chunk).
const BODY_FAILED: u8 = 2;

/// The answer to a POST whose body could not be read, if it could not; the connection is
/// not reused.
fn unread_body(state: u8) -> Option<Response> {
    let (status, error, description) = match state {
        BODY_LATE => (
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        ),
        BODY_FAILED => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        ),
        _ => return None,
    };
    let mut r = error_response(status, error, description);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

impl BodyTimer {
    /// Records the late body (once) and ends the body with an error (again if polled again).
    fn expire(&mut self) -> axum::Error {
        if self.state.swap(BODY_LATE, Ordering::Relaxed) == BODY_OK {
            self.gate.record(Event {
                event: AuditEvent::Transport,
                principal: Some(&self.principal),
                tool: None,
                reason: "request_body_timeout",
                code: ErrorCode::Timeout,
                source: self.source,
                started: self.started,
                traceparent: self.traceparent.as_ref().and_then(|v| v.to_str().ok()),
            });
        }
        axum::Error::new("request body not received in time")
    }

    /// The body's own error, kept from the client (rmcp would send its text).
    fn failed(&self, e: axum::Error) -> axum::Error {
        let _ =
            self.state
                .compare_exchange(BODY_OK, BODY_FAILED, Ordering::Relaxed, Ordering::Relaxed);
        tracing::debug!(target: "mcp_harden::http", source = %self.source, error = %e, "request body not read");
        e
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(timer) = &mut this.timer else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        if timer.state.load(Ordering::Relaxed) == BODY_LATE {
            return Poll::Ready(Some(Err(timer.expire())));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(_)) if timer.sleep.as_ref().is_some_and(|s| s.is_elapsed()) => {
                Poll::Ready(Some(Err(timer.expire())))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(timer.failed(e)))),
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => {
                let deadline = timer.deadline;
                let sleep = timer
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                std::task::ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(timer.expire())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Header names as constants: looking one up by `&str` parses the name on every request.
const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");

/// Whether the reply's `Content-Type` is `media` (parameters allowed).
fn content_type_is(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(media.as_bytes()))
}

/// rmcp's plain-text refusal as [`transport_refusal`] for its status, its other headers
/// (`Allow`, say) kept; the text is dropped unread.
fn rewrite_refusal<B>(response: Response<B>) -> Response {
    let (parts, _text) = response.into_parts();
    tracing::debug!(target: "mcp_harden::http", status = parts.status.as_u16(), "rmcp refused the request");
    let mut r = transport_refusal(parts.status);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            r.headers_mut().append(name, value.clone());
        }
    }
    r
}

/// A refusal of the transport's (not a tool's), in the guard's own shape: a fixed
/// description per status, never an error's text.
///
/// Not a JSON-RPC error: one without the request's id (which rmcp has read, not the guard)
/// is dropped by rmcp's client, whose request then waits for ever. A 404 is the one
/// exception, as rmcp's client reads its status alone (the session has expired).
fn transport_refusal(status: StatusCode) -> Response {
    let (error, description) = match status {
        StatusCode::NOT_FOUND => return session_not_found(),
        StatusCode::BAD_REQUEST => (
            "invalid_request",
            "the request's MCP headers are missing or not supported: a request other than \
             initialize needs its session's Mcp-Session-Id, and MCP-Protocol-Version must be \
             a version this server supports",
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint serves the methods in Allow",
        ),
        StatusCode::NOT_ACCEPTABLE => (
            "not_acceptable",
            "Accept must include application/json and text/event-stream (a GET: \
             text/event-stream)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body exceeds this server's limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "the body must be one JSON-RPC message, sent as application/json",
        ),
        s if s.is_server_error() => ("server_error", "the request could not be served"),
        s => (
            "request_refused",
            s.canonical_reason().unwrap_or("the request was refused"),
        ),
    };
    error_response(status, error, description)
}

/// What rmcp answers for a session it does not know: the client starts a new one.
fn session_not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": "Session not found"}}),
    )
}

fn throttled(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        AuthFailure::Throttled.client_message(),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

impl Gate {
    fn refuse_credentials(
        &self,
        failure: AuthFailure,
        source: SocketAddr,
        started: Instant,
        headers: &HeaderMap,
    ) -> Response {
        let recorded = self.record(Event {
            event: AuditEvent::Authentication,
            principal: None,
            tool: None,
            reason: failure.reason(),
            code: ErrorCode::Unauthenticated,
            source,
            started,
            traceparent: crate::telemetry::traceparent(headers),
        });
        // Logged with the refusal that blocks the source, within the same budget.
        if let (Some(wait), true) = (self.throttle.failed(source.ip()), recorded) {
            tracing::warn!(target: "mcp_harden::security", source = %source, wait_ms = wait.as_millis() as u64, "too many failed authentications: source throttled");
        }
        let error = if failure == AuthFailure::MalformedHeader {
            "invalid_request"
        } else {
            "invalid_token"
        };
        let mut r = error_response(StatusCode::UNAUTHORIZED, error, failure.client_message());
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            self.challenge(&format!(
                "error=\"{error}\", error_description=\"{}\"",
                failure.client_message()
            )),
        );
        r
    }

    /// HTTP 403 `insufficient_scope` naming the scopes the call needs plus those already
    /// granted (so stepping up loses nothing), with a JSON-RPC error body carrying the
    /// FORBIDDEN tool error.
    fn insufficient_scope(
        &self,
        principal: &Principal,
        missing: Vec<&'static str>,
        id: serde_json::Value,
    ) -> Response {
        let mut wanted: Vec<&str> = missing.clone();
        for s in principal.scopes() {
            if !wanted.contains(&s) {
                wanted.push(s);
            }
        }
        let error = ToolError::forbidden(&missing);
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": -32003, "message": "insufficient scope", "data": {"error": error}},
        });
        let mut r = json_response(StatusCode::FORBIDDEN, body);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            self.challenge(&format!(
                "error=\"insufficient_scope\", scope=\"{}\", error_description=\"additional scope required\"",
                wanted.join(" ")
            )),
        );
        r
    }
}

/// For a `tools/call` of a tool whose scopes the principal lacks: the tool, the missing
/// scopes and the request id.
fn lacking_scope(
    gate: &Gate,
    body: &[u8],
    principal: &Principal,
) -> Option<(String, Vec<&'static str>, serde_json::Value)> {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        id: Option<serde_json::Value>,
        params: Option<Params<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Option<std::borrow::Cow<'a, str>>,
    }
    let call: Call<'_> = serde_json::from_slice(body).ok()?;
    if call.method.as_deref() != Some("tools/call") {
        return None;
    }
    let name = call.params?.name?;
    let required = gate.hardened.required_scopes(&name)?;
    let missing = principal.missing_scopes(required);
    if missing.is_empty() {
        return None;
    }
    Some((
        name.into_owned(),
        missing,
        call.id.unwrap_or(serde_json::Value::Null),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rmcp_failures_lose_their_text_and_keep_their_headers() {
        let failed = Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("x-kept", "1")
            .header("x-twice", "a")
            .header("x-twice", "b")
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CONTENT_LENGTH, "64")
            .body(Body::from(
                "Encounter an error when create session: /srv/app/secret.db",
            ))
            .unwrap();
        let r = rewrite_refusal(failed);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()["x-kept"], "1");
        let twice: Vec<_> = r.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["a", "b"]);
        let types: Vec<_> = r.headers().get_all(header::CONTENT_TYPE).iter().collect();
        assert_eq!(types, ["application/json"]);
        assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "server_error",
                               "error_description": "the request could not be served"})
        );
        // A status without a description of its own gets its reason phrase.
        let r = transport_refusal(StatusCode::CONFLICT);
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains(r#""error_description":"Conflict""#));
    }

    #[test]
    fn origins_and_hosts() {
        let o = OriginRule::parse("http://localhost:*").unwrap();
        assert!(o.matches("http", "localhost", 6274));
        assert!(!o.matches("https", "localhost", 6274));
        let o = OriginRule::parse("https://app.example.com").unwrap();
        assert!(o.matches("https", "app.example.com", 443));
        assert!(!o.matches("https", "app.example.com", 8443));
        assert!(OriginRule::parse("https://app.example.com/path").is_err());
        assert_eq!(split_origin("null"), None);
        assert_eq!(
            split_origin("http://[::1]:8080"),
            Some(("http".into(), "[::1]".into(), 8080))
        );
        let h = HostRule::parse("[::1]").unwrap();
        assert!(h.matches("[::1]", Some(8080)));
        let h = HostRule::parse("example.com:443").unwrap();
        assert!(h.matches("EXAMPLE.com", Some(443)));
        assert!(!h.matches("example.com", Some(80)));
        assert!(!h.matches("example.com.evil", Some(443)));
    }

    #[test]
    fn host_values() {
        assert_eq!(
            split_host("127.0.0.1:8080"),
            Some(("127.0.0.1", Some(8080)))
        );
        assert_eq!(split_host("Example.com"), Some(("Example.com", None)));
        assert_eq!(split_host("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_host("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host("localhost:"), Some(("localhost", None)));
        assert_eq!(split_host("[::1]:"), Some(("[::1]", None)));
        for bad in [
            "",
            ":80",
            "user@localhost",
            "localhost:8x",
            "localhost:+80",
            "localhost:65536",
            "localhost:000080",
            "[::1]x",
            "[::1",
        ] {
            assert_eq!(split_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h, 100), Err(AuthFailure::Missing));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h, 100), Ok("abc"));
        assert_eq!(bearer(&h, usize::MAX), Ok("abc"), "no limit: no overflow");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h, 100), Ok("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("abc"));
        assert_eq!(bearer(&h, 100), Err(AuthFailure::MalformedHeader));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h, 100), Err(AuthFailure::MalformedHeader));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a b"),
        );
        assert_eq!(bearer(&h, 100), Err(AuthFailure::MalformedHeader));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a\tb"),
        );
        assert_eq!(bearer(&h, 100), Err(AuthFailure::MalformedHeader));
        // Control bytes never become a header value (http refuses them)...
        for bad in [&b"Bearer a\x01b"[..], b"Bearer a\x7fb"] {
            assert!(HeaderValue::from_bytes(bad).is_err(), "{bad:?}");
        }
        // ...and non-ASCII ones are refused here.
        let v = HeaderValue::from_bytes("Bearer a\u{e9}b".as_bytes()).expect("obs-text is a value");
        h.insert(header::AUTHORIZATION, v);
        assert_eq!(bearer(&h, 100), Err(AuthFailure::MalformedHeader));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abcdefgh"),
        );
        assert_eq!(bearer(&h, 4), Err(AuthFailure::Oversized));
    }

    #[test]
    fn blanks_are_found_anywhere_in_a_long_token() {
        let token = vec![b'a'; 400];
        assert!(!has_blank(&token));
        for len in [1, 15, 16, 17, 63, 64, 65, 355, 400] {
            for at in 0..len {
                for blank in [b' ', b'\t'] {
                    let mut t = token[..len].to_vec();
                    t[at] = blank;
                    assert!(has_blank(&t), "len {len}, blank at {at}");
                }
            }
        }
    }

    #[test]
    fn forwarded_for() {
        let nets: Vec<ipnet::IpNet> = ["10.0.0.0/8", "2001:db8:1::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let trusted = |ip: &IpAddr| nets.iter().any(|n| n.contains(ip));
        let client = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(l).unwrap());
            }
            forwarded_client(&h, trusted).map(|ip| ip.to_string())
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(client(&[]), None);
        assert_eq!(client(&["192.0.2.7"]), some("192.0.2.7"));
        // What the client wrote itself is left of the proxies' entries: not believed.
        assert_eq!(client(&["198.51.100.1, 192.0.2.7"]), some("192.0.2.7"));
        assert_eq!(
            client(&["nonsense, 192.0.2.7, 10.1.2.3"]),
            some("192.0.2.7")
        );
        // Several lines are one list, in order.
        assert_eq!(
            client(&["198.51.100.1", "192.0.2.7,10.0.0.2"]),
            some("192.0.2.7")
        );
        // Ports, brackets, IPv4-mapped IPv6, tabs.
        assert_eq!(client(&["192.0.2.7:4711"]), some("192.0.2.7"));
        assert_eq!(client(&["[2001:db8::5]:80"]), some("2001:db8::5"));
        assert_eq!(client(&["\t[2001:db8::5] "]), some("2001:db8::5"));
        assert_eq!(client(&["::ffff:192.0.2.7"]), some("192.0.2.7"));
        assert_eq!(client(&["2001:db8::5, 2001:db8:1::9"]), some("2001:db8::5"));
        // Only trusted hops: the left-most of them.
        assert_eq!(client(&["10.0.0.1, 10.0.0.2"]), some("10.0.0.1"));
        // Bytes that are not text left of the client's entry are never read.
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe, 192.0.2.7").unwrap(),
        );
        assert_eq!(
            forwarded_client(&h, trusted).map(|ip| ip.to_string()),
            some("192.0.2.7")
        );
        // At most 32 entries are read.
        let hops = vec!["10.0.0.1"; 40].join(", ");
        assert_eq!(client(&[&format!("192.0.2.7, {hops}")]), None);
        let hops = vec!["10.0.0.1"; 31].join(", ");
        assert_eq!(client(&[&format!("192.0.2.7, {hops}")]), some("192.0.2.7"));
        // An entry that must be read and is not an address: none (the proxy's own counts).
        assert_eq!(client(&["192.0.2.7, unknown"]), None);
        assert_eq!(client(&["192.0.2.7, "]), None);
        assert_eq!(client(&["192.0.2.7:x"]), None);
    }

    #[test]
    fn trusted_networks() {
        let net = |s: &str| {
            trusted_network(s)
                .map(|n| n.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(net("10.0.0.0/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(net("127.0.0.1"), Ok("127.0.0.1/32".into()));
        assert_eq!(net("::1"), Ok("::1/128".into()));
        // IPv4-mapped, as a dual-stack listener shows IPv4 peers: compared as IPv4.
        assert_eq!(net("::ffff:10.0.0.5"), Ok("10.0.0.5/32".into()));
        assert_eq!(net("::ffff:10.0.0.0/104"), Ok("10.0.0.0/8".into()));
        assert!(net("10.0.0.5/8").unwrap_err().contains("host bits"));
        assert!(net("0.0.0.0/0").unwrap_err().contains("every address"));
        assert!(net("::/0").unwrap_err().contains("every address"));
        assert!(net("proxy").unwrap_err().contains("not an address"));
    }

    #[test]
    fn a_full_throttle_table_still_blocks_new_sources() {
        // A burst of 2: a source is blocked by its second failure, so a second failure
        // blocking at once shows that its limiter state was kept.
        let t = AuthThrottle::new(1, 2).unwrap();
        let ip = |i: usize| IpAddr::V4((0x0a00_0000 + i as u32).into());
        for i in 0..=MAX_BLOCKED {
            assert!(
                t.failed(ip(i)).is_none(),
                "the first failure is within the burst"
            );
            assert!(t.failed(ip(i)).is_some(), "the second blocks");
        }
        assert!(
            t.blocked(ip(MAX_BLOCKED)).is_some(),
            "the newest source is blocked"
        );
        let size = t.blocked.lock().unwrap().len();
        assert!(size <= MAX_BLOCKED / 8 * 7 + 1, "{size}");
        // Those whose blocks end soonest (the oldest here) were forgotten, the latest kept.
        assert!((MAX_BLOCKED - 1000..MAX_BLOCKED).all(|i| t.blocked(ip(i)).is_some()));
        assert!(t.blocked(ip(0)).is_none());
        // A forgotten source is blocked again by its next failure (its limiter remembers).
        assert!(t.failed(ip(0)).is_some());
        assert!(t.blocked(ip(0)).is_some());
    }

    #[test]
    fn the_throttle_forgets_idle_sources() {
        // 600 000 failures a minute: a source is idle again 100 µs after one failure.
        let t = AuthThrottle::new(600_000, 1).unwrap();
        let source = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..4000 {
            t.failed(source(i));
        }
        assert_eq!(t.limiter.len(), 4000);
        std::thread::sleep(Duration::from_millis(5));
        for i in 4000..4097 {
            t.failed(source(i));
        }
        assert!(t.limiter.len() < 100, "{} tracked", t.limiter.len());
    }

    #[test]
    fn throttle_keys_and_blocks() {
        let t = AuthThrottle::new(1, 2).unwrap();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(source_key(ip), source_key(same64));
        assert_eq!(t.blocked(ip), None);
        assert_eq!(t.failed(ip), None);
        assert_eq!(t.blocked(same64), None);
        assert!(
            t.failed(same64).is_some(),
            "the second failure in a minute uses up the burst"
        );
        assert!(t.blocked(ip).is_some());
        assert_eq!(t.blocked("192.0.2.1".parse().unwrap()), None);
    }
}
