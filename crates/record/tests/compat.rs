//! Stores written by earlier versions keep reading: `fixtures/store-2026-12` was written by the
//! gateway of December 2026 from real traffic through the in-process gateway (a request with a
//! credential, an SSE stream, a denied write, a 421, a refused name; segments and the recorder's
//! public key only). It is regenerated only when the on-disk format changes on purpose, by the
//! ignored `write_the_compatibility_store` in `gateway/tests/inprocess.rs`.
use std::path::{Path, PathBuf};

use ghgate_record::{
    export,
    index::{self, Index, SessionFilter, index_path},
    model::Record,
    session::SessionView,
    store,
};

fn compat_store() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-2026-12")
}

/// A copy of the fixture's segments in a temporary directory (an index is built beside them).
fn copy_of_the_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    std::fs::create_dir_all(record.join("segments")).unwrap();
    for e in std::fs::read_dir(compat_store().join("segments")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), record.join("segments").join(e.file_name())).unwrap();
    }
    (dir, record)
}

/// Every record of the fixture reads as its type and serialises back to exactly the bytes it was
/// stored as: typed fields (enums, ids) write the words and numbers earlier versions wrote, and
/// none is added, dropped or reordered.
#[test]
fn every_record_of_an_earlier_store_writes_back_to_its_stored_bytes() {
    let record = compat_store();
    let mut kinds = std::collections::BTreeSet::new();
    for item in store::read_records(&record).unwrap() {
        let (pos, parsed) = item.unwrap();
        let (_, stored) = store::read_raw_at(&record, pos.segment, pos.offset).unwrap();
        let written = serde_json::to_vec(&parsed).unwrap();
        assert!(
            written == stored,
            "seq {}:\nstored  {}\nwritten {}",
            pos.seq,
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(&written)
        );
        kinds.insert(index::kind_name(&parsed));
    }
    assert!(
        kinds.len() >= 8,
        "the fixture holds many kinds of record: {kinds:?}"
    );
}

#[test]
fn a_store_written_by_an_earlier_version_verifies_and_reads_the_same() {
    let (_dir, record) = copy_of_the_store();
    let key = store::load_public_key(&compat_store().join("recorder.pub.pem")).unwrap();
    let report = store::verify(&record, &key, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.records > 0, "{report:?}");
    let index_file = index_path(&record);
    Index::rebuild(&index_file, &record).unwrap();
    let index = Index::open_read_only(&index_file).unwrap();
    index.check(&record).unwrap();

    let records: Vec<Record> = store::read_records(&record)
        .unwrap()
        .map(|r| r.unwrap().1)
        .collect();
    let kinds: Vec<&str> = records.iter().map(index::kind_name).collect();
    for kind in [
        "session_start",
        "connection",
        "request",
        "exchange",
        "stream_event",
        "decision",
        "refusal",
    ] {
        assert!(kinds.contains(&kind), "no {kind} record in {kinds:?}");
    }
    let sessions = index.sessions(&SessionFilter::default()).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let view = SessionView::load(&record, &index, sessions[0].id.as_str()).unwrap();
    let urls: Vec<String> = view
        .exchanges
        .iter()
        .filter_map(|x| {
            x.exchange
                .as_ref()
                .map(|e| format!("{} {} {}", e.method, e.url, e.status))
        })
        .collect();
    for want in ["GET", "DELETE", "421"] {
        assert!(urls.iter().any(|u| u.contains(want)), "{want} not in {urls:?}");
    }
    assert!(
        view.exchanges.iter().any(|x| x.events.len() == 3),
        "the SSE stream's three events"
    );
    assert_eq!(view.refusals.len(), 1, "the foreign name's refusal");
    let har = export::to_har(&view);
    assert!(har["log"]["entries"].as_array().unwrap().len() >= 3);
    let html = export::to_html(&view);
    assert!(html.contains("/repos/o/r"));
    // No credential survives in the store.
    for r in &records {
        let json = serde_json::to_string(r).unwrap();
        assert!(!json.contains("C0mpatSt0reT0ken"), "a token in a record: {json}");
    }
}
