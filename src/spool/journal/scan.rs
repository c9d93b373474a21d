//! Reading segments back: listing them, the scan (streaming, resyncing past damage), and
//! reads of single records.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    verified, Location, Parsed, SpooledEvent, FRAME_HEADER, KIND_DONE, KIND_EVENT, MAX_BODY,
    MIN_BODY,
};
use crate::spool::fault::{Faults, Op};

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
pub fn scan(dir: &Path, id: u64, faults: &Faults, each: impl FnMut(Found)) -> io::Result<Scan> {
    scan_file(&segment_path(dir, id), id, faults, each)
}

/// [`scan`] of any file in the journal's format (quarantine.log); locations name `id`.
pub fn scan_file(
    path: &Path,
    id: u64,
    faults: &Faults,
    mut each: impl FnMut(Found),
) -> io::Result<Scan> {
    faults.check(Op::Open)?;
    let file = File::open(path)?;
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

/// Reads the event at `location` of the journal-format file at `path` (quarantine.log).
pub fn read_event_at(path: &Path, location: Location) -> io::Result<SpooledEvent> {
    let frame = read_frame(&File::open(path)?, location.offset, location.len)?;
    match verified(&frame[..FRAME_HEADER], &frame[FRAME_HEADER..]) {
        Some(Parsed::Event(event)) => Ok(event.to_owned()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record damaged since it was written",
        )),
    }
}
