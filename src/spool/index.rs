//! What the spool holds, in memory: every record not yet in Kafka by sequence number (receive
//! order), where it is on disk, and how many such records each segment still holds.
//!
//! A record moves `Writing -> (InFlight ->) Ready -> gone`: it is reserved before its write,
//! located by the writer thread once the write is durable (in write order, so a segment is
//! never seen empty while a record written into it is still unregistered), and removed once
//! Kafka has it. A segment may be deleted once it holds no pending record, is not the segment
//! the writer appends to, and no reserved record can still land in it.

use std::collections::BTreeMap;

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
}

/// One record not yet in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Where it is on disk; `None` while `Writing`.
    pub location: Option<Location>,
    /// Arrival time, milliseconds since the Unix epoch (for the oldest-age gauge).
    pub received_ms: u64,
    pub status: Status,
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

    /// Records a durable event found on disk at start-up, ready for replay.
    pub fn recover(&mut self, seq: u64, received_ms: u64, location: Location) {
        self.segments.entry(location.segment).or_default().pending += 1;
        self.pending.insert(
            seq,
            Pending {
                location: Some(location),
                received_ms,
                status: Status::Ready,
            },
        );
    }

    /// Total bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
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

    /// Reserves `seq` before its write.
    pub fn reserve(&mut self, seq: u64, received_ms: u64) {
        self.pending.insert(
            seq,
            Pending {
                location: None,
                received_ms,
                status: Status::Writing,
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
            self.pending.remove(&seq);
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
        if let Some(Pending {
            location: Some(location),
            ..
        }) = self.pending.remove(&seq)
        {
            if let Some(usage) = self.segments.get_mut(&location.segment) {
                usage.pending = usage.pending.saturating_sub(1);
            }
        }
    }

    /// Up to `max` records from the head, in order, that replay may send now: it stops at the
    /// first one still being written or still in flight (receive order is kept).
    pub fn ready_head(&self, max: usize) -> Vec<(u64, Location)> {
        self.pending
            .iter()
            .take(max)
            .map_while(|(seq, p)| match (p.status, p.location) {
                (Status::Ready, Some(location)) => Some((*seq, location)),
                _ => None,
            })
            .collect()
    }

    /// Segments that can be deleted now, oldest first: no pending record and older than the
    /// active one. That is enough because the writer registers every write before it replies
    /// and before it rotates, so a record still being written can only land in the active
    /// segment or a later one.
    pub fn deletable(&self) -> Vec<u64> {
        self.segments
            .iter()
            .take_while(|(id, usage)| usage.pending == 0 && **id < self.active)
            .map(|(id, _)| *id)
            .collect()
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
        index.reserve(0, 1);
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
        index.reserve(0, 1);
        index.reserve(1, 2);
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
        index.reserve(7, 1);
        index.unreserve(7);
        assert!(index.is_empty());
        assert_eq!(index.bytes(), 0);
    }

    #[test]
    fn an_attempt_delivered_before_its_write_completed_leaves_no_entry() {
        let mut index = Index::new(0);
        index.reserve(3, 1);
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
        index.reserve(0, 1);
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        index.rotated(1);
        index.reserve(1, 1);
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
        index.reserve(0, 1);
        index.reserve(1, 1);
        index.written(0, 18, Some((0, at(0, 0), Status::Ready)));
        index.rotated(1);
        assert!(index.deletable().is_empty());
        index.written(1, 18, Some((1, at(1, 0), Status::Ready)));
        assert!(index.deletable().is_empty());
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
