//! The session index: a SQLite database (WAL mode) derived from the store, so that listing
//! sessions and finding one session's records does not mean reading every segment.
//!
//! The gateway writes it while recording; CLI commands read it at the same time through a
//! read-only connection. It is never the source of truth: everything in it can be rebuilt from the
//! segments (`Index::rebuild`), and `Index::check` proves that it agrees with them. It must never
//! hold a fact the records do not, and a record it points to is always read back from the store
//! (and the store's hash chain) before anything is shown from it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, ToSql, Transaction, params,
    types::{FromSql, FromSqlResult, ToSqlOutput, Value, ValueRef},
};

use crate::{
    id::{ExchangeId, SessionId},
    model::{Micros, Record},
    store::{self, Position},
};

/// Bumped whenever the tables change; an index with another version is rebuilt, never migrated
/// in place (it is derived data).
pub const SCHEMA_VERSION: u32 = 3;

/// Where a store directory keeps its index.
pub fn index_path(store_dir: &Path) -> PathBuf {
    store_dir.join("index.sqlite")
}

/// How long a reader or writer waits for the other side's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Records indexed per transaction when catching up with the store.
const CATCH_UP_BATCH: usize = 2048;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    started_at INTEGER,
    ended_at INTEGER,
    end_reason TEXT,
    tgid INTEGER,
    uid INTEGER,
    user TEXT,
    exe TEXT,
    comm TEXT,
    cgroup TEXT,
    first_activity INTEGER,
    last_activity INTEGER,
    exchanges INTEGER NOT NULL DEFAULT 0,
    hosts TEXT NOT NULL DEFAULT ''
);
CREATE TABLE connections (
    session TEXT NOT NULL,
    conn INTEGER NOT NULL,
    sni TEXT NOT NULL,
    PRIMARY KEY (session, conn)
);
CREATE TABLE exchanges (
    session TEXT NOT NULL,
    exchange INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    -- NULL while the exchange has not finished
    status INTEGER,
    -- the seqs of its request and of its end, while the store holds them
    request_seq INTEGER,
    end_seq INTEGER,
    PRIMARY KEY (session, exchange)
);
-- A row is a run: the records seq..=last_seq, consecutive frames of one segment, all of one
-- session and of the kinds an exchange writes (`in_runs`), or one record of another kind.
CREATE TABLE records (
    seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    -- SHA-256 of the run's last frame, 32 bytes (the chain fixes every frame before it)
    hash BLOB NOT NULL,
    -- the record's kind; NULL for a run
    kind TEXT,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    session TEXT
);
CREATE INDEX records_session ON records (session, seq);
";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot open the session index {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create the directory {dir} for the session index: {cause}")]
    CreateDir { dir: PathBuf, cause: std::io::Error },
    #[error(
        "no session index at {path}: nothing has been recorded yet, or it was removed; \
         run `ghgate sessions reindex` to build it from the store"
    )]
    Missing { path: PathBuf },
    #[error(
        "the session index {path} has schema version {found}, this ghgate uses {expected}: \
         run `ghgate sessions reindex`"
    )]
    Schema {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("session index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("reading the record store for the session index: {0}")]
    Store(#[from] store::Error),
    #[error("no session has the id or id prefix {0:?}; `ghgate sessions list` shows the recorded sessions")]
    UnknownSession(String),
    #[error("the session id prefix {prefix:?} matches several sessions ({}): give more characters", candidates.join(", "))]
    AmbiguousSession { prefix: String, candidates: Vec<String> },
    #[error(transparent)]
    Mismatch(#[from] IndexMismatch),
    #[error("records of kind {0:?} are indexed in runs by session, not by kind")]
    KindInRuns(String),
}

/// Records the index lists in one row: `records` consecutive record frames (by seq) of one
/// segment, from `offset`; read them back with [`RecordSource::read_run`] or
/// [`store::read_raw_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub segment: u64,
    pub offset: u64,
    pub records: u64,
}

/// The first place where the index and the store disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexMismatch {
    #[error(
        "index row seq {seq} says segment {segment} offset {offset}, but {problem} — the index was \
         edited or is stale; run `ghgate sessions reindex`"
    )]
    Row {
        seq: u64,
        segment: u64,
        offset: u64,
        problem: String,
    },
    #[error(
        "the store holds record seq {seq} at segment {segment} offset {offset}, but the index has no \
         row for it — the index was edited or is stale; run `ghgate sessions reindex`"
    )]
    Unindexed { seq: u64, segment: u64, offset: u64 },
}

/// What `Index::check` found when the index agrees with the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Records verified against the index rows that list them.
    pub verified: u64,
    /// Records at the end of the store beyond the last indexed one. Not a failure: the gateway
    /// indexes shortly after it writes, so a running gateway always has a small tail, and one that
    /// was killed leaves one until its next start catches up.
    pub unindexed_tail: u64,
}

/// Records in store order, each with where it is, as a source yields them.
pub type SourceRecords<'a> = Box<dyn Iterator<Item = store::Result<(Position, Record)>> + 'a>;

/// Where the index reads records from: the store (`StoreDir`), or records in memory.
pub trait RecordSource {
    /// Every record, in store order.
    fn records(&self) -> store::Result<SourceRecords<'_>>;
    /// The record at this place.
    fn read_at(&self, segment: u64, offset: u64) -> store::Result<(Position, Record)>;
    /// The run of `records` records from this place (see [`Run`]). By default found by reading
    /// the records in order; a source that can seek overrides it.
    fn read_run(&self, segment: u64, offset: u64, records: u64) -> store::Result<Vec<(Position, Record)>> {
        let mut run: Vec<(Position, Record)> = Vec::new();
        for item in self.records()? {
            let (pos, record) = item?;
            if run.is_empty() && (pos.segment, pos.offset) != (segment, offset) {
                continue;
            }
            if run
                .last()
                .is_some_and(|(last, _)| last.seq + 1 != pos.seq || last.segment != pos.segment)
            {
                break;
            }
            run.push((pos, record));
            if run.len() as u64 == records {
                return Ok(run);
            }
        }
        Err(store::Error::Corrupt {
            segment,
            offset,
            what: format!("no run of {records} records starts here"),
        })
    }
}

/// The store's segments in this directory.
pub struct StoreDir<'a>(pub &'a Path);

impl RecordSource for StoreDir<'_> {
    fn records(&self) -> store::Result<SourceRecords<'_>> {
        Ok(Box::new(store::read_records(self.0)?))
    }

    fn read_at(&self, segment: u64, offset: u64) -> store::Result<(Position, Record)> {
        store::read_at(self.0, segment, offset)
    }

    fn read_run(&self, segment: u64, offset: u64, records: u64) -> store::Result<Vec<(Position, Record)>> {
        store::read_run(self.0, segment, offset, records)
    }
}

impl RecordSource for Vec<(Position, Record)> {
    fn records(&self) -> store::Result<SourceRecords<'_>> {
        Ok(Box::new(self.iter().map(|(p, r)| Ok((*p, r.clone())))))
    }

    fn read_at(&self, segment: u64, offset: u64) -> store::Result<(Position, Record)> {
        self.iter()
            .find(|(p, _)| p.segment == segment && p.offset == offset)
            .map(|(p, r)| (*p, r.clone()))
            .ok_or_else(|| store::Error::Corrupt {
                segment,
                offset,
                what: "no record starts here".into(),
            })
    }
}

/// Which sessions `Index::sessions` lists; every field set narrows the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Sessions active at some time within [since, until] (microseconds since the epoch).
    pub since: Option<Micros>,
    pub until: Option<Micros>,
    /// Sessions with an exchange to this host or one of its subdomains ("github.com" matches
    /// "api.github.com" too).
    pub host: Option<String>,
    pub uid: Option<u32>,
    /// Sessions whose executable path contains this text.
    pub exe: Option<String>,
}

/// One session as the index knows it. Process facts are `None` when the session's first record
/// was pruned (or has not been indexed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionRow {
    pub id: SessionId,
    pub started_at: Option<Micros>,
    pub ended_at: Option<Micros>,
    pub end_reason: Option<String>,
    pub tgid: Option<u32>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub first_activity: Micros,
    pub last_activity: Micros,
    /// Exchanges begun (finished or not).
    pub exchanges: u64,
    /// Hosts of those exchanges, sorted.
    pub hosts: Vec<String>,
}

impl SessionRow {
    /// "alice (uid 1000)", "uid 1000", or "unknown" when the session's first record was pruned.
    pub fn who(&self) -> String {
        match (&self.user, self.uid) {
            (Some(user), Some(uid)) => format!("{user} (uid {uid})"),
            (None, Some(uid)) => format!("uid {uid}"),
            _ => "unknown".into(),
        }
    }

    /// The executable, else the command name, else "unknown".
    pub fn program(&self) -> &str {
        self.exe.as_deref().or(self.comm.as_deref()).unwrap_or("unknown")
    }
}

#[derive(Debug)]
pub struct Index {
    conn: Connection,
    /// The store this index was last caught up with: where `add_batch` refills a hole from.
    store_dir: Option<PathBuf>,
    /// A batch failed to be indexed: the next one first catches up from `store_dir`.
    behind: bool,
    /// `open` found an index of an older schema version and emptied it.
    upgraded_from: Option<String>,
}

impl Index {
    /// Opens the index for writing, creating it (and its directory) when absent. An index of
    /// another schema version is emptied, and a file that is not a database replaced, to be
    /// refilled by `catch_up` (it is derived data: the store is the evidence).
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        match Index::open_inner(path) {
            Err(e) if is_not_a_database(&e) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                Index::open_inner(path)
            }
            result => result,
        }
    }

    fn open_inner(path: &Path) -> Result<Index, IndexError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| IndexError::CreateDir {
                dir: dir.to_owned(),
                cause,
            })?;
        }
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            // The index is derived data: losing its last transactions to a power cut costs a
            // catch-up, not a fact, so it does not fsync on every commit.
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            // A checkpoint copies each page the WAL holds back into the database once, however
            // often it was rewritten meanwhile: fewer, larger checkpoints copy the same hot pages
            // (the tails of the records table and its indexes) far fewer times. 16 MiB of WAL at
            // most between them (SQLite's default is 4 MiB).
            conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 4000;")?;
            Ok(conn)
        };
        let conn = open(path).map_err(|source| IndexError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut index = Index {
            conn,
            store_dir: None,
            behind: false,
            upgraded_from: None,
        };
        match index.schema_version()? {
            None => index.create_schema()?,
            Some(v) if v == SCHEMA_VERSION.to_string() => {
                // An index on exchanges' hosts, made by earlier versions of this schema: no query
                // uses it (the host filter looks a session's exchanges up by session), and it
                // cost every indexed exchange a second b-tree insert, about a quarter of indexing.
                // Readers of any version work without it, so it goes without a rebuild. Looked
                // for first: every writer opens the index (the retention thread daily, too), and
                // only the first after an upgrade has it to drop.
                let drop_it = || -> rusqlite::Result<()> {
                    let present: bool = index.conn.query_row(
                        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'exchanges_host')",
                        [],
                        |r| r.get(0),
                    )?;
                    if present {
                        index.conn.execute_batch("DROP INDEX exchanges_host")?;
                    }
                    Ok(())
                };
                drop_it().map_err(|source| IndexError::Open {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Some(v) if v.parse::<u32>().is_ok_and(|v| v > SCHEMA_VERSION) => {
                return Err(IndexError::Schema {
                    path: path.to_owned(),
                    found: v,
                    expected: SCHEMA_VERSION,
                });
            }
            Some(v) => {
                index.drop_all()?;
                index.create_schema()?;
                index.upgraded_from = Some(v);
            }
        }
        Ok(index)
    }

    /// The schema version of the index `open` emptied because this ghgate uses another (its
    /// `catch_up` then rebuilds it from the whole store).
    pub fn upgraded_from(&self) -> Option<&str> {
        self.upgraded_from.as_deref()
    }

    /// Opens an existing index for reading only, while the gateway may be writing it.
    pub fn open_read_only(path: &Path) -> Result<Index, IndexError> {
        if !path.exists() {
            return Err(IndexError::Missing {
                path: path.to_owned(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| conn.busy_timeout(BUSY_TIMEOUT).map(|()| conn))
        .map_err(|source| IndexError::Open {
            path: path.to_owned(),
            source,
        })?;
        let index = Index {
            conn,
            store_dir: None,
            behind: false,
            upgraded_from: None,
        };
        match index.schema_version()? {
            Some(v) if v == SCHEMA_VERSION.to_string() => Ok(index),
            found => Err(IndexError::Schema {
                path: path.to_owned(),
                found: found.unwrap_or_else(|| "none".into()),
                expected: SCHEMA_VERSION,
            }),
        }
    }

    /// Builds the index at `path` afresh from every record in the store, in one transaction
    /// (readers keep seeing the old contents until it commits). An index file that is not a
    /// database at all is replaced. Returns the number of records indexed.
    pub fn rebuild(path: &Path, store_dir: &Path) -> Result<u64, IndexError> {
        Index::rebuild_from(path, &StoreDir(store_dir)).map(|(_, n)| n)
    }

    /// `rebuild`, from any source of records; returns the index too.
    pub fn rebuild_from(path: &Path, source: &dyn RecordSource) -> Result<(Index, u64), IndexError> {
        let mut index = Index::open(path)?;
        let n = index.index_source(source, true)?;
        Ok((index, n))
    }

    /// The sequence number of the last record indexed, if any.
    pub fn last_seq(&self) -> Result<Option<u64>, IndexError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok()))
    }

    /// Indexes records in store order (seqs increasing; the store's seqs also count frames that
    /// are not records, so they have holes), in one transaction. Records at or below `last_seq`
    /// are skipped, so a batch may be offered twice. After a batch failed, the next call first
    /// catches up from the store this index was caught up with (`catch_up`, `rebuild`), so one
    /// failure (a lock held too long by a reindex) leaves no hole behind.
    pub fn add_batch(&mut self, items: &[(Position, Record)]) -> Result<(), IndexError> {
        let result = match (&self.store_dir, self.behind) {
            (Some(dir), true) => {
                let dir = dir.clone();
                self.catch_up(&dir).and_then(|_| self.add_now(items))
            }
            _ => self.add_now(items),
        };
        self.behind = result.is_err();
        result
    }

    fn add_now(&mut self, items: &[(Position, Record)]) -> Result<(), IndexError> {
        let tx = self.conn.transaction()?;
        add_in(&tx, items)?;
        tx.commit()?;
        Ok(())
    }

    /// Indexes what the store holds beyond the last indexed record; returns how many records
    /// that was. Used at gateway start: after a crash the index may lag the store, or even be
    /// ahead of it (records indexed before a power cut tore them off the store's tail) — in that
    /// case, or when the store was replaced, the index is rebuilt from scratch.
    pub fn catch_up(&mut self, store_dir: &Path) -> Result<u64, IndexError> {
        let n = self.catch_up_from(&StoreDir(store_dir))?;
        self.store_dir = Some(store_dir.to_owned());
        Ok(n)
    }

    /// `catch_up`, from any source of records.
    pub fn catch_up_from(&mut self, source: &dyn RecordSource) -> Result<u64, IndexError> {
        let diverged = match self.last_row()? {
            Some(row) => match source.read_run(row.segment, row.offset, row.records()) {
                Ok(run) => run.first().zip(run.last()).is_none_or(|(first, (last, _))| {
                    first.0.seq != row.seq || last.seq != row.last_seq || last.hash[..] != row.hash[..]
                }),
                Err(_) => true,
            },
            // Nothing indexed (or everything pruned): index whatever the store holds.
            None => true,
        };
        self.index_source(source, diverged)
    }

    /// Removes every row pointing into segments `first..=last`, which retention has deleted, and
    /// the sessions and exchanges that no longer have records. Returns the record rows removed.
    pub fn forget_segments(&mut self, first: u64, last: u64) -> Result<u64, IndexError> {
        let tx = self.conn.transaction()?;
        // Rows are in store order, so the segments' rows are one range of seqs.
        let (from, to) = (
            first_seq_in_segment_or_later(&tx, first)?,
            first_seq_in_segment_or_later(&tx, last.saturating_add(1))?,
        );
        let affected: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT DISTINCT session FROM records WHERE seq >= ?1 AND seq < ?2 AND session IS NOT NULL",
            )?;
            st.query_map(params![from, to], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let removed = tx.execute(
            "DELETE FROM records WHERE seq >= ?1 AND seq < ?2",
            params![from, to],
        )?;
        for session in &affected {
            let left: u64 = tx.query_row(
                "SELECT count(*) FROM records WHERE session = ?1",
                [session],
                |r| r.get(0),
            )?;
            if left == 0 {
                for table in [
                    "DELETE FROM sessions WHERE id = ?1",
                    "DELETE FROM exchanges WHERE session = ?1",
                ] {
                    tx.execute(table, [session])?;
                }
                tx.execute("DELETE FROM connections WHERE session = ?1", [session])?;
                continue;
            }
            // An exchange whose final record was pruned (its request kept) is unfinished again;
            // one with neither left goes.
            tx.execute(
                "UPDATE exchanges SET request_seq = NULL
                 WHERE session = ?1 AND request_seq >= ?2 AND request_seq < ?3",
                params![session, from, to],
            )?;
            tx.execute(
                "UPDATE exchanges SET end_seq = NULL, status = NULL
                 WHERE session = ?1 AND end_seq >= ?2 AND end_seq < ?3",
                params![session, from, to],
            )?;
            tx.execute(
                "DELETE FROM exchanges WHERE session = ?1 AND request_seq IS NULL AND end_seq IS NULL",
                [session],
            )?;
            // What remains must be exactly what a rebuild from the remaining segments would give.
            tx.execute(
                "UPDATE sessions SET
                    first_activity = (SELECT min(first_at) FROM records WHERE session = ?1),
                    last_activity = (SELECT max(last_at) FROM records WHERE session = ?1)
                 WHERE id = ?1",
                [session],
            )?;
            tx.execute(
                "UPDATE sessions SET started_at = NULL, tgid = NULL, uid = NULL, user = NULL, exe = NULL,
                    comm = NULL, cgroup = NULL
                 WHERE id = ?1 AND NOT EXISTS
                    (SELECT 1 FROM records WHERE session = ?1 AND kind = 'session_start')",
                [session],
            )?;
            tx.execute(
                "UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = ?1 AND NOT EXISTS
                    (SELECT 1 FROM records WHERE session = ?1 AND kind = 'session_end')",
                [session],
            )?;
            refresh_counts(&tx, session)?;
        }
        tx.commit()?;
        Ok(removed as u64)
    }

    /// Sessions matching `filter`, oldest first.
    pub fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRow>, IndexError> {
        let mut sql = String::from(
            "SELECT id, started_at, ended_at, end_reason, tgid, uid, user, exe, comm, cgroup,
                    first_activity, last_activity, exchanges, hosts
             FROM sessions s WHERE 1",
        );
        let mut args: Vec<Value> = Vec::new();
        let mut arg = |v: Value, args_sql: &mut String, clause: &str| {
            args.push(v);
            args_sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(since) = filter.since {
            arg(
                Value::Integer(to_i64(since)),
                &mut sql,
                " AND s.last_activity >= ?",
            );
        }
        if let Some(until) = filter.until {
            arg(
                Value::Integer(to_i64(until)),
                &mut sql,
                " AND s.first_activity <= ?",
            );
        }
        if let Some(uid) = filter.uid {
            arg(Value::Integer(uid.into()), &mut sql, " AND s.uid = ?");
        }
        if let Some(exe) = &filter.exe {
            arg(Value::Text(exe.clone()), &mut sql, " AND instr(s.exe, ?) > 0");
        }
        if let Some(host) = &filter.host {
            let host = host.trim().trim_matches('.').to_ascii_lowercase();
            arg(
                Value::Text(host),
                &mut sql,
                " AND EXISTS (SELECT 1 FROM exchanges e WHERE e.session = s.id AND (e.host = ? OR \
                 substr(e.host, -length(?) - 1) = '.' || ?))",
            );
        }
        sql.push_str(" ORDER BY s.first_activity, s.id");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                started_at: r.get(1)?,
                ended_at: r.get(2)?,
                end_reason: r.get(3)?,
                tgid: r.get(4)?,
                uid: r.get(5)?,
                user: r.get(6)?,
                exe: r.get(7)?,
                comm: r.get(8)?,
                cgroup: r.get(9)?,
                first_activity: r.get::<_, Option<u64>>(10)?.unwrap_or(0),
                last_activity: r.get::<_, Option<u64>>(11)?.unwrap_or(0),
                exchanges: r.get(12)?,
                hosts: r
                    .get::<_, String>(13)?
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The full id of the one session whose id is `prefix` or starts with it.
    pub fn resolve(&self, prefix: &str) -> Result<SessionId, IndexError> {
        if prefix.is_empty() {
            return Err(IndexError::UnknownSession(prefix.into()));
        }
        if let Some(id) = self
            .conn
            .query_row("SELECT id FROM sessions WHERE id = ?1", [prefix], |r| r.get(0))
            .optional()?
        {
            return Ok(id);
        }
        let mut st = self
            .conn
            .prepare("SELECT id FROM sessions WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT 6")?;
        let mut ids: Vec<String> = st.query_map([prefix], |r| r.get(0))?.collect::<Result<_, _>>()?;
        match ids.len() {
            0 => Err(IndexError::UnknownSession(prefix.into())),
            1 => Ok(SessionId::from(ids.remove(0))),
            _ => {
                if ids.len() > 5 {
                    ids.truncate(5);
                    ids.push("…".into());
                }
                Err(IndexError::AmbiguousSession {
                    prefix: prefix.into(),
                    candidates: ids,
                })
            }
        }
    }

    /// Where the records of the session `id` (or unique id prefix) are: runs, in store order.
    pub fn session_records(&self, id: &str) -> Result<Vec<Run>, IndexError> {
        let id = self.resolve(id)?;
        let mut st = self.conn.prepare(
            "SELECT segment, offset, last_seq - seq + 1 FROM records WHERE session = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([&id], |r| {
            Ok(Run {
                segment: r.get(0)?,
                offset: r.get(1)?,
                records: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Where the records of one kind (as [`kind_name`] names it) at or after `since` are, in
    /// store order. Not for the kinds indexed in runs (`in_runs`): they are found by session.
    pub fn records_of_kind(&self, kind: &str, since: Micros) -> Result<Vec<(u64, u64)>, IndexError> {
        if RUN_KINDS.contains(&kind) {
            return Err(IndexError::KindInRuns(kind.to_owned()));
        }
        let mut st = self
            .conn
            .prepare("SELECT segment, offset FROM records WHERE kind = ?1 AND last_at >= ?2 ORDER BY seq")?;
        let rows = st.query_map(rusqlite::params![kind, since as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Proves the index agrees with the store: every row names a record that is at its segment
    /// and offset with its seq and hash, and every record in the store has a row — except
    /// records beyond the last indexed one, counted in `CheckReport::unindexed_tail`.
    pub fn check(&self, store_dir: &Path) -> Result<CheckReport, IndexError> {
        self.check_against(&StoreDir(store_dir))
    }

    /// `check`, against any source of records.
    pub fn check_against(&self, source: &dyn RecordSource) -> Result<CheckReport, IndexError> {
        // One snapshot of the index, while the gateway may be adding to it.
        let snapshot = self.conn.unchecked_transaction()?;
        let last_seq = last_seq_in(&snapshot)?;
        let mut st = snapshot.prepare(&format!("SELECT {ROW_PLACE} FROM records ORDER BY seq"))?;
        let mut rows = st.query_map([], RowPlace::from_row)?.peekable();
        let mut report = CheckReport::default();
        // The row whose run the store is in the middle of, and the seq it needs next.
        let mut open: Option<(RowPlace, u64)> = None;
        for item in source.records()? {
            let (pos, _) = item?;
            if let Some((row, expect)) = open.take() {
                // A run is consecutive seqs in one segment: the store's next record is its next.
                if pos.seq != expect || pos.segment != row.segment {
                    return Err(row
                        .mismatch(format!(
                            "its run goes on to seq {}, and the store's record after seq {} is seq {} in segment {}",
                            row.last_seq,
                            expect - 1,
                            pos.seq,
                            pos.segment
                        ))
                        .into());
                }
                report.verified += 1;
                if pos.seq < row.last_seq {
                    open = Some((row, expect + 1));
                } else if pos.hash[..] != row.hash[..] {
                    return Err(row
                        .mismatch(format!(
                            "the hash of the run's last record, seq {}, differs",
                            row.last_seq
                        ))
                        .into());
                }
                continue;
            }
            // Rows whose seq the store skipped over point at records that are not there.
            if let Some(row) = rows.next_if(|row| row.as_ref().is_ok_and(|row| row.seq < pos.seq)) {
                let row = row?;
                return Err(absent(source, row.seq, row.segment, row.offset).into());
            }
            match rows.next_if(|row| row.as_ref().is_ok_and(|row| row.seq == pos.seq)) {
                Some(row) => {
                    let row = row?;
                    if (row.segment, row.offset) != (pos.segment, pos.offset) {
                        return Err(row
                            .mismatch(format!(
                                "the store has that record at segment {} offset {}",
                                pos.segment, pos.offset
                            ))
                            .into());
                    }
                    report.verified += 1;
                    if row.last_seq > row.seq {
                        let next = row.seq + 1;
                        open = Some((row, next));
                    } else if row.hash[..] != pos.hash[..] {
                        return Err(row.mismatch("that record's hash differs".to_owned()).into());
                    }
                }
                None => {
                    if let Some(Err(_)) = rows.peek() {
                        rows.next().transpose()?;
                    }
                    if last_seq.is_some_and(|last| pos.seq <= last) {
                        return Err(IndexMismatch::Unindexed {
                            seq: pos.seq,
                            segment: pos.segment,
                            offset: pos.offset,
                        }
                        .into());
                    }
                    report.unindexed_tail += 1;
                }
            }
        }
        if let Some((row, _)) = open {
            return Err(row
                .mismatch(format!(
                    "the store ends before the run's last record, seq {}",
                    row.last_seq
                ))
                .into());
        }
        if let Some(row) = rows.next() {
            let row = row?;
            return Err(absent(source, row.seq, row.segment, row.offset).into());
        }
        Ok(report)
    }

    fn last_row(&self) -> Result<Option<RowPlace>, IndexError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ROW_PLACE} FROM records ORDER BY seq DESC LIMIT 1"),
                [],
                RowPlace::from_row,
            )
            .optional()?)
    }

    /// Indexes the store's records beyond `last_seq` (all of them when `from_scratch`), in one
    /// transaction so readers never see a half-built index.
    fn index_source(&mut self, source: &dyn RecordSource, from_scratch: bool) -> Result<u64, IndexError> {
        let tx = self.conn.transaction()?;
        if from_scratch {
            clear(&tx)?;
        }
        let last = last_seq_in(&tx)?;
        let mut batch = Vec::with_capacity(CATCH_UP_BATCH);
        let mut n = 0u64;
        for item in source.records()? {
            let (pos, record) = item?;
            if last.is_some_and(|last| pos.seq <= last) {
                continue;
            }
            batch.push((pos, record));
            if batch.len() == CATCH_UP_BATCH {
                n += add_in(&tx, &batch)?;
                batch.clear();
            }
        }
        n += add_in(&tx, &batch)?;
        tx.commit()?;
        Ok(n)
    }

    fn schema_version(&self) -> Result<Option<String>, IndexError> {
        let has_meta: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            let tables: u64 = self
                .conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            return Ok((tables > 0).then(|| "unknown".to_owned()));
        }
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn create_schema(&mut self) -> Result<(), IndexError> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn drop_all(&mut self) -> Result<(), IndexError> {
        let tx = self.conn.transaction()?;
        let objects: Vec<(String, String)> = {
            let mut st =
                tx.prepare("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (kind, name) in objects {
            tx.execute_batch(&format!(
                "DROP {} IF EXISTS \"{}\"",
                kind.to_uppercase(),
                name.replace('"', "\"\"")
            ))?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The mismatch for an index row whose seq the store does not hold.
fn absent(source: &dyn RecordSource, seq: u64, segment: u64, offset: u64) -> IndexMismatch {
    let problem = match source.read_at(segment, offset) {
        Ok((pos, _)) => format!("the record there has seq {}", pos.seq),
        Err(e) => format!("the store has no record with that seq ({e})"),
    };
    IndexMismatch::Row {
        seq,
        segment,
        offset,
        problem,
    }
}

fn is_not_a_database(e: &IndexError) -> bool {
    let (IndexError::Open { source, .. } | IndexError::Sqlite(source)) = e else {
        return false;
    };
    matches!(
        source.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// A seq that splits the rows in segments before `segment` from those in it or later: the
/// first row at or after it is in `segment` or later (it is one past the last row when none is).
/// Rows are in store order, so their segments never decrease as their seqs grow: the split is
/// found by bisecting seqs, each step one lookup by seq. An index on segments, kept for this
/// daily query alone, cost a tenth of indexing's time.
fn first_seq_in_segment_or_later(tx: &Transaction<'_>, segment: u64) -> Result<i64, IndexError> {
    let (min, max): (Option<i64>, Option<i64>) =
        tx.query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(max)) = (min, max) else {
        return Ok(0);
    };
    let mut at_or_after =
        tx.prepare_cached("SELECT segment FROM records WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    // The smallest seq from which every row is in `segment` or later (max + 1: none is).
    let mut hi = max + 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let seg: u64 = at_or_after.query_row([mid], |r| r.get(0))?;
        if seg >= segment {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Where a records row says its records are.
struct RowPlace {
    seq: u64,
    last_seq: u64,
    segment: u64,
    offset: u64,
    /// The last record's.
    hash: Vec<u8>,
}

/// The columns `RowPlace::from_row` reads.
const ROW_PLACE: &str = "seq, last_seq, segment, offset, hash";

impl RowPlace {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RowPlace {
            seq: r.get(0)?,
            last_seq: r.get(1)?,
            segment: r.get(2)?,
            offset: r.get(3)?,
            hash: hash_bytes(r, 4)?,
        })
    }

    fn records(&self) -> u64 {
        self.last_seq.saturating_sub(self.seq) + 1
    }

    fn mismatch(&self, problem: String) -> IndexMismatch {
        IndexMismatch::Row {
            seq: self.seq,
            segment: self.segment,
            offset: self.offset,
            problem,
        }
    }
}

/// A row's hash as bytes, whatever an edit of the file made its type (it then differs from
/// every record's: `check` reports it, rather than failing on the type).
fn hash_bytes(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(match row.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        _ => Vec::new(),
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn last_seq_in(tx: &Transaction<'_>) -> Result<Option<u64>, IndexError> {
    Ok(tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'last_seq'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok()))
}

fn clear(tx: &Transaction<'_>) -> Result<(), IndexError> {
    tx.execute_batch(
        "DELETE FROM records; DELETE FROM exchanges; DELETE FROM connections; DELETE FROM sessions;
         DELETE FROM meta WHERE key = 'last_seq';",
    )?;
    Ok(())
}

/// Indexes `items` inside `tx`; returns how many were new.
fn add_in(tx: &Transaction<'_>, items: &[(Position, Record)]) -> Result<u64, IndexError> {
    let mut last = last_seq_in(tx)?;
    // What this batch changed of each session's exchange count and host list.
    let mut counts: BTreeMap<SessionId, Counts> = BTreeMap::new();
    let mut n = 0;
    let mut rows = Rows::continuing(tx)?;
    let mut ensure_session = tx.prepare_cached(
        "INSERT INTO sessions (id, first_activity, last_activity) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET
            first_activity = min(coalesce(first_activity, excluded.first_activity), excluded.first_activity),
            last_activity = max(coalesce(last_activity, excluded.last_activity), excluded.last_activity)",
    )?;
    // Each session's row is made when the batch first meets it (later statements update it);
    // its activity span is widened once, at the end, by what the whole batch saw of it.
    let mut activity: BTreeMap<SessionId, (u64, u64, u64)> = BTreeMap::new();
    // An exchange whose request and end are both in this batch (the usual case) gets its row
    // once, from its end: the request's row would only be looked up and updated again.
    let ends: HashMap<(&SessionId, ExchangeId), usize> = items
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| match r {
            Record::Exchange(x) => Some(((&x.session, x.exchange), i)),
            _ => None,
        })
        .collect();
    // Deferred requests, with their seqs.
    let mut deferred: HashMap<(&SessionId, ExchangeId), u64> = HashMap::new();
    for (i, (pos, record)) in items.iter().enumerate() {
        if last.is_some_and(|l| pos.seq <= l) {
            continue;
        }
        let session = record.session();
        rows.add(tx, pos, record)?;
        if let Some(session) = session {
            let at = record.at();
            match activity.get_mut(session) {
                Some((_, first, last)) => (*first, *last) = ((*first).min(at), (*last).max(at)),
                None => {
                    ensure_session.execute(params![session, at, at])?;
                    activity.insert(session.clone(), (at, at, at));
                }
            }
        }
        match record {
            Record::SessionStart(s) => {
                tx.prepare_cached(
                    "UPDATE sessions SET started_at = ?2, tgid = ?3, uid = ?4, user = ?5, exe = ?6, comm = ?7,
                        cgroup = ?8 WHERE id = ?1",
                )?
                .execute(params![s.session, s.at, s.tgid, s.uid, s.user, s.exe, s.comm, s.cgroup])?;
            }
            Record::SessionEnd(e) => {
                tx.prepare_cached("UPDATE sessions SET ended_at = ?2, end_reason = ?3 WHERE id = ?1")?
                    .execute(params![e.session, e.at, e.reason.as_str()])?;
            }
            Record::Connection(c) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO connections (session, conn, sni) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![c.session, c.conn, c.sni.to_ascii_lowercase()])?;
            }
            Record::Request(r) if ends.get(&(&r.session, r.exchange)).is_some_and(|&end| end > i) => {
                deferred.insert((&r.session, r.exchange), pos.seq);
            }
            Record::Request(r) => {
                let host = exchange_host(tx, r.session.as_str(), r.conn, &r.url)?;
                let added = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO exchanges (session, exchange, started_at, method, url, host, status,
                            request_seq, end_seq)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, NULL)",
                    )?
                    .execute(params![r.session, r.exchange, r.at, r.method, r.url, host, pos.seq])?;
                if added > 0 {
                    counts.entry(r.session.clone()).or_default().add(host);
                } else {
                    tx.prepare_cached(
                        "UPDATE exchanges SET request_seq = ?3 WHERE session = ?1 AND exchange = ?2",
                    )?
                    .execute(params![r.session, r.exchange, pos.seq])?;
                }
            }
            Record::Exchange(x) => {
                let host = exchange_host(tx, x.session.as_str(), x.conn, &x.url)?;
                let request_seq = deferred.remove(&(&x.session, x.exchange));
                // ?1 to ?8; ?9, the request's seq, only for the statement that names it.
                let all = params![
                    x.session,
                    x.exchange,
                    x.started_at,
                    x.method,
                    x.url,
                    host,
                    x.status,
                    pos.seq,
                    request_seq
                ];
                let values = &all[..8];
                // Its request was deferred above: the row is made here, whole (unless one exists
                // already, which ids unique across runs rule out; then as below).
                let made = request_seq.is_some()
                    && tx
                        .prepare_cached(
                            "INSERT OR IGNORE INTO exchanges (session, exchange, started_at, method, url, host, status,
                                request_seq, end_seq)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?8)",
                        )?
                        .execute(all)?
                        > 0;
                if made {
                    counts.entry(x.session.clone()).or_default().add(host);
                } else {
                    let before: Option<String> = tx
                        .prepare_cached("SELECT host FROM exchanges WHERE session = ?1 AND exchange = ?2")?
                        .query_row(params![x.session, x.exchange], |r| r.get(0))
                        .optional()?;
                    // The usual case: the row its request made gets its status, in place (a
                    // REPLACE deleted and reinserted the row, once per exchange).
                    let sql = match &before {
                        Some(old) if *old == host => {
                            "UPDATE exchanges SET started_at = ?3, method = ?4, url = ?5, status = ?7, end_seq = ?8
                             WHERE session = ?1 AND exchange = ?2 AND host = ?6"
                        }
                        Some(_) => {
                            "UPDATE exchanges SET started_at = ?3, method = ?4, url = ?5, host = ?6, status = ?7,
                                end_seq = ?8
                             WHERE session = ?1 AND exchange = ?2"
                        }
                        None => {
                            "INSERT INTO exchanges (session, exchange, started_at, method, url, host, status, end_seq)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                        }
                    };
                    tx.prepare_cached(sql)?.execute(values)?;
                    if let Some(request_seq) = request_seq {
                        tx.prepare_cached(
                            "UPDATE exchanges SET request_seq = ?3 WHERE session = ?1 AND exchange = ?2",
                        )?
                        .execute(params![x.session, x.exchange, request_seq])?;
                    }
                    let c = counts.entry(x.session.clone()).or_default();
                    match before {
                        None => c.add(host),
                        Some(old) if old != host => c.recount = true,
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
        last = Some(pos.seq);
        n += 1;
    }
    rows.finish(tx)?;
    for (session, (seen, first, last)) in &activity {
        if (first, last) != (seen, seen) {
            ensure_session.execute(params![session, first, last])?;
        }
    }
    for (session, c) in &counts {
        update_counts(tx, session.as_str(), c)?;
    }
    if let Some(last) = last {
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute([last.to_string()])?;
    }
    Ok(n)
}

/// Drops from `record` what indexing never reads: an exchange's headers and body summaries, a
/// chunk's or a stream event's data, a git operation's lists. The recorder hands written
/// records to the indexer's thread; lightened first, their bulk is freed where it was made,
/// while it is still in cache, rather than on another thread a batch later.
pub fn lighten(record: &mut Record) {
    match record {
        Record::Exchange(x) => {
            x.request_headers = Vec::new();
            x.response_headers = Vec::new();
            x.request_body = Default::default();
            x.response_body = Default::default();
            x.error = None;
        }
        Record::BodyChunk(c) => c.data = String::new(),
        Record::StreamEvent(e) => (e.data, e.name) = (String::new(), None),
        Record::Git(g) => (g.updates, g.wants, g.pack_sha256) = (Vec::new(), Vec::new(), None),
        _ => {}
    }
}

/// The kinds indexed in runs: what an exchange writes, read back by session and never asked
/// for by kind. Every other kind gets a row of its own, with its kind.
const RUN_KINDS: [&str; 7] = [
    "request",
    "exchange",
    "identity",
    "decision",
    "body_chunk",
    "stream_event",
    "git",
];

fn in_runs(record: &Record) -> bool {
    record.session().is_some() && RUN_KINDS.contains(&kind_name(record))
}

/// A run being gathered: its row is written when a record does not continue it.
struct OpenRun {
    row: RowPlace,
    session: SessionId,
    first_at: Micros,
    last_at: Micros,
    /// Its row is in the table already (it is being extended) or not (it is new).
    stored: bool,
    /// Grown since it was read from the table.
    grown: bool,
}

/// The records rows a batch writes. Records of the kinds in `RUN_KINDS` that follow each other
/// in the store (consecutive seqs in one segment, one session) share one row, across batches:
/// an exchange writes five records or more, and one row each made indexing cost more than the
/// rest of the index together.
struct Rows {
    open: Option<OpenRun>,
}

impl Rows {
    /// Continues the last row of the table if it is a run.
    fn continuing(tx: &Transaction<'_>) -> Result<Self, IndexError> {
        let open = tx
            .prepare_cached(&format!(
                "SELECT {ROW_PLACE}, session, first_at, last_at FROM records
                 WHERE seq = (SELECT max(seq) FROM records) AND kind IS NULL AND session IS NOT NULL"
            ))?
            .query_row([], |r| {
                Ok(OpenRun {
                    row: RowPlace::from_row(r)?,
                    session: r.get(5)?,
                    first_at: r.get(6)?,
                    last_at: r.get(7)?,
                    stored: true,
                    grown: false,
                })
            })
            .optional()?;
        Ok(Rows { open })
    }

    fn add(&mut self, tx: &Transaction<'_>, pos: &Position, record: &Record) -> Result<(), IndexError> {
        let at = record.at();
        if in_runs(record)
            && let Some(open) = &mut self.open
            && open.row.segment == pos.segment
            && open.row.last_seq + 1 == pos.seq
            && record.session() == Some(&open.session)
        {
            open.row.last_seq = pos.seq;
            open.row.hash = pos.hash.to_vec();
            (open.first_at, open.last_at) = (open.first_at.min(at), open.last_at.max(at));
            open.grown = true;
            return Ok(());
        }
        self.finish(tx)?;
        let row = RowPlace {
            seq: pos.seq,
            last_seq: pos.seq,
            segment: pos.segment,
            offset: pos.offset,
            hash: pos.hash.to_vec(),
        };
        match record.session() {
            Some(session) if in_runs(record) => {
                self.open = Some(OpenRun {
                    row,
                    session: session.clone(),
                    first_at: at,
                    last_at: at,
                    stored: false,
                    grown: true,
                });
            }
            session => insert_row(tx, &row, Some(kind_name(record)), at, at, session)?,
        }
        Ok(())
    }

    /// Writes the open run's row, if it changed.
    fn finish(&mut self, tx: &Transaction<'_>) -> Result<(), IndexError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        match (open.stored, open.grown) {
            (_, false) => {}
            (true, true) => {
                tx.prepare_cached(
                    "UPDATE records SET last_seq = ?2, hash = ?3, first_at = ?4, last_at = ?5 WHERE seq = ?1",
                )?
                .execute(params![
                    open.row.seq,
                    open.row.last_seq,
                    &open.row.hash[..],
                    open.first_at,
                    open.last_at
                ])?;
            }
            (false, true) => insert_row(
                tx,
                &open.row,
                None,
                open.first_at,
                open.last_at,
                Some(&open.session),
            )?,
        }
        Ok(())
    }
}

fn insert_row(
    tx: &Transaction<'_>,
    row: &RowPlace,
    kind: Option<&str>,
    first_at: Micros,
    last_at: Micros,
    session: Option<&SessionId>,
) -> Result<(), IndexError> {
    tx.prepare_cached(
        "INSERT INTO records (seq, last_seq, segment, offset, hash, kind, first_at, last_at, session)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        row.seq,
        row.last_seq,
        row.segment,
        row.offset,
        &row.hash[..],
        kind,
        first_at,
        last_at,
        session
    ])?;
    Ok(())
}

/// The host an exchange went to: from its URL, or, for a request line in origin form (no host),
/// the SNI of its connection.
fn exchange_host(tx: &Transaction<'_>, session: &str, conn: u64, url: &str) -> Result<String, IndexError> {
    if let Some(h) = host_of(url) {
        return Ok(h);
    }
    Ok(tx
        .prepare_cached("SELECT sni FROM connections WHERE session = ?1 AND conn = ?2")?
        .query_row(params![session, conn], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// What one batch changed of a session's exchanges.
#[derive(Default)]
struct Counts {
    /// Exchanges new to the index.
    added: i64,
    /// Their hosts.
    hosts: BTreeSet<String>,
    /// An exchange changed host: count everything again.
    recount: bool,
}

impl Counts {
    fn add(&mut self, host: String) {
        self.added += 1;
        if !host.is_empty() {
            self.hosts.insert(host);
        }
    }
}

/// Brings a session's exchange count and host list up to date with what a batch added: the
/// count grows by what was added, and the hosts are recomputed from the exchanges only when one
/// of them is not already listed (counting a long session's exchanges for every batch would cost
/// in proportion to its length, each time).
fn update_counts(tx: &Transaction<'_>, session: &str, c: &Counts) -> Result<(), IndexError> {
    if !c.recount && !c.hosts.is_empty() {
        let listed: String = tx
            .prepare_cached("SELECT hosts FROM sessions WHERE id = ?1")?
            .query_row([session], |r| r.get(0))
            .optional()?
            .unwrap_or_default();
        let known = c.hosts.iter().all(|h| listed.split(' ').any(|l| l == h));
        if !known {
            return refresh_counts(tx, session);
        }
    }
    if c.recount {
        return refresh_counts(tx, session);
    }
    if c.added > 0 {
        tx.prepare_cached("UPDATE sessions SET exchanges = exchanges + ?2 WHERE id = ?1")?
            .execute(params![session, c.added])?;
    }
    Ok(())
}

fn refresh_counts(tx: &Transaction<'_>, session: &str) -> Result<(), IndexError> {
    tx.execute(
        "UPDATE sessions SET
            exchanges = (SELECT count(*) FROM exchanges WHERE session = ?1),
            hosts = coalesce((SELECT group_concat(host, ' ') FROM
                (SELECT DISTINCT host FROM exchanges WHERE session = ?1 AND host != '' ORDER BY host)), '')
         WHERE id = ?1",
        [session],
    )?;
    Ok(())
}

/// The serde tag of a record's variant.
pub fn kind_name(record: &Record) -> &'static str {
    match record {
        Record::SessionStart(_) => "session_start",
        Record::SessionEnd(_) => "session_end",
        Record::Connection(_) => "connection",
        Record::Request(_) => "request",
        Record::Exchange(_) => "exchange",
        Record::BodyChunk(_) => "body_chunk",
        Record::StreamEvent(_) => "stream_event",
        Record::Git(_) => "git",
        Record::Masked(_) => "masked",
        Record::Identity(_) => "identity",
        Record::Decision(_) => "decision",
        Record::Approval(_) => "approval",
        Record::PassthroughStart(_) => "passthrough_start",
        Record::Passthrough(_) => "passthrough",
        Record::Refusal(_) => "refusal",
        Record::Egress(_) => "egress",
        Record::EnforcementGap(_) => "enforcement_gap",
        Record::Recovery(_) => "recovery",
        Record::Tombstone(_) => "tombstone",
        Record::Unrecorded(_) => "unrecorded",
        Record::PushSecret(_) => "push_secret",
    }
}

/// Session ids are stored as their text.
impl ToSql for SessionId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.as_str().to_sql()
    }
}

impl FromSql for SessionId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        String::column_result(value).map(SessionId::from)
    }
}

/// Exchange ids are stored as their number.
impl ToSql for ExchangeId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        i64::try_from(self.get())
            .map(ToSqlOutput::from)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
    }
}

/// The host of an absolute URL as the classifier normalises a request's (lower case, no port,
/// no trailing dot); user info, which records made before the classifier may hold, is skipped.
pub fn host_of(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    ghgate_pattern::host_and_port(authority).map(|(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn run(segment: u64, offset: u64, records: u64) -> Run {
        Run {
            segment,
            offset,
            records,
        }
    }

    pub(crate) fn pos(seq: u64) -> Position {
        Position {
            segment: seq / 10,
            offset: (seq % 10) * 100,
            seq,
            hash: [seq as u8; 32],
        }
    }

    fn start(session: &str, at: Micros, uid: u32, exe: &str) -> Record {
        Record::SessionStart(SessionStart {
            session: session.into(),
            at,
            tgid: 42,
            uid,
            user: Some(format!("user{uid}")),
            gid: uid,
            comm: "agent".into(),
            exe: Some(exe.into()),
            cmdline: vec![exe.into()],
            cgroup_id: 7,
            cgroup: Some("/ci".into()),
            ci: vec![],
        })
    }

    fn exchange(session: &str, id: u64, at: Micros, url: &str) -> Record {
        Record::Exchange(Exchange {
            session: session.into(),
            conn: 1,
            exchange: id.into(),
            started_at: at,
            method: "GET".into(),
            url: url.into(),
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

    /// The request of exchange `id` of session "s" on connection 1.
    fn request(id: u64, url: &str) -> Record {
        Record::Request(crate::model::RequestStart {
            session: "s".into(),
            conn: 1,
            exchange: id.into(),
            at: 1,
            method: "GET".into(),
            url: url.into(),
        })
    }

    fn end(session: &str, at: Micros) -> Record {
        Record::SessionEnd(SessionEnd {
            session: session.into(),
            at,
            reason: SessionEndReason::Exited,
        })
    }

    /// Three sessions: two by uid 1000 (one to GitHub, one to an LLM API), one by uid 0.
    fn sample() -> Vec<(Position, Record)> {
        let recs = vec![
            start("aaaa1111", 1_000, 1000, "/usr/bin/git"),
            start("aaaa2222", 2_000, 1000, "/usr/lib/node/claude"),
            exchange("aaaa1111", 1, 1_500, "https://api.github.com/repos/x/y"),
            exchange("aaaa2222", 1, 2_500, "https://api.anthropic.com:443/v1/messages"),
            end("aaaa1111", 3_000),
            start("bbbb0000", 10_000, 0, "/usr/bin/curl"),
            exchange("bbbb0000", 1, 10_500, "https://github.com/x/y.git/info/refs"),
            exchange("bbbb0000", 2, 10_600, "https://notgithub.com/"),
            end("bbbb0000", 11_000),
            Record::Tombstone(Tombstone {
                at: 12_000,
                first_segment: 0,
                last_segment: 0,
                last_seq: 0,
                last_hash: String::new(),
                reason: "test".into(),
            }),
        ];
        recs.into_iter()
            .enumerate()
            .map(|(i, r)| (pos(i as u64 + 1), r))
            .collect()
    }

    fn ids(rows: &[SessionRow]) -> Vec<&str> {
        rows.iter().map(|r| r.id.as_str()).collect()
    }

    /// The first column of every row `sql` selects.
    fn column<T: rusqlite::types::FromSql>(index: &Index, sql: &str) -> Vec<T> {
        let mut st = index.conn.prepare(sql).unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn indexed() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        index.add_batch(&sample()).unwrap();
        (dir, index)
    }

    /// A session's activity span is the earliest and latest of its records, whatever order a
    /// batch holds them in, and later batches widen it.
    #[test]
    fn activity_spans_every_record_of_a_session_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let first = vec![
            (pos(1), exchange("cccc0000", 1, 3_000, "https://api.github.com/a")),
            (pos(2), exchange("cccc0000", 2, 1_000, "https://api.github.com/b")),
            (pos(3), exchange("cccc0000", 3, 2_000, "https://api.github.com/c")),
        ];
        index.add_batch(&first).unwrap();
        let span = |index: &Index| {
            let rows = index.sessions(&SessionFilter::default()).unwrap();
            (rows[0].first_activity, rows[0].last_activity, rows[0].exchanges)
        };
        assert_eq!(span(&index), (1_000, 3_000, 3));
        index
            .add_batch(&[
                (pos(4), exchange("cccc0000", 4, 500, "https://api.github.com/d")),
                (pos(5), exchange("cccc0000", 5, 4_000, "https://api.github.com/e")),
            ])
            .unwrap();
        assert_eq!(span(&index), (500, 4_000, 5));
    }

    #[test]
    fn sessions_are_listed_with_their_facts() {
        let (_dir, index) = indexed();
        let all = index.sessions(&SessionFilter::default()).unwrap();
        assert_eq!(ids(&all), ["aaaa1111", "aaaa2222", "bbbb0000"]);
        let git = &all[0];
        assert_eq!(git.started_at, Some(1_000));
        assert_eq!(git.ended_at, Some(3_000));
        assert_eq!(git.end_reason.as_deref(), Some("exited"));
        assert_eq!(git.uid, Some(1000));
        assert_eq!(git.user.as_deref(), Some("user1000"));
        assert_eq!((git.first_activity, git.last_activity), (1_000, 3_000));
        assert_eq!(git.exchanges, 1);
        assert_eq!(git.hosts, ["api.github.com"]);
        assert_eq!(all[2].hosts, ["github.com", "notgithub.com"]);
        assert_eq!(all[1].ended_at, None);
        assert_eq!(index.last_seq().unwrap(), Some(10));
    }

    #[test]
    fn each_filter_narrows_the_list() {
        let (_dir, index) = indexed();
        let q = |f: SessionFilter| {
            ids(&index.sessions(&f).unwrap())
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            q(SessionFilter {
                since: Some(2_500),
                ..Default::default()
            }),
            ["aaaa1111", "aaaa2222", "bbbb0000"]
        );
        assert_eq!(
            q(SessionFilter {
                since: Some(2_501),
                ..Default::default()
            }),
            ["aaaa1111", "bbbb0000"]
        );
        assert_eq!(
            q(SessionFilter {
                since: Some(3_001),
                ..Default::default()
            }),
            ["bbbb0000"]
        );
        assert_eq!(
            q(SessionFilter {
                until: Some(1_999),
                ..Default::default()
            }),
            ["aaaa1111"]
        );
        assert_eq!(
            q(SessionFilter {
                since: Some(2_000),
                until: Some(9_999),
                ..Default::default()
            }),
            ["aaaa1111", "aaaa2222"]
        );
        assert_eq!(
            q(SessionFilter {
                uid: Some(0),
                ..Default::default()
            }),
            ["bbbb0000"]
        );
        assert_eq!(
            q(SessionFilter {
                exe: Some("node".into()),
                ..Default::default()
            }),
            ["aaaa2222"]
        );
        // A domain matches itself and its subdomains, never a name that merely ends the same way.
        assert_eq!(
            q(SessionFilter {
                host: Some("github.com".into()),
                ..Default::default()
            }),
            ["aaaa1111", "bbbb0000"]
        );
        assert_eq!(
            q(SessionFilter {
                host: Some("api.github.com".into()),
                ..Default::default()
            }),
            ["aaaa1111"]
        );
        assert_eq!(
            q(SessionFilter {
                host: Some("Anthropic.COM".into()),
                ..Default::default()
            }),
            ["aaaa2222"]
        );
        assert_eq!(
            q(SessionFilter {
                host: Some("hub.com".into()),
                ..Default::default()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            q(SessionFilter {
                uid: Some(1000),
                host: Some("github.com".into()),
                ..Default::default()
            }),
            ["aaaa1111"]
        );
    }

    /// Lightened records index to the very same tables as the records themselves.
    #[test]
    fn lightened_records_index_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut full = Index::open(&dir.path().join("full.sqlite")).unwrap();
        let mut light = Index::open(&dir.path().join("light.sqlite")).unwrap();
        let mut items = sample();
        let Some((_, Record::Exchange(x))) = items.iter_mut().find(|(_, r)| matches!(r, Record::Exchange(_)))
        else {
            panic!("the sample has an exchange");
        };
        x.request_headers = vec![("accept".into(), "*/*".into())];
        x.response_headers = vec![("content-type".into(), "text/plain".into())];
        x.error = Some("upstream reset".into());
        full.add_batch(&items).unwrap();
        let lightened: Vec<_> = items
            .iter()
            .cloned()
            .map(|(p, mut r)| {
                lighten(&mut r);
                (p, r)
            })
            .collect();
        assert_ne!(lightened, items);
        light.add_batch(&lightened).unwrap();
        let rows = |index: &Index, table: &str| -> Vec<String> {
            let mut st = index.conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
            let n = st.column_count();
            st.query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        for table in ["sessions", "connections", "exchanges", "records", "meta"] {
            assert_eq!(rows(&full, table), rows(&light, table), "{table}");
        }
        assert!(rows(&full, "exchanges").len() >= 2);
    }

    /// An index made while the schema still had an index on exchanges' hosts loses it when a
    /// writer opens it (a reader leaves it), and answers the host filter the same.
    #[test]
    fn the_unused_host_index_is_dropped_and_the_host_filter_does_without_it() {
        let (dir, index) = indexed();
        let path = dir.path().join("index.sqlite");
        let host = |index: &Index| {
            let f = SessionFilter {
                host: Some("github.com".into()),
                ..Default::default()
            };
            ids(&index.sessions(&f).unwrap())
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let named = |index: &Index| -> Vec<String> {
            column(
                index,
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'exchanges'",
            )
        };
        assert!(!named(&index).contains(&"exchanges_host".to_string()));
        index
            .conn
            .execute_batch("CREATE INDEX exchanges_host ON exchanges (host)")
            .unwrap();
        assert_eq!(host(&index), ["aaaa1111", "bbbb0000"]);
        drop(index);
        // A reader leaves the file alone.
        assert!(named(&Index::open_read_only(&path).unwrap()).contains(&"exchanges_host".to_string()));
        let index = Index::open(&path).unwrap();
        assert!(
            !named(&index).contains(&"exchanges_host".to_string()),
            "{:?}",
            named(&index)
        );
        assert_eq!(host(&index), ["aaaa1111", "bbbb0000"]);
    }

    #[test]
    fn session_ids_resolve_from_unique_prefixes() {
        let (_dir, index) = indexed();
        assert_eq!(index.resolve("b").unwrap(), "bbbb0000");
        assert_eq!(index.resolve("aaaa2").unwrap(), "aaaa2222");
        assert_eq!(index.resolve("aaaa1111").unwrap(), "aaaa1111");
        let err = index.resolve("aaaa").unwrap_err();
        assert!(matches!(err, IndexError::AmbiguousSession { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("aaaa1111") && msg.contains("aaaa2222"), "{msg}");
        assert!(matches!(
            index.resolve("c").unwrap_err(),
            IndexError::UnknownSession(_)
        ));
        assert!(matches!(
            index.resolve("").unwrap_err(),
            IndexError::UnknownSession(_)
        ));
        // Records of a session, in store order, by prefix: its start, its two exchanges in one
        // run, its end.
        assert_eq!(
            index.session_records("bbbb").unwrap(),
            [run(0, 600, 1), run(0, 700, 2), run(0, 900, 1)]
        );
    }

    #[test]
    fn batches_offered_twice_are_indexed_once() {
        let (_dir, mut index) = indexed();
        index.add_batch(&sample()).unwrap();
        assert_eq!(index.sessions(&SessionFilter::default()).unwrap()[0].exchanges, 1);
        assert_eq!(index.session_records("aaaa1").unwrap().len(), 3);
        index.add_batch(&[(pos(14), end("aaaa2222", 20_000))]).unwrap();
        assert_eq!(index.last_seq().unwrap(), Some(14));
        assert_eq!(
            index.sessions(&SessionFilter::default()).unwrap()[1].ended_at,
            Some(20_000)
        );
    }

    #[test]
    fn an_exchange_completes_the_row_its_request_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("i.sqlite")).unwrap();
        index
            .add_batch(&[
                (pos(1), request(1, "https://api.github.com/a")),
                (pos(2), request(2, "https://api.github.com/b")),
            ])
            .unwrap();
        // One ends on the host it started on; the other's end names another host (its
        // request's row is corrected, and the session's hosts recounted).
        index
            .add_batch(&[
                (pos(3), exchange("s", 1, 1, "https://api.github.com/a")),
                (pos(4), exchange("s", 2, 1, "https://uploads.github.com/b")),
                (pos(5), exchange("s", 3, 1, "https://github.com/c")),
            ])
            .unwrap();
        let row = &index.sessions(&SessionFilter::default()).unwrap()[0];
        assert_eq!(row.exchanges, 3);
        assert_eq!(row.hosts, ["api.github.com", "github.com", "uploads.github.com"]);
        let statuses: Vec<(u64, Option<u16>, String)> = index
            .conn
            .prepare("SELECT exchange, status, host FROM exchanges ORDER BY exchange")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            statuses,
            [
                (1, Some(200), "api.github.com".to_owned()),
                (2, Some(200), "uploads.github.com".to_owned()),
                (3, Some(200), "github.com".to_owned()),
            ]
        );
    }

    /// A request and its end in one batch make the exchange's row once, from the end: the
    /// tables come out as when each record is indexed on its own, for every mix (an exchange in
    /// flight, one ending on another host, an end without its request, and an id met again in a
    /// later batch).
    #[test]
    fn a_request_and_its_end_in_one_batch_index_as_when_apart() {
        let batches = [
            vec![
                request(1, "https://api.github.com/a"),
                request(2, "https://api.github.com/b"),
                exchange("s", 1, 2, "https://api.github.com/a"),
                request(3, "https://github.com/in-flight"),
                exchange("s", 2, 3, "https://uploads.github.com/b"),
                exchange("s", 4, 4, "https://codeload.github.com/no-request"),
            ],
            vec![
                request(1, "https://api.github.com/again"),
                exchange("s", 1, 5, "https://raw.githubusercontent.com/again"),
                exchange("s", 3, 6, "https://github.com/in-flight"),
            ],
        ];
        let tables = |index: &Index| -> (Vec<String>, Vec<String>) {
            let rows = |sql: &str| -> Vec<String> {
                index
                    .conn
                    .prepare(sql)
                    .unwrap()
                    .query_map([], |r| {
                        let n = r.as_ref().column_count();
                        let v: Vec<String> = (0..n)
                            .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                            .collect();
                        Ok(v.join("|"))
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            };
            (
                rows("SELECT * FROM exchanges ORDER BY session, exchange"),
                rows("SELECT * FROM sessions ORDER BY id"),
            )
        };
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut together = Index::open(&dir_a.path().join("i.sqlite")).unwrap();
        let mut apart = Index::open(&dir_b.path().join("i.sqlite")).unwrap();
        let mut seq = 0;
        for batch in &batches {
            let items: Vec<(Position, Record)> = batch
                .iter()
                .map(|r| {
                    seq += 1;
                    (pos(seq), r.clone())
                })
                .collect();
            together.add_batch(&items).unwrap();
            for item in &items {
                apart.add_batch(std::slice::from_ref(item)).unwrap();
            }
        }
        let (a, b) = (tables(&together), tables(&apart));
        assert_eq!(a, b);
        assert_eq!(a.0.len(), 4, "{:?}", a.0);
        let row = &together.sessions(&SessionFilter::default()).unwrap()[0];
        assert_eq!(row.exchanges, 4);
        assert_eq!(
            row.hosts,
            [
                "codeload.github.com",
                "github.com",
                "raw.githubusercontent.com",
                "uploads.github.com"
            ]
        );
    }

    #[test]
    fn a_relative_url_takes_its_host_from_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let conn = Record::Connection(crate::model::Connection {
            session: "s".into(),
            conn: 1,
            at: 1,
            client: "127.0.0.1:5".into(),
            orig_dst: "140.82.112.6:443".into(),
            sni: "GitHub.com".into(),
            client_alpn: "h2".into(),
            upstream_alpn: None,
            client_tls: None,
            upstream_tls: None,
        });
        index
            .add_batch(&[
                (pos(1), start("s", 0, 1, "/x")),
                (pos(2), conn),
                (pos(3), exchange("s", 1, 2, "/x/y.git")),
            ])
            .unwrap();
        assert_eq!(
            index.sessions(&SessionFilter::default()).unwrap()[0].hosts,
            ["github.com"]
        );
    }

    #[test]
    fn reopening_keeps_the_index_and_a_reader_sees_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut writer = Index::open(&path).unwrap();
        writer.add_batch(&sample()[..5]).unwrap();
        let reader = Index::open_read_only(&path).unwrap();
        assert_eq!(reader.sessions(&SessionFilter::default()).unwrap().len(), 2);
        writer.add_batch(&sample()[5..]).unwrap();
        assert_eq!(reader.sessions(&SessionFilter::default()).unwrap().len(), 3);
        drop(writer);
        assert_eq!(Index::open(&path).unwrap().last_seq().unwrap(), Some(10));
        let missing = Index::open_read_only(&dir.path().join("nope.sqlite")).unwrap_err();
        assert!(
            missing.to_string().contains("ghgate sessions reindex"),
            "{missing}"
        );
    }

    #[test]
    fn an_index_of_another_schema_version_is_emptied_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        Index::open(&path).unwrap().add_batch(&sample()).unwrap();
        let set = |v: &str| {
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [v])
                .unwrap()
        };
        set("0");
        assert!(matches!(
            Index::open_read_only(&path),
            Err(IndexError::Schema { .. })
        ));
        let index = Index::open(&path).unwrap();
        assert_eq!(index.last_seq().unwrap(), None);
        assert!(index.sessions(&SessionFilter::default()).unwrap().is_empty());
        assert_eq!(index.upgraded_from(), Some("0"));
        drop(index);
        assert_eq!(Index::open(&path).unwrap().upgraded_from(), None);
        set("99");
        assert!(matches!(Index::open(&path), Err(IndexError::Schema { .. })));
    }

    #[test]
    fn forgetting_pruned_segments_matches_a_rebuild_of_what_is_left() {
        let mut items = sample();
        // Put the first session's start and its exchange in segment 0, the rest later.
        for (i, (p, _)) in items.iter_mut().enumerate() {
            p.segment = if i < 3 { 0 } else { 1 };
        }
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("a.sqlite")).unwrap();
        index.add_batch(&items).unwrap();
        assert_eq!(index.forget_segments(0, 0).unwrap(), 3);
        let mut fresh = Index::open(&dir.path().join("b.sqlite")).unwrap();
        fresh.add_batch(&items[3..]).unwrap();
        let (a, b) = (
            index.sessions(&Default::default()).unwrap(),
            fresh.sessions(&Default::default()).unwrap(),
        );
        assert_eq!(a, b);
        // aaaa1111 kept only its end, so its activity now starts there.
        assert_eq!(ids(&a), ["aaaa2222", "aaaa1111", "bbbb0000"]);
        assert_eq!(a[1].started_at, None);
        assert_eq!(a[1].uid, None);
        assert_eq!(a[1].who(), "unknown");
        assert_eq!(a[1].exchanges, 0);
        assert_eq!(a[1].ended_at, Some(3_000));
        assert_eq!(a[0].exchanges, 1);
        assert_eq!(a[0].first_activity, 2_500);
        assert_eq!(index.session_records("aaaa1111").unwrap(), [run(1, 500, 1)]);
        // All of a session gone: so is the session.
        index.forget_segments(1, 1).unwrap();
        assert!(index.sessions(&Default::default()).unwrap().is_empty());
        assert_eq!(index.last_seq().unwrap(), Some(10));
    }

    /// Segments are forgotten by the range of seqs their rows hold, found without an index on
    /// segments: exactly their rows go, wherever the range lies and however seqs skip.
    #[test]
    fn forgetting_segments_removes_exactly_their_rows() {
        let segments_left =
            |index: &Index| -> Vec<u64> { column(index, "SELECT segment FROM records ORDER BY seq") };
        // Forty records, four to a segment (0 to 9), seqs 1, 4, 7, …
        let items: Vec<(Position, Record)> = (0..40u64)
            .map(|i| {
                let mut p = pos(3 * i + 1);
                p.segment = i / 4;
                (p, end("s", i))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("i.sqlite")).unwrap();
        assert_eq!(index.forget_segments(0, 3).unwrap(), 0, "nothing indexed yet");
        index.add_batch(&items).unwrap();
        let mut want: Vec<u64> = (0..40).map(|i| i / 4).collect();
        for (first, last, removed) in [(4, 5, 8), (0, 0, 4), (20, 30, 0), (9, 9, 4), (3, 6, 8), (0, 2, 8)] {
            assert_eq!(
                index.forget_segments(first, last).unwrap(),
                removed,
                "{first}..={last}"
            );
            want.retain(|s| !(first..=last).contains(s));
            assert_eq!(segments_left(&index), want, "after {first}..={last}");
        }
        assert_eq!(segments_left(&index), [7, 7, 7, 7, 8, 8, 8, 8]);
    }

    /// The sample as a store would hold it: seqs with holes (headers, checkpoints and seals are
    /// frames too), positions spread over two segments.
    fn store() -> Vec<(Position, Record)> {
        sample()
            .into_iter()
            .enumerate()
            .map(|(i, (_, r))| {
                let seq = 2 + 3 * i as u64;
                let pos = Position {
                    segment: 1 + i as u64 / 6,
                    offset: 8 + 1000 * (i as u64 % 6),
                    seq,
                    hash: [i as u8; 32],
                };
                (pos, r)
            })
            .collect()
    }

    /// Records of two segments whose exchange records make runs, and what breaks them: a kind
    /// listed alone (a session's start and end), a seq taken by a checkpoint (5), another
    /// session, a new segment.
    fn runs_store() -> Vec<(Position, Record)> {
        let recs = [
            (1, start("s", 1, 1000, "/usr/bin/git")),
            (1, request(1, "https://api.github.com/a")),
            (1, exchange("s", 1, 3, "https://api.github.com/a")),
            (1, request(2, "https://api.github.com/b")),
            (1, exchange("s", 2, 6, "https://api.github.com/b")),
            (1, exchange("t", 3, 7, "https://api.github.com/c")),
            (1, exchange("s", 4, 8, "https://api.github.com/d")),
            (2, exchange("s", 5, 9, "https://api.github.com/e")),
            (2, end("s", 10)),
        ];
        let mut offsets = BTreeMap::new();
        recs.into_iter()
            .enumerate()
            .map(|(i, (segment, r))| {
                let offset = offsets.entry(segment).or_insert(0u64);
                let seq = if i < 4 { i as u64 + 1 } else { i as u64 + 2 };
                let pos = Position {
                    segment,
                    offset: *offset,
                    seq,
                    hash: [seq as u8; 32],
                };
                *offset += 100;
                (pos, r)
            })
            .collect()
    }

    /// The records rows, as (seq, last_seq, kind) in order.
    fn record_rows(index: &Index) -> Vec<(u64, u64, Option<String>)> {
        index
            .conn
            .prepare("SELECT seq, last_seq, kind FROM records ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// An exchange's records share a row with the records that follow them in the store, across
    /// batches; the row ends where the store's order does, and a session reads back whole.
    #[test]
    fn an_exchanges_records_are_indexed_in_runs() {
        let store = runs_store();
        let dir = tempfile::tempdir().unwrap();
        let mut together = Index::open(&dir.path().join("a.sqlite")).unwrap();
        let mut apart = Index::open(&dir.path().join("b.sqlite")).unwrap();
        // Run 2..=4 is made in one batch and continued in the next.
        together.add_batch(&store[..3]).unwrap();
        together.add_batch(&store[3..]).unwrap();
        for item in &store {
            apart.add_batch(std::slice::from_ref(item)).unwrap();
        }
        let rows = record_rows(&together);
        assert_eq!(rows, record_rows(&apart));
        let kind = |k: &str| Some(k.to_owned());
        assert_eq!(
            rows,
            [
                (1, 1, kind("session_start")),
                (2, 4, None),
                (6, 6, None),
                (7, 7, None),
                (8, 8, None),
                (9, 9, None),
                (10, 10, kind("session_end")),
            ]
        );
        assert_eq!(
            together.session_records("s").unwrap(),
            [
                run(1, 0, 1),
                run(1, 100, 3),
                run(1, 400, 1),
                run(1, 600, 1),
                run(2, 0, 1),
                run(2, 100, 1)
            ]
        );
        let read: Vec<u64> = together
            .session_records("s")
            .unwrap()
            .iter()
            .flat_map(|r| store.read_run(r.segment, r.offset, r.records).unwrap())
            .map(|(p, _)| p.seq)
            .collect();
        assert_eq!(read, [1, 2, 3, 4, 6, 8, 9, 10]);
        assert_eq!(
            together.check_against(&store).unwrap(),
            CheckReport {
                verified: 9,
                unindexed_tail: 0
            }
        );
        // Nothing new to catch up with, the run's last record found where the row says.
        assert_eq!(together.catch_up_from(&store).unwrap(), 0);
        assert_eq!(record_rows(&together), rows);
        // The kinds in runs are found by session, never by kind.
        assert!(matches!(
            together.records_of_kind("exchange", 0),
            Err(IndexError::KindInRuns(_))
        ));
        assert_eq!(together.records_of_kind("session_end", 0).unwrap(), [(2, 100)]);
    }

    /// `check` proves a run: an index edited to lengthen, shorten or re-hash one, or a store
    /// that lost the end of one, is found out.
    #[test]
    fn check_finds_an_edited_or_cut_run() {
        let store = runs_store();
        let edited = |sql: &str| edited_in(&store, sql);
        // Over the checkpoint's seq: the store's next record is 6.
        let m = edited("UPDATE records SET last_seq = 5 WHERE seq = 2");
        assert!(
            m.to_string().contains("goes on to seq 5") && m.to_string().contains("is seq 6"),
            "{m}"
        );
        // Shortened: its hash is the last record's, seq 4's.
        let m = edited("UPDATE records SET last_seq = 3 WHERE seq = 2");
        assert!(m.to_string().contains("last record, seq 3, differs"), "{m}");
        let m = edited("UPDATE records SET hash = zeroblob(32) WHERE seq = 2");
        assert!(m.to_string().contains("last record, seq 4, differs"), "{m}");
        // A run that goes on into the next segment.
        let m = edited("UPDATE records SET last_seq = 9 WHERE seq = 8");
        assert!(m.to_string().contains("in segment 2"), "{m}");
        // A run stretched over the next record, another session's: reading the session through
        // it refuses what is not the session's.
        let (_dir, path, index) = open_with(&store);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE records SET last_seq = 7 WHERE seq = 6", [])
            .unwrap();
        let err = crate::session::SessionView::load_from(&store, &index, "s").unwrap_err();
        assert!(
            matches!(err, crate::session::SessionError::Stale { ref found, .. } if found == "t"),
            "{err}"
        );
        // The store lost the run's last record.
        let (_dir, _path, index) = open_with(&store);
        match index.check_against(&store[..3].to_vec()) {
            Err(IndexError::Mismatch(m)) => {
                assert!(
                    m.to_string().contains("ends before the run's last record, seq 4"),
                    "{m}"
                )
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    fn open_with(items: &[(Position, Record)]) -> (tempfile::TempDir, PathBuf, Index) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut index = Index::open(&path).unwrap();
        index.add_batch(items).unwrap();
        (dir, path, index)
    }

    #[test]
    fn catch_up_indexes_only_what_the_store_holds_beyond_the_index() {
        let store = store();
        let (_dir, _path, mut index) = open_with(&store[..4]);
        assert_eq!(index.catch_up_from(&store).unwrap(), 6);
        assert_eq!(index.catch_up_from(&store).unwrap(), 0);
        assert_eq!(index.last_seq().unwrap(), Some(store[9].0.seq));
        assert_eq!(
            index.check_against(&store).unwrap(),
            CheckReport {
                verified: 10,
                unindexed_tail: 0
            }
        );
        let (_d, _p, rebuilt) = open_with(&store);
        assert_eq!(
            index.sessions(&Default::default()).unwrap(),
            rebuilt.sessions(&Default::default()).unwrap()
        );
    }

    #[test]
    fn catch_up_starts_over_when_the_index_is_ahead_of_the_store() {
        // Indexed, then a power cut tore the last three records off the store, which wrote a
        // recovery record where they had been.
        let store = store();
        let (_dir, _path, mut index) = open_with(&store);
        let mut torn = store[..7].to_vec();
        let (p, _) = &store[7];
        torn.push((
            Position {
                hash: [0xee; 32],
                ..*p
            },
            Record::Recovery(Recovery {
                at: 1,
                segment: p.segment,
                kept: p.offset,
                truncated: 100,
                records: 2,
            }),
        ));
        assert!(index.check_against(&torn).is_err());
        assert_eq!(index.catch_up_from(&torn).unwrap(), 8);
        assert_eq!(index.check_against(&torn).unwrap().verified, 8);
        // bbbb0000's exchanges and end were torn off.
        let rows = index.sessions(&Default::default()).unwrap();
        assert_eq!(rows[2].id, "bbbb0000");
        assert_eq!((rows[2].exchanges, rows[2].ended_at), (1, None));
    }

    #[test]
    fn check_reports_an_unindexed_tail_as_a_note() {
        let store = store();
        let (_dir, _path, index) = open_with(&store[..8]);
        assert_eq!(
            index.check_against(&store).unwrap(),
            CheckReport {
                verified: 8,
                unindexed_tail: 2
            }
        );
    }

    fn edited(sql: &str) -> IndexMismatch {
        edited_in(&store(), sql)
    }

    /// What `check` finds once `sql` changed one row of an index of `store`.
    fn edited_in(store: &[(Position, Record)], sql: &str) -> IndexMismatch {
        let store = store.to_vec();
        let (_dir, path, index) = open_with(&store);
        let changed = rusqlite::Connection::open(&path)
            .unwrap()
            .execute(sql, [])
            .unwrap();
        assert_eq!(changed, 1, "{sql}");
        match index.check_against(&store) {
            Err(IndexError::Mismatch(m)) => m,
            other => panic!("{sql}: expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn check_finds_an_edited_hash() {
        let m = edited("UPDATE records SET hash = x'ee' || substr(hash, 2) WHERE seq = 11");
        assert_eq!(
            m.to_string(),
            "index row seq 11 says segment 1 offset 3008, but that record's hash differs — the index was \
             edited or is stale; run `ghgate sessions reindex`"
        );
    }

    #[test]
    fn check_finds_a_deleted_row() {
        let m = edited("DELETE FROM records WHERE seq = 17");
        assert_eq!(
            m,
            IndexMismatch::Unindexed {
                seq: 17,
                segment: 1,
                offset: 5008
            }
        );
        assert!(m.to_string().contains("has no row for it"), "{m}");
        // The last row too: the index said it had indexed that far.
        let m = edited("DELETE FROM records WHERE seq = 29");
        assert_eq!(
            m,
            IndexMismatch::Unindexed {
                seq: 29,
                segment: 2,
                offset: 3008
            }
        );
    }

    #[test]
    fn check_finds_a_moved_row() {
        let m = edited("UPDATE records SET offset = 4008 WHERE seq = 11");
        let IndexMismatch::Row {
            seq: 11,
            segment: 1,
            offset: 4008,
            problem,
        } = &m
        else {
            panic!("{m:?}")
        };
        assert_eq!(problem, "the store has that record at segment 1 offset 3008");
        let m = edited("UPDATE records SET seq = 12 WHERE seq = 11");
        assert!(
            matches!(
                m,
                IndexMismatch::Row { seq: 12, .. } | IndexMismatch::Unindexed { seq: 11, .. }
            ),
            "{m:?}"
        );
        let m = edited(
            "INSERT INTO records (seq, last_seq, segment, offset, hash, kind, first_at, last_at) \
             VALUES (40, 40, 7, 8, 'ab', 'git', 0, 0)",
        );
        assert!(
            m.to_string()
                .starts_with("index row seq 40 says segment 7 offset 8, but the store has no record"),
            "{m}"
        );
    }

    #[test]
    fn a_damaged_index_file_is_replaced_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let (index, n) = Index::rebuild_from(&path, &store()).unwrap();
        assert_eq!(n, 10);
        assert_eq!(index.sessions(&Default::default()).unwrap().len(), 3);
    }

    #[test]
    fn hosts_come_from_absolute_urls() {
        assert_eq!(
            host_of("https://API.github.com:443/x?y#z").as_deref(),
            Some("api.github.com")
        );
        assert_eq!(host_of("https://u:p@github.com/").as_deref(), Some("github.com"));
        assert_eq!(host_of("http://[::1]:8080/").as_deref(), Some("[::1]"));
        assert_eq!(
            host_of("https://GitHub.com.:8443/").as_deref(),
            Some("github.com")
        );
        assert_eq!(host_of("https://github.com?x").as_deref(), Some("github.com"));
        assert_eq!(host_of("/relative"), None);
    }
}
