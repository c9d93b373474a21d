//! The spool's on-disk format: append-only segment files of checksummed records.
//!
//! A record is `len: u32 LE | crc32: u32 LE | body[len]`, the CRC taken over the body. A body
//! is either an event (everything needed to publish it again) or a done-marker naming the
//! sequence number of an event Kafka has acknowledged. Done-markers always follow their event,
//! in the same or a later segment, so deleting fully-done segments oldest first never loses
//! a marker whose event still exists.
//!
//! Scanning stops at a torn tail (a crash mid-write: a length past the end of the file, or a
//! checksum that does not match) and reports it; such a record is never replayed as garbage.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Header bytes before each record body.
pub const FRAME_HEADER: usize = 8;
/// Largest body accepted when scanning; anything larger is corruption.
const MAX_BODY: u32 = 128 * 1024 * 1024;

const KIND_EVENT: u8 = 1;
const KIND_DONE: u8 = 2;

/// An event as it will be published again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledEvent {
    /// Position in receive order.
    pub seq: u64,
    /// Arrival time, milliseconds since the Unix epoch.
    pub received_ms: u64,
    pub topic: String,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Event(SpooledEvent),
    /// The event with this sequence number is in Kafka.
    Done(u64),
}

/// Where an event's record starts in its segment, so it can be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
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

/// Decodes a record body whose checksum was already verified.
pub fn decode(body: &[u8]) -> Option<Entry> {
    let mut reader = Reader(body);
    match reader.u8()? {
        KIND_DONE => Some(Entry::Done(reader.u64()?)),
        KIND_EVENT => {
            let seq = reader.u64()?;
            let received_ms = reader.u64()?;
            let topic = reader.string()?;
            let key = match reader.u8()? {
                0 => None,
                _ => Some(reader.string()?),
            };
            let count = reader.u32()?;
            let mut headers = Vec::with_capacity(count.min(64) as usize);
            for _ in 0..count {
                headers.push((reader.string()?, reader.string()?));
            }
            let payload = Bytes::copy_from_slice(reader.bytes()?);
            Some(Entry::Event(SpooledEvent {
                seq,
                received_ms,
                topic,
                key,
                headers,
                payload,
            }))
        }
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The path of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("segment-{id:020}.log"))
}

/// Segment ids present in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix("segment-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// What one segment holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Events with their locations, in file order.
    pub events: Vec<(SpooledEvent, Location)>,
    /// Sequence numbers marked done.
    pub done: Vec<u64>,
    /// Records that could not be read (torn tail, bad checksum, undecodable body).
    pub corrupt: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Reads every intact record of segment `id`; stops at the first damaged one.
pub fn scan(dir: &Path, id: u64) -> io::Result<Scan> {
    let mut data = Vec::new();
    File::open(segment_path(dir, id))?.read_to_end(&mut data)?;
    let mut scan = Scan {
        bytes: data.len() as u64,
        ..Scan::default()
    };
    let mut offset = 0usize;
    while offset < data.len() {
        let Some(header) = data.get(offset..offset + FRAME_HEADER) else {
            scan.corrupt += 1;
            break;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let start = offset + FRAME_HEADER;
        let Some(body) = (len <= MAX_BODY)
            .then(|| data.get(start..start + len as usize))
            .flatten()
        else {
            scan.corrupt += 1;
            break;
        };
        if crc32fast::hash(body) != crc {
            scan.corrupt += 1;
            break;
        }
        match decode(body) {
            Some(Entry::Event(event)) => {
                scan.events.push((
                    event,
                    Location {
                        segment: id,
                        offset: offset as u64,
                        len,
                    },
                ));
            }
            Some(Entry::Done(seq)) => scan.done.push(seq),
            None => scan.corrupt += 1,
        }
        offset = start + len as usize;
    }
    Ok(scan)
}

/// Reads the event at `location` back.
pub fn read_event(dir: &Path, location: Location) -> io::Result<SpooledEvent> {
    use std::os::unix::fs::FileExt;
    let file = File::open(segment_path(dir, location.segment))?;
    let mut frame = vec![0u8; FRAME_HEADER + location.len as usize];
    file.read_exact_at(&mut frame, location.offset)?;
    let body = &frame[FRAME_HEADER..];
    let crc = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
    match (crc32fast::hash(body) == crc)
        .then(|| decode(body))
        .flatten()
    {
        Some(Entry::Event(event)) => Ok(event),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "spooled record damaged since it was written",
        )),
    }
}

/// An open segment being appended to.
pub struct ActiveSegment {
    pub id: u64,
    file: File,
    pub len: u64,
}

impl ActiveSegment {
    /// Creates segment `id` (and makes its directory entry durable).
    pub fn create(dir: &Path, id: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, id))?;
        File::open(dir)?.sync_all()?;
        Ok(Self { id, file, len: 0 })
    }

    /// Appends framed records; returns the offset of the first. Not durable until [`Self::sync`].
    pub fn append(&mut self, frame: &[u8]) -> io::Result<u64> {
        let offset = self.len;
        // On failure part of the frame may be in the file: the caller truncates back to `len`.
        self.file.write_all(frame)?;
        self.len += frame.len() as u64;
        Ok(offset)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts the segment back to `len` bytes, undoing appends whose write or sync failed: a
    /// partial frame left in place would shift every later record and end every later scan.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_data()?;
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fp-relay-journal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn records_round_trip_and_read_back_by_location() {
        let dir = temp_dir();
        let mut segment = ActiveSegment::create(&dir, 7).unwrap();
        for seq in 0..5 {
            segment.append(&encode(&Entry::Event(event(seq)))).unwrap();
        }
        segment.append(&encode(&Entry::Done(3))).unwrap();
        segment.sync().unwrap();
        let scan = scan(&dir, 7).unwrap();
        assert_eq!(scan.events.len(), 5);
        assert_eq!(scan.done, vec![3]);
        assert_eq!(scan.corrupt, 0);
        for (expected, (found, location)) in (0..5).map(event).zip(&scan.events) {
            assert_eq!(&expected, found);
            assert_eq!(read_event(&dir, *location).unwrap(), expected);
        }
        assert_eq!(list_segments(&dir).unwrap(), vec![7]);
    }

    #[test]
    fn a_torn_tail_is_reported_and_everything_before_it_survives() {
        let dir = temp_dir();
        let mut segment = ActiveSegment::create(&dir, 1).unwrap();
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
        let scan = scan(&dir, 1).unwrap();
        assert_eq!(scan.events.len(), 2);
        assert_eq!(scan.corrupt, 1);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = temp_dir();
        let mut segment = ActiveSegment::create(&dir, 1).unwrap();
        segment.append(&encode(&Entry::Event(event(0)))).unwrap();
        drop(segment);
        let path = segment_path(&dir, 1);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0x40;
        std::fs::write(&path, data).unwrap();
        let scan = scan(&dir, 1).unwrap();
        assert!(scan.events.is_empty());
        assert_eq!(scan.corrupt, 1);
    }

    #[test]
    fn a_partial_frame_cut_back_leaves_a_segment_that_scans_whole() {
        let dir = std::env::temp_dir().join(format!("fp-relay-journal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut segment = ActiveSegment::create(&dir, 0).unwrap();
        segment.append(&encode(&Entry::Event(event(0)))).unwrap();
        let good = segment.len;
        // What a failed write leaves: half a frame, the recorded length not advanced.
        let frame = encode(&Entry::Event(event(1)));
        segment.file.write_all(&frame[..frame.len() / 2]).unwrap();
        segment.truncate(good).unwrap();
        segment.append(&encode(&Entry::Event(event(2)))).unwrap();
        segment.sync().unwrap();
        let scan = scan(&dir, 0).unwrap();
        assert_eq!(scan.corrupt, 0);
        let seqs: Vec<u64> = scan.events.iter().map(|(e, _)| e.seq).collect();
        assert_eq!(seqs, vec![0, 2], "the record after the failure is found");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
