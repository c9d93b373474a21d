//! The spool's on-disk format: append-only segment files of checksummed records.
//!
//! A record is `len: u32 LE | crc32: u32 LE | body[len]`, the CRC taken over the body. A body
//! is either an event (everything needed to publish it again) or a done-marker naming the
//! sequence number of an event Kafka has acknowledged. Done-markers always follow their event,
//! in the same or a later segment, so deleting fully-done segments oldest first never loses
//! a marker whose event still exists.
//!
//! A damaged record (a torn tail after a crash mid-write, a flipped byte, a length past the end
//! of the file) is reported and never replayed as garbage; the scan then looks for the next
//! intact frame, so damage in the middle of a segment costs only the damaged record, not every
//! record after it. The scan streams: its memory is one frame, whatever the spool's size.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::fault::{Faults, Op};

/// Header bytes before each record body.
pub const FRAME_HEADER: usize = 8;
/// Largest body accepted when scanning; anything larger is corruption.
const MAX_BODY: u32 = 128 * 1024 * 1024;
/// Smallest body: a done-marker (kind and sequence number).
const MIN_BODY: u32 = 9;

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
    Some(match parse(body)? {
        Parsed::Done(seq) => Entry::Done(seq),
        Parsed::Event(event) => Entry::Event(event.to_owned()),
    })
}

/// A record body checked whole, its strings borrowed from it: the start-up scan needs only the
/// sequence number and time, and must not copy every payload into memory to learn them.
enum Parsed<'a> {
    Event(ParsedEvent<'a>),
    Done(u64),
}

struct ParsedEvent<'a> {
    seq: u64,
    received_ms: u64,
    topic: &'a str,
    key: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    payload: &'a [u8],
}

impl ParsedEvent<'_> {
    fn to_owned(&self) -> SpooledEvent {
        SpooledEvent {
            seq: self.seq,
            received_ms: self.received_ms,
            topic: self.topic.to_owned(),
            key: self.key.map(str::to_owned),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

/// The record whose frame header is `header` and body `body`, if the checksum matches and the
/// body decodes: the one test of "intact" the scan, its resync and replay share.
fn verified<'b>(header: &[u8], body: &'b [u8]) -> Option<Parsed<'b>> {
    let crc = u32::from_le_bytes(header.get(4..FRAME_HEADER)?.try_into().ok()?);
    (crc32fast::hash(body) == crc)
        .then(|| parse(body))
        .flatten()
}

fn parse(body: &[u8]) -> Option<Parsed<'_>> {
    let mut reader = Reader(body);
    let parsed = match reader.u8()? {
        KIND_DONE => Parsed::Done(reader.u64()?),
        KIND_EVENT => {
            let seq = reader.u64()?;
            let received_ms = reader.u64()?;
            let topic = reader.str()?;
            let key = match reader.u8()? {
                0 => None,
                _ => Some(reader.str()?),
            };
            let count = reader.u32()?;
            let mut headers = Vec::with_capacity(count.min(64) as usize);
            for _ in 0..count {
                headers.push((reader.str()?, reader.str()?));
            }
            let payload = reader.bytes()?;
            Parsed::Event(ParsedEvent {
                seq,
                received_ms,
                topic,
                key,
                headers,
                payload,
            })
        }
        _ => return None,
    };
    reader.0.is_empty().then_some(parsed)
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
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
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

/// A record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// An event: where it is and when it arrived, never its payload.
    Event {
        seq: u64,
        received_ms: u64,
        location: Location,
    },
    /// The event with this sequence number is in Kafka.
    Done(u64),
}

/// What a scan of one segment saw besides its records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Damaged stretches skipped (torn tail, bad checksum, undecodable body).
    pub corrupt: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Read buffer of the scan: the scan's memory is this plus the largest frame.
const SCAN_BUFFER: usize = 256 * 1024;

/// Calls `each` for every intact record of segment `id`, in file order. A damaged record is
/// counted and skipped: the scan resumes at the next intact frame after it.
pub fn scan(dir: &Path, id: u64, faults: &Faults, mut each: impl FnMut(Found)) -> io::Result<Scan> {
    faults.check(Op::Open)?;
    let file = File::open(segment_path(dir, id))?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, &file);
    let mut scan = Scan {
        bytes: file_len,
        ..Scan::default()
    };
    let mut body = Vec::new();
    let mut offset = 0u64;
    while offset < file_len {
        faults.check(Op::Read)?;
        match next_frame(&mut reader, offset, file_len, &mut body)? {
            Some(found) => {
                let len = u32::try_from(body.len()).expect("at most MAX_BODY");
                each(locate(found, id, offset, len));
                offset += FRAME_HEADER as u64 + u64::from(len);
            }
            None => {
                scan.corrupt += 1;
                match resync(&file, offset + 1, file_len, faults)? {
                    Some(next) => {
                        reader.seek(SeekFrom::Start(next))?;
                        offset = next;
                    }
                    None => break,
                }
            }
        }
    }
    Ok(scan)
}

/// What a frame said, before its location is known.
enum Frame {
    Event { seq: u64, received_ms: u64 },
    Done(u64),
}

fn locate(frame: Frame, segment: u64, offset: u64, len: u32) -> Found {
    match frame {
        Frame::Done(seq) => Found::Done(seq),
        Frame::Event { seq, received_ms } => Found::Event {
            seq,
            received_ms,
            location: Location {
                segment,
                offset,
                len,
            },
        },
    }
}

/// Reads the frame at the reader's position (`offset`) into `body`; `None` when it is damaged.
fn next_frame(
    reader: &mut impl Read,
    offset: u64,
    file_len: u64,
    body: &mut Vec<u8>,
) -> io::Result<Option<Frame>> {
    let mut header = [0u8; FRAME_HEADER];
    let Some(len) = plausible_len(offset, file_len, header_or_short(reader, &mut header)?) else {
        return Ok(None);
    };
    body.resize(len as usize, 0);
    reader.read_exact(body)?;
    Ok(verified(&header, body).map(|parsed| match parsed {
        Parsed::Done(seq) => Frame::Done(seq),
        Parsed::Event(event) => Frame::Event {
            seq: event.seq,
            received_ms: event.received_ms,
        },
    }))
}

/// Fills `header`; an empty slice when the file ends first (a torn header).
fn header_or_short<'h>(
    reader: &mut impl Read,
    header: &'h mut [u8; FRAME_HEADER],
) -> io::Result<&'h [u8]> {
    match reader.read_exact(header) {
        Ok(()) => Ok(&header[..]),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(&[]),
        Err(error) => Err(error),
    }
}

/// The body length a header at `offset` announces, if the frame can fit in the file.
fn plausible_len(offset: u64, file_len: u64, header: &[u8]) -> Option<u32> {
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?);
    let end = offset + FRAME_HEADER as u64 + u64::from(len);
    ((MIN_BODY..=MAX_BODY).contains(&len) && end <= file_len).then_some(len)
}

/// The offset of the first intact frame at or after `from`, if any. Candidates are filtered
/// on what a header must look like (a length that fits, a known kind) before their checksum is
/// taken, so a long damaged stretch of JSON text costs little.
fn resync(file: &File, from: u64, file_len: u64, faults: &Faults) -> io::Result<Option<u64>> {
    const WINDOW: usize = 64 * 1024;
    let mut buffer = vec![0u8; WINDOW + FRAME_HEADER];
    let mut start = from;
    while start + (FRAME_HEADER as u64) < file_len {
        faults.check(Op::Read)?;
        let want = buffer.len().min((file_len - start) as usize);
        file.read_exact_at(&mut buffer[..want], start)?;
        let window = &buffer[..want];
        let candidates = want.saturating_sub(FRAME_HEADER).max(1);
        for at in 0..candidates {
            let offset = start + at as u64;
            let header = window.get(at..at + FRAME_HEADER).unwrap_or(&[]);
            let Some(len) = plausible_len(offset, file_len, header) else {
                continue;
            };
            if window
                .get(at + FRAME_HEADER)
                .is_some_and(|k| *k != KIND_EVENT && *k != KIND_DONE)
            {
                continue;
            }
            let frame = read_frame(file, offset, len);
            if frame.is_ok_and(|f| verified(&f[..FRAME_HEADER], &f[FRAME_HEADER..]).is_some()) {
                return Ok(Some(offset));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}

/// Reads and checks the whole frame at `offset` whose body is `len` bytes.
fn read_frame(file: &File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; FRAME_HEADER + len as usize];
    file.read_exact_at(&mut frame, offset)?;
    Ok(frame)
}

/// Whether a read error means the record itself is damaged (it will never read back), as
/// opposed to the system failing the read (descriptors, memory, a disk error), which is retried.
pub fn is_damage(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Reads events back from disk, opening each segment once; one result per location, in order.
/// Stops after the first error that is not [damage](is_damage): what follows it is not read.
pub fn read_events(
    dir: &Path,
    locations: &[Location],
    faults: &Faults,
) -> Vec<io::Result<SpooledEvent>> {
    let mut open: Option<(u64, File)> = None;
    let mut results = Vec::with_capacity(locations.len());
    for location in locations {
        let result = (|| {
            if open.as_ref().is_none_or(|(id, _)| *id != location.segment) {
                faults.check(Op::Open)?;
                open = Some((
                    location.segment,
                    File::open(segment_path(dir, location.segment))?,
                ));
            }
            faults.check(Op::Read)?;
            let (_, file) = open.as_ref().expect("opened above");
            let frame = read_frame(file, location.offset, location.len)?;
            match verified(&frame[..FRAME_HEADER], &frame[FRAME_HEADER..]) {
                Some(Parsed::Event(event)) => Ok(event.to_owned()),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "spooled record damaged since it was written",
                )),
            }
        })();
        let stop = result.as_ref().is_err_and(|e| !is_damage(e));
        results.push(result);
        if stop {
            break;
        }
    }
    results
}

/// An open segment being appended to.
pub struct ActiveSegment {
    pub id: u64,
    file: File,
    pub len: u64,
    faults: Faults,
}

impl ActiveSegment {
    /// Creates segment `id` (and makes its directory entry durable).
    pub fn create(dir: &Path, id: u64, faults: &Faults) -> io::Result<Self> {
        faults.check(Op::Open)?;
        let file = private(OpenOptions::new().create_new(true).append(true))
            .open(segment_path(dir, id))?;
        sync_dir(dir, faults)?;
        Ok(Self {
            id,
            file,
            len: 0,
            faults: faults.clone(),
        })
    }

    /// Appends framed records; returns the offset of the first. Not durable until [`Self::sync`].
    pub fn append(&mut self, frame: &[u8]) -> io::Result<u64> {
        let offset = self.len;
        if let Err(error) = self.faults.check(Op::Write) {
            // What a short write followed by an error leaves: part of the frame.
            self.file.write_all(&frame[..frame.len() / 2])?;
            return Err(error);
        }
        // On failure part of the frame may be in the file: the caller truncates back to `len`.
        self.file.write_all(frame)?;
        self.len += frame.len() as u64;
        Ok(offset)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.faults.check(Op::Fsync)?;
        self.file.sync_data()
    }

    /// Cuts the segment back to `len` bytes, undoing appends whose write or sync failed: a
    /// partial frame left in place would shift every later record and end every later scan.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.faults.check(Op::Write)?;
        self.file.set_len(len)?;
        self.sync()?;
        self.len = len;
        Ok(())
    }
}

/// Makes the directory's entries (a new or deleted segment) durable.
pub fn sync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    faults.check(Op::Open)?;
    let dir = File::open(dir)?;
    faults.check(Op::Fsync)?;
    dir.sync_all()
}

/// Options for a spool file: readable by the relay's user only (segments hold payloads with
/// personal data), and never through a symbolic link (a link planted in the spool directory
/// must not redirect a write elsewhere).
pub fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW)
}

/// Creates the spool directory (and its parents) if missing, with only its owner allowed in.
/// A directory that exists is left as it is: a mounted volume's root belongs to root with the
/// pod's fsGroup, and the files in it are private anyway.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Appends `frame` to the file at `path` (created if missing) and makes it durable.
pub fn append_durably(path: &Path, frame: &[u8], faults: &Faults) -> io::Result<()> {
    faults.check(Op::Open)?;
    let mut file = private(OpenOptions::new().create(true).append(true)).open(path)?;
    faults.check(Op::Write)?;
    file.write_all(frame)?;
    faults.check(Op::Fsync)?;
    file.sync_data()
}

/// Deletes segment `id`.
pub fn remove_segment(dir: &Path, id: u64, faults: &Faults) -> io::Result<()> {
    faults.check(Op::Unlink)?;
    std::fs::remove_file(segment_path(dir, id))
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
}
