//! A [`RateLimitStore`] in Redis: one atomic GCRA decision over all of a call's rate
//! limits, one round trip (a Lua script run with `EVALSHA`), the clock being Redis's own
//! `TIME` so that every replica agrees on it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{GcraQuota, RateLimitStore, StoreDecision, StoreError, StoreFuture, StoreLimit};

/// GCRA over every key of a call (`ARGV`: each key's interval in microseconds and burst):
/// a key holds its theoretical arrival time (TAT, microseconds on Redis's clock). A call is
/// admitted when for every key `TAT + interval - interval * burst <= now`; only then are the
/// new TATs written, each expiring with its key once it is in the past (an idle caller costs
/// nothing). Otherwise nothing is written, and the answer is the longest wait and the first
/// key that refused (0-based). Commands are replicated, not the script, which reads `TIME`
/// (needed before Redis 5; a no-op, or absent, since).
const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local first, wait = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat + interval
  local allow_at = tats[i] - interval * burst
  if allow_at > now then
    if first == 0 then first = i end
    if allow_at - now > wait then wait = allow_at - now end
  end
end
if first > 0 then
  return {0, wait, first - 1}
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {1, 0, 0}
";

/// The cells of a call refused after [`GCRA`] admitted it, given back (`ARGV`: what is left
/// of each key's cell, in microseconds): each TAT moves back by that much, and a key left in
/// the past is deleted.
const REFUND: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    tat = tat - tonumber(ARGV[i])
    if tat > now then
      redis.call('SET', KEYS[i], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 1
";

/// A quota's interval in whole microseconds, rounded up (at least one).
fn interval_us(quota: GcraQuota) -> u64 {
    u64::try_from(quota.emission.as_nanos().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

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
///
/// What the Redis must be: one server (or a primary with replicas), not a Cluster (a call's
/// keys, the caller's and the tool's, would lie in different slots); and not one that
/// evicts these keys: an evicted key forgets what its caller spent, and every key here has
/// a TTL, so `allkeys-*` and `volatile-*` policies alike evict them under memory pressure.
/// Give it the memory it needs with `maxmemory-policy noeviction`: a full Redis then fails
/// decisions, and the [`FailMode`](super::FailMode) answers. Keys are namespaced by the
/// server's name ([`HardenedBuilder::server_info`](crate::HardenedBuilder::server_info),
/// `mcp-harden` by default): servers of one name share their quotas, so give each
/// deployment its own.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    gcra: redis::Script,
    refund: redis::Script,
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
            gcra: redis::Script::new(GCRA),
            refund: redis::Script::new(REFUND),
            timeout,
        })
    }
}

impl RedisStore {
    /// Runs `script` over `limits` (each key with `args` of its quota), within the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        limits: &[StoreLimit<'_>],
        args: impl Fn(GcraQuota) -> (u64, Option<u32>),
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = script.prepare_invoke();
        for l in limits {
            let (interval, burst) = args(l.quota);
            invocation.key(l.key).arg(interval);
            if let Some(burst) = burst {
                invocation.arg(burst);
            }
        }
        // The connection's own timeouts bound each attempt; this bounds the whole (a
        // reconnection and its retry, a `NOSCRIPT` reload).
        tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| StoreError(e.to_string()))
    }
}

impl RateLimitStore for RedisStore {
    fn check<'a>(&'a self, limits: &'a [StoreLimit<'a>]) -> StoreFuture<'a, StoreDecision> {
        Box::pin(async move {
            if limits.is_empty() {
                return Ok(StoreDecision::Allow);
            }
            let (allowed, wait_us, first): (i64, i64, i64) = self
                .run(&self.gcra, limits, |q| (interval_us(q), Some(q.burst)))
                .await?;
            Ok(if allowed == 1 {
                StoreDecision::Allow
            } else {
                StoreDecision::Deny {
                    limit: usize::try_from(first).unwrap_or(0),
                    wait: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0).max(1)),
                }
            })
        })
    }

    fn refund<'a>(
        &'a self,
        limits: &'a [StoreLimit<'a>],
        taken_ago: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let ago = u64::try_from(taken_ago.as_micros()).unwrap_or(u64::MAX);
            let left = |q: GcraQuota| interval_us(q).saturating_sub(ago);
            let limits: Vec<StoreLimit<'_>> = limits
                .iter()
                .filter(|l| left(l.quota) > 0)
                .copied()
                .collect();
            if limits.is_empty() {
                return Ok(());
            }
            let _: i64 = self.run(&self.refund, &limits, |q| (left(q), None)).await?;
            Ok(())
        })
    }
}
