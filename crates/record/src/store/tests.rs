//! Behaviour of the store as a user of the gateway would notice it: what survives a crash, a full
//! disk and tampering, and what `verify` says about each.
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::frame::{KIND_HEADER, KIND_RECORD, KIND_SEAL, MAGIC, PREFIX};
use super::*;
use crate::model::{self, Direction, SessionEndReason};

/// Makes the next write to the active segment fail, and optionally the truncation after it.
#[derive(Default)]
pub(super) struct Fault {
    /// Write this many bytes of the next write, then fail with this errno.
    pub write: Option<(usize, i32)>,
    /// Fail the truncation that follows a failed write with this errno.
    pub truncate: Option<i32>,
}

impl Active {
    pub(super) fn pwrite(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some((after, errno)) = self.fault.as_mut().and_then(|f| f.write.take()) {
            self.file
                .write_all_at(&bytes[..after.min(bytes.len())], self.len)?;
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.file.write_all_at(bytes, self.len)
    }

    pub(super) fn truncate_back(&mut self) -> io::Result<()> {
        if let Some(errno) = self.fault.as_mut().and_then(|f| f.truncate.take()) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.file.set_len(self.len)
    }
}

impl Store {
    fn inject(&mut self, fault: Fault) {
        self.active.as_mut().expect("an active segment").fault = Some(fault);
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn small() -> StoreOptions {
    StoreOptions { segment_bytes: 2048 }
}

fn rec(i: u64) -> Record {
    Record::SessionEnd(model::SessionEnd {
        session: format!("session-{i:04}").into(),
        at: 1_000_000 + i,
        reason: SessionEndReason::Exited,
    })
}

fn chunk(i: u64, len: usize) -> Record {
    Record::BodyChunk(model::BodyChunk {
        session: "s".into(),
        exchange: i.into(),
        dir: Direction::Response,
        at: 1_000_000 + i,
        offset: 0,
        data: "x".repeat(len),
    })
}

fn open(dir: &Path) -> (Store, Option<model::Recovery>) {
    Store::open(dir, key(), small()).unwrap()
}

/// A closed store of `n` records in segments of about 2 KiB; where each record went.
fn sample(dir: &Path, n: u64) -> Vec<Position> {
    let (mut s, r) = open(dir);
    assert!(r.is_none());
    let pos = (0..n).map(|i| s.append(&rec(i)).unwrap()).collect();
    s.close().unwrap();
    pos
}

fn check(dir: &Path) -> Result<VerifyReport, VerifyFailure> {
    verify(dir, &key().verifying_key(), &mut |_| {})
}

fn verify_ok(dir: &Path) -> VerifyReport {
    check(dir).unwrap_or_else(|f| panic!("verify failed: {f}"))
}

fn verify_err(dir: &Path) -> VerifyFailure {
    match check(dir) {
        Ok(r) => panic!("verify passed: {r}"),
        Err(f) => f,
    }
}

fn all_records(dir: &Path) -> Vec<(Position, Record)> {
    read_records(dir).unwrap().collect::<Result<Vec<_>>>().unwrap()
}

fn seg(dir: &Path, n: u64) -> PathBuf {
    segment_path(dir, n)
}

#[derive(Debug, Clone, Copy)]
struct Raw {
    offset: usize,
    /// Whole frame, prefix included.
    len: usize,
    kind: u8,
}

fn raw_frames(bytes: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    let mut off = MAGIC.len();
    while off + PREFIX <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if off + PREFIX + len > bytes.len() {
            break;
        }
        out.push(Raw {
            offset: off,
            len: PREFIX + len,
            kind: bytes[off + PREFIX + 40],
        });
        off += PREFIX + len;
    }
    out
}

fn fix_crc(bytes: &mut [u8], f: Raw) {
    let crc = crc32fast::hash(&bytes[f.offset + PREFIX..f.offset + f.len]);
    bytes[f.offset + 4..f.offset + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What an attacker without the key would do after editing: recompute every checksum, every
/// prev hash and every header's continuation, from segment 1 on, so only signatures can tell.
fn rechain(dir: &Path) {
    let mut prev = [0u8; 32];
    for n in list_segments(dir).unwrap() {
        let path = seg(dir, n);
        let mut bytes = fs::read(&path).unwrap();
        for f in raw_frames(&bytes) {
            let body = f.offset + PREFIX;
            if f.kind == KIND_HEADER && n > 1 {
                let mut h: frame::Header =
                    serde_json::from_slice(&bytes[body + 41..f.offset + f.len]).unwrap();
                h.continues.as_mut().unwrap().hash = hex::encode(prev);
                let json = serde_json::to_vec(&h).unwrap();
                bytes[body + 41..f.offset + f.len].copy_from_slice(&json);
            }
            bytes[body + 8..body + 40].copy_from_slice(&prev);
            fix_crc(&mut bytes, f);
            prev = Sha256::digest(&bytes[body..f.offset + f.len]).into();
        }
        fs::write(&path, bytes).unwrap();
    }
}

#[test]
fn records_round_trip_across_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, r) = open(tmp.path());
    assert!(r.is_none());
    let mut written = Vec::new();
    for i in 0..100 {
        written.push((s.append(&rec(i)).unwrap(), rec(i)));
    }
    let batch: Vec<Record> = (100..120).map(rec).collect();
    let positions = s.append_batch(&batch).unwrap();
    assert_eq!(positions.len(), 20);
    written.extend(positions.into_iter().zip(batch));
    assert_eq!(s.head(), written.last().unwrap().0);
    // Frames are numbered without gaps across records; the only gaps are seals and headers.
    assert!(written.windows(2).all(|w| w[1].0.seq > w[0].0.seq));
    s.close().unwrap();

    let segments = list_segments(tmp.path()).unwrap();
    assert!(
        segments.len() >= 5,
        "rotation at 2 KiB should give several segments: {segments:?}"
    );
    let batch_segment = written.last().unwrap().0.segment;
    for &n in segments.iter().filter(|&&n| n != batch_segment) {
        // Only the seal may go beyond the limit.
        let len = fs::metadata(seg(tmp.path(), n)).unwrap().len();
        assert!(
            len <= 2048 + (PREFIX + 41 + 80) as u64,
            "segment {n} is {len} bytes"
        );
    }
    assert_eq!(written[100].0.segment, batch_segment, "a batch is never split");
    let read = all_records(tmp.path());
    assert_eq!(read, written);
    for (pos, r) in &written {
        assert_eq!(
            &read_at(tmp.path(), pos.segment, pos.offset).unwrap(),
            &(*pos, r.clone())
        );
    }
    let report = verify_ok(tmp.path());
    assert_eq!(report.records, 120);
    assert_eq!(report.segments, segments.len() as u64);
    assert_eq!((report.first_segment, report.first_seq), (1, 1));
    assert!(report.tail_sealed);
    assert_eq!(report.unsigned_records, 0);
    assert!(report.pruned.is_empty());
}

#[test]
fn read_at_refuses_what_is_not_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let pos = sample(tmp.path(), 3);
    let e = read_at(tmp.path(), 1, MAGIC.len() as u64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("segment header, not a record"), "{e}");
    let e = read_at(tmp.path(), 1, pos[0].offset + 1).unwrap_err().to_string();
    assert!(e.contains("record segment 000000000001 offset"), "{e}");
}

/// A run is read in one pass, as written, and never across a frame that is not the run's next
/// record (a checkpoint takes a seq), nor past the end.
#[test]
fn read_run_reads_consecutive_records_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path());
    let first: Vec<Position> = (0..3).map(|i| s.append(&rec(i)).unwrap()).collect();
    s.checkpoint().unwrap();
    let after = s.append(&rec(3)).unwrap();
    s.close().unwrap();
    let run = read_run(tmp.path(), first[0].segment, first[0].offset, 3).unwrap();
    assert_eq!(
        run,
        (0..3).map(|i| (first[i as usize], rec(i))).collect::<Vec<_>>()
    );
    let raw = read_raw_run(tmp.path(), first[1].segment, first[1].offset, 2).unwrap();
    assert_eq!(raw.iter().map(|(p, _)| *p).collect::<Vec<_>>(), first[1..]);
    assert_eq!(raw[0].1, serde_json::to_vec(&rec(1)).unwrap());
    let e = read_run(tmp.path(), first[0].segment, first[0].offset, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint, not a record"), "{e}");
    assert_eq!(after.seq, first[2].seq + 2);
    let e = read_run(tmp.path(), after.segment, after.offset, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a record") || e.contains("past the end"), "{e}");
}

#[test]
fn reopen_after_close_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let first = sample(tmp.path(), 30);
    let (mut s, r) = open(tmp.path());
    assert!(r.is_none());
    // The new segment's header follows the seal right after the last record.
    assert_eq!(s.head().seq, first.last().unwrap().seq + 2);
    let more = s.append(&rec(30)).unwrap();
    assert_eq!(more.segment, s.head().segment);
    s.close().unwrap();
    let read = all_records(tmp.path());
    assert_eq!(read.len(), 31);
    assert_eq!(read[30].1, rec(30));
    let report = verify_ok(tmp.path());
    assert_eq!(report.records, 31);
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path());
    let e = Store::open(tmp.path(), key(), small()).expect_err("second open must fail");
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    assert!(e.to_string().contains("in use by another ghgate process"), "{e}");
    s.close().unwrap();
    let (s, _) = open(tmp.path());
    s.close().unwrap();
}

#[test]
fn killed_writer_loses_nothing_and_next_open_seals() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path());
    let pos: Vec<_> = (0..5).map(|i| s.append(&rec(i)).unwrap()).collect();
    s.checkpoint().unwrap();
    s.append(&rec(5)).unwrap();
    drop(s); // as kill -9 would: nothing more is written

    // While unsealed, the store still verifies as an active tail.
    let report = verify_ok(tmp.path());
    assert!(!report.tail_sealed);
    assert_eq!(report.records, 6);
    assert_eq!(report.unsigned_records, 1);
    assert_eq!(report.checkpoints, 1);

    let (s, r) = open(tmp.path());
    assert!(r.is_none(), "nothing was torn: {r:?}");
    assert!(s.head().segment > pos[0].segment);
    s.close().unwrap();
    let report = verify_ok(tmp.path());
    assert_eq!(report.records, 6);
    assert_eq!(all_records(tmp.path()).len(), 6);
}

fn crashed_with_tail(
    tail: impl FnOnce(&Path, &[Position]),
) -> (tempfile::TempDir, Vec<Position>, model::Recovery) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(tmp.path(), key(), StoreOptions::default()).unwrap();
    let pos: Vec<_> = (0..10).map(|i| s.append(&rec(i)).unwrap()).collect();
    drop(s);
    tail(&seg(tmp.path(), 1), &pos);
    let (s, r) = Store::open(tmp.path(), key(), StoreOptions::default()).unwrap();
    let r = r.expect("a torn tail must be reported");
    s.close().unwrap();
    (tmp, pos, r)
}

const CHILD_DIR: &str = "GHGATE_STORE_TEST_CHILD_DIR";

/// The writer that `killed_writer_keeps_everything_it_acknowledged` kills: appends until killed,
/// printing how many records each append has made durable in the kernel.
#[test]
#[ignore = "run by killed_writer_keeps_everything_it_acknowledged"]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let (mut s, _) = Store::open(
        Path::new(&dir),
        key(),
        StoreOptions {
            segment_bytes: 256 << 10,
        },
    )
    .unwrap();
    let batch: Vec<Record> = (0..50).map(|i| chunk(i, 3000)).collect();
    let mut n = 0u64;
    loop {
        if n.is_multiple_of(3) {
            s.append_batch(&batch).unwrap();
            n += 50;
        } else {
            s.append(&rec(n)).unwrap();
            n += 1;
        }
        println!("appended {n}");
    }
}

#[test]
fn killed_writer_keeps_everything_it_acknowledged() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = 0;
    for line in io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("appended ") {
            acknowledged = n.parse().unwrap();
            if acknowledged >= 3000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        acknowledged >= 3000,
        "the child writer stopped early at {acknowledged}"
    );

    let (s, recovery) = open(tmp.path());
    s.close().unwrap();
    let report = verify_ok(tmp.path());
    let recovered = recovery.is_some() as u64;
    assert!(
        report.records - recovered >= acknowledged,
        "{report} but {acknowledged} were acknowledged"
    );
    assert!(report.segments > 3, "{report}");
}

#[test]
fn crash_mid_frame_is_cut_and_recorded() {
    let (tmp, pos, r) = crashed_with_tail(|path, pos| {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(pos[9].offset + 20).unwrap();
    });
    assert_eq!(
        (r.segment, r.kept, r.truncated, r.records),
        (1, pos[9].offset, 20, 9)
    );
    let report = verify_ok(tmp.path());
    assert_eq!(report.records, 10); // 9 kept, and the recovery record
    let read = all_records(tmp.path());
    assert_eq!(
        read[..9].iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
        (0..9).map(rec).collect::<Vec<_>>()
    );
    assert_eq!(read[9].1, Record::Recovery(r));
    assert_eq!(
        read[9].0.segment, 1,
        "the recovery record goes into the torn segment"
    );
}

#[test]
fn crash_with_garbage_or_zeros_after_the_last_frame_is_cut() {
    let end = |pos: &[Position]| pos[9].offset + (pos[9].offset - pos[8].offset);
    let (tmp, pos, r) = crashed_with_tail(|path, _| {
        let mut bytes = fs::read(path).unwrap();
        bytes.extend((0..300u32).map(|i| (i * 7919 % 251) as u8));
        fs::write(path, bytes).unwrap();
    });
    assert_eq!((r.kept, r.truncated, r.records), (end(&pos), 300, 10));
    assert_eq!(verify_ok(tmp.path()).records, 11);

    // Power loss: the file grew but its last blocks were never written.
    let (tmp, pos, r) = crashed_with_tail(|path, _| {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(f.metadata().unwrap().len() + 4096).unwrap();
    });
    assert_eq!((r.kept, r.truncated), (end(&pos), 4096));
    assert_eq!(verify_ok(tmp.path()).records, 11);
}

#[test]
fn damage_followed_by_intact_frames_is_not_repaired() {
    for (name, at) in [("payload", 60u64), ("length field", 0)] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = open(tmp.path());
        let pos: Vec<_> = (0..10).map(|i| s.append(&rec(i)).unwrap()).collect();
        drop(s);
        let path = seg(tmp.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[(pos[3].offset + at) as usize] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let e = Store::open(tmp.path(), key(), small()).expect_err("open must refuse");
        match &e {
            Error::Corrupt {
                segment,
                offset,
                what,
            } => {
                assert_eq!((*segment, *offset), (1, pos[3].offset), "{name}: {e}");
                assert!(what.contains("not a torn write"), "{name}: {e}");
            }
            other => panic!("{name}: {other}"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "{name}: evidence must stay untouched"
        );
        assert_eq!(list_segments(tmp.path()).unwrap(), vec![1]);
    }
}

#[test]
fn torn_segment_start_is_rebuilt() {
    // A crash while the next segment's header was being written.
    let tmp = tempfile::tempdir().unwrap();
    sample(tmp.path(), 5);
    let mut torn = MAGIC.to_vec();
    torn.extend_from_slice(&[0x51, 0, 0, 0, 1, 2]);
    fs::write(seg(tmp.path(), 2), &torn).unwrap();
    let (mut s, r) = open(tmp.path());
    let r = r.expect("torn header is a torn tail");
    assert_eq!(
        (r.segment, r.kept, r.truncated, r.records),
        (2, MAGIC.len() as u64, 6, 0)
    );
    s.append(&rec(5)).unwrap();
    s.close().unwrap();
    assert_eq!(verify_ok(tmp.path()).records, 7);

    // A crash right after the file was created: nothing to cut, the segment is simply used.
    let tmp = tempfile::tempdir().unwrap();
    sample(tmp.path(), 5);
    fs::write(seg(tmp.path(), 2), b"").unwrap();
    let (mut s, r) = open(tmp.path());
    assert!(r.is_none());
    assert_eq!(s.append(&rec(5)).unwrap().segment, 2);
    s.close().unwrap();
    assert_eq!(verify_ok(tmp.path()).records, 6);
}

#[test]
fn failed_write_is_cut_back_and_later_appends_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path());
    for i in 0..3 {
        s.append(&rec(i)).unwrap();
    }
    let head = s.head();
    let path = seg(tmp.path(), 1);
    let len = fs::metadata(&path).unwrap().len();

    s.inject(Fault {
        write: Some((30, libc::EIO)),
        truncate: None,
    });
    let e = s.append(&rec(3)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cannot write record segment {}: ", path.display())),
        "{msg}"
    );
    assert!(msg.contains("Input/output error"), "{msg}");
    assert_eq!(e.io_error().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len,
        "the partial write must be cut"
    );
    assert_eq!(s.head(), head);

    // A whole batch goes in or not at all, and a failed cut is retried before the next write.
    let batch: Vec<Record> = (3..8).map(rec).collect();
    s.inject(Fault {
        write: Some((150, libc::ENOSPC)),
        truncate: Some(libc::EIO),
    });
    let e = s.append_batch(&batch).unwrap_err().to_string();
    assert!(e.contains("No space left on device"), "{e}");
    assert!(
        fs::metadata(&path).unwrap().len() > len,
        "the injected cut failure leaves bytes behind"
    );
    let p = s.append_batch(&batch).unwrap();
    assert_eq!(p[0].seq, head.seq + 1);
    assert_eq!(p[0].offset, len);
    s.close().unwrap();
    let read = all_records(tmp.path());
    assert_eq!(
        read.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
        (0..3).chain(3..8).map(rec).collect::<Vec<_>>()
    );
    verify_ok(tmp.path());
}

/// Unmounts on drop, so a failing test does not leave the mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn full_disk_is_reported_and_survived() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = nix::unistd::geteuid().is_root()
        && nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .is_ok();
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs (needs root); the injected-fault test covers the logic");
        return;
    }
    let _mount = Mount(mnt.clone());
    let dir = mnt.join("record");
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0u8; 16 << 10]).unwrap();
    let (mut s, _) = Store::open(&dir, key(), StoreOptions::default()).unwrap();
    let mut ok = 0;
    let e = loop {
        match s.append(&chunk(ok, 1000)) {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
        assert!(ok < 1000, "the 64 KiB tmpfs never filled up");
    };
    assert_eq!(
        e.io_error().and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cannot write record segment {}", seg(&dir, 1).display()))
            && msg.contains("No space left on device"),
        "{msg}"
    );
    // Still whole frames only, so the store verifies as it is.
    let report = verify_ok(&dir);
    assert_eq!((report.records, report.partial_tail_bytes), (ok, 0));

    fs::remove_file(&filler).unwrap();
    s.append(&chunk(ok, 1000)).unwrap();
    s.close().unwrap();
    assert_eq!(verify_ok(&dir).records, ok + 1);
}

#[test]
fn a_record_larger_than_a_segment_gets_one_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path());
    let a = s.append(&rec(0)).unwrap();
    let big = s.append(&chunk(1, 10_000)).unwrap();
    let c = s.append(&rec(2)).unwrap();
    assert!(
        a.segment < big.segment && big.segment < c.segment,
        "{a:?} {big:?} {c:?}"
    );
    s.close().unwrap();
    assert_eq!(verify_ok(tmp.path()).records, 3);
}

#[test]
fn readers_follow_a_store_being_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path());
    for i in 0..3 {
        s.append(&rec(i)).unwrap();
    }
    let mut it = read_records(tmp.path()).unwrap();
    assert_eq!(it.next().unwrap().unwrap().1, rec(0));
    // Appends (and rotations) while reading are picked up.
    for i in 3..60 {
        s.append(&rec(i)).unwrap();
    }
    let rest: Vec<_> = it.map(|r| r.unwrap().1).collect();
    assert_eq!(rest, (1..60).map(rec).collect::<Vec<_>>());

    // A frame half-written at the very end ends the iteration cleanly.
    let head = s.head();
    let mut frame = Vec::new();
    let start = frame::begin_frame(&mut frame);
    serde_json::to_writer(&mut frame, &rec(60)).unwrap();
    frame::finish_frame(&mut frame[start..], head.seq + 1, &head.hash, KIND_RECORD);
    let path = seg(tmp.path(), head.segment);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    fs::write(&path, bytes).unwrap();
    let all: Vec<_> = read_records(tmp.path()).unwrap().map(|r| r.unwrap().1).collect();
    assert_eq!(all.len(), 60);
    let report = verify_ok(tmp.path());
    assert_eq!(report.partial_tail_bytes, (frame.len() / 2) as u64);
}

#[test]
fn verify_reports_progress_up_to_the_total() {
    let tmp = tempfile::tempdir().unwrap();
    sample(tmp.path(), 60);
    let mut seen = Vec::new();
    let report = verify(tmp.path(), &key().verifying_key(), &mut |p| seen.push(p)).unwrap();
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    let last = seen.last().unwrap();
    assert_eq!((last.bytes_done, last.bytes_total), (report.bytes, report.bytes));
}

// ---- tampering ------------------------------------------------------------------------------

/// A closed store of 60 records over several segments, and the record frames of segment 1.
fn tamper_sample() -> (tempfile::TempDir, Vec<Position>) {
    let tmp = tempfile::tempdir().unwrap();
    let pos = sample(tmp.path(), 60);
    assert!(list_segments(tmp.path()).unwrap().len() >= 4);
    let in_first = pos.into_iter().filter(|p| p.segment == 1).collect();
    (tmp, in_first)
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::write(path, bytes).unwrap();
}

#[test]
fn an_untouched_store_verifies() {
    let (tmp, _) = tamper_sample();
    let report = verify_ok(tmp.path());
    assert_eq!(report.records, 60);
    assert!(report.tail_sealed);
    assert_eq!(report.partial_tail_bytes, 0);
}

#[test]
fn any_flipped_byte_is_found_at_its_frame() {
    let cases: &[(&str, u64, u8, &str)] = &[
        ("length (low byte)", 0, 0x01, "checksum mismatch"),
        ("length (high byte)", 3, 0x80, "frame length"),
        ("crc", 5, 0x10, "checksum mismatch"),
        ("seq", 8, 0x01, "checksum mismatch"),
        ("prev hash", 8 + 8 + 17, 0x40, "checksum mismatch"),
        ("kind", 8 + 40, 0x02, "checksum mismatch"),
        ("payload", 8 + 41 + 12, 0x20, "checksum mismatch"),
    ];
    for &(name, at, mask, what) in cases {
        let (tmp, pos) = tamper_sample();
        edit(&seg(tmp.path(), 1), |b| b[(pos[3].offset + at) as usize] ^= mask);
        let f = verify_err(tmp.path());
        assert_eq!((f.segment, f.offset), (1, pos[3].offset), "{name}: {f}");
        assert!(f.what.contains(what), "{name}: {f}");
        assert_eq!(f.frame, Some(4), "{name}: {f}");
        let shown = f.to_string();
        assert!(
            shown.starts_with(&format!(
                "segment 000000000001 offset {} (frame #4",
                pos[3].offset
            )),
            "{shown}"
        );
    }
}

#[test]
fn an_edit_with_a_fixed_checksum_breaks_the_chain() {
    let (tmp, pos) = tamper_sample();
    edit(&seg(tmp.path(), 1), |b| {
        let f = raw_frames(b)
            .into_iter()
            .find(|f| f.offset as u64 == pos[3].offset)
            .unwrap();
        // "session-0003" → "session-9003": the record still parses.
        let at = (f.offset..f.offset + f.len)
            .find(|&i| &b[i..i + 12] == b"session-0003")
            .unwrap();
        b[at + 8] = b'9';
        fix_crc(b, f);
    });
    let f = verify_err(tmp.path());
    assert_eq!(
        (f.segment, f.offset, f.seq),
        (1, pos[4].offset, Some(pos[4].seq)),
        "{f}"
    );
    assert!(f.what.contains("hash chain broken"), "{f}");
    assert!(f.what.contains(&format!("(offset {})", pos[3].offset)), "{f}");
}

#[test]
fn an_edit_with_the_whole_chain_recomputed_fails_the_seal_signature() {
    let (tmp, pos) = tamper_sample();
    edit(&seg(tmp.path(), 1), |b| {
        // "session-0003" → "session-9003": same length, still valid JSON.
        let at = (pos[3].offset as usize + PREFIX + 41..b.len())
            .find(|&i| &b[i..i + 12] == b"session-0003")
            .unwrap();
        b[at + 8] = b'9';
    });
    rechain(tmp.path());
    let seal = raw_frames(&fs::read(seg(tmp.path(), 1)).unwrap())
        .last()
        .copied()
        .unwrap();
    assert_eq!(seal.kind, KIND_SEAL);
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (1, seal.offset as u64), "{f}");
    assert!(f.what.contains("seal signature does not verify"), "{f}");
}

#[test]
fn an_edit_before_a_checkpoint_fails_the_checkpoint_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(tmp.path(), key(), StoreOptions::default()).unwrap();
    for i in 0..5 {
        s.append(&rec(i)).unwrap();
    }
    let cp = s.checkpoint().unwrap();
    s.append(&rec(5)).unwrap();
    drop(s);
    edit(&seg(tmp.path(), 1), |b| {
        let at = (0..b.len()).find(|&i| &b[i..i + 12] == b"session-0002").unwrap();
        b[at + 8] = b'7';
    });
    rechain(tmp.path());
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (1, cp.offset), "{f}");
    assert!(f.what.contains("checkpoint signature does not verify"), "{f}");
}

#[test]
fn a_removed_frame_is_found() {
    let (tmp, pos) = tamper_sample();
    edit(&seg(tmp.path(), 1), |b| {
        b.drain(pos[3].offset as usize..pos[4].offset as usize);
    });
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (1, pos[3].offset), "{f}");
    assert!(
        f.what
            .contains(&format!("jumps from {} to {}", pos[2].seq, pos[4].seq)),
        "{f}"
    );
}

#[test]
fn swapped_frames_are_found() {
    let (tmp, pos) = tamper_sample();
    edit(&seg(tmp.path(), 1), |b| {
        let (a, m, e) = (
            pos[3].offset as usize,
            pos[4].offset as usize,
            pos[5].offset as usize,
        );
        let mut swapped = b[m..e].to_vec();
        swapped.extend_from_slice(&b[a..m]);
        b[a..e].copy_from_slice(&swapped);
    });
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (1, pos[3].offset), "{f}");
    assert!(
        f.what
            .contains(&format!("jumps from {} to {}", pos[2].seq, pos[4].seq)),
        "{f}"
    );
}

#[test]
fn a_shortened_sealed_segment_is_found() {
    let (tmp, pos) = tamper_sample();
    let path = seg(tmp.path(), 1);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(pos[5].offset + 30).unwrap();
    let fail = verify_err(tmp.path());
    assert_eq!((fail.segment, fail.offset), (1, pos[5].offset), "{fail}");
    assert!(fail.what.contains("ends inside a frame"), "{fail}");

    // Cut at a frame boundary: the seal is gone.
    f.set_len(pos[5].offset).unwrap();
    let fail = verify_err(tmp.path());
    assert_eq!((fail.segment, fail.offset), (1, pos[5].offset), "{fail}");
    assert!(fail.what.contains("ends without a seal"), "{fail}");
}

#[test]
fn a_replaced_seal_signature_is_found() {
    // Signed by another key over the right message, or the key's own signature from elsewhere.
    for other in [true, false] {
        let (tmp, _) = tamper_sample();
        let path = seg(tmp.path(), 1);
        let donor = fs::read(seg(tmp.path(), 2)).unwrap();
        let donor_seal = raw_frames(&donor).last().copied().unwrap();
        edit(&path, |b| {
            let seal = raw_frames(b).last().copied().unwrap();
            let body = seal.offset + PREFIX;
            let sig_at = body + 41 + 16;
            let sig: [u8; 64] = if other {
                let seq = u64::from_le_bytes(b[body..body + 8].try_into().unwrap());
                let prev: [u8; 32] = b[body + 8..body + 40].try_into().unwrap();
                let records = u64::from_le_bytes(b[body + 49..body + 57].try_into().unwrap());
                let attacker = SigningKey::from_bytes(&[9; 32]);
                keys::sign_frame(&attacker, KIND_SEAL, 1, seq, &prev, records)
            } else {
                let d = donor_seal.offset + PREFIX + 41 + 16;
                donor[d..d + 64].try_into().unwrap()
            };
            b[sig_at..sig_at + 64].copy_from_slice(&sig);
            fix_crc(b, seal);
        });
        let seal = raw_frames(&fs::read(&path).unwrap()).last().copied().unwrap();
        let f = verify_err(tmp.path());
        assert_eq!((f.segment, f.offset), (1, seal.offset as u64), "{f}");
        assert!(f.what.contains("seal signature does not verify"), "{f}");
    }
}

#[test]
fn frames_added_after_a_seal_are_found() {
    let (tmp, pos) = tamper_sample();
    let path = seg(tmp.path(), 1);
    let end = fs::metadata(&path).unwrap().len();
    edit(&path, |b| {
        let copy = b[pos[0].offset as usize..pos[1].offset as usize].to_vec();
        b.extend_from_slice(&copy);
    });
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (1, end), "{f}");
    assert!(f.what.contains("data after the seal"), "{f}");
}

#[test]
fn a_missing_segment_is_found() {
    let (tmp, _) = tamper_sample();
    fs::remove_file(seg(tmp.path(), 2)).unwrap();
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (2, 0), "{f}");
    assert!(f.what.contains("missing"), "{f}");

    let (tmp, _) = tamper_sample();
    fs::remove_file(seg(tmp.path(), 1)).unwrap();
    let f = verify_err(tmp.path());
    assert_eq!(f.segment, 1, "{f}");
    assert!(f.what.contains("no tombstone accounts for them"), "{f}");
}

#[test]
fn renumbered_segments_are_found() {
    let (tmp, _) = tamper_sample();
    let (a, b, t) = (seg(tmp.path(), 2), seg(tmp.path(), 3), tmp.path().join("x"));
    fs::rename(&a, &t).unwrap();
    fs::rename(&b, &a).unwrap();
    fs::rename(&t, &b).unwrap();
    let f = verify_err(tmp.path());
    assert_eq!((f.segment, f.offset), (2, MAGIC.len() as u64), "{f}");
}

// ---- retention ------------------------------------------------------------------------------

fn tombstones(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("tombstones"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn pruned_segments_verify_under_their_tombstone() {
    let tmp = tempfile::tempdir().unwrap();
    let pos = sample(tmp.path(), 80);
    let cutoff = rec(40).at();
    let report = prune(tmp.path(), &key(), cutoff, "older than 90d").unwrap();
    let (first, last) = report.pruned.expect("something is old enough");
    assert_eq!(first, 1);
    // Exactly the segments whose records are all older than the cutoff.
    let last_old = pos
        .iter()
        .filter(|p| p.seq <= pos[39].seq)
        .map(|p| p.segment)
        .max()
        .unwrap();
    let expect_last = if pos.iter().any(|p| p.segment == last_old && p.seq > pos[39].seq) {
        last_old - 1
    } else {
        last_old
    };
    assert_eq!(last, expect_last);
    assert_eq!(
        tombstones(tmp.path()),
        vec![format!("{first:012}-{last:012}.json")]
    );
    let t = report.tombstone.clone().unwrap();
    assert_eq!(
        (t.first_segment, t.last_segment, t.reason.as_str()),
        (first, last, "older than 90d")
    );
    assert!(!seg(tmp.path(), last).exists() && seg(tmp.path(), last + 1).exists());
    assert!(report.bytes > 0 && report.segments == last);
    assert!(
        report.to_string().starts_with("pruned segments 000000000001 to"),
        "{report}"
    );

    let v = verify_ok(tmp.path());
    assert_eq!(v.first_segment, last + 1);
    assert_eq!(v.first_seq, t.last_seq + 1);
    assert_eq!(
        v.pruned,
        vec![PrunedRange {
            first_segment: 1,
            last_segment: last,
            last_seq: t.last_seq,
            at: t.at,
            reason: t.reason.clone()
        }]
    );
    let read = all_records(tmp.path());
    assert_eq!(
        read.first().unwrap().0,
        *pos.iter().find(|p| p.segment == last + 1).unwrap()
    );

    // A second prune adds a second tombstone; both ranges are reported.
    let report2 = prune(tmp.path(), &key(), rec(60).at(), "older than 30d").unwrap();
    let (first2, last2) = report2.pruned.unwrap();
    assert_eq!(first2, last + 1);
    let v = verify_ok(tmp.path());
    assert_eq!(v.pruned.len(), 2);
    assert_eq!(v.first_segment, last2 + 1);

    // Nothing older: nothing happens.
    let report3 = prune(tmp.path(), &key(), 0, "x").unwrap();
    assert_eq!(report3.pruned, None);
    assert_eq!(tombstones(tmp.path()).len(), 2);
}

#[test]
fn prune_never_touches_the_newest_segment_even_while_it_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path());
    for i in 0..50 {
        s.append(&rec(i)).unwrap();
    }
    let active = s.head().segment;
    let report = prune(tmp.path(), &key(), u64::MAX, "all").unwrap();
    assert_eq!(report.pruned, Some((1, active - 1)));
    assert_eq!(list_segments(tmp.path()).unwrap(), vec![active]);
    for i in 50..80 {
        s.append(&rec(i)).unwrap();
    }
    s.close().unwrap();
    let v = verify_ok(tmp.path());
    assert_eq!(v.first_segment, active);
    let read = all_records(tmp.path());
    assert_eq!(read.last().unwrap().1, rec(79));
}

#[test]
fn a_deleted_or_altered_tombstone_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    sample(tmp.path(), 60);
    let report = prune(tmp.path(), &key(), rec(40).at(), "older than 90d").unwrap();
    let (_, last) = report.pruned.unwrap();
    let path = report.tombstone_path.unwrap();
    let original = fs::read_to_string(&path).unwrap();

    fs::remove_file(&path).unwrap();
    let f = verify_err(tmp.path());
    assert_eq!(f.segment, 1, "{f}");
    assert!(
        f.what
            .contains(&format!("segments 000000000001 to {last:012} are missing")),
        "{f}"
    );

    fs::write(&path, original.replace("older than 90d", "older than 9d!")).unwrap();
    let f = verify_err(tmp.path());
    assert!(f.what.contains("signature does not verify"), "{f}");

    // A tombstone signed by someone else's key.
    let mut file: serde_json::Value = serde_json::from_str(&original).unwrap();
    file["signature"] = hex::encode(SigningKey::from_bytes(&[9; 32]).sign(b"x").to_bytes()).into();
    fs::write(&path, file.to_string()).unwrap();
    let f = verify_err(tmp.path());
    assert!(f.what.contains("signature does not verify"), "{f}");

    fs::write(&path, original).unwrap();
    verify_ok(tmp.path());
}

#[test]
fn an_interrupted_prune_still_verifies_and_is_finished_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    sample(tmp.path(), 80);
    let saved = tmp.path().join("saved");
    fs::create_dir(&saved).unwrap();
    for n in list_segments(tmp.path()).unwrap() {
        fs::copy(seg(tmp.path(), n), saved.join(n.to_string())).unwrap();
    }
    let (first, last) = prune(tmp.path(), &key(), rec(50).at(), "r")
        .unwrap()
        .pruned
        .unwrap();
    assert!(last >= 2);
    // Stopped after deleting only the first segment, or before deleting any.
    for restore_from in [first + 1, first] {
        for n in restore_from..=last {
            fs::copy(saved.join(n.to_string()), seg(tmp.path(), n)).unwrap();
        }
        let v = verify_ok(tmp.path());
        assert_eq!(v.first_segment, restore_from);
        let report = prune(tmp.path(), &key(), 0, "nothing new").unwrap();
        assert_eq!(report.pruned, Some((restore_from, last)));
        assert_eq!(report.tombstone, None);
        assert_eq!(verify_ok(tmp.path()).first_segment, last + 1);
    }
}

#[test]
fn prune_refuses_to_delete_what_does_not_verify() {
    let (tmp, pos) = tamper_sample();
    edit(&seg(tmp.path(), 1), |b| b[pos[2].offset as usize + 60] ^= 1);
    let e = prune(tmp.path(), &key(), u64::MAX, "all").unwrap_err();
    assert!(matches!(e, Error::Corrupt { segment: 1, .. }), "{e}");
    assert!(e.to_string().contains("refusing to prune"), "{e}");
    assert!(seg(tmp.path(), 1).exists());
    assert!(tombstones(tmp.path()).is_empty());
}

// ---- keys -----------------------------------------------------------------------------------

#[test]
fn keys_are_created_private_and_refused_when_exposed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("keys/record.pem");
    let k = load_or_create_key(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), k.to_bytes());

    let pub_path = tmp.path().join("record.pub.pem");
    fs::write(&pub_path, public_key_pem(&k)).unwrap();
    assert!(public_key_pem(&k).starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(load_public_key(&pub_path).unwrap(), k.verifying_key());
    let e = load_public_key(&path).unwrap_err().to_string();
    assert!(e.contains("not an Ed25519 SPKI PEM public key"), "{e}");

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let e = load_or_create_key(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "record signing key {p} is accessible to group or others (mode 0640); \
             restrict it with: chmod 600 {p}",
            p = path.display()
        )
    );
    assert!(!e.contains('\n'));
}

#[test]
fn stores_signed_with_another_key_do_not_verify() {
    let (tmp, _) = tamper_sample();
    let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
    let f = verify(tmp.path(), &other, &mut |_| {}).unwrap_err();
    assert_eq!(f.segment, 1, "{f}");
    assert!(f.what.contains("seal signature does not verify"), "{f}");
}

#[test]
fn verify_refuses_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let f = verify_err(tmp.path());
    assert!(f.what.starts_with("no record segments in"), "{f}");
}

/// Information, not an assertion: `cargo test -p ghgate --release --lib record::store::tests::append_cost
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn append_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(tmp.path(), key(), StoreOptions::default()).unwrap();
    let r = rec(1);
    let n = 200_000u64;
    let t = std::time::Instant::now();
    for _ in 0..n {
        s.append(&r).unwrap();
    }
    let single = t.elapsed();
    let batch: Vec<Record> = (0..100).map(rec).collect();
    let t = std::time::Instant::now();
    for _ in 0..n / 100 {
        s.append_batch(&batch).unwrap();
    }
    let batched = t.elapsed();
    s.close().unwrap();
    eprintln!(
        "append: {:.2} µs per record alone, {:.2} µs per record in batches of 100",
        single.as_secs_f64() * 1e6 / n as f64,
        batched.as_secs_f64() * 1e6 / n as f64
    );
    let t = std::time::Instant::now();
    let report = verify_ok(tmp.path());
    eprintln!(
        "verify: {:.0} MB/s",
        report.bytes as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    assert_eq!(report.records, 2 * n);
}

#[test]
fn prune_through_keeps_segments_without_a_confirmed_remote_copy() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path(), 200);
    let numbers = segment_numbers(dir.path()).unwrap();
    assert!(numbers.len() > 4, "{numbers:?}");
    let report = prune_through(dir.path(), &key(), u64::MAX, "test", 2).unwrap();
    assert_eq!(
        report.pruned,
        Some((1, 2)),
        "only segments up to the confirmed one go"
    );
    assert!(seg(dir.path(), 3).exists());
    verify_ok(dir.path());
}

#[test]
fn anchors_sign_the_chain_head_and_refuse_any_other() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path(), 40);
    let state = segment_state(dir.path(), 1).unwrap();
    assert!(state.sealed);
    let (seq, hash) = state.head.unwrap();
    assert_eq!(frame_hash(dir.path(), 1, seq).unwrap(), Some(hash));
    assert_eq!(frame_hash(dir.path(), 1, seq + 1).unwrap(), None);
    let anchor = Anchor::sign(&key(), "runner-a", &state, 5).unwrap();
    assert_eq!((anchor.segment, anchor.seq, anchor.sealed), (1, seq, true));
    assert_eq!(anchor.verify(&key().verifying_key()), Some(hash));
    let other = SigningKey::from_bytes(&[9; 32]);
    assert_eq!(anchor.verify(&other.verifying_key()), None, "another key");
    for tamper in [
        Anchor {
            seq: seq - 1,
            ..anchor.clone()
        },
        Anchor {
            runner: "runner-b".into(),
            ..anchor.clone()
        },
        Anchor {
            sealed: false,
            ..anchor.clone()
        },
        Anchor {
            hash: hex::encode([0u8; 32]),
            ..anchor.clone()
        },
    ] {
        assert_eq!(tamper.verify(&key().verifying_key()), None, "{tamper:?}");
    }
}
