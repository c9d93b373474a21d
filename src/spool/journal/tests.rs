//! The journal's format, scan and files against a real directory.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::*;
use crate::spool::fault::{Faults, Op};

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
    read_events(dir, &[location], &Faults::none())
        .pop()
        .expect("one location, one result")
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fp-relay-journal-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn records_round_trip_and_read_back_by_location() {
    let dir = temp_dir();
    let mut segment = ActiveSegment::create(&dir, 7, &Faults::none()).unwrap();
    for seq in 0..5 {
        segment.append(&encode(&Entry::Event(event(seq)))).unwrap();
    }
    segment.append(&encode(&Entry::Done(3))).unwrap();
    segment.sync().unwrap();
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
    let mut segment = ActiveSegment::create(&dir, 1, &Faults::none()).unwrap();
    for seq in 0..3 {
        segment.append(&encode(&Entry::Event(event(seq)))).unwrap();
    }
    let len = segment.len;
    drop(segment);
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
    let mut segment = ActiveSegment::create(&dir, 1, &Faults::none()).unwrap();
    segment.append(&encode(&Entry::Event(event(0)))).unwrap();
    drop(segment);
    let path = segment_path(&dir, 1);
    let mut data = std::fs::read(&path).unwrap();
    let last = data.len() - 2;
    data[last] ^= 0x40;
    std::fs::write(&path, data).unwrap();
    let (events, _, scan) = scan_all(&dir, 1);
    assert!(events.is_empty());
    assert_eq!(scan.corrupt, 1);
}

#[test]
fn a_partial_frame_cut_back_leaves_a_segment_that_scans_whole() {
    let dir = std::env::temp_dir().join(format!("fp-relay-journal-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut segment = ActiveSegment::create(&dir, 0, &Faults::none()).unwrap();
    segment.append(&encode(&Entry::Event(event(0)))).unwrap();
    let good = segment.len;
    // What a failed write leaves: half a frame, the recorded length not advanced.
    let frame = encode(&Entry::Event(event(1)));
    segment.file.write_all(&frame[..frame.len() / 2]).unwrap();
    segment.truncate(good).unwrap();
    segment.append(&encode(&Entry::Event(event(2)))).unwrap();
    segment.sync().unwrap();
    let (events, _, scan) = scan_all(&dir, 0);
    assert_eq!(scan.corrupt, 0);
    let seqs: Vec<u64> = events.iter().map(|(e, _)| e.seq).collect();
    assert_eq!(seqs, vec![0, 2], "the record after the failure is found");
    std::fs::remove_dir_all(&dir).unwrap();
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
fn read_errors_that_are_not_damage_stop_the_read_and_are_not_called_damage() {
    let dir = temp_dir();
    let mut segment = ActiveSegment::create(&dir, 0, &Faults::none()).unwrap();
    let locations: Vec<Location> = (0..3)
        .map(|seq| {
            let frame = encode(&Entry::Event(event(seq)));
            let offset = segment.append(&frame).unwrap();
            Location {
                segment: 0,
                offset,
                len: (frame.len() - FRAME_HEADER) as u32,
            }
        })
        .collect();
    let reads = std::sync::atomic::AtomicUsize::new(0);
    let faults = Faults::inject(move |op| {
        (op == Op::Read && reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1)
            .then(|| io::Error::from_raw_os_error(libc::EMFILE))
    });
    let results = read_events(&dir, &locations, &faults);
    assert_eq!(results.len(), 2, "nothing is read after a failed read");
    assert!(results[0].is_ok());
    let error = results[1].as_ref().unwrap_err();
    assert!(!is_damage(error), "EMFILE is not damage: {error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
