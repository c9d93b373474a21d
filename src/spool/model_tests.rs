//! Model-based tests of the spool under injected faults, crashes and restarts.
//!
//! A random sequence of appends, replay steps, quarantines, requeues, injected errors (EIO,
//! EMFILE, ENOSPC, ENOMEM on open, read, write, commit) and crash-restarts runs against the
//! real spool in a temporary directory; a model keeps what was answered "spooled". After every
//! step, every acknowledged record is in Kafka (delivered), or in a database in the directory
//! (pending, quarantined, or in a file set aside): read with a connection of its own, outside
//! the fault seam. Readiness must be honest: whenever the spool said it accepts, an append of
//! the largest record is not refused for room. At the end, with the faults gone, a restart, a
//! full replay and a requeue deliver every acknowledged record, the first delivery of each in
//! the order it was acknowledged unless a read failed on the way (a file that cannot be read
//! is set aside and what comes after it goes first: the order guarantee docs/durability.md states).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use proptest::prelude::*;

use super::fault::{Faults, Op};
use super::replay::BATCH;
use super::{Limits, Spool, SpoolError};
use crate::kafka::record::OutboundRecord;
use crate::metrics::Metrics;

/// Faults armed by the test: the next `n` calls of an operation fail with an errno.
#[derive(Default)]
struct Armed(Mutex<HashMap<Op, (u32, i32)>>);

impl Armed {
    fn faults(self: &Arc<Self>) -> Faults {
        let armed = self.clone();
        Faults::inject(move |op| {
            let mut map = armed.0.lock().unwrap();
            let (left, errno) = map.get_mut(&op)?;
            if *left == 0 {
                return None;
            }
            *left -= 1;
            Some(io::Error::from_raw_os_error(*errno))
        })
    }

    fn arm(&self, op: Op, times: u32, errno: i32) {
        self.0.lock().unwrap().insert(op, (times, errno));
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[derive(Debug, Clone)]
enum Step {
    Append,
    Replay,
    /// Replay takes the head record for one no topic takes: quarantined.
    Quarantine,
    /// `spool requeue`: quarantined records published and deleted.
    Requeue,
    Fail(Op, u32, i32),
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop::sample::select(vec![Op::Open, Op::Read, Op::Write, Op::Commit]);
    let errno = prop::sample::select(vec![libc::EIO, libc::EMFILE, libc::ENOSPC, libc::ENOMEM]);
    prop_oneof![
        6 => Just(Step::Append),
        3 => Just(Step::Replay),
        1 => Just(Step::Quarantine),
        1 => Just(Step::Requeue),
        2 => (op, 1u32..4, errno).prop_map(|(op, n, e)| Step::Fail(op, n, e)),
        1 => Just(Step::Crash),
    ]
}

/// The limits the model runs with: a small spool, so that it fills.
const LIMITS: Limits = Limits {
    max_bytes: 16 * 1024,
    largest_record: 4 * 1024,
};

/// A deadline no test reaches.
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
}

fn record(id: u64) -> OutboundRecord {
    OutboundRecord {
        topic: "firstpromoter.lead_signup".into(),
        key: Some(format!("key-{id}")),
        payload: Bytes::from(format!(
            "{{\"id\":{id},\"pad\":\"{}\"}}",
            "x".repeat((id % 7) as usize * 600)
        )),
        headers: vec![("fp-event-id".into(), id.to_string())],
    }
}

fn id_of(record: &OutboundRecord) -> u64 {
    record.headers[0].1.parse().unwrap()
}

/// The spool in `dir`; a restart that an injected fault refuses is tried again without faults.
fn open(dir: &Path, armed: &Arc<Armed>, limits: Limits) -> Arc<Spool> {
    let metrics = Arc::new(Metrics::new());
    Spool::open_with_faults(dir, limits, metrics.clone(), armed.faults()).unwrap_or_else(|_| {
        armed.clear();
        Spool::open_with_faults(dir, limits, metrics, armed.faults()).unwrap()
    })
}

/// One replay step without Kafka: read the head as replay does and "deliver" it.
async fn replay_step(spool: &Arc<Spool>, delivered: &mut Vec<u64>) {
    let Ok(head) = spool.head(BATCH).await else {
        return;
    };
    let ids: Vec<i64> = head.iter().map(|stored| stored.id).collect();
    delivered.extend(head.iter().map(|stored| id_of(&stored.record)));
    spool.mark_done(&ids).await;
}

/// One requeue without Kafka: every quarantined record "delivered", then forgotten.
async fn requeue_step(spool: &Arc<Spool>, delivered: &mut Vec<u64>) {
    let Ok(quarantined) = spool.quarantined_after(0, usize::MAX).await else {
        return;
    };
    for stored in quarantined {
        delivered.push(id_of(&stored.record));
        if spool.forget(stored.id).await.is_err() {
            return;
        }
    }
}

/// Every record id in every database of `dir` (the live one and those set aside), read with
/// connections of their own, outside the fault seam.
fn ids_on_disk(dir: &Path) -> HashSet<u64> {
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("spool.db") || name.ends_with("-wal") || name.ends_with("-shm") {
            continue;
        }
        let conn = rusqlite::Connection::open(entry.path()).unwrap();
        let mut select = conn.prepare("SELECT headers FROM records").unwrap();
        let rows = select.query_map([], |row| row.get::<_, String>(0)).unwrap();
        for headers in rows {
            let headers: Vec<(String, String)> = serde_json::from_str(&headers.unwrap()).unwrap();
            ids.insert(headers[0].1.parse().unwrap());
        }
    }
    ids
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = std::env::temp_dir().join(format!("fp-relay-model-{}", uuid::Uuid::new_v4()));
    let armed = Arc::new(Armed::default());
    let mut spool = open(&dir, &armed, LIMITS);
    let (mut next_id, mut acknowledged, mut delivered) = (0u64, Vec::new(), Vec::new());
    // Reads (and opens, which a read needs) that failed, and quarantines: order may then differ.
    let reordering = steps
        .iter()
        .any(|s| matches!(s, Step::Fail(Op::Read | Op::Open, _, _) | Step::Quarantine));
    for step in steps {
        match step {
            Step::Append => {
                let id = next_id;
                next_id += 1;
                let ready = spool.accepting();
                let appended = spool
                    .append(&record(id), SystemTime::now(), None, far())
                    .await;
                if ready {
                    prop_assert!(
                        !matches!(
                            appended,
                            Err(SpoolError::Full { .. } | SpoolError::DiskFull { .. })
                        ),
                        "the spool said it accepts, then refused for room: {:?}",
                        appended
                    );
                }
                if appended.is_ok() {
                    acknowledged.push(id);
                }
            }
            Step::Replay => replay_step(&spool, &mut delivered).await,
            Step::Quarantine => {
                if let Ok(head) = spool.head(1).await {
                    if let Some(first) = head.first() {
                        let _ = spool.quarantine(first.id, "refused for good").await;
                    }
                }
            }
            Step::Requeue => requeue_step(&spool, &mut delivered).await,
            Step::Fail(op, times, errno) => armed.arm(op, times, errno),
            Step::Crash => {
                drop(spool);
                spool = open(&dir, &armed, LIMITS);
            }
        }
        let kept = ids_on_disk(&dir);
        let seen: HashSet<u64> = delivered.iter().copied().collect();
        for id in &acknowledged {
            prop_assert!(
                seen.contains(id) || kept.contains(id),
                "acknowledged record {} is neither in Kafka nor in any file of the spool",
                id
            );
        }
    }
    armed.clear();
    drop(spool);
    let spool = open(&dir, &armed, LIMITS);
    prop_assert_eq!(
        spool.unreadable_files(),
        0,
        "every file reads once the faults are gone"
    );
    for _ in 0..1000 {
        if spool.pending() == 0 {
            break;
        }
        replay_step(&spool, &mut delivered).await;
    }
    requeue_step(&spool, &mut delivered).await;
    prop_assert_eq!(spool.pending(), 0, "replay drains the spool");
    prop_assert_eq!(spool.quarantined(), 0, "requeue empties the quarantine");
    let seen: HashSet<u64> = delivered.iter().copied().collect();
    for id in &acknowledged {
        prop_assert!(seen.contains(id), "acknowledged record {} was lost", id);
    }
    let mut first_seen = Vec::new();
    let mut once = HashSet::new();
    for id in &delivered {
        if once.insert(*id) && acknowledged.contains(id) {
            first_seen.push(*id);
        }
    }
    if reordering {
        first_seen.sort_unstable();
    }
    prop_assert_eq!(
        first_seen,
        acknowledged,
        "first deliveries keep receive order"
    );
    let left: BTreeSet<u64> = ids_on_disk(&dir).into_iter().collect();
    prop_assert!(left.is_empty(), "nothing is left on disk: {:?}", left);
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_acknowledged_record_is_delivered_in_order_through_faults_and_crashes(
        steps in prop::collection::vec(step(), 1..60)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(steps))?;
    }
}

/// The case the model found in the journal (2026-12-02): twelve events, a crash, three more, a
/// replay, one more event, a crash, a read error at start-up (now: the database set aside),
/// then new events. The new events must not take the place of the set-aside ones.
#[test]
fn a_database_set_aside_at_start_keeps_its_records_to_itself() {
    use Step::{Append, Crash, Fail, Replay};
    let mut steps = vec![Append; 12];
    steps.extend([Crash, Append, Append, Append, Replay, Append, Crash]);
    steps.extend([Fail(Op::Read, 1, libc::EIO), Crash]);
    steps.extend(vec![Append; 8]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(steps)).unwrap();
}

/// A failed write makes the spool refuse (readiness says so) only until the disk takes
/// writes again: the probe notices without waiting for a write that readiness prevents.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_comes_back_after_a_failed_write_once_the_disk_works() {
    let dir = std::env::temp_dir().join(format!("fp-relay-probe-{}", uuid::Uuid::new_v4()));
    let armed = Arc::new(Armed::default());
    let spool = open(&dir, &armed, LIMITS);
    armed.arm(Op::Commit, 1, libc::EIO);
    assert!(spool
        .append(&record(0), SystemTime::now(), None, far())
        .await
        .is_err());
    assert!(!spool.accepting(), "a failed write makes the spool refuse");
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        back = spool.accepting();
        if back {
            break;
        }
    }
    assert!(
        back,
        "the probe made the spool accept again without a write"
    );
    assert!(spool
        .append(&record(1), SystemTime::now(), None, far())
        .await
        .is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An append that misses its request's deadline while it waits for the writer (the disk is
/// slow) is cancelled, never written: the request is answered 503 and no copy of it lands
/// later, outside dedup and the body budget.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_that_misses_its_deadline_is_never_written() {
    let dir = std::env::temp_dir().join(format!("fp-relay-late-{}", uuid::Uuid::new_v4()));
    let slow = Faults::inject(|op| {
        if op == Op::Commit {
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        None
    });
    let spool = Spool::open_with_faults(&dir, LIMITS, Arc::new(Metrics::new()), slow).unwrap();
    // The first append holds the writer in its fsync...
    let first = tokio::spawn({
        let spool = spool.clone();
        async move {
            spool
                .append(&record(0), SystemTime::now(), None, far())
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // ...so the second waits in the queue past its deadline.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
    let second = spool
        .append(&record(1), SystemTime::now(), None, deadline)
        .await;
    assert!(matches!(second, Err(SpoolError::Late)), "{second:?}");
    assert!(first.await.unwrap().is_ok());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(spool.pending(), 1, "only the first is spooled");
    drop(spool);
    let reopened =
        Spool::open_with_faults(&dir, LIMITS, Arc::new(Metrics::new()), Faults::none()).unwrap();
    let mut delivered = Vec::new();
    replay_step(&reopened, &mut delivered).await;
    assert_eq!(delivered, [0], "nothing of the cancelled one on disk");
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A move aside that a crash cut short (the database renamed, its WAL not yet): the next open
/// puts the WAL beside the database it belongs to, never beside a new one (SQLite would replay
/// another database's pages into it), and its records are taken in.
#[tokio::test(flavor = "multi_thread")]
async fn a_move_aside_cut_short_by_a_crash_is_finished_at_the_next_open() {
    let dir = std::env::temp_dir().join(format!("fp-relay-half-move-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join(super::store::DB_FILE);
    // Records committed to a WAL that has not been checkpointed, as a killed relay leaves it.
    let mut store = super::store::Store::open(&db, &Faults::none()).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
        .unwrap();
    drop(conn);
    let records: Vec<OutboundRecord> = (0..3).map(record).collect();
    let rows: Vec<(&OutboundRecord, u64)> = records.iter().map(|r| (r, 1)).collect();
    store.insert(&rows, |_| {}).unwrap();
    let wal = std::fs::read(dir.join("spool.db-wal")).unwrap();
    let main = std::fs::read(&db).unwrap();
    drop(store);
    // The crash: the database went aside, its WAL stayed.
    std::fs::write(dir.join("spool.db.unreadable-1"), main).unwrap();
    std::fs::write(dir.join("spool.db-wal"), wal).unwrap();
    std::fs::remove_file(&db).unwrap();
    let _ = std::fs::remove_file(dir.join("spool.db-shm"));
    let spool =
        Spool::open_with_faults(&dir, LIMITS, Arc::new(Metrics::new()), Faults::none()).unwrap();
    assert_eq!(
        spool.pending(),
        3,
        "the WAL's records, taken in from the file set aside"
    );
    assert_eq!(spool.unreadable_files(), 0);
    let mut delivered = Vec::new();
    replay_step(&spool, &mut delivered).await;
    assert_eq!(delivered, [0, 1, 2]);
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}
