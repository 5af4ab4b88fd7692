//! Reading ahead of rustls.
//!
//! rustls asks its transport for at most 4 KiB at a time, so every full 16 KiB TLS record costs
//! four recv(2) calls, and each can make the kernel send a window update (on loopback, the peer's
//! pending segments are then pushed in our context too). During a bulk transfer [`ReadAhead`]
//! reads up to [`CAPACITY`] per call and serves rustls from memory.
//!
//! Small exchanges (API calls, SSE events) pay nothing: reads go straight to the caller until one
//! fills the caller's buffer, the sign that more is waiting in the socket. The buffer is released
//! as soon as the socket runs dry, so an idle connection holds no read-ahead memory.
use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per call during a burst.
pub const CAPACITY: usize = 64 * 1024;

/// A transport that reads ahead in bursts; writes pass straight through.
pub struct ReadAhead<S> {
    inner: S,
    /// Empty unless a burst is under way.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket and not yet handed on.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.end - self.pos
    }

    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.end - self.pos);
        out.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.end {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        let want = out.remaining();
        if this.buf.is_empty() || want >= CAPACITY {
            // Not in a burst (or the caller reads big on its own): straight into its buffer.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            if want > 0 && want < CAPACITY && out.filled().len() - before == want {
                // The caller's buffer was filled: more is likely waiting. Read ahead from now on.
                this.buf = vec![0; CAPACITY];
            }
            return Poll::Ready(Ok(()));
        }
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
            Poll::Pending => {
                // The burst is over; an idle connection keeps no buffer.
                this.buf = Vec::new();
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                (this.pos, this.end) = (0, ahead.filled().len());
                this.hand_out(out);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A transport that has `script` to give: each entry is either some bytes available at once
    /// (a read returns as many as fit) or a pause (one Pending). Counts the reads it served.
    struct Scripted {
        script: VecDeque<Option<Vec<u8>>>,
        reads: usize,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            match this.script.front_mut() {
                None => Poll::Ready(Ok(())),
                Some(None) => {
                    this.script.pop_front();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(bytes)) => {
                    this.reads += 1;
                    let n = out.remaining().min(bytes.len());
                    out.put_slice(&bytes[..n]);
                    bytes.drain(..n);
                    if bytes.is_empty() {
                        this.script.pop_front();
                    }
                    Poll::Ready(Ok(()))
                }
            }
        }
    }

    /// Reads everything the way rustls does (4 KiB at a time); returns the bytes and the number
    /// of reads the transport served.
    async fn read_all(script: Vec<Option<Vec<u8>>>) -> (Vec<u8>, usize, usize) {
        let mut r = ReadAhead::new(Scripted {
            script: script.into(),
            reads: 0,
        });
        let (mut got, mut calls) = (Vec::new(), 0);
        loop {
            let mut chunk = [0u8; 4096];
            let n = r.read(&mut chunk).await.unwrap();
            calls += 1;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(r.buffered(), 0);
        (got, r.get_ref().reads, calls)
    }

    #[tokio::test]
    async fn a_burst_is_read_in_large_pieces() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (got, reads, calls) = read_all(vec![Some(data.clone())]).await;
        assert_eq!(got, data);
        // One 4 KiB read reveals the burst, then 64 KiB per read.
        assert_eq!(reads, 1 + (data.len() - 4096).div_ceil(CAPACITY));
        assert!(
            calls > 240,
            "the caller still reads 4 KiB at a time ({calls} calls)"
        );
    }

    #[tokio::test]
    async fn small_exchanges_read_straight_through_and_keep_no_buffer() {
        let mut r = ReadAhead::new(Scripted {
            script: vec![
                Some(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
                None,
                Some(b"next".to_vec()),
            ]
            .into(),
            reads: 0,
        });
        let mut chunk = [0u8; 4096];
        assert_eq!(r.read(&mut chunk).await.unwrap(), 18);
        assert!(r.buf.is_empty(), "a short read starts no burst");
        assert_eq!(r.read(&mut chunk).await.unwrap(), 4);
        assert!(r.buf.is_empty());
    }

    #[tokio::test]
    async fn the_buffer_is_released_when_the_socket_runs_dry() {
        let mut r = ReadAhead::new(Scripted {
            script: vec![Some(vec![1; 10_000]), None, Some(vec![2; 10])].into(),
            reads: 0,
        });
        let mut got = Vec::new();
        while got.len() < 10_010 {
            let mut chunk = [0u8; 4096];
            let n = r.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            if got.len() == 10_000 {
                assert!(!r.buf.is_empty(), "a burst keeps its buffer while it lasts");
            }
        }
        assert!(r.buf.is_empty(), "the pause released the buffer");
        assert_eq!(got, [vec![1; 10_000], vec![2; 10]].concat());
    }

    proptest! {
        /// Whatever the pieces, pauses and sizes, the bytes come out unchanged and in order.
        #[test]
        fn bytes_come_out_unchanged(pieces in proptest::collection::vec((1usize..200_000, any::<bool>(), any::<u8>()), 0..12)) {
            let mut script = Vec::new();
            let mut want = Vec::new();
            for (len, pause, seed) in pieces {
                let piece: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
                want.extend_from_slice(&piece);
                script.push(Some(piece));
                if pause {
                    script.push(None);
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (got, reads, _) = rt.block_on(read_all(script));
            prop_assert_eq!(got.len(), want.len());
            prop_assert!(got == want);
            prop_assert!(reads <= want.len() / 4096 + 30);
        }
    }
}
