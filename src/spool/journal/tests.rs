//! The journal's format, scan and files against a real directory.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use super::*;
use crate::spool::fault::{Faults, Op};

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Event(SpooledEvent),
    /// The event with this sequence number is in Kafka.
    Done(u64),
}

/// Encodes `entry` as a framed record.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    match entry {
        Entry::Done(seq) => {
            body.push(KIND_DONE);
            body.extend_from_slice(&seq.to_le_bytes());
        }
        Entry::Event(event) => {
            body.push(KIND_EVENT);
            body.extend_from_slice(&event.seq.to_le_bytes());
            body.extend_from_slice(&event.received_ms.to_le_bytes());
            put_bytes(&mut body, event.topic.as_bytes());
            match &event.key {
                Some(key) => {
                    body.push(1);
                    put_bytes(&mut body, key.as_bytes());
                }
                None => body.push(0),
            }
            body.extend_from_slice(&(event.headers.len() as u32).to_le_bytes());
            for (name, value) in &event.headers {
                put_bytes(&mut body, name.as_bytes());
                put_bytes(&mut body, value.as_bytes());
            }
            put_bytes(&mut body, &event.payload);
        }
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn event(seq: u64) -> SpooledEvent {
    SpooledEvent {
        seq,
        received_ms: 1_700_000_000_000 + seq,
        topic: "firstpromoter.lead_signup".into(),
        key: seq.is_multiple_of(2).then(|| format!("key-{seq}")),
        headers: vec![
            ("fp-event-id".into(), seq.to_string()),
            ("content-type".into(), "application/json".into()),
        ],
        payload: Bytes::from(format!("{{\"n\":{seq}}}")),
    }
}

/// Every record of segment `id`: events read back whole, done-markers, and the scan.
fn scan_all(dir: &Path, id: u64) -> (Vec<(SpooledEvent, Location)>, Vec<u64>, Scan) {
    let mut found = Vec::new();
    let scan = scan(dir, id, &Faults::none(), |f| found.push(f)).unwrap();
    let (mut events, mut done) = (Vec::new(), Vec::new());
    for f in found {
        match f {
            Found::Event { seq, location, .. } => {
                let event = read_event(dir, location).unwrap();
                assert_eq!(event.seq, seq);
                events.push((event, location));
            }
            Found::Done(seq) => done.push(seq),
        }
    }
    (events, done, scan)
}

/// Reads the event at `location` back.
pub fn read_event(dir: &Path, location: Location) -> io::Result<SpooledEvent> {
    read_event_at(&segment_path(dir, location.segment), location)
}

/// Writes segment `id` of `dir` as the journal's writer did: the frames, one after another.
fn write_segment(dir: &Path, id: u64, entries: &[Entry]) -> u64 {
    let data: Vec<u8> = entries.iter().flat_map(encode).collect();
    std::fs::write(segment_path(dir, id), &data).unwrap();
    data.len() as u64
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fp-relay-journal-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn records_round_trip_and_read_back_by_location() {
    let dir = temp_dir();
    let mut entries: Vec<Entry> = (0..5).map(|seq| Entry::Event(event(seq))).collect();
    entries.push(Entry::Done(3));
    write_segment(&dir, 7, &entries);
    let (events, done, scan) = scan_all(&dir, 7);
    assert_eq!(events.len(), 5);
    assert_eq!(done, vec![3]);
    assert_eq!(scan.corrupt, 0);
    for (expected, (found, location)) in (0..5).map(event).zip(&events) {
        assert_eq!(&expected, found);
        assert_eq!(read_event(&dir, *location).unwrap(), expected);
    }
    assert_eq!(list_segments(&dir).unwrap(), vec![7]);
}

#[test]
fn a_torn_tail_is_reported_and_everything_before_it_survives() {
    let dir = temp_dir();
    let entries: Vec<Entry> = (0..3).map(|seq| Entry::Event(event(seq))).collect();
    let len = write_segment(&dir, 1, &entries);
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(&dir, 1))
        .unwrap();
    file.set_len(len - 5).unwrap();
    let (events, _, scan) = scan_all(&dir, 1);
    assert_eq!(events.len(), 2);
    assert_eq!(scan.corrupt, 1);
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    let dir = temp_dir();
    write_segment(&dir, 1, &[Entry::Event(event(0))]);
    let path = segment_path(&dir, 1);
    let mut data = std::fs::read(&path).unwrap();
    let last = data.len() - 2;
    data[last] ^= 0x40;
    std::fs::write(&path, data).unwrap();
    let (events, _, scan) = scan_all(&dir, 1);
    assert!(events.is_empty());
    assert_eq!(scan.corrupt, 1);
}

/// Damage in the middle of a segment costs the damaged records only: the scan finds the
/// next intact frame, whichever byte of a frame (length, checksum, body) was hit.
#[test]
fn damage_in_the_middle_of_a_segment_skips_only_the_damaged_record() {
    let frames: Vec<Vec<u8>> = (0..6)
        .map(|seq| encode(&Entry::Event(event(seq))))
        .collect();
    let starts: Vec<usize> = frames
        .iter()
        .scan(0, |at, f| {
            let start = *at;
            *at += f.len();
            Some(start)
        })
        .collect();
    let whole: Vec<u8> = frames.concat();
    for hit in [0, 3, 5, 9, frames[2].len() / 2, frames[2].len() - 1] {
        let dir = temp_dir();
        let mut data = whole.clone();
        data[starts[2] + hit] ^= 0xA5;
        std::fs::write(segment_path(&dir, 0), &data).unwrap();
        let (events, _, scan) = scan_all(&dir, 0);
        let seqs: Vec<u64> = events.iter().map(|(e, _)| e.seq).collect();
        assert_eq!(seqs, vec![0, 1, 3, 4, 5], "byte {hit} of record 2 flipped");
        assert_eq!(scan.corrupt, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn read_errors_that_are_not_damage_fail_the_scan_and_are_not_called_damage() {
    let dir = temp_dir();
    let entries: Vec<Entry> = (0..3).map(|seq| Entry::Event(event(seq))).collect();
    write_segment(&dir, 0, &entries);
    let reads = std::sync::atomic::AtomicUsize::new(0);
    let faults = Faults::inject(move |op| {
        (op == Op::Read && reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1)
            .then(|| io::Error::from_raw_os_error(libc::EMFILE))
    });
    let error = scan(&dir, 0, &faults, |_| {}).unwrap_err();
    assert!(!is_damage(&error), "EMFILE is not damage: {error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
