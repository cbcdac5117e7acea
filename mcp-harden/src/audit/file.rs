//! An append-only JSON-lines audit log in which every record carries the SHA-256 of the
//! previous line (a hash chain) and a sequence number, written by one thread behind a bounded
//! queue, fsynced per batch, rotated by size or age, with a retention limit.
//!
//! Each line is one record's JSON plus `"seq"` (1, 2, 3, … across rotations) and `"prev"`
//! (the hex SHA-256 of the previous line's bytes; 64 zeros before the first record). Editing,
//! deleting or reordering a record breaks the chain at the next one; a crash mid-write leaves
//! a partial last line after a verifiable prefix. [`verify`] (and `mcp-harden audit verify`)
//! checks files and reports the first break.
//!
//! With a [`ChainKey`] ([`FileAuditConfig::chain_key`]), each line also ends with `"mac"`,
//! the hex HMAC-SHA256 under that key of the line's bytes before it, and the next record's
//! `prev` is that MAC: whoever rewrites or edits the log without the key, any record of it,
//! the last included, cannot make it verify with the key. Records cut off the end still
//! need a head kept elsewhere ([`Expect::heads`]) to be seen.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AuditRecord, AuditSink, AuditSlot, AuditUnavailable};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The shortest [`ChainKey`], in bytes.
pub const MIN_CHAIN_KEY: usize = 32;

/// The largest chain key file ([`ChainKey::from_file`]).
const MAX_KEY_FILE: u64 = 4096;

/// What each keyed record's MAC covers first: the log's purpose, so that a MAC made for the
/// audit log is not one for anything else made with the same key.
const MAC_DOMAIN: &[u8] = b"mcp-harden audit record v1\n";

/// A keyed line's end: `,"mac":"` and 64 hex digits and `"}`.
const MAC_TAIL: usize = 8 + 64 + 2;

/// A secret key for the audit records' MACs (HMAC-SHA256): given to the sink that writes
/// the log and to whoever verifies it, kept from whoever can write the log's files. Use one
/// key per log (a log written with the same key could stand in for another), and not a key
/// used for anything else (the JWT secret, say). Debug output shows no key.
#[derive(Clone)]
pub struct ChainKey(hmac::Hmac<Sha256>);

impl ChainKey {
    /// A key of at least [`MIN_CHAIN_KEY`] bytes (e.g. `mcp-harden secret`'s output, or 32
    /// random bytes); a shorter one is refused.
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self, ChainKeyTooShort> {
        use hmac::Mac;
        let key = key.as_ref();
        if key.len() < MIN_CHAIN_KEY {
            return Err(ChainKeyTooShort(key.len()));
        }
        hmac::Hmac::<Sha256>::new_from_slice(key)
            .map(Self)
            .map_err(|_| ChainKeyTooShort(key.len()))
    }

    /// The key in the file at `path` (at most 4 KiB; trailing newlines are not part of it),
    /// e.g. a secret mounted by the deployment: a key never needs to be on a command line.
    pub fn from_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let mut bytes = Vec::new();
        File::open(path)?
            .take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)?;
        let invalid = |what: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(invalid("a chain key file holds at most 4 KiB".into()));
        }
        let newlines = bytes
            .iter()
            .rev()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
        Self::new(&bytes[..bytes.len() - newlines]).map_err(|e| invalid(e.to_string()))
    }

    /// The hex MAC of a keyed line's bytes before its `,"mac":`.
    fn mac(&self, content: &[u8]) -> String {
        use hmac::Mac;
        let tag = self
            .0
            .clone()
            .chain_update(MAC_DOMAIN)
            .chain_update(content)
            .finalize()
            .into_bytes();
        hex(&tag)
    }

    /// A keyed line's MAC if it is the one this key makes for the line.
    fn checked<'l>(&self, line: &'l [u8]) -> Option<&'l str> {
        use subtle::ConstantTimeEq as _;
        let (body, tail) = line.split_at(line.len().checked_sub(MAC_TAIL)?);
        let written = tail.strip_prefix(br#","mac":""#)?.strip_suffix(br#""}"#)?;
        let made = self.mac(body);
        if bool::from(made.as_bytes().ct_eq(written)) {
            std::str::from_utf8(written).ok()
        } else {
            None
        }
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([REDACTED])")
    }
}

/// A [`ChainKey`] shorter than [`MIN_CHAIN_KEY`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an audit chain key needs at least 32 bytes, not {0}")]
pub struct ChainKeyTooShort(pub usize);

/// Whether a record's line is keyed: it ends with its own `"mac"`.
fn is_keyed(line: &[u8]) -> bool {
    line.len()
        .checked_sub(MAC_TAIL)
        .is_some_and(|at| line[at..].starts_with(br#","mac":""#) && line.ends_with(br#""}"#))
}

/// The link the next record's `prev` must be: a keyed line's MAC (checked with `key`), else
/// the SHA-256 of the line. A keyed line whose MAC `key` does not make, or without `key`,
/// is an error saying so.
fn link_of(line: &[u8], key: Option<&ChainKey>) -> Result<String, &'static str> {
    if !is_keyed(line) {
        return Ok(hex(&Sha256::digest(line)));
    }
    let key = key.ok_or("a keyed record: verify it with the log's chain key")?;
    key.checked(line)
        .map(str::to_owned)
        .ok_or("its MAC is not the chain key's: the record was edited, or written with another key")
}

/// The last sequence number a record can have: one less than `u64::MAX`, so that the number
/// after any record's is representable (a record numbered `u64::MAX` is forged).
const LAST_SEQ: u64 = u64::MAX - 1;

/// How long [`FileAuditConfig::open`] waits for the lock of a sink that is stopping.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// When the log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fsync {
    /// After every batch of records, before their calls' slots are released (the default):
    /// a record whose slot was released survives a crash.
    Always,
    /// At most this often, and at most this long after a write (records of the last
    /// interval may be lost in a power failure).
    Every(Duration),
    /// Never explicitly (the operating system decides).
    Never,
}

/// What happens to a call when the queue is full (the disk is slow or failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueFull {
    /// Refuse the call with `UNAVAILABLE` (retryable) before it runs. The default.
    #[default]
    Refuse,
    /// Run the call and drop its record, counting it ([`FileAuditSink::dropped`]).
    AdmitAndCount,
}

/// Builds a [`FileAuditSink`].
#[derive(Debug, Clone)]
#[must_use]
pub struct FileAuditConfig {
    path: PathBuf,
    queue: usize,
    fsync: Fsync,
    rotate_bytes: Option<u64>,
    rotate_age: Option<Duration>,
    retain: Option<usize>,
    full: QueueFull,
    max_record: usize,
    key: Option<ChainKey>,
    adopt_plain: bool,
}

/// The default of [`FileAuditConfig::max_record_bytes`].
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

impl FileAuditConfig {
    /// A log at `path` (rotated files become `path.<first seq, 20 digits>`). Defaults: a
    /// queue of 4096 records, [`Fsync::Always`], rotation at 64 MiB, every rotated file kept,
    /// [`QueueFull::Refuse`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            queue: 4096,
            fsync: Fsync::Always,
            rotate_bytes: Some(64 * 1024 * 1024),
            rotate_age: None,
            retain: None,
            full: QueueFull::Refuse,
            max_record: DEFAULT_MAX_RECORD_BYTES,
            key: None,
            adopt_plain: false,
        }
    }

    /// Ends every record with its MAC under `key` (HMAC-SHA256), which the next record's
    /// `prev` then is: a log edited or rewritten by someone without the key, any record of it
    /// or the whole, fails [`verify_expecting`] with the key ([`Expect::key`],
    /// `mcp-harden audit verify --key-file`). A keyed log is not opened without its key, nor
    /// with another (its last record's MAC is checked), nor when its last record has no MAC:
    /// a log written without a key goes on keyed only with
    /// [`adopt_plain_log`](Self::adopt_plain_log).
    pub fn chain_key(mut self, key: ChainKey) -> Self {
        self.key = Some(key);
        self
    }

    /// With [`chain_key`](Self::chain_key): lets a log written so far without a key go on
    /// keyed from its next record (the first keyed record's `prev`, under its MAC, covers
    /// the plain ones before it). Give it for one start only, and note the first keyed
    /// record's seq (logged, and printed by verify) for [`Expect::keyed_from`]: a log
    /// rewritten whole without the key looks just like a plain log, and with this kept on, the
    /// sink would go on from it. A log that has keyed records is never adopted.
    pub fn adopt_plain_log(mut self) -> Self {
        self.adopt_plain = true;
        self
    }

    /// The largest record queued whole (default 64 KiB, at least 1 KiB): a larger one is
    /// written with its arguments replaced by a note of the record's size. With the queue's
    /// bound on records, this bounds the memory the queue holds while the disk is slow
    /// (about 320 MiB at the defaults, with the refusals' share), whatever the callers send.
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record = bytes.max(1024);
        self
    }

    /// Records of calls that may wait to be written (at least 1). Records not reserved by a
    /// call (HTTP requests refused before any call, and a second sink's records when two are
    /// combined) have a quarter of that again (at least 1) of their own: a flood of refused
    /// requests, which anyone can send without credentials, cannot make calls be refused
    /// for want of a slot; beyond it their records are dropped and counted
    /// ([`FileAuditSink::dropped`]). An authenticated caller's refusal may also take a
    /// call's slot, so that such a flood cannot hide it.
    pub fn queue(mut self, records: usize) -> Self {
        self.queue = records.max(1);
        self
    }

    /// The fsync policy.
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// Rotate when the active file reaches `bytes` (`None`: never by size).
    pub fn rotate_bytes(mut self, bytes: Option<u64>) -> Self {
        self.rotate_bytes = bytes;
        self
    }

    /// Rotate when the active file is this old (`None`: never by age).
    pub fn rotate_age(mut self, age: Option<Duration>) -> Self {
        self.rotate_age = age;
        self
    }

    /// Keep at most this many rotated files, deleting the oldest (`None`: keep all).
    pub fn retain(mut self, files: Option<usize>) -> Self {
        self.retain = files;
        self
    }

    /// What a full queue does to a call.
    pub fn when_full(mut self, full: QueueFull) -> Self {
        self.full = full;
        self
    }

    /// Opens the log (resuming its chain, and cutting off a partial record left by a crash)
    /// and starts its writer thread.
    ///
    /// One sink at a time writes a log: each holds an exclusive lock on `path.lock` (which
    /// rotation leaves in place) until its writer stops, after its last clone is dropped and
    /// its queue written. A lock held by another sink, in this process or another, is waited
    /// for up to 2 seconds (time for a sink just dropped to finish), then `open` fails, as it
    /// does where the file system cannot lock. It also fails when the log's last record has
    /// the last sequence number.
    pub fn open(self) -> std::io::Result<FileAuditSink> {
        // Before the log is read or cut: another sink may be writing it.
        let lock = lock(&self.path)?;
        let (file, state) = open_active(&self.path, self.key.as_ref(), self.adopt_plain)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            loss_logged: crate::limits::rate::Moment::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            #[cfg(test)]
            faults: Faults::default(),
        });
        let writer = Writer {
            config: self.clone(),
            file,
            state,
            shared: shared.clone(),
            last_sync: Instant::now(),
            unsynced: false,
            uncut: false,
            renamed: false,
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("mcp-harden-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(FileAuditSink {
            tx,
            slots: Arc::new(Semaphore::new(self.queue)),
            events: Arc::new(Semaphore::new((self.queue / 4).max(1))),
            full: self.full,
            max_record: self.max_record,
            shared,
        })
    }
}

struct Shared {
    /// When a lost or refused record was last logged.
    loss_logged: crate::limits::rate::Moment,
    written: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    failures: AtomicU64,
    healthy: AtomicBool,
    #[cfg(test)]
    faults: Faults,
}

/// Failures injected by tests: each of `create` and `sync` is how many of the next such
/// operations fail.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// Creations of the new active file in a rotation.
    create: std::sync::atomic::AtomicU32,
    /// Data syncs.
    sync: std::sync::atomic::AtomicU32,
    /// Data syncs that succeeded.
    synced: AtomicU64,
    /// Removals of old files (retention).
    remove: std::sync::atomic::AtomicU32,
}

#[cfg(test)]
impl Faults {
    /// Fails if `which` has failures left, taking one.
    fn take(which: &std::sync::atomic::AtomicU32) -> std::io::Result<()> {
        match which.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(std::io::Error::other("an injected failure")),
            Err(_) => Ok(()),
        }
    }
}

/// What the writer receives.
enum Item {
    /// A record, with the queue slot it holds until it is written.
    Record(Record),
    /// A flush, acknowledged once everything before it is written and synced per the policy.
    Flush(mpsc::SyncSender<()>),
}

/// A record and its queue slot.
/// A record's JSON object, and its queue slot.
type Record = (Box<[u8]>, Option<OwnedSemaphorePermit>);

/// The hash-chained file sink. Cloning shares the log.
///
/// Records are written by a thread of its own: call [`flush`](AuditSink::flush) before the
/// process exits, or records still queued are lost.
#[derive(Clone)]
pub struct FileAuditSink {
    tx: mpsc::Sender<Item>,
    /// Queue slots of calls' records...
    slots: Arc<Semaphore>,
    /// ...and of records of requests refused before any call.
    events: Arc<Semaphore>,
    full: QueueFull,
    /// See [`FileAuditConfig::max_record_bytes`].
    max_record: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAuditSink")
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl FileAuditSink {
    /// Records written (and, with [`Fsync::Always`], synced).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records dropped: admitted calls when the queue was full ([`QueueFull::AdmitAndCount`]),
    /// or records not reserved (security events before any call) that found their share of
    /// the queue full (see [`FileAuditConfig::queue`]).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Calls refused because the queue was full ([`QueueFull::Refuse`]).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Failed writes (each retried until it succeeds).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Whether the last write succeeded.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Queues the record as its JSON (a `serde_json::Value` would hold about 16 times as
    /// many bytes), its arguments replaced by a note of their size if the record exceeds
    /// [`FileAuditConfig::max_record_bytes`].
    fn send(&self, record: &AuditRecord, permit: Option<OwnedSemaphorePermit>) {
        let mut json = record.to_json();
        if json.len() > self.max_record {
            let mut cut = record.clone();
            cut.arguments = serde_json::Value::String(format!(
                "[TRUNCATED: the record's {} bytes exceed the log's limit of {}]",
                json.len(),
                self.max_record
            ));
            json = cut.to_json();
        }
        let value = json.into_bytes().into_boxed_slice();
        if self.tx.send(Item::Record((value, permit))).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::audit(crate::telemetry::AuditResult::Dropped);
            self.log_loss("the audit writer has stopped: records are lost");
        }
    }

    /// Logs a lost record, or a call refused for want of a slot, at most once a second: a
    /// stalled disk or a stopped writer would otherwise log at the rate of requests. The
    /// counts are totals since the sink opened.
    fn log_loss(&self, what: &'static str) {
        if self.shared.loss_logged.claim(Duration::from_secs(1)) {
            tracing::error!(target: "mcp_harden::audit", dropped = self.dropped(), refused = self.refused(), "{what} (logged at most once a second)");
        }
    }
}

impl AuditSink for FileAuditSink {
    fn record(&self, record: &AuditRecord) {
        // Not reserved (a security event before any call): one of their own slots if there
        // is one. Anyone can cause refusals of unauthenticated or anonymous requests: those
        // never take a call's slot. An authenticated caller's (a scope or session refusal,
        // bounded by its credentials) may, so that a flood of the former cannot hide it.
        // A summary of refusals held back stands for many: it may take a call's slot too.
        let authenticated = record.principal.subject.is_some()
            && record.principal.auth_method != crate::auth::AuthMethod::Anonymous.as_str();
        let permit = match self.events.clone().try_acquire_owned() {
            Err(_) if authenticated || record.event == crate::audit::AuditEvent::Unrecorded => {
                self.slots.clone().try_acquire_owned()
            }
            taken => taken,
        };
        match permit {
            Ok(p) => self.send(record, Some(p)),
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::audit(crate::telemetry::AuditResult::Dropped);
                self.log_loss("the audit queue is full: security event records are dropped");
            }
        }
    }

    fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(AuditSlot::with_permit(p)),
            Err(_) if self.full == QueueFull::AdmitAndCount => Ok(AuditSlot::unreserved()),
            Err(_) => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                self.log_loss("the audit queue is full: calls are refused");
                Err(AuditUnavailable)
            }
        }
    }

    fn record_reserved(&self, slot: AuditSlot, record: &AuditRecord) {
        match slot.0 {
            Some(p) => self.send(record, Some(p)),
            None => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::audit(crate::telemetry::AuditResult::Dropped);
            }
        }
    }

    /// Waits for the writer to write, and sync per the [`Fsync`] policy, every record queued
    /// before the call. `false` when `timeout` passes first (the disk is failing: the writer
    /// is still retrying) or a sync fails.
    fn flush(&self, timeout: Duration) -> bool {
        let (reply, done) = mpsc::sync_channel(1);
        if self.tx.send(Item::Flush(reply)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }
}

/// Where the chain stands.
struct ChainState {
    seq: u64,
    prev: String,
    file_bytes: u64,
    file_first_seq: Option<u64>,
    opened: Instant,
}

struct Writer {
    config: FileAuditConfig,
    file: File,
    state: ChainState,
    shared: Arc<Shared>,
    /// When the file was last synced, or a sync of its tail last failed.
    last_sync: Instant,
    /// Records were written since the last sync ([`Fsync::Every`]).
    unsynced: bool,
    /// A failed attempt may have left part or all of its batch after `state.file_bytes`.
    uncut: bool,
    /// A rotation renamed the active file but has not created the new one yet.
    renamed: bool,
    /// The log's lock, held until the writer stops.
    _lock: File,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Item>) {
        loop {
            // Records written but not synced are synced within the interval, even when no
            // other record follows.
            let wait = match self.config.fsync {
                Fsync::Every(d) if self.unsynced => {
                    Some(d.saturating_sub(self.last_sync.elapsed()))
                }
                _ => None,
            };
            let received = match wait {
                Some(wait) => rx.recv_timeout(wait),
                None => rx.recv().map_err(RecvTimeoutError::from),
            };
            let first = match received {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_tail();
                    continue;
                }
                // Every sender is gone and the queue is empty.
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut item = Some(first);
            let flush = loop {
                match item {
                    Some(Item::Record(record)) => batch.push(record),
                    Some(Item::Flush(reply)) => break Some(reply),
                    None => break None,
                }
                if batch.len() >= 512 {
                    break None;
                }
                item = rx.try_recv().ok();
            };
            if !batch.is_empty() {
                self.write(&batch);
            }
            // Dropping the batch releases the slots of records now on disk.
            drop(batch);
            if let Some(reply) = flush {
                if !self.unsynced || self.sync_tail() {
                    let _ = reply.send(());
                }
            }
        }
        let _ = self.file.sync_all();
    }

    /// Writes a batch. Never drops a record: retries until the disk takes it (the queue
    /// fills meanwhile, and new calls are refused).
    fn write(&mut self, batch: &[Record]) {
        let mut backoff = Duration::from_millis(10);
        while let Err(e) = self.write_batch(batch) {
            self.shared.failures.fetch_add(1, Ordering::Relaxed);
            self.shared.healthy.store(false, Ordering::Relaxed);
            tracing::error!(target: "mcp_harden::audit", error = %e, "cannot write the audit log; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.shared.healthy.store(true, Ordering::Relaxed);
        self.shared
            .written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    /// Syncs records written but not yet synced; after a failure, the next attempt is an
    /// interval later. Returns whether it succeeded.
    fn sync_tail(&mut self) -> bool {
        match self.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.shared.healthy.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.last_sync = Instant::now();
                self.shared.failures.fetch_add(1, Ordering::Relaxed);
                self.shared.healthy.store(false, Ordering::Relaxed);
                tracing::error!(target: "mcp_harden::audit", error = %e, "cannot sync the audit log; retrying");
                false
            }
        }
    }

    fn sync_data(&self) -> std::io::Result<()> {
        #[cfg(test)]
        Faults::take(&self.shared.faults.sync)?;
        self.file.sync_data()?;
        #[cfg(test)]
        self.shared.faults.synced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a batch, all or nothing as far as the chain is concerned.
    fn write_batch(&mut self, batch: &[Record]) -> std::io::Result<()> {
        self.cut()?;
        self.maybe_rotate()?;
        let (mut seq, mut prev) = (self.state.seq, self.state.prev.clone());
        let mut first = None;
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for (json, _) in batch {
            seq = next_seq(seq).ok_or_else(|| {
                std::io::Error::other("the audit chain has reached its last sequence number")
            })?;
            first.get_or_insert(seq);
            // `{"seq":N,"prev":"…",` then the record's members (its JSON without its braces),
            // then, keyed, `,"mac":"…"` over all that.
            let start = buf.len();
            buf.extend_from_slice(format!(r#"{{"seq":{seq},"prev":"{prev}""#).as_bytes());
            let members = json
                .strip_prefix(b"{")
                .and_then(|m| m.strip_suffix(b"}"))
                .unwrap_or_default();
            if !members.is_empty() {
                buf.push(b',');
                buf.extend_from_slice(members);
            }
            prev = match &self.config.key {
                Some(key) => {
                    let mac = key.mac(&buf[start..]);
                    buf.extend_from_slice(format!(r#","mac":"{mac}"}}"#).as_bytes());
                    mac
                }
                None => {
                    buf.push(b'}');
                    hex(&Sha256::digest(&buf[start..]))
                }
            };
            buf.push(b'\n');
        }
        let sync = match self.config.fsync {
            Fsync::Always => true,
            Fsync::Every(d) => self.last_sync.elapsed() >= d,
            Fsync::Never => false,
        };
        // Until the batch is complete, a failure may leave part or all of it in the file (all
        // of it when the sync fails): it is cut off, so that the retry does not repeat it.
        self.uncut = true;
        let appended = self.file.write_all(&buf).and_then(|()| match sync {
            true => self.sync_data(),
            false => Ok(()),
        });
        if let Err(e) = appended {
            // If this fails too, the next attempt cuts first.
            let _ = self.cut();
            return Err(e);
        }
        self.uncut = false;
        if sync {
            self.last_sync = Instant::now();
            self.unsynced = false;
        } else if matches!(self.config.fsync, Fsync::Every(_)) {
            self.unsynced = true;
        }
        if self.state.file_first_seq.is_none() {
            self.state.file_first_seq = first;
        }
        self.state.seq = seq;
        self.state.prev = prev;
        self.state.file_bytes += buf.len() as u64;
        Ok(())
    }

    /// Cuts the active file back to the end of its last complete batch, if a failed attempt
    /// may have left more.
    fn cut(&mut self) -> std::io::Result<()> {
        if self.uncut {
            self.file.set_len(self.state.file_bytes)?;
            self.file.seek(SeekFrom::Start(self.state.file_bytes))?;
            self.uncut = false;
        }
        Ok(())
    }

    /// Rotates the active file if it is due. A rotation that fails after the rename is
    /// resumed by the next call, which only creates the new file.
    fn maybe_rotate(&mut self) -> std::io::Result<()> {
        let Some(first) = self.state.file_first_seq else {
            return Ok(());
        };
        if !self.renamed {
            let by_size = self
                .config
                .rotate_bytes
                .is_some_and(|b| self.state.file_bytes >= b);
            let by_age = self
                .config
                .rotate_age
                .is_some_and(|a| self.state.opened.elapsed() >= a);
            if !(by_size || by_age) {
                return Ok(());
            }
            self.file.sync_all()?;
            std::fs::rename(&self.config.path, rotated_name(&self.config.path, first))?;
            self.renamed = true;
        }
        #[cfg(test)]
        Faults::take(&self.shared.faults.create)?;
        self.file = create_append(&self.config.path)?;
        self.renamed = false;
        sync_dir(&self.config.path);
        self.state.file_bytes = 0;
        self.state.file_first_seq = None;
        self.state.opened = Instant::now();
        if let Some(keep) = self.config.retain {
            // Oldest first, stopping at a failure, which is only logged: the files kept stay
            // one unbroken chain (a hole would verify as deleted records), the records are
            // safe in the new file, and the next rotation tries again.
            let mut rotated = rotated_files(&self.config.path)?;
            rotated.sort();
            let excess = rotated.len().saturating_sub(keep);
            for old in &rotated[..excess] {
                #[cfg(test)]
                let removed = Faults::take(&self.shared.faults.remove)
                    .and_then(|()| std::fs::remove_file(old));
                #[cfg(not(test))]
                let removed = std::fs::remove_file(old);
                if let Err(e) = removed {
                    tracing::warn!(target: "mcp_harden::audit", file = %old.display(), error = %e, "cannot remove an old audit file (retention): trying again at the next rotation");
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The sequence number after `seq`, unless `seq` is the last.
fn next_seq(seq: u64) -> Option<u64> {
    seq.checked_add(1).filter(|n| *n <= LAST_SEQ)
}

/// Takes the exclusive lock of the log at `path`, on `path.lock`, held until the returned
/// file is closed. Waits up to [`LOCK_WAIT`] for a sink that holds it to stop.
fn lock(path: &Path) -> std::io::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = create_append(&lock_path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "the audit log {} is in use by another sink ({} is locked)",
                        path.display(),
                        lock_path.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot lock {}: {e}", lock_path.display()),
                ))
            }
        }
    }
}

fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:020}"));
    PathBuf::from(name)
}

/// Rotated files of `path` (`path.<20 digits>`), unsorted.
pub fn rotated_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(suffix) = name.strip_prefix(base).and_then(|s| s.strip_prefix('.')) {
            if suffix.len() == 20 && suffix.bytes().all(|b| b.is_ascii_digit()) {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

fn create_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).read(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Syncs the directory of `path`, so that a file created or renamed in it survives a crash.
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(target: "mcp_harden::audit", dir = %dir.display(), error = %e, "cannot sync the audit log's directory: a crash may lose a new or renamed file");
        }
    }
}

/// Opens the active file and finds where the chain stands: its last complete record, or
/// the last record of the newest rotated file, or the genesis.
fn open_active(
    path: &Path,
    key: Option<&ChainKey>,
    adopt_plain: bool,
) -> std::io::Result<(File, ChainState)> {
    let mut file = create_append(path)?;
    // A log created here must still be there after a crash.
    sync_dir(path);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    // A crash may have left a partial record: cut it off (it was never acknowledged).
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(target: "mcp_harden::audit", path = %path.display(), bytes = bytes.len() - complete, "removing a partial audit record left by a crash");
        file.set_len(complete as u64)?;
        file.sync_all()?;
        bytes.truncate(complete);
    }
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    // The last record's seq and the link after it; a keyed log only with its key (the last
    // record's own MAC checked).
    let last_of = |bytes: &[u8]| -> std::io::Result<Option<(u64, String)>> {
        let Some(line) = bytes.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| invalid(format!("the last audit record is not JSON: {e}")))?;
        let seq = v["seq"]
            .as_u64()
            .ok_or_else(|| invalid("the last audit record has no seq".into()))?;
        // Any keyed record in the file makes it a keyed log.
        let keyed_log = bytes.split(|b| *b == b'\n').any(is_keyed);
        match (key, is_keyed(line)) {
            (None, _) if keyed_log => {
                return Err(invalid(
                    "the audit log is keyed: open it with its chain key".into(),
                ))
            }
            (Some(_), false) if keyed_log => {
                return Err(invalid(
                    "the audit log's last record has no MAC after records with one: it was \
                     written by someone without the chain key"
                        .into(),
                ))
            }
            (Some(_), false) if !adopt_plain => {
                return Err(invalid(
                    "the audit log's last record has no MAC: a log written without a chain \
                     key goes on keyed only with adopt_plain_log() (a log rewritten without \
                     the key looks the same)"
                        .into(),
                ))
            }
            (Some(_), false) => {
                tracing::warn!(target: "mcp_harden::audit", keyed_from = seq.saturating_add(1), "the audit log goes on keyed from the next record: verify it with --keyed-from that seq");
            }
            _ => {}
        }
        let link = link_of(line, key).map_err(|_| {
            invalid(
                "the audit log's last record does not carry the chain key's MAC: another key \
                 (or the record was edited)"
                    .into(),
            )
        })?;
        Ok(Some((seq, link)))
    };
    let first_seq_of = |bytes: &[u8]| {
        bytes
            .split(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .and_then(|v| v["seq"].as_u64())
    };
    let (seq, prev, first) = match last_of(&bytes)? {
        Some((seq, prev)) => (seq, prev, first_seq_of(&bytes)),
        None => {
            let mut rotated = rotated_files(path)?;
            rotated.sort();
            match rotated.last() {
                Some(newest) => {
                    let mut b = Vec::new();
                    File::open(newest)?.read_to_end(&mut b)?;
                    let complete = b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
                    match last_of(&b[..complete])? {
                        Some((seq, prev)) => (seq, prev, None),
                        None => (0, GENESIS.to_owned(), None),
                    }
                }
                None => (0, GENESIS.to_owned(), None),
            }
        }
    };
    if next_seq(seq).is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the last audit record has seq {seq}: the chain cannot go on"),
        ));
    }
    Ok((
        file,
        ChainState {
            seq,
            prev,
            file_bytes: bytes.len() as u64,
            file_first_seq: first,
            opened: Instant::now(),
        },
    ))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outcome of verifying audit log files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// The first and last sequence numbers (0 and 0 when empty).
    pub first_seq: u64,
    /// The last sequence number.
    pub last_seq: u64,
    /// The hash of the last record: compare it with one kept elsewhere to detect the loss
    /// of records at the very end.
    pub head: String,
    /// Whether the chain starts at the genesis (no older file was deleted).
    pub from_genesis: bool,
    /// With a [`ChainKey`]: the first record with its MAC (the records before it were
    /// written before the log had a key, and are covered by its `prev`).
    pub keyed_from: Option<u64>,
}

/// Where and how a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct ChainBreak {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// What a verification must find besides an unbroken chain: the key its links were made
/// with, and what only a record kept elsewhere can show.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The log's [`ChainKey`]: every record from the first keyed one on must carry its MAC,
    /// and there must be one (a log rewritten without the key fails). Without a key, a keyed
    /// record fails (its MAC cannot be checked).
    pub key: Option<ChainKey>,
    /// With [`key`](Self::key), the seq of the first keyed record of a log written without a
    /// key before ([`FileAuditConfig::adopt_plain_log`]). Records without a MAC before a
    /// later first keyed record fail (a log rewritten without the key, then adopted), and so
    /// do any without this: a log keyed from the start has none.
    pub keyed_from: Option<u64>,
    /// The chain must start at the genesis (`seq` 1): no file was removed from its start.
    pub from_genesis: bool,
    /// Heads recorded earlier, as `(seq, hash)` (what [`Verified`] reports as `last_seq`
    /// and `head`): each record must still be there with that hash. A log cut after a
    /// recorded head, or rewritten whole, fails.
    pub heads: Vec<(u64, String)>,
}

/// Verifies a chain across files (in any order: they are sorted by their first record's
/// `seq`), reporting the first edited, deleted, reordered or truncated record.
pub fn verify(files: &[PathBuf]) -> Result<Verified, ChainBreak> {
    verify_expecting(files, &Expect::default())
}

/// [`verify`], and what `expect` asks besides.
pub fn verify_expecting(files: &[PathBuf], expect: &Expect) -> Result<Verified, ChainBreak> {
    let heads = &expect.heads;
    let broke = |file: &Path, line: usize, problem: String| ChainBreak {
        file: file.to_path_buf(),
        line,
        problem,
    };
    // Each file's first record orders the files; then one file at a time is read whole, so
    // that verifying holds the largest file in memory, not the whole log. Every file is
    // opened first and read through that handle: a rotation while verifying renames a file,
    // and the handle still reads the file that was ordered.
    let mut ordered = Vec::new();
    for f in files {
        let mut first_line = Vec::new();
        let mut reader = File::open(f)
            .map(BufReader::new)
            .map_err(|e| broke(f, 0, format!("cannot read: {e}")))?;
        loop {
            first_line.clear();
            let n = reader
                .read_until(b'\n', &mut first_line)
                .map_err(|e| broke(f, 0, format!("cannot read: {e}")))?;
            if n == 0 || first_line.iter().any(|b| !b.is_ascii_whitespace()) {
                break;
            }
        }
        let first = serde_json::from_slice::<serde_json::Value>(&first_line)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(u64::MAX);
        ordered.push((first, f.clone(), reader.into_inner()));
    }
    ordered.sort_by_key(|(first, _, _)| *first);
    let mut out = Verified {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head: GENESIS.to_owned(),
        from_genesis: false,
        keyed_from: None,
    };
    let key = expect.key.as_ref();
    let mut expected: Option<(u64, String)> = None;
    let count = ordered.len();
    for (i, (_, file, handle)) in ordered.iter_mut().enumerate() {
        let file = &*file;
        let mut bytes = Vec::new();
        handle
            .seek(SeekFrom::Start(0))
            .and_then(|_| handle.read_to_end(&mut bytes))
            .map_err(|e| broke(file, 0, format!("cannot read: {e}")))?;
        let last_file = i + 1 == count;
        let reader = BufReader::new(&bytes[..]);
        let mut offset = 0usize;
        for (n, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| broke(file, n + 1, e.to_string()))?;
            let complete = bytes.get(offset + line.len()) == Some(&b'\n');
            offset += line.len() + 1;
            if line.is_empty() && !complete {
                continue;
            }
            let v: serde_json::Value = match serde_json::from_slice(&line) {
                Ok(v) if complete => v,
                _ if !complete && last_file => {
                    return Err(broke(
                        file,
                        n + 1,
                        format!(
                            "truncated: a partial record after {} valid records",
                            out.records
                        ),
                    ));
                }
                _ => {
                    return Err(broke(
                        file,
                        n + 1,
                        "not a complete JSON record (edited or truncated)".into(),
                    ))
                }
            };
            let (Some(seq), Some(prev)) = (v["seq"].as_u64(), v["prev"].as_str()) else {
                return Err(broke(
                    file,
                    n + 1,
                    "no seq/prev: not a chained record (edited)".into(),
                ));
            };
            // The link after this record; a keyed one's own MAC checked first.
            let hash = link_of(&line, key).map_err(|why| broke(file, n + 1, why.into()))?;
            match (is_keyed(&line), key) {
                (false, Some(_)) if out.keyed_from.is_some() => {
                    return Err(broke(
                        file,
                        n + 1,
                        "no MAC after records with one: rewritten by someone without the chain \
                         key"
                        .into(),
                    ))
                }
                (true, Some(_)) if out.keyed_from.is_none() => out.keyed_from = Some(seq),
                _ => {}
            }
            match &expected {
                None => {
                    out.first_seq = seq;
                    out.from_genesis = seq == 1 && prev == GENESIS;
                }
                Some((want, want_prev)) => {
                    if seq < *want {
                        return Err(broke(
                            file,
                            n + 1,
                            format!("seq {seq} where {want} was expected: reordered or replayed"),
                        ));
                    }
                    if seq > *want {
                        let later = bytes[offset.min(bytes.len())..]
                            .split(|b| *b == b'\n')
                            .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                            .any(|v| v["seq"].as_u64() == Some(*want));
                        let what = if later {
                            format!("record {want} comes later: reordered")
                        } else {
                            format!("{} record(s) deleted", seq - want)
                        };
                        return Err(broke(
                            file,
                            n + 1,
                            format!("seq {seq} where {want} was expected: {what}"),
                        ));
                    }
                    if prev != want_prev {
                        return Err(broke(file, n + 1, format!("prev does not match the hash of record {}: that record (or this one) was edited", seq - 1)));
                    }
                }
            }
            let Some(next) = seq.checked_add(1) else {
                return Err(broke(
                    file,
                    n + 1,
                    format!("seq {seq} is past the last sequence number: not written by a sink (edited)"),
                ));
            };
            if heads
                .iter()
                .any(|(s, h)| *s == seq && !h.eq_ignore_ascii_case(&hash))
            {
                return Err(broke(
                    file,
                    n + 1,
                    format!(
                        "record {seq} is not the head recorded earlier: the chain was rewritten"
                    ),
                ));
            }
            expected = Some((next, hash.clone()));
            out.records += 1;
            out.last_seq = seq;
            out.head = hash;
        }
    }
    // What only a record kept elsewhere shows: reported against the newest file given.
    let last = ordered
        .last()
        .map_or(Path::new(""), |(_, file, _)| file.as_path());
    if let (Some(_), Some(first_keyed)) = (key, out.keyed_from) {
        if first_keyed > out.first_seq && expect.keyed_from.is_none_or(|k| first_keyed > k) {
            return Err(broke(
                last,
                0,
                format!(
                    "records {}..{} carry no MAC: the log was rewritten without the chain key, \
                     or it was written without a key before it was adopted at seq \
                     {first_keyed} (then say so: keyed from {first_keyed})",
                    out.first_seq,
                    first_keyed - 1
                ),
            ));
        }
    }
    if key.is_some() && out.records > 0 && out.keyed_from.is_none() {
        return Err(broke(
            last,
            0,
            "no record carries the chain key's MAC: the log was written without the key, or \
             rewritten by someone without it (or its newer files not given)"
                .into(),
        ));
    }
    if expect.from_genesis && !out.from_genesis {
        return Err(broke(
            last,
            0,
            format!(
                "the chain starts at seq {}, not at the genesis: its first records were removed \
                 (or their files not given)",
                out.first_seq
            ),
        ));
    }
    for (seq, _) in heads {
        if out.records == 0 || *seq < out.first_seq || *seq > out.last_seq {
            let why = if *seq > out.last_seq {
                "the log was cut after it (or its newer files not given)"
            } else {
                "its file was removed (retention removes old files: pass the latest head) or not \
                 given"
            };
            return Err(broke(
                last,
                0,
                format!(
                    "record {seq}, a head recorded earlier, is not in these files (seq {}..{}): {why}",
                    out.first_seq, out.last_seq
                ),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditPrincipal, Outcome, Timestamp, AUDIT_RECORD_VERSION};

    /// A record of an HTTP request refused before any call, as the HTTP guard writes them.
    fn refusal() -> AuditRecord {
        AuditRecord {
            version: AUDIT_RECORD_VERSION,
            time: Timestamp::now(),
            trace_id: crate::telemetry::TraceId::random(),
            span_id: None,
            parent_span_id: None,
            client: None,
            event: AuditEvent::Authentication,
            principal: AuditPrincipal::of(None),
            tool: None,
            arguments: serde_json::Value::Null,
            outcome: Outcome::Denied,
            error_code: Some("UNAUTHENTICATED"),
            retryable: false,
            reason: Some("missing"),
            detail: None,
            duration_us: 3,
            transport: "http",
            source: Some(([192, 0, 2, 7], 4711).into()),
            unrecorded: None,
        }
    }

    /// Waits up to 10 seconds for `cond`.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "not within 10s: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A fresh directory (removed when dropped) and the path of a log in it.
    fn temp_log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        (dir, path)
    }

    /// The log's files, rotated and active.
    fn files(path: &Path) -> Vec<PathBuf> {
        let mut files = rotated_files(path).expect("lists");
        files.push(path.to_path_buf());
        files
    }

    async fn settled(sink: &FileAuditSink, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.written() + sink.dropped() < n {
            assert!(Instant::now() < deadline, "the writer catches up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn refused_requests_cannot_take_the_calls_queue() {
        let (_dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path).queue(8).open().expect("opens");
        // Every call slot taken and held: a refusal is still recorded (in a slot of its own).
        let held: Vec<_> = (0..8).map(|_| sink.reserve().expect("slot")).collect();
        assert!(sink.reserve().is_err(), "the calls' queue is full");
        sink.record(&refusal());
        settled(&sink, 1).await;
        assert_eq!((sink.written(), sink.dropped()), (1, 0));
        drop(held);

        // A flood of refusals (anyone can send them) faster than the writer's fsyncs: the
        // calls' queue stays free, and what the refusals' share cannot hold is dropped and
        // counted.
        for _ in 0..2000 {
            sink.record(&refusal());
        }
        let slots: Vec<_> = (0..8)
            .map(|_| sink.reserve().expect("a call still gets a slot"))
            .collect();
        drop(slots);
        settled(&sink, 2001).await;
        assert_eq!(
            sink.refused(),
            1,
            "only the reserve() that found the queue full"
        );
        let v = verify(std::slice::from_ref(&path)).expect("valid");
        assert_eq!(v.records, sink.written());

        // An authenticated caller's refusal (e.g. a session not its own) is written even
        // when the refusals' share is full, in a call's slot.
        let held: Vec<_> = (0..2)
            .map(|_| sink.events.clone().try_acquire_owned())
            .collect();
        assert!(held.iter().all(Result::is_ok));
        let before = sink.dropped();
        sink.record(&refusal());
        let mut authenticated = refusal();
        authenticated.principal =
            AuditPrincipal::of(Some(&crate::Principal::local("alice", ["db:read"])));
        sink.record(&authenticated);
        assert_eq!(sink.dropped(), before + 1, "the anonymous one is dropped");
        settled(&sink, 2003).await;
        assert_eq!(sink.dropped(), before + 1);
    }

    #[test]
    fn a_record_over_the_limit_is_written_without_its_arguments() {
        let (_dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path)
            .max_record_bytes(4096)
            .open()
            .expect("opens");
        let mut small = refusal();
        small.arguments = serde_json::json!({"ids": [1, 2, 3]});
        let mut large = refusal();
        large.arguments = serde_json::json!({"ids": vec![123_456_789u64; 2000]});
        sink.record(&small);
        sink.record(&large);
        assert!(sink.flush(Duration::from_secs(30)));
        assert_eq!(
            verify(std::slice::from_ref(&path)).expect("valid").records,
            2
        );
        let text = std::fs::read_to_string(&path).expect("reads");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines[0]["arguments"], small.arguments, "kept whole");
        assert_eq!(
            (lines[0]["seq"].as_u64(), lines[1]["seq"].as_u64()),
            (Some(1), Some(2))
        );
        let note = lines[1]["arguments"].as_str().expect("a note");
        assert!(note.starts_with("[TRUNCATED: the record's "), "{note}");
        assert!(note.ends_with("exceed the log's limit of 4096]"), "{note}");
        assert_eq!(
            lines[1]["error_code"], "UNAUTHENTICATED",
            "the rest is kept"
        );
        assert!(text.lines().all(|l| l.len() < 4096 + 200));
    }

    #[test]
    fn flush_waits_for_every_record_handed_over_before_it() {
        let (_dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path).open().expect("opens");
        // Three failed syncs: the writer retries for 70 ms before the first batch is on disk.
        sink.shared.faults.sync.store(3, Ordering::SeqCst);
        for _ in 0..5 {
            sink.record(&refusal());
        }
        assert!(sink.flush(Duration::from_secs(30)));
        assert_eq!((sink.written(), sink.failures()), (5, 3));
        let v = verify(std::slice::from_ref(&path)).expect("valid");
        assert_eq!(v.records, 5);

        // A disk that keeps failing: the flush gives up at the timeout, then finishes once
        // the disk recovers.
        sink.shared.faults.sync.store(u32::MAX, Ordering::SeqCst);
        sink.record(&refusal());
        assert!(!sink.flush(Duration::from_millis(100)));
        assert_eq!(sink.written(), 5);
        sink.shared.faults.sync.store(0, Ordering::SeqCst);
        assert!(sink.flush(Duration::from_secs(30)));
        assert_eq!(sink.written(), 6);

        // Combined with another sink, the flush waits for the file too.
        sink.shared.faults.sync.store(3, Ordering::SeqCst);
        let both = (sink.clone(), crate::audit::TracingAuditSink);
        both.record(&refusal());
        assert!(both.flush(Duration::from_secs(30)));
        assert_eq!(sink.written(), 7);
        let v = verify(std::slice::from_ref(&path)).expect("valid");
        assert_eq!(v.records, 7);
    }

    #[test]
    fn a_failed_retention_delete_neither_fails_the_batch_nor_leaves_a_hole() {
        let (_dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .retain(Some(1))
            .open()
            .expect("opens");
        let write = || {
            sink.record(&refusal());
            assert!(sink.flush(Duration::from_secs(30)));
        };
        // Every batch rotates; removals fail until three rotated files are kept, then the
        // next rotation finds three to remove (retention 1 keeps the newest) and fails on
        // the oldest.
        write();
        sink.shared.faults.remove.store(u32::MAX, Ordering::SeqCst);
        for _ in 0..3 {
            write();
        }
        assert_eq!(
            rotated_files(&path).expect("lists").len(),
            3,
            "none removed"
        );
        sink.shared.faults.remove.store(1, Ordering::SeqCst);
        write();
        assert_eq!(
            rotated_files(&path).expect("lists").len(),
            4,
            "the oldest failed: none after it removed, so no hole in the chain"
        );
        assert_eq!((sink.written(), sink.failures()), (5, 0), "no batch failed");
        assert!(sink.healthy());
        let v = verify(&files(&path)).expect("the files kept are one chain");
        assert_eq!((v.first_seq, v.last_seq), (1, 5));
        write();
        assert_eq!(rotated_files(&path).expect("lists").len(), 1, "retried");
        let v = verify(&files(&path)).expect("valid");
        assert_eq!((v.first_seq, v.last_seq, v.from_genesis), (5, 6, false));
    }

    #[test]
    fn a_rotation_that_cannot_create_its_new_file_resumes() {
        let (_dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .open()
            .expect("opens");
        sink.record(&refusal());
        assert!(sink.flush(Duration::from_secs(30)));
        // The next batch rotates: the active file is renamed, then creating the new one
        // fails twice (say, out of file descriptors).
        sink.shared.faults.create.store(2, Ordering::SeqCst);
        sink.record(&refusal());
        assert!(
            sink.flush(Duration::from_secs(10)),
            "the rotation resumes after a failed create"
        );
        assert_eq!((sink.written(), sink.failures()), (2, 2));
        assert!(sink.healthy());
        sink.record(&refusal());
        assert!(sink.flush(Duration::from_secs(30)));
        assert_eq!(rotated_files(&path).expect("lists").len(), 2);
        let v = verify(&files(&path)).expect("the chain is intact");
        assert_eq!((v.records, v.last_seq, v.from_genesis), (3, 3, true));
    }

    #[tokio::test]
    async fn recorded_heads_and_the_genesis_catch_what_the_chain_alone_cannot() {
        let write = |path: &Path| {
            let sink = FileAuditConfig::new(path).open().expect("opens");
            for _ in 0..5 {
                sink.record(&refusal());
            }
            assert!(sink.flush(Duration::from_secs(30)));
        };
        let (_dir, path) = temp_log();
        write(&path);
        let text = std::fs::read_to_string(&path).expect("reads");
        let lines: Vec<&str> = text.lines().collect();
        let hash = |i: usize| hex(&Sha256::digest(lines[i].as_bytes()));
        let one = std::slice::from_ref(&path);
        let expect = |heads: Vec<(u64, String)>| Expect {
            from_genesis: true,
            heads,
            ..Expect::default()
        };
        let v = verify_expecting(
            one,
            &expect(vec![(5, hash(4)), (3, hash(2).to_uppercase())]),
        )
        .expect("intact");
        assert_eq!((v.first_seq, v.last_seq, v.head.clone()), (1, 5, hash(4)));

        // Cut after record 3: a valid chain, but not the head recorded at 5.
        let cut = |n: usize| {
            lines[..n]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        std::fs::write(&path, cut(3)).expect("writes");
        assert!(verify(one).is_ok(), "the chain alone cannot tell");
        let b = verify_expecting(one, &expect(vec![(5, hash(4))])).expect_err("cut");
        assert!(b.problem.contains("cut after it"), "{b}");
        assert!(verify_expecting(one, &expect(vec![(3, hash(2))])).is_ok());

        // The first two records removed: a valid chain from seq 3, not from the genesis.
        let tail: String = lines[2..].iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, tail).expect("writes");
        assert!(verify(one).is_ok());
        let b = verify_expecting(one, &expect(vec![])).expect_err("not from the genesis");
        assert!(b.problem.contains("starts at seq 3"), "{b}");
        let b = verify_expecting(
            one,
            &Expect {
                heads: vec![(1, hash(0))],
                ..Expect::default()
            },
        )
        .expect_err("a recorded head before the files");
        assert!(b.problem.contains("not in these files"), "{b}");

        // The whole chain rewritten (five other records): valid, but not the head recorded.
        std::fs::remove_file(&path).expect("removes");
        write(&path);
        assert!(verify(one).is_ok());
        let b = verify_expecting(one, &expect(vec![(5, hash(4))])).expect_err("rewritten");
        assert!(b.problem.contains("rewritten"), "{b}");
    }

    fn key(byte: u8) -> ChainKey {
        ChainKey::new([byte; 32]).expect("32 bytes")
    }

    fn keyed(k: &ChainKey) -> Expect {
        Expect {
            key: Some(k.clone()),
            ..Expect::default()
        }
    }

    fn write_records(config: FileAuditConfig, n: usize) {
        let sink = config.open().expect("opens");
        for _ in 0..n {
            sink.record(&refusal());
        }
        assert!(sink.flush(Duration::from_secs(30)));
    }

    #[test]
    fn chain_keys_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\r\n\n", "k".repeat(32))).expect("writes");
        assert!(
            ChainKey::from_file(&path).is_ok(),
            "the newlines are not part of it"
        );
        std::fs::write(&path, format!("{}\n", "k".repeat(31))).expect("writes");
        let e = ChainKey::from_file(&path).map(drop).expect_err("short");
        assert!(e.to_string().contains("not 31"), "{e}");
        std::fs::write(&path, "k".repeat(5000)).expect("writes");
        let e = ChainKey::from_file(&path).map(drop).expect_err("long");
        assert!(e.to_string().contains("4 KiB"), "{e}");
        assert!(ChainKey::from_file(dir.path().join("none")).is_err());
    }

    #[test]
    fn a_chain_key_is_at_least_32_bytes_and_never_shown() {
        assert_eq!(
            ChainKey::new([7u8; 31]).map(|_| ()),
            Err(ChainKeyTooShort(31))
        );
        let k = ChainKey::new(b"a chain key of thirty-two bytes!").expect("32 bytes");
        assert_eq!(format!("{k:?}"), "ChainKey([REDACTED])");
        let config = FileAuditConfig::new("x").chain_key(k);
        assert!(!format!("{config:?}").contains("thirty"), "{config:?}");
    }

    /// A keyed log verifies with its key only; rewritten whole by someone without the key
    /// (a valid plain chain, or one keyed with another key), it fails with the key.
    #[tokio::test]
    async fn a_keyed_chain_verifies_only_with_its_key() {
        let (_dir, path) = temp_log();
        let one = std::slice::from_ref(&path);
        write_records(FileAuditConfig::new(&path).chain_key(key(1)), 4);
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.lines().all(|l| l.contains(r#","mac":""#)), "{text}");
        let v = verify_expecting(one, &keyed(&key(1))).expect("valid with its key");
        assert_eq!(
            (v.records, v.from_genesis, v.keyed_from),
            (4, true, Some(1))
        );
        let last = text.lines().last().unwrap_or_default();
        assert!(
            last.ends_with(&format!(r#""mac":"{}"}}"#, v.head)),
            "the head is its MAC"
        );
        let b = verify(one).expect_err("keyed");
        assert!(b.problem.contains("chain key"), "{b}");
        let b = verify_expecting(one, &keyed(&key(2))).expect_err("another key");
        assert!(b.problem.contains("another key"), "{b}");

        // Rewritten without the key: a plain chain of four other records.
        std::fs::remove_file(&path).expect("removes");
        write_records(FileAuditConfig::new(&path), 4);
        assert!(verify(one).is_ok(), "a valid plain chain");
        let b = verify_expecting(one, &keyed(&key(1))).expect_err("not keyed");
        assert!(b.problem.contains("no record carries"), "{b}");

        // Any record edited, the last one included: its own MAC no longer matches.
        std::fs::remove_file(&path).expect("removes");
        write_records(FileAuditConfig::new(&path).chain_key(key(1)), 3);
        let text = std::fs::read_to_string(&path).expect("reads");
        for seq in 1..=3 {
            let from = format!("\"seq\":{seq},");
            let edited = text.replacen(&from, &format!("{from}\"x\":1,"), 1);
            std::fs::write(&path, edited).expect("writes");
            let b = verify_expecting(one, &keyed(&key(1))).expect_err("edited");
            assert_eq!(b.line, seq, "{b}");
            assert!(b.problem.contains("MAC"), "{b}");
        }
        // A log of one forged record, not from the genesis: its MAC cannot be made.
        let forged = format!(
            "{{\"seq\":77,\"prev\":\"{}\",\"outcome\":\"success\",\"mac\":\"{}\"}}\n",
            "0".repeat(64),
            "1".repeat(64)
        );
        std::fs::write(&path, forged).expect("writes");
        assert!(verify_expecting(one, &keyed(&key(1))).is_err());
    }

    /// A plain log goes on keyed when a key is given; the plain records before the first
    /// keyed one are covered by its link. A keyed log is not opened without its key, nor
    /// with another; and a keyed record followed by a plain one fails.
    #[tokio::test]
    async fn a_plain_log_goes_on_keyed_and_a_keyed_one_stays_keyed() {
        let (_dir, path) = temp_log();
        let one = std::slice::from_ref(&path);
        write_records(FileAuditConfig::new(&path), 2);
        let e = FileAuditConfig::new(&path)
            .chain_key(key(1))
            .open()
            .map(drop)
            .expect_err("a plain log is adopted only on request");
        assert!(e.to_string().contains("adopt_plain_log"), "{e}");
        write_records(
            FileAuditConfig::new(&path)
                .chain_key(key(1))
                .adopt_plain_log(),
            2,
        );
        let adopted_at = |k: Option<u64>| Expect {
            keyed_from: k,
            ..keyed(&key(1))
        };
        let v = verify_expecting(one, &adopted_at(Some(3))).expect("valid");
        assert_eq!(
            (v.records, v.keyed_from, v.from_genesis),
            (4, Some(3), true)
        );
        // Plain records not said to be the log's before its key: as if rewritten.
        for k in [None, Some(2)] {
            let b = verify_expecting(one, &adopted_at(k)).expect_err("unannounced plain records");
            assert!(b.problem.contains("records 1..2 carry no MAC"), "{b}");
        }

        // The plain records before the key are covered: the first keyed record's `prev` (under
        // its MAC) is the last plain one's hash, so editing that one breaks it.
        let text = std::fs::read_to_string(&path).expect("reads");
        let lines: Vec<&str> = text.lines().collect();
        let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        edited[1] = edited[1].replacen("\"seq\":2,", "\"seq\":2,\"x\":1,", 1);
        std::fs::write(&path, edited.join("\n") + "\n").expect("writes");
        let b = verify_expecting(one, &adopted_at(Some(3))).expect_err("edited before the key");
        assert_eq!(b.line, 3, "{b}");
        std::fs::write(&path, text.clone()).expect("writes");

        for (config, what) in [
            (FileAuditConfig::new(&path), "without its key"),
            (FileAuditConfig::new(&path).chain_key(key(2)), "another key"),
        ] {
            let e = config.open().map(|_| ()).expect_err(what);
            assert!(e.to_string().contains("key"), "{what}: {e}");
        }
        // A plain record after the keyed ones: written by someone without the key.
        let head = verify_expecting(one, &adopted_at(Some(3)))
            .expect("valid")
            .head;
        let forged = format!("{text}{{\"seq\":5,\"prev\":\"{head}\"}}\n");
        std::fs::write(&path, forged).expect("writes");
        let b = verify_expecting(one, &adopted_at(Some(3))).expect_err("plain after keyed");
        assert!(b.problem.contains("no MAC after records with one"), "{b}");
        for config in [
            FileAuditConfig::new(&path).chain_key(key(1)),
            FileAuditConfig::new(&path)
                .chain_key(key(1))
                .adopt_plain_log(),
        ] {
            let e = config.open().map(drop).expect_err("not opened");
            assert!(e.to_string().contains("after records with one"), "{e}");
        }

        // A keyed log replaced whole by a plain one (a rewrite without the key): the sink
        // does not go on from it.
        std::fs::remove_file(&path).expect("removes");
        write_records(FileAuditConfig::new(&path), 3);
        let e = FileAuditConfig::new(&path)
            .chain_key(key(1))
            .open()
            .map(drop)
            .expect_err("not adopted");
        assert!(e.to_string().contains("adopt_plain_log"), "{e}");
    }

    #[test]
    fn a_failed_sync_does_not_write_the_batch_twice() {
        let (_dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path).open().expect("opens");
        sink.record(&refusal());
        assert!(sink.flush(Duration::from_secs(30)));
        // The next batch reaches the file, but its sync fails twice.
        sink.shared.faults.sync.store(2, Ordering::SeqCst);
        for _ in 0..3 {
            sink.record(&refusal());
        }
        assert!(sink.flush(Duration::from_secs(30)));
        assert_eq!((sink.written(), sink.failures()), (4, 2));
        let v = verify(std::slice::from_ref(&path)).expect("no record written twice");
        assert_eq!((v.records, v.last_seq), (4, 4));
        let text = std::fs::read_to_string(&path).expect("reads");
        assert_eq!(text.lines().count(), 4);
    }

    #[test]
    fn one_sink_at_a_time_writes_a_log() {
        let (_dir, path) = temp_log();
        let first = FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .open()
            .expect("opens");
        let e = FileAuditConfig::new(&path)
            .open()
            .expect_err("the log is in use");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        assert!(e.to_string().contains("in use by another sink"), "{e}");
        // The lock stays with the log across rotations (the active file is a new one).
        for _ in 0..2 {
            first.record(&refusal());
            assert!(first.flush(Duration::from_secs(30)));
        }
        assert_eq!(rotated_files(&path).expect("lists").len(), 1);
        assert!(FileAuditConfig::new(&path).open().is_err());
        // Once the first sink and its writer are gone, the log opens again.
        drop(first);
        let second = FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .open()
            .expect("opens again");
        second.record(&refusal());
        assert!(second.flush(Duration::from_secs(30)));
        let v = verify(&files(&path)).expect("valid");
        assert_eq!((v.records, v.last_seq), (3, 3));
    }

    #[test]
    fn the_last_sequence_number_ends_the_chain_without_a_panic() {
        let (_dir, path) = temp_log();
        let line = |seq: u64| format!("{{\"seq\":{seq},\"prev\":\"{GENESIS}\"}}\n");

        // A forged record numbered u64::MAX: the log does not open; verify names the break.
        std::fs::write(&path, line(u64::MAX)).expect("writes");
        let e = FileAuditConfig::new(&path).open().expect_err("no next seq");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let b = verify(std::slice::from_ref(&path)).expect_err("forged");
        assert_eq!(b.line, 1, "{b}");
        assert!(b.problem.contains("past the last sequence number"), "{b}");

        // The last sequence number is valid, but nothing can follow it.
        std::fs::write(&path, line(LAST_SEQ)).expect("writes");
        let v = verify(std::slice::from_ref(&path)).expect("valid");
        assert_eq!(v.last_seq, LAST_SEQ);
        assert!(FileAuditConfig::new(&path).open().is_err());
    }

    #[test]
    fn an_idle_tail_is_synced_within_the_interval() {
        let (dir, path) = temp_log();
        let sink = FileAuditConfig::new(&path)
            .fsync(Fsync::Every(Duration::from_millis(300)))
            .open()
            .expect("opens");
        // Written within the interval of the last sync (the open): not synced yet...
        sink.record(&refusal());
        eventually("the record is written", || sink.written() == 1);
        // ...but synced within the interval although no record follows.
        let synced = || sink.shared.faults.synced.load(Ordering::SeqCst);
        eventually("the tail is synced", || synced() == 1);

        // A flush syncs what it waited for, however long the interval.
        let sink = FileAuditConfig::new(dir.path().join("hourly.jsonl"))
            .fsync(Fsync::Every(Duration::from_secs(3600)))
            .open()
            .expect("opens");
        sink.record(&refusal());
        assert!(sink.flush(Duration::from_secs(30)));
        assert_eq!(sink.shared.faults.synced.load(Ordering::SeqCst), 1);
    }
}
