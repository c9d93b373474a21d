//! The writer thread: the one connection that writes the database. Appends that arrive
//! together are committed together (group commit: one fsync per group); deletes, quarantines,
//! probes and imports are their own transactions. What the database holds is counted in
//! [`Held`] by the writer, after each commit and before anyone is told.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use super::fault::Faults;
use super::import;
use super::store::{size_of, Store, Tally};
use crate::kafka::record::OutboundRecord;

/// A write's claim, between its requester (who may give up at its deadline) and the writer.
pub mod claim {
    /// Not taken yet: the requester may still cancel it.
    pub const WAITING: u8 = 0;
    /// Taken by the writer: it will be written (or fail), whatever the requester does now.
    pub const TAKEN: u8 = 1;
    /// Cancelled by the requester before the writer took it: never written.
    pub const CANCELLED: u8 = 2;
}

/// Most appends committed together.
const MAX_BATCH: usize = 512;

/// What the spool holds, kept by the writer (and the appends waiting for it).
#[derive(Debug, Default)]
pub struct Held {
    /// Records in the database not yet in Kafka (with those in `delivered`).
    pub pending: Tally,
    /// Records no topic would take.
    pub quarantined: Tally,
    /// Appends on their way to the writer: counted against `max_bytes`, and a backlog.
    pub writing: Tally,
    /// Written while their direct publish attempt was still in flight: replay waits for the
    /// attempt's report (and keeps receive order behind them).
    pub unsettled: BTreeSet<i64>,
    /// In Kafka, but their delete failed: never replayed again by this process; the delete is
    /// tried again with the next one (after a restart they are replayed once more).
    pub delivered: BTreeSet<i64>,
    /// Sources that could not be read (databases set aside, an old journal): kept, retried.
    pub unreadable_files: usize,
    /// Replay cannot read the database now: live events stop waiting behind its records.
    pub unreadable_now: bool,
    /// Deletes committed so far: a read that saw this number change may hold deleted records.
    pub deletes: u64,
}

impl Held {
    /// Records not yet in Kafka.
    pub fn pending_records(&self) -> u64 {
        self.pending
            .records
            .saturating_sub(self.delivered.len() as u64)
    }

    /// What `spool.max_bytes` limits.
    pub fn bytes(&self) -> u64 {
        self.pending.bytes + self.quarantined.bytes + self.writing.bytes
    }
}

/// One request for the writer.
pub enum Request {
    /// Append a record; `in_flight` when its direct publish has not reported yet.
    Append {
        record: OutboundRecord,
        received_ms: u64,
        in_flight: bool,
        /// See [`claim`]: a cancelled append is skipped and answered `Interrupted`.
        claim: Arc<AtomicU8>,
        reply: oneshot::Sender<io::Result<i64>>,
    },
    /// Delete records Kafka has (and retry earlier deletes that failed).
    Delete {
        ids: Vec<i64>,
        reply: oneshot::Sender<io::Result<()>>,
    },
    /// Keep a record no topic takes, with the reason.
    Quarantine {
        id: i64,
        reason: String,
        reply: oneshot::Sender<io::Result<()>>,
    },
    /// A real write of `bytes`, to learn whether the disk takes such a record again.
    Probe {
        bytes: u64,
        reply: oneshot::Sender<io::Result<()>>,
    },
    /// Try the sources that could not be read; answered with how many still cannot.
    TakeIn { reply: oneshot::Sender<usize> },
}

/// The writer's state.
pub struct Writer {
    pub store: Store,
    pub held: Arc<Mutex<Held>>,
    pub dir: PathBuf,
    pub faults: Faults,
    /// Damaged records met by imports.
    pub corrupt: Arc<std::sync::atomic::AtomicU64>,
}

impl Writer {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("lock not poisoned")
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, requests: &mpsc::Receiver<Request>) {
        let mut next = None;
        loop {
            let Some(first) = next.take().or_else(|| requests.recv().ok()) else {
                return;
            };
            let mut appends = Vec::new();
            let mut request = Some(first);
            while let Some(Request::Append { .. }) = request {
                appends.push(request.take().expect("matched"));
                if appends.len() < MAX_BATCH {
                    request = requests.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.append(appends);
            }
            match request {
                Some(Request::Delete { ids, reply }) => {
                    let _ = reply.send(self.delete(ids));
                }
                Some(Request::Quarantine { id, reason, reply }) => {
                    let result = self.store.quarantine(id, &reason).map(|moved| {
                        let mut held = self.held();
                        held.pending.sub(moved);
                        held.quarantined.add(moved);
                    });
                    let _ = reply.send(result);
                }
                Some(Request::Probe { bytes, reply }) => {
                    let _ = reply.send(self.store.probe(bytes));
                }
                Some(Request::TakeIn { reply }) => {
                    let _ = reply.send(self.take_in());
                }
                Some(Request::Append { .. }) => next = request,
                None => {}
            }
        }
    }

    /// Commits a group of appends (those not cancelled), or none of them.
    fn append(&mut self, requests: Vec<Request>) {
        let mut taken = Vec::with_capacity(requests.len());
        for request in requests {
            let Request::Append {
                record,
                received_ms,
                in_flight,
                claim,
                reply,
            } = request
            else {
                continue;
            };
            let won = claim
                .compare_exchange(
                    claim::WAITING,
                    claim::TAKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
            if won {
                taken.push((record, received_ms, in_flight, reply));
            } else {
                let _ = reply.send(Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "cancelled before it was written",
                )));
            }
        }
        if taken.is_empty() {
            return;
        }
        let rows: Vec<(&OutboundRecord, u64)> = taken.iter().map(|(r, ms, ..)| (r, *ms)).collect();
        let held = self.held.clone();
        let in_flight: Vec<bool> = taken.iter().map(|(_, _, f, _)| *f).collect();
        let mut unsettled = Vec::new();
        // The ids of attempts still in flight are known to replay before the commit makes
        // their records visible to it: it never sends one whose attempt may yet succeed.
        let result = self.store.insert(&rows, |ids| {
            unsettled.extend(
                ids.iter()
                    .zip(&in_flight)
                    .filter(|(_, f)| **f)
                    .map(|(id, _)| *id),
            );
            let mut held = held.lock().expect("lock not poisoned");
            held.unsettled.extend(unsettled.iter().copied());
        });
        match result {
            Ok(ids) => {
                let mut held = self.held();
                for (record, ..) in &taken {
                    held.pending.add(Tally {
                        records: 1,
                        bytes: size_of(record),
                    });
                }
                drop(held);
                for ((.., reply), id) in taken.into_iter().zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(error) => {
                tracing::error!(%error, records = taken.len(), "spool write failed; the group is refused and rolled back");
                // The rolled-back rows' ids are no records.
                let mut held = self.held();
                for id in &unsettled {
                    held.unsettled.remove(id);
                }
                drop(held);
                for (.., reply) in taken {
                    let _ = reply.send(Err(io::Error::new(error.kind(), error.to_string())));
                }
            }
        }
    }

    /// Deletes `ids` and every earlier delivered record whose delete failed.
    fn delete(&mut self, ids: Vec<i64>) -> io::Result<()> {
        let mut all: BTreeSet<i64> = ids.iter().copied().collect();
        all.extend(self.held().delivered.iter().copied());
        let all: Vec<i64> = all.into_iter().collect();
        match self.store.delete(&all) {
            Ok((pending, quarantined)) => {
                let mut held = self.held();
                held.pending.sub(pending);
                held.quarantined.sub(quarantined);
                held.delivered.clear();
                held.deletes += 1;
                let empty = held.pending.records == 0;
                drop(held);
                if empty {
                    self.store.shrink();
                }
                Ok(())
            }
            Err(error) => {
                self.held().delivered.extend(ids);
                Err(error)
            }
        }
    }

    /// Tries the old journal and the databases set aside; returns how many still cannot be
    /// read.
    pub fn take_in(&mut self) -> usize {
        let mut unreadable = 0;
        let mut corrupt = 0;
        if let Err(error) = import::journal(&self.dir, &mut self.store, &self.faults, &mut corrupt)
        {
            tracing::error!(%error, dir = %self.dir.display(), "cannot read the spool written by an earlier fp-relay; keeping it and trying again later (nothing of it is deleted)");
            unreadable += 1;
        }
        match import::set_aside(&self.dir) {
            Ok(files) => {
                for file in files {
                    match import::absorb(&file, &mut self.store, &self.faults) {
                        Ok(Some(_)) => {}
                        Ok(None) => unreadable += 1,
                        Err(error) => {
                            tracing::error!(%error, file = %file.display(), "cannot take in a spool file set aside");
                            unreadable += 1;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot list the spool directory");
                unreadable += 1;
            }
        }
        self.corrupt
            .fetch_add(corrupt, std::sync::atomic::Ordering::Relaxed);
        match self.store.totals() {
            Ok(totals) => {
                let mut held = self.held();
                held.pending = totals.pending;
                held.quarantined = totals.quarantined;
            }
            Err(error) => {
                tracing::error!(%error, "cannot count what the spool holds; trying again later");
                unreadable += 1;
            }
        }
        self.held().unreadable_files = unreadable;
        unreadable
    }
}
