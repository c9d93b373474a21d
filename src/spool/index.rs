//! What the spool holds, in memory: every record not yet in Kafka by sequence number (receive
//! order), where it is on disk, and how many such records each segment still holds.
//!
//! A record moves `Writing -> (InFlight ->) Ready -> gone`: it is reserved before its write,
//! located by the writer thread once the write is durable (in write order, so a segment is
//! never seen empty while a record written into it is still unregistered), and removed once
//! Kafka has it. A segment may be deleted once it holds no pending record, is not the segment
//! the writer appends to, and no reserved record can still land in it.
//!
//! A segment that cannot be read (a system error, not damage) is *set aside*: its records
//! keep their place but replay passes them by, so the rest of the spool and new events flow,
//! until a retry reads it again. A segment that could not even be scanned at start-up is
//! *unreadable*: what it holds is unknown until a rescan works, and it is never deleted.
//!
//! `spool.max_bytes` is checked against the bytes of pending records (their frames), not the
//! segment files, whose done records are freed only when the whole segment is.

use std::collections::{BTreeMap, BTreeSet};

use super::journal::Location;

/// Where a spooled record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Reserved; its write is not durable yet.
    Writing,
    /// Durable, but the direct publish attempt has not reported yet.
    InFlight,
    /// Durable and waiting for replay.
    Ready,
    /// Durable, in a segment set aside because it could not be read: passed by until a retry
    /// reads it.
    Aside,
}

/// One record not yet in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Where it is on disk; `None` while `Writing`.
    pub location: Option<Location>,
    /// Arrival time, milliseconds since the Unix epoch (for the oldest-age gauge).
    pub received_ms: u64,
    pub status: Status,
    /// Its frame's size on disk, counted against `spool.max_bytes` while it is pending.
    pub bytes: u64,
}

/// How much of a segment is still needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentUsage {
    /// Records in it not yet in Kafka.
    pub pending: usize,
    /// Its size on disk.
    pub bytes: u64,
}

/// The spool's in-memory index.
#[derive(Debug, Default)]
pub struct Index {
    /// Not yet in Kafka, by sequence number (receive order).
    pending: BTreeMap<u64, Pending>,
    /// Every segment on disk, oldest first.
    segments: BTreeMap<u64, SegmentUsage>,
    /// The segment the writer appends to; never deleted.
    active: u64,
    /// Total bytes of all segments.
    bytes: u64,
    /// Frame bytes of every pending record.
    pending_bytes: u64,
    /// Segments set aside (their records are `Aside`).
    aside: BTreeSet<u64>,
    /// Segments that could not be scanned at start-up, with their size.
    unreadable: BTreeMap<u64, u64>,
    /// Done-markers whose event was not found, kept while a segment is unreadable: its events
    /// may be among them, and must not be replayed once it reads again.
    orphan_done: BTreeSet<u64>,
}

impl Index {
    /// An index whose writer appends to segment `active`.
    pub fn new(active: u64) -> Self {
        let mut index = Self {
            active,
            ..Self::default()
        };
        index.segments.insert(active, SegmentUsage::default());
        index
    }

    /// Records a segment found on disk at start-up.
    pub fn add_segment(&mut self, id: u64, bytes: u64) {
        self.segments.entry(id).or_default().bytes += bytes;
        self.bytes += bytes;
    }

    /// Records a durable event found on disk at start-up (or in a rescued segment), ready for
    /// replay, unless a done-marker for it was already seen.
    pub fn recover(&mut self, seq: u64, received_ms: u64, location: Location) {
        if self.orphan_done.remove(&seq) {
            return;
        }
        self.segments.entry(location.segment).or_default().pending += 1;
        let bytes = u64::from(location.len) + super::journal::FRAME_HEADER as u64;
        self.pending_bytes += bytes;
        self.pending.insert(
            seq,
            Pending {
                location: Some(location),
                received_ms,
                status: Status::Ready,
                bytes,
            },
        );
    }

    /// A done-marker found by a scan: its event is in Kafka.
    pub fn recovered_done(&mut self, seq: u64) {
        if !self.pending.contains_key(&seq) && !self.unreadable.is_empty() {
            self.orphan_done.insert(seq);
        }
        self.done(seq);
    }

    /// Total bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Frame bytes of the records not yet in Kafka (what `spool.max_bytes` limits).
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Records not yet in Kafka.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits for Kafka.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest record not yet in Kafka.
    pub fn oldest(&self) -> Option<&Pending> {
        self.pending.values().next()
    }

    /// `seq`'s entry, if it is pending.
    pub fn get(&self, seq: u64) -> Option<&Pending> {
        self.pending.get(&seq)
    }

    /// Reserves `seq`, whose frame is `bytes` long, before its write.
    pub fn reserve(&mut self, seq: u64, received_ms: u64, bytes: u64) {
        self.pending_bytes += bytes;
        self.pending.insert(
            seq,
            Pending {
                location: None,
                received_ms,
                status: Status::Writing,
                bytes,
            },
        );
    }

    /// Forgets a reservation whose write failed.
    pub fn unreserve(&mut self, seq: u64) {
        if self
            .pending
            .get(&seq)
            .is_some_and(|p| p.status == Status::Writing)
        {
            if let Some(pending) = self.pending.remove(&seq) {
                self.pending_bytes = self.pending_bytes.saturating_sub(pending.bytes);
            }
        }
    }

    /// Called by the writer once `len` bytes are durable at the end of `segment`. `event` is
    /// the sequence number and status of an event write; `None` for a done-marker.
    pub fn written(&mut self, segment: u64, len: u64, event: Option<(u64, Location, Status)>) {
        let usage = self.segments.entry(segment).or_default();
        usage.bytes += len;
        self.bytes += len;
        if let Some((seq, location, status)) = event {
            // A reservation already resolved (its attempt was delivered first) needs no entry.
            if let Some(pending) = self.pending.get_mut(&seq) {
                pending.location = Some(location);
                pending.status = status;
                usage.pending += 1;
            }
        }
    }

    /// The writer moved on to segment `id`.
    pub fn rotated(&mut self, id: u64) {
        self.active = id;
        self.segments.entry(id).or_default();
    }

    /// An in-flight record's direct attempt failed: replay it.
    pub fn make_ready(&mut self, seq: u64) {
        if let Some(pending) = self.pending.get_mut(&seq) {
            if pending.status == Status::InFlight {
                pending.status = Status::Ready;
            }
        }
    }

    /// `seq` is in Kafka (or on the dead-letter topic): forget it.
    pub fn done(&mut self, seq: u64) {
        let Some(pending) = self.pending.remove(&seq) else {
            return;
        };
        self.pending_bytes = self.pending_bytes.saturating_sub(pending.bytes);
        if let Some(location) = pending.location {
            if let Some(usage) = self.segments.get_mut(&location.segment) {
                usage.pending = usage.pending.saturating_sub(1);
            }
        }
    }

    /// Up to `max` records from the head, in order, that replay may send now: it stops at the
    /// first one still being written or still in flight (receive order is kept), and passes by
    /// the records of segments set aside.
    pub fn ready_head(&self, max: usize) -> Vec<(u64, Location)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.status != Status::Aside)
            .take(max)
            .map_while(|(seq, p)| match (p.status, p.location) {
                (Status::Ready, Some(location)) => Some((*seq, location)),
                _ => None,
            })
            .collect()
    }

    /// True when the segment the writer appends to holds data but no pending record: rotating
    /// then lets it be deleted, so a drained spool frees its disk whatever its size.
    pub fn active_is_spent(&self) -> bool {
        self.segments
            .get(&self.active)
            .is_some_and(|usage| usage.pending == 0 && usage.bytes > 0)
    }

    /// Segments that can be deleted now, oldest first: no pending record, not unreadable, and
    /// older than the active one. That is enough because the writer registers every write
    /// before it replies and before it rotates, so a record still being written can only land
    /// in the active segment or a later one. Oldest first, because done-markers follow their
    /// events: a segment set aside keeps every later one (and the markers in it) on disk.
    pub fn deletable(&self) -> Vec<u64> {
        self.segments
            .iter()
            .take_while(|(id, usage)| {
                usage.pending == 0 && **id < self.active && !self.unreadable.contains_key(id)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Passes by the records of `segment` until [`Self::restore`]; false if it had none.
    pub fn set_aside(&mut self, segment: u64) -> bool {
        let mut any = false;
        for pending in self.pending.values_mut() {
            if pending.location.is_some_and(|l| l.segment == segment)
                && pending.status == Status::Ready
            {
                pending.status = Status::Aside;
                any = true;
            }
        }
        if any {
            self.aside.insert(segment);
        }
        any
    }

    /// Replays the records of a segment set aside again.
    pub fn restore(&mut self, segment: u64) {
        if self.aside.remove(&segment) {
            for pending in self.pending.values_mut() {
                if pending.location.is_some_and(|l| l.segment == segment)
                    && pending.status == Status::Aside
                {
                    pending.status = Status::Ready;
                }
            }
        }
    }

    /// Segments set aside, and one pending record of each to try reading.
    pub fn aside(&self) -> Vec<(u64, Location)> {
        self.aside
            .iter()
            .filter_map(|segment| {
                self.pending
                    .values()
                    .find_map(|p| p.location.filter(|l| l.segment == *segment))
                    .map(|l| (*segment, l))
            })
            .collect()
    }

    /// A segment found at start-up that could not be scanned: `bytes` on disk, contents unknown.
    pub fn add_unreadable(&mut self, id: u64, bytes: u64) {
        self.add_segment(id, bytes);
        self.unreadable.insert(id, bytes);
    }

    /// Segments that could not be scanned yet.
    pub fn unreadable(&self) -> Vec<u64> {
        self.unreadable.keys().copied().collect()
    }

    /// A segment that could not be scanned was scanned now (its records recovered by the
    /// caller): it is an ordinary segment again.
    pub fn rescued(&mut self, id: u64) {
        self.unreadable.remove(&id);
        if self.unreadable.is_empty() {
            self.orphan_done.clear();
        }
    }

    /// Segments set aside or unreadable, for the gauge.
    pub fn troubled_segments(&self) -> usize {
        self.aside.len() + self.unreadable.len()
    }

    /// Forgets a deleted segment.
    pub fn remove_segment(&mut self, id: u64) {
        if let Some(usage) = self.segments.remove(&id) {
            self.bytes = self.bytes.saturating_sub(usage.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> Location {
        Location {
            segment,
            offset,
            len: 10,
        }
    }

    #[test]
    fn a_record_goes_from_writing_to_ready_to_gone() {
        let mut index = Index::new(0);
        index.reserve(0, 1, 18);
        assert_eq!(index.get(0).unwrap().status, Status::Writing);
        assert!(index.ready_head(10).is_empty(), "not durable yet");
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        assert_eq!(index.ready_head(10), vec![(0, at(0, 0))]);
        assert_eq!(index.bytes(), 18);
        index.done(0);
        assert!(index.is_empty());
    }

    #[test]
    fn an_in_flight_record_waits_for_its_attempt_and_blocks_the_ones_after_it() {
        let mut index = Index::new(0);
        index.reserve(0, 1, 18);
        index.reserve(1, 2, 18);
        index.written(0, 18, Some((0, at(0, 0), Status::InFlight)));
        index.written(0, 18, Some((1, at(0, 18), Status::Ready)));
        assert!(index.ready_head(10).is_empty(), "receive order is kept");
        index.make_ready(0);
        assert_eq!(index.ready_head(10).len(), 2);
        assert_eq!(index.ready_head(1).len(), 1, "at most max");
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let mut index = Index::new(0);
        index.reserve(7, 1, 18);
        index.unreserve(7);
        assert!(index.is_empty());
        assert_eq!(index.bytes(), 0);
    }

    #[test]
    fn an_attempt_delivered_before_its_write_completed_leaves_no_entry() {
        let mut index = Index::new(0);
        index.reserve(3, 1, 18);
        index.done(3);
        index.written(0, 18, Some((3, at(0, 0), Status::InFlight)));
        assert!(index.is_empty());
        assert_eq!(
            index.deletable(),
            Vec::<u64>::new(),
            "the active segment stays"
        );
    }

    #[test]
    fn only_old_empty_segments_are_deletable() {
        let mut index = Index::new(0);
        index.reserve(0, 1, 18);
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        index.rotated(1);
        index.reserve(1, 1, 18);
        index.written(1, 18, Some((1, at(1, 0), Status::Ready)));
        assert!(index.deletable().is_empty(), "segment 0 still holds seq 0");
        index.done(0);
        assert_eq!(index.deletable(), vec![0]);
        index.remove_segment(0);
        assert_eq!(index.bytes(), 18);
        index.done(1);
        assert!(
            index.deletable().is_empty(),
            "the active segment is never deleted"
        );
    }

    #[test]
    fn rotation_then_an_out_of_order_reply_cannot_delete_a_segment_under_a_record() {
        // The writer registers in write order, so seq 0's record is counted in segment 0
        // before segment 1 exists; the old race (seq 1's reply handled first, segment 0 seen
        // empty and deleted under a record answered 202) cannot happen.
        let mut index = Index::new(0);
        index.reserve(0, 1, 18);
        index.reserve(1, 1, 18);
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        index.rotated(1);
        assert!(index.deletable().is_empty());
        index.written(1, 18, Some((1, at(1, 0), Status::Ready)));
        assert!(index.deletable().is_empty());
    }

    #[test]
    fn pending_bytes_follow_the_records_not_the_files() {
        let mut index = Index::new(0);
        index.reserve(0, 1, 18);
        assert_eq!(index.pending_bytes(), 18, "counted from the reservation");
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        index.written(0, 17, None); // a done-marker
        index.done(0);
        assert_eq!(index.pending_bytes(), 0);
        assert_eq!(
            index.bytes(),
            35,
            "the file keeps its bytes until it is deleted"
        );
        assert!(index.active_is_spent());
        index.reserve(1, 1, 18);
        index.unreserve(1);
        assert_eq!(index.pending_bytes(), 0);
    }

    #[test]
    fn a_segment_set_aside_is_passed_by_and_holds_back_deletion_until_restored() {
        let mut index = Index::new(0);
        index.reserve(0, 1, 18);
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        index.rotated(1);
        index.reserve(1, 1, 18);
        index.written(1, 18, Some((1, at(1, 0), Status::Ready)));
        index.rotated(2);
        assert!(index.set_aside(0));
        assert_eq!(index.ready_head(10), vec![(1, at(1, 0))], "passed by");
        assert_eq!(index.aside(), vec![(0, at(0, 0))]);
        index.done(1);
        assert!(index.deletable().is_empty(), "segment 0 still holds seq 0");
        index.restore(0);
        assert_eq!(index.ready_head(10), vec![(0, at(0, 0))]);
        index.done(0);
        assert_eq!(index.deletable(), vec![0, 1]);
        assert_eq!(index.troubled_segments(), 0);
    }

    #[test]
    fn an_unreadable_segment_is_kept_and_its_done_events_are_not_replayed_once_read() {
        let mut index = Index::new(3);
        index.add_unreadable(1, 100);
        // Segment 2 holds a marker for seq 5, which lives in the unreadable segment 1.
        index.recovered_done(5);
        assert!(index.deletable().is_empty());
        // Rescued: seq 5 is done already, seq 6 is not.
        index.recover(5, 1, at(1, 0));
        index.recover(6, 1, at(1, 18));
        index.rescued(1);
        assert_eq!(index.ready_head(10), vec![(6, at(1, 18))]);
    }

    #[test]
    fn recovered_records_are_ready_at_once() {
        let mut index = Index::new(5);
        index.add_segment(4, 36);
        index.recover(9, 1, at(4, 18));
        assert_eq!(index.ready_head(10), vec![(9, at(4, 18))]);
        assert_eq!(index.bytes(), 36);
        assert_eq!(index.oldest().unwrap().received_ms, 1);
    }
}
