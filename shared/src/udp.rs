//! The UDP socket under every QUIC endpoint: quinn's own, with GSO batches cut to what Linux
//! accepts in one send.
//!
//! quinn hands the socket up to 10 datagrams of the path MTU as one GSO send (`sendmsg` with a
//! `UDP_SEGMENT` size). Linux refuses a UDP send of more than 65,507 bytes with EMSGSIZE, and
//! quinn-udp drops such a send silently: it expects that error only from MTU probes. So with
//! quinn's socket alone, any path MTU above 6,550 bytes loses whole batches, the losses look
//! like congestion and then like an MTU black hole, and the path falls back to 1,200 bytes.
//! That capped every path at 6,550 bytes, and QUIC's cost is per packet (an AEAD open, a
//! header, loss and ACK tracking): on loopback, 16 KB datagrams cut the CPU of a 4-source
//! download by about a tenth (README, Performance).
//!
//! [`SplitSends`] sends a batch that is too big as several sends of whole datagrams. Paths with
//! datagrams small enough (the internet's 1,452 bytes, jumbo frames' 9,000) keep their batches
//! of 10 in one send, as before.
//!
//! What this module must never do: reorder, merge or cut a datagram; every datagram leaves
//! whole, in the order quinn gave them.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The largest UDP payload Linux sends in one `sendmsg` over IPv4 (65,535 minus the IPv4 and
/// UDP headers); IPv6 allows 20 bytes more, and one bound for both is simpler.
const MAX_SEND: usize = 65_507;

/// quinn's socket, with batches bigger than [`MAX_SEND`] sent in pieces.
#[derive(Debug)]
pub(crate) struct SplitSends {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitSends {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<Self> {
        Arc::new(Self { inner })
    }
}

impl AsyncUdpSocket for SplitSends {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    /// Sends `transmit` as sends of at most [`MAX_SEND`] bytes, each a whole number of its
    /// datagrams.
    ///
    /// If the first send would block, nothing left and quinn retries the whole batch later, as
    /// with its own socket. If a later one fails, the datagrams not sent are dropped and
    /// `Ok` is returned: quinn must not resend the ones that did leave, and a dropped datagram
    /// is what UDP may always do, so QUIC's loss recovery resends them.
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(size) = transmit.segment_size.filter(|&s| s > 0 && transmit.contents.len() > MAX_SEND)
        else {
            return self.inner.try_send(transmit);
        };
        let per_send = (MAX_SEND / size).max(1) * size;
        for (i, contents) in transmit.contents.chunks(per_send).enumerate() {
            let piece = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size: Some(size),
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&piece) {
                Ok(()) => {}
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "dropped the rest of a split GSO batch");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// One send as the socket saw it: its bytes and its segment size.
    type Sent = (Vec<u8>, Option<usize>);

    /// Records every send; fails (would block) the attempts numbered in `fail`, from 1.
    #[derive(Debug, Default)]
    struct Recorder {
        sends: Mutex<Vec<Sent>>,
        fail: Vec<usize>,
        attempts: Mutex<usize>,
    }

    impl AsyncUdpSocket for Recorder {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            unreachable!("not polled in these tests")
        }
        fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
            let mut attempts = self.attempts.lock().unwrap();
            *attempts += 1;
            if self.fail.contains(&*attempts) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.sends.lock().unwrap().push((transmit.contents.to_vec(), transmit.segment_size));
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context,
            _: &mut [IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(([127, 0, 0, 1], 1).into())
        }
    }

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit { destination: ([127, 0, 0, 1], 2).into(), ecn: None, contents, segment_size, src_ip: None }
    }

    /// Ten datagrams of `size` bytes (the last one shorter), each filled with its index.
    fn batch(size: usize) -> Vec<u8> {
        (0..10u8).flat_map(|i| std::iter::repeat_n(i, if i == 9 { size / 2 } else { size })).collect()
    }

    fn split(fail: Vec<usize>, contents: &[u8], size: usize) -> (io::Result<()>, Vec<Sent>) {
        let recorder = Arc::new(Recorder { fail, ..Recorder::default() });
        let socket = SplitSends::new(recorder.clone());
        let result = socket.try_send(&transmit(contents, Some(size)));
        let sends = recorder.sends.lock().unwrap().clone();
        (result, sends)
    }

    #[test]
    fn a_batch_over_the_send_limit_leaves_as_whole_datagrams_in_order() {
        let size = 16_376;
        let contents = batch(size);
        let (result, sends) = split(vec![], &contents, size);
        result.unwrap();
        // 9.5 datagrams: four per send (65,504 bytes), so 4 + 4 + 1.5.
        let lens: Vec<usize> = sends.iter().map(|(c, _)| c.len()).collect();
        assert_eq!(lens, [4 * size, 4 * size, size + size / 2]);
        assert!(sends.iter().all(|(c, s)| c.len() <= MAX_SEND && *s == Some(size)));
        let rejoined: Vec<u8> = sends.into_iter().flat_map(|(c, _)| c).collect();
        assert_eq!(rejoined, contents);
    }

    #[test]
    fn batches_within_the_limit_and_single_datagrams_pass_unchanged() {
        let contents = batch(1_452);
        let (result, sends) = split(vec![], &contents, 1_452);
        result.unwrap();
        assert_eq!(sends, [(contents.clone(), Some(1_452))]);

        let recorder = Arc::new(Recorder::default());
        let socket = SplitSends::new(recorder.clone());
        let one = vec![7u8; 60_000];
        socket.try_send(&transmit(&one, None)).unwrap();
        assert_eq!(*recorder.sends.lock().unwrap(), [(one, None)]);
    }

    #[test]
    fn a_blocked_first_send_is_retried_whole_and_a_later_one_drops_the_rest() {
        let size = 16_376;
        let contents = batch(size);
        let (result, sends) = split(vec![1], &contents, size);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(sends.is_empty());

        // The second send fails: what left must not be sent again, so the call succeeds.
        let (result, sends) = split(vec![2], &contents, size);
        result.unwrap();
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].0, contents[..4 * size]);
    }

    #[test]
    fn datagrams_bigger_than_the_limit_still_go_one_per_send() {
        // Never produced by quinn (our MTU bound is far below), but must not loop or cut.
        let contents = vec![1u8; 2 * 70_000];
        let (result, sends) = split(vec![], &contents, 70_000);
        result.unwrap();
        let lens: Vec<usize> = sends.iter().map(|(c, _)| c.len()).collect();
        assert_eq!(lens, [70_000, 70_000]);
    }
}
