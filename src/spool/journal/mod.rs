//! The spool's old on-disk format (fp-relay before the spool moved to SQLite), kept to read a
//! spool directory written by it once, at the first start of a newer relay (see
//! [`crate::spool::upgrade`]): append-only segment files of checksummed records.
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

//!
//! Layout: this file (the record format), [`scan`] (reading segments back: the scan, its
//! resync past damage, single records).

mod scan;

pub use scan::*;

use bytes::Bytes;

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

/// Where an event's record starts in its segment, so it can be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
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

#[cfg(test)]
mod tests;
