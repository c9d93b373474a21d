//! Model-based tests of the spool under injected file faults, crashes and restarts.
//!
//! A random sequence of appends, replay steps, injected errors (EIO, EMFILE, ENOSPC on open,
//! read, write, fsync, unlink) and crash-restarts runs against the real spool in a temporary
//! directory; a model keeps what was answered "spooled". At the end, with the faults gone,
//! a restart and a full replay must deliver every acknowledged record at least once, and the
//! first delivery of each in the order it was acknowledged, unless a read failed on the way: a
//! segment that cannot be read is set aside (at start-up, or by replay) and the records after
//! it go first, which is the order guarantee the README states.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use proptest::prelude::*;

use super::fault::{Faults, Op};
use super::replay::{self, BATCH};
use super::Spool;
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
    Fail(Op, u32, i32),
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop::sample::select(vec![Op::Open, Op::Read, Op::Write, Op::Fsync, Op::Unlink]);
    let errno = prop::sample::select(vec![libc::EIO, libc::EMFILE, libc::ENOSPC, libc::ENOMEM]);
    prop_oneof![
        6 => Just(Step::Append),
        3 => Just(Step::Replay),
        2 => (op, 1u32..4, errno).prop_map(|(op, n, e)| Step::Fail(op, n, e)),
        1 => Just(Step::Crash),
    ]
}

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
            "x".repeat((id % 7) as usize * 40)
        )),
        headers: vec![("fp-event-id".into(), id.to_string())],
    }
}

fn id_of(record: &OutboundRecord) -> u64 {
    record.headers[0].1.parse().unwrap()
}

/// The spool in `dir`; a restart that an injected fault refuses is tried again without faults.
fn open(dir: &std::path::Path, armed: &Arc<Armed>) -> Arc<Spool> {
    let metrics = Arc::new(Metrics::new());
    Spool::open_with_faults(dir, 1 << 30, metrics.clone(), armed.faults()).unwrap_or_else(|_| {
        armed.clear();
        Spool::open_with_faults(dir, 1 << 30, metrics, armed.faults()).unwrap()
    })
}

/// One replay step without Kafka: read the head back as replay does and "deliver" it.
async fn replay_step(spool: &Arc<Spool>, delivered: &mut Vec<u64>) {
    let head = spool.index().ready_head(BATCH);
    if head.is_empty() {
        return;
    }
    let (records, _failure) = replay::read(spool, head).await.unwrap();
    let seqs: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    delivered.extend(records.iter().map(|(_, r)| id_of(r)));
    spool.mark_done(&seqs).await;
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = std::env::temp_dir().join(format!("fp-relay-model-{}", uuid::Uuid::new_v4()));
    let armed = Arc::new(Armed::default());
    let mut spool = open(&dir, &armed);
    let (mut next_id, mut acknowledged, mut delivered) = (0u64, Vec::new(), Vec::new());
    // Reads (and opens, which a read needs) that failed: order may then differ.
    let reordering = steps
        .iter()
        .any(|s| matches!(s, Step::Fail(Op::Read | Op::Open, _, _)));
    for step in steps {
        match step {
            Step::Append => {
                let id = next_id;
                next_id += 1;
                if spool
                    .append(&record(id), SystemTime::now(), None, far())
                    .await
                    .is_ok()
                {
                    acknowledged.push(id);
                }
            }
            Step::Replay => replay_step(&spool, &mut delivered).await,
            Step::Fail(op, times, errno) => armed.arm(op, times, errno),
            Step::Crash => {
                drop(spool);
                spool = open(&dir, &armed);
            }
        }
    }
    armed.clear();
    drop(spool);
    let spool = open(&dir, &armed);
    for _ in 0..1000 {
        if spool.index().is_empty() {
            break;
        }
        replay_step(&spool, &mut delivered).await;
    }
    prop_assert!(spool.index().is_empty(), "replay drains the spool");
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

/// The case the model found (2026-12-02): twelve events, a crash, three more, a replay that
/// finishes the first segment (deleted at the next start), one more event, a crash, a read
/// error at start-up that makes the remaining segment unreadable, then new events. The new
/// events must not be given the sequence numbers of the unreadable segment's.
#[test]
fn an_unreadable_segment_after_deleted_ones_keeps_its_sequence_numbers_to_itself() {
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
    let spool = open(&dir, &armed);
    armed.arm(Op::Fsync, 1, libc::EIO);
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
        if op == Op::Fsync {
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        None
    });
    let spool = Spool::open_with_faults(&dir, 1 << 30, Arc::new(Metrics::new()), slow).unwrap();
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
    assert!(matches!(second, Err(super::SpoolError::Late)), "{second:?}");
    assert!(first.await.unwrap().is_ok());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(spool.pending(), 1, "only the first is spooled");
    drop(spool);
    let reopened =
        Spool::open_with_faults(&dir, 1 << 30, Arc::new(Metrics::new()), Faults::none()).unwrap();
    let mut delivered = Vec::new();
    replay_step(&reopened, &mut delivered).await;
    assert_eq!(delivered, [0], "nothing of the cancelled one on disk");
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}
