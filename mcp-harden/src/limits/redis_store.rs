//! A [`RateLimitStore`] in Redis: one atomic GCRA decision per limit checked, one round trip
//! (a Lua script run with `EVALSHA`), the clock being Redis's own `TIME` so that every
//! replica agrees on it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{GcraQuota, RateDecision, RateLimitStore, StoreError};

/// GCRA: the key holds the theoretical arrival time (TAT, microseconds on Redis's clock).
/// A call is admitted when `TAT + emission - emission * burst <= now`; the new TAT then
/// expires with the key once it is in the past (an idle caller costs nothing).
const GCRA: &str = r"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

/// Rate-limit state in Redis, shared by every replica that points at the same server.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use mcp_harden::limits::{FailMode, RedisStore};
/// let store = RedisStore::new("redis://127.0.0.1:6379")?;
/// # let _ = (store, FailMode::Closed);
/// # Ok(()) }
/// ```
///
/// Times are whole microseconds on Redis's clock; a call's interval (period / count) is
/// rounded up to one, so a rate whose interval is not a whole number of microseconds (say
/// 300 000/s, 3.33 µs) is enforced stricter than declared (250 000/s), never looser.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://host:port/db`, `rediss://` for TLS is not
    /// compiled in). Connects lazily and reconnects by itself. Each decision, connecting
    /// included, times out after 250 ms; after [`STORE_TRIP`](super::STORE_TRIP) failures in
    /// a row the server asks Redis nothing for [`STORE_REST`](super::STORE_REST) (both by
    /// default: [`StoreOutage`](super::StoreOutage); the
    /// configured [`FailMode`](super::FailMode) decides), then one call asks again, so an
    /// unreachable or hung Redis costs one call a timeout per rest, not every call. Call it
    /// inside a Tokio runtime (outside one it returns an error).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::with_timeout(url, Duration::from_millis(250))
    }

    /// Like [`new`](Self::new) with another per-decision timeout.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError(
                "RedisStore must be created inside a Tokio runtime".to_owned(),
            ));
        }
        let client = redis::Client::open(url).map_err(|e| StoreError(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(Self {
            conn,
            script: redis::Script::new(GCRA),
            timeout,
        })
    }
}

impl RateLimitStore for RedisStore {
    fn check<'a>(
        &'a self,
        key: &'a str,
        quota: GcraQuota,
    ) -> Pin<Box<dyn Future<Output = Result<RateDecision, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let emission = u64::try_from(quota.emission.as_nanos().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1);
            // The connection's own timeouts bound each attempt; this bounds the whole (a
            // reconnection and its retry, a `NOSCRIPT` reload).
            let mut invocation = self.script.key(key);
            invocation.arg(emission).arg(quota.burst);
            let decision = invocation.invoke_async(&mut conn);
            let (allowed, wait_us): (i64, i64) = tokio::time::timeout(self.timeout, decision)
                .await
                .map_err(|_| StoreError(format!("no answer within {:?}", self.timeout)))?
                .map_err(|e| StoreError(e.to_string()))?;
            Ok(if allowed == 1 {
                RateDecision::Allow
            } else {
                RateDecision::Deny(Duration::from_micros(
                    u64::try_from(wait_us).unwrap_or(0).max(1),
                ))
            })
        })
    }
}
