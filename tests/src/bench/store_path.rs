//! What the recorder's own work costs per exchange on this machine: the records a recording
//! gateway wrote during this run, read back, then framed, appended to a new store and indexed in
//! this process, through the same `ghgate-record` code and in the same writes the gateway made,
//! each step timed on this thread's CPU clock. The proxy bench prints it under its recorded
//! req/s target, beside the CPU that target allows.
use std::path::Path;

use anyhow::Context as _;
use ghgate_record::{
    index::Index,
    model::Record,
    store::{self, Framed, Position, Store, StoreOptions},
};
use nix::time::{ClockId, clock_gettime};

/// Records handed to the index at once: about what the gateway's indexer takes per batch at
/// ten thousand exchanges a second (it runs every 50 ms under load).
const INDEX_BATCH: usize = 1024;

/// Per exchange, in µs of CPU.
#[derive(Debug, Clone, Copy)]
pub struct StorePath {
    pub exchanges: u64,
    pub writes_per_exchange: f64,
    pub bytes_per_exchange: f64,
    /// JSON encoding into frames (`Framed::new`).
    pub framing_us: f64,
    /// Chaining (SHA-256, CRC) and the write into the segment (`Store::append_framed`).
    pub append_us: f64,
    /// The SQLite index (`Index::add_batch`).
    pub index_us: f64,
}

impl StorePath {
    pub fn total_us(&self) -> f64 {
        self.framing_us + self.append_us + self.index_us
    }
}

fn thread_cpu_us() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 * 1e6 + t.tv_nsec() as f64 / 1e3)
        .unwrap_or(f64::NAN)
}

/// Splits records, in store order, into the writes that put them there: an exchange's request
/// and what was noted with it in one, its end (with the held last chunk, stream events and git
/// operations) in another, any other body chunk in one of its own, and a record of no exchange
/// alone. A read's request (GET, HEAD or OPTIONS, not GraphQL: the store does not say whether
/// it had a body) is in the write of its exchange's next records instead, as the gateway writes
/// it. The writes of concurrent exchanges interleave in the store, but each write is contiguous.
pub fn writes(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut out: Vec<Vec<Record>> = Vec::new();
    for rec in records {
        // The write so far is a read's request and what was noted with it.
        let read_waiting = out.last().is_some_and(|w| {
            matches!(w.first(), Some(Record::Request(r)) if is_read(&r.method, &r.url))
                && w.iter()
                    .all(|r| !matches!(r, Record::BodyChunk(_) | Record::Exchange(_)))
        });
        let starts_write = match (out.last().and_then(|w| w.last()), &rec) {
            (None, _) | (_, Record::Request(_)) => true,
            (Some(prev), _) if prev.exchange().is_none() || rec.exchange() != prev.exchange() => true,
            _ if read_waiting => false,
            // After an exchange's end, or a body chunk that was not held for it.
            (Some(Record::Exchange(_)), _) => true,
            (Some(Record::BodyChunk(_)), Record::BodyChunk(_)) => true,
            // The end's write opens with the held chunk, a stream event or a git operation.
            (
                Some(prev),
                Record::BodyChunk(_) | Record::StreamEvent(_) | Record::Git(_) | Record::Exchange(_),
            ) => !matches!(
                prev,
                Record::BodyChunk(_) | Record::StreamEvent(_) | Record::Git(_)
            ),
            _ => false,
        };
        if starts_write {
            out.push(Vec::new());
        }
        out.last_mut().expect("a write was just begun").push(rec);
    }
    out
}

fn is_read(method: &str, url: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS") && !url.ends_with("/graphql")
}

/// Bytes read and written between two writes of a cold replay: twice a core's L2 here (2 MiB),
/// so each write starts with its code's data out of L1 and L2, as in the gateway, where a
/// request's TLS and HTTP work runs between two writes of the store.
const EVICT: usize = 4 << 20;

/// Up to `max_exchanges` exchanges' records from the store at `record_dir`, split into the
/// writes that made them, and how many exchanges that is.
pub fn sample(record_dir: &Path, max_exchanges: u64) -> anyhow::Result<(Vec<Vec<Record>>, u64)> {
    let mut records = Vec::new();
    let mut exchanges = 0;
    for item in store::read_records(record_dir).context("read the gateway's record store")? {
        let (_, rec) = item.context("read a record")?;
        exchanges += u64::from(matches!(rec, Record::Exchange(_)));
        records.push(rec);
        if exchanges >= max_exchanges {
            break;
        }
    }
    anyhow::ensure!(exchanges > 0, "the gateway recorded no exchange to replay");
    Ok((writes(records), exchanges))
}

/// Replays `writes` (of `exchanges` exchanges) into a new store and index under `scratch`
/// (which should be on the same filesystem as the gateway's). `cold`: the data caches are
/// cleared (outside the timed part) before each write, and nothing is indexed (`index_us` is
/// NaN): the indexer takes records in batches, away from requests.
pub fn measure(
    writes: &[Vec<Record>],
    exchanges: u64,
    scratch: &Path,
    cold: bool,
) -> anyhow::Result<StorePath> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let (mut store, _) = Store::open(&scratch.join("store"), key, StoreOptions::default())
        .context("open a scratch record store")?;

    let mut framing = 0.0;
    let mut append = 0.0;
    let mut bytes = 0;
    let mut written: Vec<(Position, Record)> = Vec::new();
    let mut evict = if cold { vec![1u8; EVICT] } else { Vec::new() };
    for batch in writes {
        for line in evict.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&evict);
        let t0 = thread_cpu_us();
        let mut framed = Framed::new(batch).context("frame records")?;
        let t1 = thread_cpu_us();
        let positions = store
            .append_framed(&mut framed)
            .context("append to the scratch store")?;
        let t2 = thread_cpu_us();
        (framing, append, bytes) = (framing + t1 - t0, append + t2 - t1, bytes + framed.bytes());
        if !cold {
            written.extend(positions.into_iter().zip(batch.iter().cloned()));
        }
    }
    let mut indexing = if cold { f64::NAN } else { 0.0 };
    if !cold {
        let mut index = Index::open(&scratch.join("index.sqlite")).context("open a scratch index")?;
        for chunk in written.chunks(INDEX_BATCH) {
            let t0 = thread_cpu_us();
            index.add_batch(chunk).context("index the scratch store")?;
            indexing += thread_cpu_us() - t0;
        }
    }
    let n = exchanges as f64;
    Ok(StorePath {
        exchanges,
        writes_per_exchange: writes.len() as f64 / n,
        bytes_per_exchange: bytes as f64 / n,
        framing_us: framing / n,
        append_us: append / n,
        index_us: indexing / n,
    })
}

/// The lines the proxy bench prints under its recorded req/s target. `host_us` is the CPU the
/// host spent per unrecorded request (client, upstream and gateway together) and `added_us` what
/// the recording gateway spent more than the unrecorded one.
pub fn explain(record_dir: &Path, host_us: f64, added_us: f64) {
    // When CPU-bound, requests/s go as the inverse of the host's CPU per request.
    let budget = host_us * (1.0 / 0.8 - 1.0);
    println!(
        "    (0.8× allows recording {budget:.1} µs of CPU a request, a quarter of the {host_us:.1} µs the host \
         spends on an unrecorded one; the recording gateway spent {added_us:+.1} µs)"
    );
    let (writes, exchanges) = match sample(record_dir, 20_000) {
        Ok(s) => s,
        Err(e) => {
            println!("    (the store path could not be replayed: {e:#})");
            return;
        }
    };
    // Beside the gateway's store: on the same filesystem.
    let replay = |cold| {
        tempfile::tempdir_in(record_dir.parent().unwrap_or(record_dir))
            .map_err(anyhow::Error::from)
            .and_then(|scratch| measure(&writes, exchanges, scratch.path(), cold))
    };
    match replay(false) {
        Ok(p) => println!(
            "    (the store path alone, replayed in this process from {} exchanges this run recorded, {:.1} writes \
             and {:.0} B an exchange: {:.1} µs = JSON framing {:.1} + chaining and appending {:.1} + indexing {:.1}; \
             masking heads, building records and handing them over are the rest)",
            p.exchanges,
            p.writes_per_exchange,
            p.bytes_per_exchange,
            p.total_us(),
            p.framing_us,
            p.append_us,
            p.index_us
        ),
        Err(e) => println!("    (the store path could not be replayed: {e:#})"),
    }
    // The gateway writes one exchange's records between two requests' TLS and HTTP work, not
    // one write after another: replayed so, with L1 and L2 cleared before each write. (Writing
    // a shard's exchanges a turn at a time instead, 3.8 writes in one on average, was tried in
    // the gateway: its CPU per request did not fall.)
    if let Ok(p) = replay(true) {
        println!(
            "    (replayed with the data caches cleared before each write, as between two requests: framing {:.1} + \
             appending {:.1} µs an exchange)",
            p.framing_us, p.append_us
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghgate_record::model::{AnsweredBy, BodyChunk, BodySummary, Direction, Exchange, RequestStart};

    fn request(x: u64, method: &str) -> Record {
        Record::Request(RequestStart {
            session: "s".into(),
            conn: 1,
            exchange: x.into(),
            at: 1,
            method: method.into(),
            url: "https://api.github.com/".into(),
        })
    }

    fn chunk(x: u64) -> Record {
        Record::BodyChunk(BodyChunk {
            session: "s".into(),
            exchange: x.into(),
            dir: Direction::Response,
            at: 2,
            offset: 0,
            data: "{}".into(),
        })
    }

    fn end(x: u64) -> Record {
        Record::Exchange(Exchange {
            session: "s".into(),
            conn: 1,
            exchange: x.into(),
            started_at: 1,
            method: "GET".into(),
            url: "https://api.github.com/".into(),
            http_version: "HTTP/1.1".into(),
            status: 200,
            request_headers: vec![],
            response_headers: vec![],
            request_body: BodySummary::default(),
            response_body: BodySummary::default(),
            ttfb_us: 1,
            duration_us: 2,
            answered_by: AnsweredBy::Upstream,
            error: None,
        })
    }

    /// Which exchange and kind each write holds, in order.
    fn shape(writes: &[Vec<Record>]) -> Vec<Vec<(u64, &'static str)>> {
        writes
            .iter()
            .map(|w| {
                w.iter()
                    .map(|r| {
                        (
                            r.exchange().map_or(0, |x| x.get()),
                            ghgate_record::index::kind_name(r),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn records_split_into_the_writes_that_made_them() {
        // Exchange 1's request (a POST: written before it goes upstream) and a streamed chunk;
        // exchange 2, a GET, written with its first chunk while 1 streams; 1's end with its held
        // last chunk; 2's end with its; 3, a GET, in one write; 4, a POST, in two.
        let records = vec![
            request(1, "POST"),
            chunk(1),
            request(2, "GET"),
            chunk(2),
            chunk(1),
            end(1),
            chunk(2),
            end(2),
            request(3, "GET"),
            end(3),
            request(4, "POST"),
            end(4),
        ];
        assert_eq!(
            shape(&writes(records)),
            vec![
                vec![(1, "request")],
                vec![(1, "body_chunk")],
                vec![(2, "request"), (2, "body_chunk")],
                vec![(1, "body_chunk"), (1, "exchange")],
                vec![(2, "body_chunk"), (2, "exchange")],
                vec![(3, "request"), (3, "exchange")],
                vec![(4, "request")],
                vec![(4, "exchange")],
            ]
        );
    }
}
