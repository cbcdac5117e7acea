//! The hash-chained audit log: one record per call under concurrency, a valid chain across
//! rotations and restarts, every kind of tampering found, and no silent loss when the queue
//! is full.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_harden::audit::file::{verify, verify_expecting, ChainBreak, ChainKey, Expect};
use mcp_harden::audit::{AuditSink, FileAuditConfig, FileAuditSink, Fsync, QueueFull};
use mcp_harden::prelude::*;
use rmcp::model::CallToolRequestParams;
use serde_json::Value;

mod common;
use common::connect;

struct App;

/// Echo a word back.
#[tool(scopes = "echo", rate = "unlimited")]
async fn echo(
    _ctx: Ctx<App>,
    #[arg(max_len = 32)] word: String,
    #[arg(max_len = 64, secret)] password: String,
) -> String {
    let _ = password;
    word
}

fn server(sink: FileAuditSink) -> Hardened<App> {
    Hardened::builder(App)
        .tool::<echo>()
        .local_principal(Principal::local("auditor", ["echo"]))
        .audit_sink(sink)
        .build()
        .expect("builds")
}

fn args(word: &str) -> CallToolRequestParams {
    common::params(
        "echo",
        serde_json::json!({"word": word, "password": "hunter2-secret"}),
    )
}

/// Waits until the sink has written `n` records.
async fn written(sink: &FileAuditSink, n: u64) {
    common::eventually(
        &format!("{n} records written"),
        Duration::from_secs(20),
        || sink.written() >= n,
    )
    .await;
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("reads")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("writes");
}

/// `n` calls through a server auditing to a sink opened with `config`, each call's record
/// written before the next call (one record per batch: with tiny files, one file each).
fn log_calls(config: FileAuditConfig, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sink = config.open().expect("opens");
        let c = connect(server(sink.clone())).await;
        for i in 0..n {
            c.call_tool(args(&format!("w{i}"))).await.expect("answers");
            written(&sink, i + 1).await;
        }
    });
}

/// A log of `n` records at `dir/audit.jsonl` (appended to, if it exists).
fn log_with(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("audit.jsonl");
    log_calls(FileAuditConfig::new(&path), n);
    path
}

fn broken(files: &[PathBuf]) -> ChainBreak {
    verify(files).expect_err("the chain must be broken")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_leave_exactly_one_record_each_and_a_valid_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    // Small files: the run crosses several rotations.
    let sink = FileAuditConfig::new(&path)
        .rotate_bytes(Some(16 * 1024))
        .queue(64)
        .open()
        .expect("opens");
    let server = server(sink.clone());
    const CLIENTS: usize = 8;
    const CALLS: usize = 40;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = connect(server.clone()).await;
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..CALLS {
                let r = client
                    .call_tool(args(&format!("c{c}-{i}")))
                    .await
                    .expect("answers");
                if r.is_error == Some(true) {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.expect("joins");
    }
    let answered = (CLIENTS * CALLS - refused) as u64;
    written(&sink, answered).await;
    assert_eq!(sink.dropped(), 0);
    assert_eq!(
        sink.refused(),
        refused as u64,
        "a refusal is only ever a full queue"
    );

    let mut files = mcp_harden::audit::file::rotated_files(&path).expect("lists");
    assert!(files.len() >= 2, "the log rotated: {files:?}");
    files.push(path.clone());
    let v = verify(&files).expect("a valid chain");
    assert_eq!(v.records, answered);
    assert!(v.from_genesis);
    assert_eq!((v.first_seq, v.last_seq), (1, answered));

    // Exactly one record per answered call: every word appears once; no secret anywhere.
    let mut words = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("reads");
        assert!(
            !text.contains("hunter2-secret"),
            "a secret reached the audit log"
        );
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("JSON");
            words.push(v["arguments"]["word"].as_str().expect("word").to_owned());
            assert_eq!(v["arguments"]["password"], "[REDACTED]");
        }
    }
    words.sort();
    let before = words.len();
    words.dedup();
    assert_eq!(before, words.len(), "a call was recorded twice");
    assert_eq!(words.len() as u64, answered);
}

#[test]
fn every_kind_of_tampering_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_with(dir.path(), 8);
    let good = lines(&path);
    assert_eq!(good.len(), 8);
    assert_eq!(
        verify(std::slice::from_ref(&path)).expect("valid").records,
        8
    );

    let tampered = dir.path().join("tampered.jsonl");
    let check = |edit: &dyn Fn(&mut Vec<String>), line: usize, needle: &str| {
        let mut l = good.clone();
        edit(&mut l);
        write_lines(&tampered, &l);
        let b = broken(std::slice::from_ref(&tampered));
        assert_eq!(b.line, line, "{b}");
        assert!(b.problem.contains(needle), "{b}");
    };
    // An edited argument: the next record's prev no longer matches.
    check(&|l| l[2] = l[2].replace("\"w2\"", "\"wX\""), 4, "edited");
    // An edited record that keeps valid JSON but drops the chain fields.
    check(
        &|l| l[3] = r#"{"version":1}"#.to_owned(),
        4,
        "not a chained record",
    );
    // A deleted record.
    check(
        &|l| {
            l.remove(4);
        },
        5,
        "deleted",
    );
    // Reordered records.
    check(&|l| l.swap(5, 6), 6, "reordered");
    // A replayed record.
    check(
        &|l| {
            let dup = l[1].clone();
            l.insert(3, dup);
        },
        4,
        "reordered or replayed",
    );

    // Truncated mid-record (a crash): the prefix is valid, the break is named.
    let mut text = good[..5].join("\n");
    text.push('\n');
    text.push_str(&good[5][..good[5].len() / 2]);
    std::fs::write(&tampered, text).expect("writes");
    let b = broken(std::slice::from_ref(&tampered));
    assert_eq!(b.line, 6);
    assert!(
        b.problem.contains("truncated") && b.problem.contains("5 valid"),
        "{b}"
    );
}

#[test]
fn the_chain_survives_a_crash_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_with(dir.path(), 3);
    // A crash mid-write leaves half a record.
    let mut text = std::fs::read_to_string(&path).expect("reads");
    text.push_str(r#"{"version":1,"time":"2026-11-24T"#);
    std::fs::write(&path, text).expect("writes");
    assert!(broken(std::slice::from_ref(&path))
        .problem
        .contains("truncated"));
    // Reopening cuts the partial record off and continues the chain.
    log_with(dir.path(), 2);
    let v = verify(std::slice::from_ref(&path)).expect("valid after restart");
    assert_eq!((v.records, v.last_seq), (5, 5));
}

#[test]
fn rotated_files_chain_together_and_retention_is_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    // One record per batch, so each lands in its own file.
    log_calls(
        FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .fsync(Fsync::Never),
        6,
    );
    let mut rotated = mcp_harden::audit::file::rotated_files(&path).expect("lists");
    rotated.sort();
    assert_eq!(rotated.len(), 5, "{rotated:?}");
    let mut all = rotated.clone();
    all.push(path.clone());
    all.reverse(); // Any order: files are sorted by their first seq.
    let v = verify(&all).expect("valid across files");
    assert_eq!((v.records, v.first_seq, v.last_seq), (6, 1, 6));

    // A whole file removed from the middle is a deletion.
    let without: Vec<_> = all.iter().filter(|p| **p != rotated[2]).cloned().collect();
    assert!(broken(&without).problem.contains("deleted"));
    // The oldest files removed (retention) leave a valid chain that says where it starts.
    let v = verify(&all[..4]).expect("a suffix is valid");
    assert!(!v.from_genesis);
    assert_eq!(v.first_seq, 3);
}

/// A keyed log across rotations and a restart: it verifies with its key, not without it;
/// its last record edited fails with it; another key cannot open it; and a chain rewritten
/// by someone without the key (every link recomputed as a plain SHA-256, which verifies
/// without a key) fails with it.
#[test]
fn a_keyed_log_across_rotations_verifies_only_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let key = || ChainKey::new(b"a key the log's writers never see").expect("key");
    let config = || {
        FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .fsync(Fsync::Never)
            .chain_key(key())
    };
    log_calls(config(), 3);
    log_calls(config(), 2);
    let mut files = mcp_harden::audit::file::rotated_files(&path).expect("lists");
    files.push(path.clone());
    let with_key = Expect {
        key: Some(key()),
        from_genesis: true,
        ..Expect::default()
    };
    let v = verify_expecting(&files, &with_key).expect("valid with its key");
    assert_eq!((v.records, v.keyed_from), (5, Some(1)));
    assert!(verify(&files).is_err(), "a keyed record needs the key");

    // The last record (alone in the active file) edited: its own MAC fails. And a keyed log
    // is not opened with another key, though its last record is the first of its file.
    let active = std::fs::read_to_string(&path).expect("reads");
    assert_eq!(active.lines().count(), 1);
    let edited = active.replacen(r#""outcome":"success""#, r#""outcome":"denied""#, 1);
    assert_ne!(edited, active);
    std::fs::write(&path, &edited).expect("writes");
    let b = verify_expecting(&files, &with_key).expect_err("the last record edited");
    assert!(b.problem.contains("MAC"), "{b}");
    std::fs::write(&path, &active).expect("writes");
    let other = ChainKey::new([9u8; 32]).expect("key");
    let e = FileAuditConfig::new(&path)
        .chain_key(other)
        .open()
        .map(drop)
        .expect_err("another key");
    assert!(e.to_string().contains("chain key"), "{e}");

    // Every file rewritten in order, each link a plain hash of the line before.
    let mut prev = mcp_harden::audit::file::GENESIS.to_owned();
    let mut ordered = files.clone();
    ordered.sort_by_key(|f| {
        let text = std::fs::read_to_string(f).expect("reads");
        let v: Value = serde_json::from_str(text.lines().next().unwrap_or("{}")).expect("json");
        v["seq"].as_u64()
    });
    for f in &ordered {
        let mut out = String::new();
        for line in std::fs::read_to_string(f).expect("reads").lines() {
            let mut v: Value = serde_json::from_str(line).expect("json");
            v["prev"] = Value::String(prev.clone());
            let line = v.to_string();
            prev = sha256_hex(line.as_bytes());
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(f, out).expect("writes");
    }
    assert!(verify(&files).is_ok(), "a valid plain chain");
    let b = verify_expecting(&files, &with_key).expect_err("rewritten without the key");
    assert!(b.problem.contains("no record carries"), "{b}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_full_queue_refuses_calls_or_admits_and_counts() {
    // The only test here that installs a recorder, or refuses or drops a record.
    let metrics_addr = common::serve_metrics();
    let dir = tempfile::tempdir().expect("tempdir");
    for (mode, admitted) in [(QueueFull::Refuse, false), (QueueFull::AdmitAndCount, true)] {
        let path = dir.path().join(format!("{mode:?}.jsonl"));
        let sink = FileAuditConfig::new(&path)
            .queue(2)
            .when_full(mode)
            .open()
            .expect("opens");
        // Two slots taken and held: the queue is full.
        let held = [sink.reserve().expect("slot"), sink.reserve().expect("slot")];
        let c = connect(server(sink.clone())).await;
        let r = c.call_tool(args("blocked")).await.expect("answers");
        if admitted {
            assert_eq!(r.is_error, Some(false), "{r:?}");
            assert_eq!(sink.dropped(), 1);
        } else {
            assert_eq!(r.is_error, Some(true));
            let e = &r.structured_content.as_ref().expect("structured")["error"];
            assert_eq!(e["code"], "UNAVAILABLE");
            assert_eq!(e["retryable"], true);
            assert_eq!(sink.refused(), 1);
        }
        drop(held);
        let r = c.call_tool(args("free")).await.expect("answers");
        assert_eq!(r.is_error, Some(false), "a freed queue admits again");
        written(&sink, 1).await;
        let v = verify(std::slice::from_ref(&path)).expect("valid");
        assert_eq!(
            v.records, 1,
            "only the call that ran with a slot is recorded"
        );
    }
    let page = common::scrape(metrics_addr).await;
    for result in ["dropped", "refused"] {
        let line = format!("mcp_harden_audit_records_total{{result=\"{result}\"}} 1");
        assert!(page.lines().any(|l| l == line), "{line} in {page}");
    }
}

#[test]
fn retention_deletes_the_oldest_rotated_files_and_the_rest_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    log_calls(
        FileAuditConfig::new(&path)
            .rotate_bytes(Some(1))
            .retain(Some(2))
            .fsync(Fsync::Never),
        6,
    );
    let mut files = mcp_harden::audit::file::rotated_files(&path).expect("lists");
    assert_eq!(
        files.len(),
        2,
        "only the two newest rotated files are kept: {files:?}"
    );
    files.push(path);
    let v = verify(&files).expect("what is kept still chains");
    assert!(!v.from_genesis, "older records were removed by retention");
    assert_eq!(v.last_seq, 6);
    assert_eq!(v.records, 3, "two kept rotated files and the active one");
}
