//! Request bodies: read into one buffer within `http.max_body_bytes`, counted against the
//! memory budget (`http.max_buffered_body_bytes`) as their bytes arrive, and drained for a
//! while after an early refusal so that the client reads the answer.
//!
//! Why by bytes received: reserving a body's declared length up front let clients that
//! announce large bodies and send a byte a second hold the whole budget with almost nothing
//! sent. Why a share: bodies whose signature can only be checked once they are read (v2's
//! `X-Webhook-Signature`) may use at most half of the budget, so a request whose credential was
//! accepted from its head (a v1 path token, which FirstPromoter never re-sends) always finds
//! room; and the bodies of one client address at most an eighth of that half, so a few slow
//! senders announcing any signature cannot keep FirstPromoter's real deliveries at 503. Why one buffer: keeping each received chunk as its own allocation cost about 40 bytes
//! of memory per body byte for 1-byte chunks.

use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::RelayError;

/// Longest a refused request's body is drained after the answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Most bytes drained from a refused request's body.
pub const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// The most a body not yet authenticated is given before its bytes arrive; it grows as they do.
const UNVERIFIED_INITIAL_CAPACITY: usize = 16 * 1024;

/// Part of the unverified share one client address may hold: an eighth.
const SOURCE_SHARE_DIVISOR: usize = 8;

/// The memory budget for request bodies, in bytes.
#[derive(Debug)]
pub struct BodyBudget {
    /// Every body counts here.
    total: Semaphore,
    /// Bodies not yet authenticated count here too: at most half of the total.
    unverified: Semaphore,
    /// Unverified bytes held per client address, each at most `source_share`.
    sources: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    source_share: usize,
}

/// A body's bytes in the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct BodyPermit<'a> {
    total: Option<SemaphorePermit<'a>>,
    unverified: Option<SemaphorePermit<'a>>,
    /// Unverified bytes counted against this client address.
    source: Option<(&'a BodyBudget, IpAddr, usize)>,
}

impl BodyPermit<'_> {
    /// The body is authenticated: it no longer counts against the unverified share.
    pub fn verified(&mut self) {
        self.unverified = None;
        self.release_source();
    }

    fn release_source(&mut self) {
        if let Some((budget, ip, bytes)) = self.source.take() {
            let mut sources = budget.sources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = sources.get_mut(&ip) {
                *held = held.saturating_sub(bytes);
                if *held == 0 {
                    sources.remove(&ip);
                }
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.total.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for BodyPermit<'_> {
    fn drop(&mut self) {
        self.release_source();
    }
}

impl BodyBudget {
    /// A budget of `bytes`, half of it open to bodies not yet authenticated.
    pub fn new(bytes: u64) -> Self {
        let total = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            total: Semaphore::new(total),
            unverified: Semaphore::new(total / 2),
            sources: std::sync::Mutex::new(std::collections::HashMap::new()),
            source_share: total / 2 / SOURCE_SHARE_DIVISOR,
        }
    }

    /// Takes `bytes` more for `permit` (and from the unverified share when `unverified`, and
    /// from `source`'s part of it); false when the budget is spent right now.
    fn take<'a>(
        &'a self,
        permit: &mut BodyPermit<'a>,
        bytes: usize,
        unverified: bool,
        source: Option<IpAddr>,
    ) -> bool {
        let Ok(count) = u32::try_from(bytes) else {
            return false;
        };
        if count == 0 {
            return true;
        }
        if let (true, Some(ip)) = (unverified, source) {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let held = sources.entry(ip).or_insert(0);
            if *held + bytes > self.source_share {
                if *held == 0 {
                    sources.remove(&ip);
                }
                return false;
            }
            *held += bytes;
            drop(sources);
            let counted = permit.source.get_or_insert((self, ip, 0));
            counted.2 += bytes;
        }
        let share = if unverified {
            match self.unverified.try_acquire_many(count) {
                Ok(share) => Some(share),
                Err(_) => return false,
            }
        } else {
            None
        };
        let Ok(total) = self.total.try_acquire_many(count) else {
            return false;
        };
        merge(&mut permit.total, total);
        if let Some(share) = share {
            merge(&mut permit.unverified, share);
        }
        true
    }

    /// Bytes free for a request authenticated from its head, and for one that is not.
    pub fn available(&self) -> (usize, usize) {
        (
            self.total.available_permits(),
            self.unverified
                .available_permits()
                .min(self.total.available_permits()),
        )
    }
}

fn merge<'a>(held: &mut Option<SemaphorePermit<'a>>, more: SemaphorePermit<'a>) {
    match held {
        Some(held) => held.merge(more),
        None => *held = Some(more),
    }
}

/// The `Content-Length` the client declared, if any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// What went wrong reading a body, with the body when it can still be drained.
pub struct Unread<B> {
    pub error: RelayError,
    pub body: Option<B>,
}

/// Reads the whole body into one buffer (sized from the declared length once the credential
/// is checked, from at most [`UNVERIFIED_INITIAL_CAPACITY`] before), never more than
/// `limit` bytes: a declared length over the limit is refused before a byte is read, an
/// undeclared one as soon as it crosses the limit. Every chunk is counted in `budget` as it
/// arrives (`unverified`: also in the share for bodies not yet authenticated, and in the part
/// of it the client address `source` may hold); a chunk that does not fit is `Busy`.
pub async fn read<'a, B>(
    budget: &'a BodyBudget,
    mut body: B,
    declared: Option<u64>,
    limit: usize,
    unverified: bool,
    source: Option<IpAddr>,
) -> Result<(Bytes, BodyPermit<'a>), Unread<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = RelayError::PayloadTooLarge { limit };
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Unread {
            error: too_large,
            body: Some(body),
        });
    }
    // A body whose credential is still to be checked (a signature over it) gets a small
    // buffer that grows as bytes arrive: sizing it from the declared length let unauthenticated
    // connections announcing 960 KiB each reserve memory for bytes they never sent.
    let capacity = initial_capacity(declared, unverified);
    let mut buffer = BytesMut::with_capacity(capacity);
    let mut permit = BodyPermit::default();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Err(Unread {
                    error: RelayError::BodyRead(error.into().to_string()),
                    body: None,
                })
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let error = if buffer.len() + data.len() > limit {
            Some(RelayError::PayloadTooLarge { limit })
        } else if !budget.take(&mut permit, data.len(), unverified, source) {
            Some(RelayError::Busy)
        } else {
            None
        };
        if let Some(error) = error {
            return Err(Unread {
                error,
                body: Some(body),
            });
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), permit))
}

/// The buffer a body starts with: its declared length once its credential is checked; before,
/// at most [`UNVERIFIED_INITIAL_CAPACITY`], growing as bytes arrive (sizing it from the declared
/// length let unauthenticated connections announcing 960 KiB each reserve memory for bytes
/// they never sent).
fn initial_capacity(declared: Option<u64>, unverified: bool) -> usize {
    let declared = declared.map_or(0, |length| usize::try_from(length).unwrap_or(usize::MAX));
    if unverified {
        declared.min(UNVERIFIED_INITIAL_CAPACITY)
    } else {
        declared
    }
}

/// Reads and discards what is left of a refused request's body, up to [`LINGER_BYTES`] and
/// [`LINGER_TIME`], on a task of its own: the answer goes out meanwhile, and a client that
/// writes its whole body before reading (Python's http.client, many SDKs) reads it instead of
/// a connection reset. nginx's lingering close does the same.
pub fn linger<B>(body: B)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let drain = async move {
            let mut body = body;
            let mut drained = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                drained += frame.data_ref().map_or(0, Bytes::len);
                if drained > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::Full;
    use hyper::body::Frame;

    /// A body that arrives in the given chunks.
    struct Chunks(VecDeque<&'static [u8]>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
            )
        }
    }

    fn chunks(parts: Vec<&'static [u8]>) -> Chunks {
        Chunks(parts.into())
    }

    #[test]
    fn a_body_not_yet_authenticated_is_not_sized_from_its_declared_length() {
        assert_eq!(initial_capacity(Some(960 * 1024), true), 16 * 1024);
        assert_eq!(initial_capacity(Some(100), true), 100);
        assert_eq!(initial_capacity(Some(960 * 1024), false), 960 * 1024);
        assert_eq!(initial_capacity(None, false), 0);
    }

    #[tokio::test]
    async fn bytes_are_counted_as_they_arrive_and_given_back_on_drop() {
        let budget = BodyBudget::new(100);
        let (body, permit) = read(&budget, chunks(vec![b"ab", b"cde"]), None, 50, false, None)
            .await
            .ok()
            .unwrap();
        assert_eq!(&body[..], b"abcde");
        assert_eq!(permit.bytes(), 5);
        assert_eq!(budget.available(), (95, 50));
        drop(permit);
        assert_eq!(budget.available(), (100, 50));
    }

    #[tokio::test]
    async fn unverified_bodies_use_at_most_half_and_leave_the_rest_to_verified_ones() {
        let budget = BodyBudget::new(100);
        let big: &'static [u8] = &[b'x'; 40];
        let (_, mut first) = read(
            &budget,
            Full::new(Bytes::from_static(big)),
            Some(40),
            60,
            true,
            None,
        )
        .await
        .ok()
        .unwrap();
        let refused = read(
            &budget,
            Full::new(Bytes::from_static(big)),
            Some(40),
            60,
            true,
            None,
        )
        .await;
        assert!(matches!(
            refused,
            Err(Unread {
                error: RelayError::Busy,
                body: Some(_)
            })
        ));
        let verified = read(
            &budget,
            Full::new(Bytes::from_static(big)),
            Some(40),
            60,
            false,
            None,
        )
        .await;
        assert!(verified.is_ok(), "a head-authenticated body still fits");
        first.verified();
        assert_eq!(budget.available().1, 20, "the share is back once verified");
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_with_the_body_kept_for_draining() {
        let budget = BodyBudget::new(100);
        let declared = read(&budget, chunks(vec![b"x"]), Some(11), 10, false, None).await;
        assert!(matches!(
            declared,
            Err(Unread {
                error: RelayError::PayloadTooLarge { .. },
                body: Some(_)
            })
        ));
        let streamed = read(
            &budget,
            chunks(vec![b"123456", b"7890", b"!"]),
            None,
            10,
            false,
            None,
        )
        .await;
        assert!(matches!(
            streamed,
            Err(Unread {
                error: RelayError::PayloadTooLarge { .. },
                body: Some(_)
            })
        ));
        assert_eq!(
            budget.available(),
            (100, 50),
            "nothing held after a refusal"
        );
    }

    #[tokio::test]
    async fn one_address_holds_at_most_an_eighth_of_the_unverified_share() {
        // 1,600 bytes: 800 unverified, 100 per address.
        let budget = BodyBudget::new(1600);
        let slow: IpAddr = "198.51.100.9".parse().unwrap();
        let other: IpAddr = "203.0.113.7".parse().unwrap();
        let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n]));
        let (_, held) = read(&budget, body(80), Some(80), 1000, true, Some(slow))
            .await
            .ok()
            .unwrap();
        let refused = read(&budget, body(40), Some(40), 1000, true, Some(slow)).await;
        assert!(matches!(
            refused,
            Err(Unread {
                error: RelayError::Busy,
                ..
            })
        ));
        // Another address, and a body verified from its head, are unaffected.
        assert!(read(&budget, body(90), Some(90), 1000, true, Some(other))
            .await
            .is_ok());
        assert!(read(&budget, body(400), Some(400), 1000, false, Some(slow))
            .await
            .is_ok());
        // Verified or dropped, the address's part is free again.
        let mut held = held;
        held.verified();
        assert!(read(&budget, body(90), Some(90), 1000, true, Some(slow))
            .await
            .is_ok());
        drop(held);
        assert!(budget.sources.lock().unwrap().is_empty());
    }
}
