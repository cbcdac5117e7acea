//! An append-only JSON-lines audit log in which every record carries the SHA-256 of the
//! previous line (a hash chain) and a sequence number, written by one thread behind a bounded
//! queue, fsynced per batch, rotated by size or age, with a retention limit.
//!
//! Each line is one record's JSON plus `"seq"` (1, 2, 3, … across rotations) and `"prev"`
//! (the hex SHA-256 of the previous line's bytes; 64 zeros before the first record). Editing,
//! deleting or reordering a record breaks the chain at the next one; a crash mid-write leaves
//! a partial last line after a verifiable prefix. [`verify`] (and `mcp-harden audit verify`)
//! checks files and reports the first break.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{AuditRecord, AuditSink, AuditSlot, AuditUnavailable};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// When the log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fsync {
    /// After every batch of records, before their calls' slots are released (the default):
    /// a record whose slot was released survives a crash.
    Always,
    /// At most this often (records of the last interval may be lost in a power failure).
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
}

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
        }
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
    pub fn open(self) -> std::io::Result<FileAuditSink> {
        let (file, state) = open_active(&self.path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        });
        let writer = Writer {
            config: self.clone(),
            file,
            state,
            shared: shared.clone(),
            last_sync: Instant::now(),
        };
        std::thread::Builder::new()
            .name("mcp-harden-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(FileAuditSink {
            tx,
            slots: Arc::new(Semaphore::new(self.queue)),
            events: Arc::new(Semaphore::new((self.queue / 4).max(1))),
            full: self.full,
            shared,
        })
    }
}

struct Shared {
    written: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    failures: AtomicU64,
    healthy: AtomicBool,
}

/// The hash-chained file sink. Cloning shares the log.
#[derive(Clone)]
pub struct FileAuditSink {
    tx: mpsc::UnboundedSender<(serde_json::Value, Option<OwnedSemaphorePermit>)>,
    /// Queue slots of calls' records...
    slots: Arc<Semaphore>,
    /// ...and of records of requests refused before any call.
    events: Arc<Semaphore>,
    full: QueueFull,
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

    fn send(&self, record: &AuditRecord, permit: Option<OwnedSemaphorePermit>) {
        let value = serde_json::to_value(record).unwrap_or_else(|e| {
            serde_json::json!({"version": record.version, "error": format!("audit record not serializable: {e}")})
        });
        if self.tx.send((value, permit)).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "mcp_harden::audit", "the audit writer has stopped; a record is lost");
        }
    }
}

impl AuditSink for FileAuditSink {
    fn record(&self, record: &AuditRecord) {
        // Not reserved (a security event before any call): one of their own slots if there
        // is one. Anyone can cause refusals of unauthenticated requests: those never take a
        // call's slot. An authenticated caller's (a scope or session refusal, bounded by its
        // credentials) may, so that a flood of the former cannot hide it.
        let permit = match self.events.clone().try_acquire_owned() {
            Err(_) if record.principal.subject.is_some() => self.slots.clone().try_acquire_owned(),
            taken => taken,
        };
        match permit {
            Ok(p) => self.send(record, Some(p)),
            Err(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "mcp_harden::audit", "the audit queue is full; a security event record is dropped");
            }
        }
    }

    fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(AuditSlot::with_permit(p)),
            Err(_) if self.full == QueueFull::AdmitAndCount => Ok(AuditSlot::unreserved()),
            Err(_) => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "mcp_harden::audit", "the audit queue is full: a call is refused");
                Err(AuditUnavailable)
            }
        }
    }

    fn record_reserved(&self, slot: AuditSlot, record: &AuditRecord) {
        match slot.0 {
            Some(p) => self.send(record, Some(p)),
            None => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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
    last_sync: Instant,
}

impl Writer {
    fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<(serde_json::Value, Option<OwnedSemaphorePermit>)>,
    ) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let mut backoff = Duration::from_millis(10);
            // Never drop a record: retry until the disk takes it (the queue fills meanwhile,
            // and new calls are refused).
            while let Err(e) = self.write_batch(&batch) {
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
            // Dropping the batch releases the slots of records now on disk.
        }
        let _ = self.file.sync_all();
    }

    /// Writes a batch, all or nothing as far as the chain is concerned.
    fn write_batch(
        &mut self,
        batch: &[(serde_json::Value, Option<OwnedSemaphorePermit>)],
    ) -> std::io::Result<()> {
        self.maybe_rotate()?;
        let (mut seq, mut prev) = (self.state.seq, self.state.prev.clone());
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for (value, _) in batch {
            seq += 1;
            let mut value = value.clone();
            if let serde_json::Value::Object(o) = &mut value {
                o.insert("seq".into(), seq.into());
                o.insert("prev".into(), prev.clone().into());
            }
            let line = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
            prev = hex(&Sha256::digest(&line));
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let start = self.state.file_bytes;
        if let Err(e) = self.file.write_all(&buf) {
            // Cut off whatever part of the batch reached the file: the chain resumes cleanly.
            let _ = self.file.set_len(start);
            let _ = self.file.seek(SeekFrom::Start(start));
            return Err(e);
        }
        let sync = match self.config.fsync {
            Fsync::Always => true,
            Fsync::Every(d) => self.last_sync.elapsed() >= d,
            Fsync::Never => false,
        };
        if sync {
            self.file.sync_data()?;
            self.last_sync = Instant::now();
        }
        if self.state.file_first_seq.is_none() {
            self.state.file_first_seq = Some(self.state.seq + 1);
        }
        self.state.seq = seq;
        self.state.prev = prev;
        self.state.file_bytes += buf.len() as u64;
        Ok(())
    }

    fn maybe_rotate(&mut self) -> std::io::Result<()> {
        let Some(first) = self.state.file_first_seq else {
            return Ok(());
        };
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
        self.file = create_append(&self.config.path)?;
        sync_dir(&self.config.path);
        self.state.file_bytes = 0;
        self.state.file_first_seq = None;
        self.state.opened = Instant::now();
        if let Some(keep) = self.config.retain {
            let mut rotated = rotated_files(&self.config.path)?;
            rotated.sort();
            let excess = rotated.len().saturating_sub(keep);
            for old in &rotated[..excess] {
                std::fs::remove_file(old)?;
            }
        }
        Ok(())
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

fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Opens the active file and finds where the chain stands: its last complete record, or
/// the last record of the newest rotated file, or the genesis.
fn open_active(path: &Path) -> std::io::Result<(File, ChainState)> {
    let mut file = create_append(path)?;
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
    let last_of = |bytes: &[u8]| -> std::io::Result<Option<(u64, String)>> {
        let Some(line) = bytes.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the last audit record is not JSON: {e}"),
            )
        })?;
        let seq = v["seq"].as_u64().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the last audit record has no seq",
            )
        })?;
        Ok(Some((seq, hex(&Sha256::digest(line)))))
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

/// Verifies a chain across files (in any order: they are sorted by their first record's
/// `seq`), reporting the first edited, deleted, reordered or truncated record.
pub fn verify(files: &[PathBuf]) -> Result<Verified, ChainBreak> {
    let broke = |file: &Path, line: usize, problem: String| ChainBreak {
        file: file.to_path_buf(),
        line,
        problem,
    };
    let mut loaded = Vec::new();
    for f in files {
        let mut bytes = Vec::new();
        File::open(f)
            .and_then(|mut h| h.read_to_end(&mut bytes))
            .map_err(|e| broke(f, 0, format!("cannot read: {e}")))?;
        let first = bytes
            .split(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(u64::MAX);
        loaded.push((first, f.clone(), bytes));
    }
    loaded.sort_by_key(|(first, _, _)| *first);
    let mut out = Verified {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head: GENESIS.to_owned(),
        from_genesis: false,
    };
    let mut expected: Option<(u64, String)> = None;
    let count = loaded.len();
    for (i, (_, file, bytes)) in loaded.iter().enumerate() {
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
            let hash = hex(&Sha256::digest(&line));
            expected = Some((seq + 1, hash.clone()));
            out.records += 1;
            out.last_seq = seq;
            out.head = hash;
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
        }
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
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
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
}
