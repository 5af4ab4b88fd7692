//! A body wrapper that lets the pipeline see each chunk as it passes and learn how the body
//! ended, without buffering anything.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type ChunkHook = Box<dyn FnMut(&mut Bytes) + Send + Sync>;
pub type EndHook = Box<dyn FnOnce(Result<(), String>) + Send + Sync>;

pub struct Observed<B> {
    inner: B,
    on_chunk: ChunkHook,
    on_end: Option<EndHook>,
}

impl<B> Observed<B> {
    pub fn new(inner: B, on_chunk: ChunkHook, on_end: EndHook) -> Self {
        Self {
            inner,
            on_chunk,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, result: Result<(), String>) {
        if let Some(f) = self.on_end.take() {
            f(result);
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        (this.on_chunk)(&mut data);
                        Frame::data(data)
                    }
                    Err(other) => other,
                };
                if this.inner.is_end_stream() {
                    this.end(Ok(()));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Err(e.to_string()));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(Ok(()));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Dropped before the end: the peer went away mid-body.
        self.end(Err("body not finished: the connection closed".into()));
    }
}
