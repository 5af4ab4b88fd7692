//! Log lines from the gateway's worker threads, written in bursts.
//!
//! Every exchange logs a line; written one by one, that is a write(2) per request on the proxy's
//! hottest path. A worker thread gathers its lines and writes them when it runs out of work (the
//! runtime parks it), when it stops, or once `FLUSH_AT` bytes have gathered, whichever comes
//! first: a line waits at most as long as its worker stays busy without a pause. Other threads
//! (the main thread, the recorder, blocking tasks) write each line at once, as before.
use std::{cell::RefCell, io::Write as _};

/// A worker's gathered lines are written once they reach this many bytes.
const FLUSH_AT: usize = 16 * 1024;

thread_local! {
    /// Some on worker threads (see `gather_on_this_thread`).
    static GATHERED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// From now on, this thread's log lines are gathered: a runtime's `on_thread_unpark`, which only
/// worker threads call (a blocking-pool thread never parks this way, so it would hold its lines
/// until it stops).
pub fn gather_on_this_thread() {
    GATHERED.with(|g| {
        g.borrow_mut().get_or_insert_with(|| Vec::with_capacity(FLUSH_AT));
    });
}

/// Writes what this thread has gathered: a runtime's `on_thread_park` and `on_thread_stop`.
pub fn flush_this_thread() {
    GATHERED.with(|g| {
        if let Some(buf) = g.borrow_mut().as_mut()
            && !buf.is_empty()
        {
            let _ = std::io::stderr().write_all(buf);
            buf.clear();
        }
    });
}

/// The log writer: gathers on worker threads, writes through elsewhere.
pub struct Gathering;

impl std::io::Write for Gathering {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let gathered = GATHERED.with(|g| match g.borrow_mut().as_mut() {
            Some(buf) => {
                buf.extend_from_slice(line);
                Some(buf.len() >= FLUSH_AT)
            }
            None => None,
        });
        match gathered {
            Some(true) => flush_this_thread(),
            Some(false) => {}
            None => std::io::stderr().write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Gathering {
    type Writer = Gathering;

    fn make_writer(&'a self) -> Self::Writer {
        Gathering
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_worker_gathers_until_flushed_or_full_and_others_write_through() {
        std::thread::spawn(|| {
            gather_on_this_thread();
            Gathering.write_all(b"one line\n").unwrap();
            let held = GATHERED.with(|g| g.borrow().as_ref().map(Vec::len));
            assert_eq!(held, Some(9), "a worker holds its line");
            flush_this_thread();
            let held = GATHERED.with(|g| g.borrow().as_ref().map(Vec::len));
            assert_eq!(held, Some(0), "flushing writes it");
            for _ in 0..(FLUSH_AT / 100 + 1) {
                Gathering.write_all(&[b'x'; 100]).unwrap();
            }
            let held = GATHERED.with(|g| g.borrow().as_ref().map(Vec::len)).unwrap();
            assert!(held < FLUSH_AT, "a full buffer is written at once ({held} held)");
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            Gathering.write_all(b"not a worker\n").unwrap();
            assert!(
                GATHERED.with(|g| g.borrow().is_none()),
                "other threads hold nothing"
            );
        })
        .join()
        .unwrap();
    }
}
