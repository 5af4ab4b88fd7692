//! Every format of this crate against what real git writes and reads: push requests (plain,
//! with options, deletes, signed, SHA-256), fetch requests (v0 and v2), advertisements (v0, v2,
//! `ls-refs`, empty repositories) and receive-pack's report-status (v1 and v2, with and without
//! side-band).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::advert::tests::{read_with as read_advert, rewritten};
use crate::advert::{AdvertReader, PushAdvert};
use crate::caps::Capabilities;
use crate::oid::Oid;
use crate::pack::decode::{DecodeLimits, decode};
use crate::receive::Commands;
use crate::refs::{RefOp, RefUpdate};
use crate::report::{Report, Status};
use crate::testgit::{git, git_in};
use crate::testutil::{mutate, pkt, pkts, xorshift};
use crate::upload::tests::read as read_fetch;

/// A work repository with two commits on main, an annotated tag and a branch, and an empty bare
/// repository; `format` is "sha1" or "sha256".
struct Repos {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    bare: PathBuf,
    capture: PathBuf,
}

fn repos(format: &str) -> Repos {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let bare = tmp.path().join("bare.git");
    let object_format = format!("--object-format={format}");
    git(
        tmp.path(),
        &["init", "-q", &object_format, work.to_str().unwrap()],
    );
    git(
        tmp.path(),
        &["init", "-q", "--bare", &object_format, bare.to_str().unwrap()],
    );
    git(&bare, &["config", "receive.advertisePushOptions", "true"]);
    for (file, text) in [("a.txt", "one\n"), ("b.txt", "two\n")] {
        std::fs::write(work.join(file), text).unwrap();
        git(&work, &["add", file]);
        git(&work, &["commit", "-q", "-m", file]);
    }
    git(&work, &["tag", "-a", "v1", "-m", "release 1"]);
    git(&work, &["branch", "topic", "HEAD~1"]);
    // Wrappers that record what the client sends before handing it to the real service.
    let capture = tmp.path().join("capture");
    for service in ["receive-pack", "upload-pack"] {
        let script = tmp.path().join(format!("tee-{service}"));
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntee '{}' | git {service} \"$@\"\n", capture.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Repos {
        _tmp: tmp,
        work,
        bare,
        capture,
    }
}

impl Repos {
    /// Runs `git push` from the work repository, returning the request body it sent.
    fn push(&self, args: &[&str]) -> Vec<u8> {
        let script = self.capture.with_file_name("tee-receive-pack");
        let rp = format!("--receive-pack={}", script.display());
        let mut all = vec!["push", "-q", &rp];
        all.extend_from_slice(args);
        git(&self.work, &all);
        std::fs::read(&self.capture).unwrap()
    }

    fn rev(&self, what: &str) -> String {
        git(&self.work, &["rev-parse", what])
    }

    fn oid(&self, what: &str) -> Oid {
        self.rev(what).parse().unwrap()
    }
}

/// Reads a push body every way it can be split: its commands, and the pack after them.
fn read_push(body: &[u8]) -> (Commands, Vec<u8>) {
    let (commands, error, pack) = crate::receive::tests::read(body);
    assert_eq!(error, None);
    (commands, pack)
}

/// The pack a push carries is one git accepts.
fn assert_real_pack(repo: &Path, pack: &[u8]) {
    assert!(pack.starts_with(b"PACK"));
    git_in(repo, &["index-pack", "--stdin", "--fix-thin"], pack, &[]);
}

fn update(old: &Oid, new: &Oid, name: &str) -> RefUpdate {
    RefUpdate::new(*old, *new, name)
}

fn real_pushes(format: &str) {
    let r = repos(format);
    let url = r.bare.to_str().unwrap();
    let zero = Oid::zero(r.oid("HEAD").format());

    let body = r.push(&[url, "main", "topic", "v1"]);
    let (c, pack) = read_push(&body);
    let mut updates = c.updates.clone();
    updates.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        updates,
        vec![
            update(&zero, &r.oid("main"), "refs/heads/main"),
            update(&zero, &r.oid("topic"), "refs/heads/topic"),
            update(&zero, &r.oid("v1"), "refs/tags/v1"),
        ]
    );
    assert!(updates.iter().all(|u| u.op() == RefOp::Create));
    assert_eq!(c.format, Some(r.oid("HEAD").format()));
    assert!(
        c.caps.has("report-status-v2") && c.caps.has("side-band-64k"),
        "{:?}",
        c.caps
    );
    assert_eq!(c.end as usize, body.len() - pack.len());
    assert_real_pack(&r.work, &pack);

    // An update with push options: a thin pack after the options block.
    let old = r.oid("main");
    std::fs::write(r.work.join("c.txt"), "three\n").unwrap();
    git(&r.work, &["add", "c.txt"]);
    git(&r.work, &["commit", "-q", "-m", "c"]);
    let body = r.push(&["-o", "ci.skip", "-o", "note=x y", url, "main"]);
    let (c, pack) = read_push(&body);
    assert_eq!(c.updates, vec![update(&old, &r.oid("main"), "refs/heads/main")]);
    assert_eq!(c.updates[0].op(), RefOp::Update);
    let options = &body[c.options.start as usize..c.options.end as usize];
    assert_eq!(options, &pkts(&["ci.skip", "note=x y", "0000"])[..]);
    assert_real_pack(&r.work, &pack);

    // A delete-only push sends no pack at all.
    let body = r.push(&[url, ":refs/heads/topic"]);
    let (c, pack) = read_push(&body);
    assert_eq!(
        c.updates,
        vec![update(&r.oid("topic"), &zero, "refs/heads/topic")]
    );
    assert_eq!((c.updates[0].op(), pack.len()), (RefOp::Delete, 0));
}

#[test]
fn real_sha1_pushes() {
    real_pushes("sha1");
}

#[test]
fn real_sha256_pushes() {
    real_pushes("sha256");
}

#[test]
fn real_signed_push_is_known_as_one() {
    // A push certificate signed with an SSH key, to a server that asks for certificates.
    let r = repos("sha1");
    let key = r.capture.with_file_name("key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    git(&r.bare, &["config", "receive.certNonceSeed", "ghgate-test"]);
    git(&r.work, &["config", "gpg.format", "ssh"]);
    git(&r.work, &["config", "user.signingKey", key.to_str().unwrap()]);
    let body = r.push(&["--signed", r.bare.to_str().unwrap(), "main", "topic"]);
    let (c, pack) = read_push(&body);
    assert!(c.certificate && c.signed());
    let names: Vec<&str> = c.updates.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["refs/heads/main", "refs/heads/topic"]);
    assert_eq!(c.updates[0].new, r.oid("main"));
    assert!(body.windows(29).any(|w| w == b"-----BEGIN SSH SIGNATURE-----"));
    assert_real_pack(&r.work, &pack);
    assert!(
        c.render(&[true, false], b"").is_err(),
        "a certificate is never cut"
    );

    // The advertisement that asked for it offers push-cert; rewritten, it does not.
    let adv = git_in(
        &r.bare,
        &["receive-pack", "--advertise-refs", "--stateless-rpc", "."],
        b"",
        &[],
    );
    let caps = |adv: &[u8]| {
        let mut reader = AdvertReader::new();
        reader.feed(adv);
        reader.finish().caps_line.unwrap().caps
    };
    assert!(caps(&adv).has("push-cert"));
    let passed = PushAdvert::new(true).push(&adv, true);
    assert!(!caps(&passed).has("push-cert") && caps(&passed).has("no-thin"));
}

#[test]
fn real_pack_objects_output_after_crafted_commands() {
    let r = repos("sha1");
    let pack = git_in(
        &r.work,
        &["pack-objects", "--revs", "--stdout", "-q"],
        b"main\n",
        &[],
    );
    let mut body = pkts(&[
        format!(
            "{} {} refs/heads/main\0report-status",
            Oid::zero(crate::ObjectFormat::Sha1),
            r.rev("main")
        ),
        "0000".into(),
    ]);
    body.extend_from_slice(&pack);
    let (_, tail) = read_push(&body);
    assert_eq!(tail, pack);
}

/// Runs receive-pack on the bare repository with `body` as the request: its answer.
fn receive(r: &Repos, body: &[u8]) -> Vec<u8> {
    git_in(&r.bare, &["receive-pack", "--stateless-rpc", "."], body, &[])
}

#[test]
fn real_report_status_in_every_form() {
    let r = repos("sha1");
    let url = r.bare.to_str().unwrap();
    git(&r.work, &["branch", "-f", "topic", "main"]);
    r.push(&[url, "main", "topic"]);
    git(&r.bare, &["config", "receive.denyNonFastForwards", "true"]);
    // A new commit on main, and topic moved back: one update git takes, one it refuses.
    std::fs::write(r.work.join("c.txt"), "three\n").unwrap();
    git(&r.work, &["add", "c.txt"]);
    git(&r.work, &["commit", "-q", "-m", "c"]);
    git(&r.work, &["branch", "-f", "topic", "main~2"]);
    // What the client would send, captured from a push that a hook makes fail (no ref moves).
    let hook = r.bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = r.capture.with_file_name("tee-receive-pack");
    let rp = format!("--receive-pack={}", script.display());
    let failed = std::process::Command::new("git")
        .args(["push", "-q", "--force", &rp, url, "main", "topic"])
        .current_dir(&r.work)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(!failed.status.success());
    std::fs::remove_file(&hook).unwrap();
    let body = std::fs::read(&r.capture).unwrap();
    let (c, pack) = read_push(&body);
    assert!(c.reply_style().report_status && c.reply_style().sideband);

    // Each form the client may ask for: v2 or v1, on the side-band or not.
    for (v2, sideband) in [(true, true), (false, true), (true, false), (false, false)] {
        let mut c = c.clone();
        c.caps.remove("report-status-v2");
        c.caps.remove("report-status");
        c.caps.remove("side-band-64k");
        c.caps.add(if v2 { "report-status-v2" } else { "report-status" });
        if sideband {
            c.caps.add("side-band-64k");
        }
        let mut request = c.render(&[true, true], b"").unwrap();
        request.extend_from_slice(&pack);
        git(&r.bare, &["update-ref", "refs/heads/main", &r.rev("main~1")]);
        let answer = receive(&r, &request);
        let status = |answer: &[u8]| match sideband {
            true => crate::pktline::demultiplex(answer).unwrap().data,
            false => answer.to_vec(),
        };
        let status_bytes = status(&answer);
        let (report, _, end) = Report::parse(&status_bytes).unwrap();
        assert_eq!(end, status_bytes.len(), "v2 {v2}, side-band {sideband}");
        assert_eq!(report.unpack_error, None);
        let by_name = |name: &str| report.refs.iter().find(|s| s.name == name).unwrap();
        assert_eq!(by_name("refs/heads/main").status, Status::Ok);
        assert!(
            matches!(&by_name("refs/heads/topic").status, Status::Rejected(why) if why.contains("non-fast-forward")),
            "{report:?}"
        );

        // The gateway's merge adds a held ref to git's own answer, in the same form.
        let held = [("refs/heads/held".to_owned(), "held for approval 7".to_owned())];
        let style = c.reply_style();
        let merged = crate::report::merge(style, &answer, &held, &["ghgate: held".into()]).unwrap();
        if sideband {
            assert!(merged.ends_with(b"0000") && merged.windows(13).any(|w| w == b"\x02ghgate: held"));
        }
        let merged_status = status(&merged);
        let (merged, _, _) = Report::parse(&merged_status).unwrap();
        assert_eq!(merged.refs[..report.refs.len()], report.refs[..]);
        assert_eq!(
            merged.refs.last().unwrap().status,
            Status::Rejected("held for approval 7".into())
        );
    }
}

/// Splits a stream at each flush-pkt (test-side framing, independent of the crate's).
fn split_at_flushes(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    while stream.len() >= 4 {
        let len = usize::from_str_radix(std::str::from_utf8(&stream[..4]).unwrap(), 16).unwrap();
        let n = if len < 4 { 4 } else { len };
        parts.last_mut().unwrap().extend_from_slice(&stream[..n]);
        stream = &stream[n..];
        if len == 0 {
            parts.push(Vec::new());
        }
    }
    parts.retain(|p| !p.is_empty() && p != b"0000");
    parts
}

#[test]
fn real_fetch_requests() {
    let r = repos("sha1");
    let url = r.bare.to_str().unwrap();
    r.push(&[url, "main", "topic", "v1"]);
    let script = r.capture.with_file_name("tee-upload-pack");
    let up = format!("--upload-pack={}", script.display());
    let clone = |name: &str, protocol: &str| {
        let into = r.capture.with_file_name(name);
        let args = ["-c", protocol, "clone", "-q", "--no-local", "--bare", &up, url];
        git(&r.work, &[&args[..], &[into.to_str().unwrap()]].concat());
    };

    // v0: the whole stateful conversation is one request body's worth of lines.
    clone("clone", "protocol.version=0");
    let body = std::fs::read(&r.capture).unwrap();
    let f = read_fetch(&body);
    assert_eq!(
        (f.error, f.version, f.command.as_str(), f.done),
        (None, 0, "fetch", true)
    );
    // HEAD and main name the same commit: git asks for it twice.
    let mut wants = f.wants.clone();
    wants.sort();
    wants.dedup();
    let mut expected = vec![r.oid("main"), r.oid("topic"), r.oid("v1")];
    expected.sort();
    expected.dedup();
    assert_eq!(wants, expected);

    // v2: ls-refs, then fetch, each a request body of its own over HTTP.
    clone("clone2", "protocol.version=2");
    let stream = std::fs::read(&r.capture).unwrap();
    let bodies = split_at_flushes(&stream);
    assert_eq!(bodies.len(), 2, "{:?}", String::from_utf8_lossy(&stream));
    let ls = read_fetch(&bodies[0]);
    assert_eq!(
        (ls.error, ls.version, ls.command.as_str(), ls.wants.len()),
        (None, 2, "ls-refs", 0)
    );
    let f = read_fetch(&bodies[1]);
    assert_eq!((f.error, f.command.as_str(), f.done), (None, "fetch", true));
    let mut wants = f.wants.clone();
    wants.sort();
    wants.dedup();
    assert_eq!(wants, expected);

    // And the server's ls-refs answer to that request.
    let answer = git_in(
        &r.bare,
        &["upload-pack", "--stateless-rpc", "."],
        &bodies[0],
        &[("GIT_PROTOCOL", "version=2")],
    );
    let adv = read_advert(&answer, AdvertReader::ls_refs);
    assert_eq!(adv.error, None);
    assert!(
        adv.refs.contains(&(r.oid("main"), "refs/heads/main".to_owned())),
        "{:?}",
        adv.refs
    );
}

#[test]
fn real_advertisements() {
    let r = repos("sha1");
    let url = r.bare.to_str().unwrap();
    r.push(&[url, "main", "topic", "v1"]);
    let with_header = |service: &str, body: Vec<u8>| {
        let mut out = pkt(format!("# service=git-{service}\n"));
        out.extend_from_slice(b"0000");
        out.extend_from_slice(&body);
        out
    };
    let expected = vec![
        (r.oid("main"), "HEAD".to_owned()),
        (r.oid("main"), "refs/heads/main".to_owned()),
        (r.oid("topic"), "refs/heads/topic".to_owned()),
        (r.oid("v1"), "refs/tags/v1".to_owned()),
        (r.oid("v1^{}"), "refs/tags/v1^{}".to_owned()),
    ];

    let v0 = git_in(
        &r.bare,
        &["upload-pack", "--advertise-refs", "--stateless-rpc", "."],
        b"",
        &[],
    );
    let a = read_advert(&with_header("upload-pack", v0), AdvertReader::new);
    assert_eq!(a.error, None);
    assert_eq!((a.version, a.service.as_deref()), (0, Some("git-upload-pack")));
    assert_eq!(a.refs, expected);
    assert_eq!(a.symrefs, vec![("HEAD".to_owned(), "refs/heads/main".to_owned())]);
    assert!(
        a.capabilities.iter().any(|c| c == "multi_ack_detailed"),
        "{:?}",
        a.capabilities
    );

    let rp = git_in(
        &r.bare,
        &["receive-pack", "--advertise-refs", "--stateless-rpc", "."],
        b"",
        &[],
    );
    let a = read_advert(&with_header("receive-pack", rp.clone()), AdvertReader::new);
    assert_eq!(a.error, None);
    assert_eq!(
        a.refs,
        expected[1..4].to_vec(),
        "receive-pack shows no HEAD and no peeled tags"
    );
    let caps = a.caps_line.unwrap().caps;
    assert!(caps.has("report-status") && caps.has("report-status-v2") && caps.has("push-options"));
    // The push advertisement rewritten for a policy, whatever the chunks: no-thin added.
    let out = rewritten(&with_header("receive-pack", rp), true);
    let again = read_advert(&out, AdvertReader::new);
    let mut want = caps.clone();
    want.add("no-thin");
    assert_eq!(
        (again.error, again.refs, again.caps_line.unwrap().caps),
        (None, expected[1..4].to_vec(), want)
    );

    let v2 = git_in(
        &r.bare,
        &["upload-pack", "--advertise-refs", "--stateless-rpc", "."],
        b"",
        &[("GIT_PROTOCOL", "version=2")],
    );
    let a = read_advert(&with_header("upload-pack", v2), AdvertReader::new);
    assert_eq!(a.error, None);
    assert_eq!((a.version, a.refs.len()), (2, 0));
    assert!(
        a.capabilities.iter().any(|c| c.starts_with("ls-refs")),
        "{:?}",
        a.capabilities
    );
    assert!(a.capabilities.iter().any(|c| c.starts_with("fetch")));

    let request = pkts(&["command=ls-refs\n", "0001", "peel\n", "symrefs\n", "0000"]);
    let answer = git_in(
        &r.bare,
        &["upload-pack", "--stateless-rpc", "."],
        &request,
        &[("GIT_PROTOCOL", "version=2")],
    );
    let a = read_advert(&answer, AdvertReader::ls_refs);
    assert_eq!(a.error, None);
    assert_eq!(a.refs, expected);
    assert_eq!(a.symrefs, vec![("HEAD".to_owned(), "refs/heads/main".to_owned())]);

    // An empty repository advertises only its capabilities, on a placeholder line.
    let empty = r.capture.with_file_name("empty.git");
    git(&r.work, &["init", "-q", "--bare", empty.to_str().unwrap()]);
    for service in ["upload-pack", "receive-pack"] {
        let v0 = git_in(
            &empty,
            &[service, "--advertise-refs", "--stateless-rpc", "."],
            b"",
            &[],
        );
        let a = read_advert(&with_header(service, v0), AdvertReader::new);
        assert_eq!(
            (a.error, a.refs.len(), a.capabilities.is_empty()),
            (None, 0, false),
            "{service}"
        );
    }
}

#[test]
fn real_packs_decode_after_real_commands() {
    // The pack of a real push, found where the command list ends, decodes to the pushed commit.
    let r = repos("sha1");
    let body = r.push(&[r.bare.to_str().unwrap(), "main"]);
    let (c, pack) = read_push(&body);
    let limits = DecodeLimits::with_deadline(std::time::Instant::now() + std::time::Duration::from_secs(60));
    let objects = decode(&pack, c.format.unwrap(), &limits).unwrap();
    let head = objects.commit(&c.updates[0].new).expect("the pushed commit");
    assert_eq!(head.tree, r.oid("main^{tree}"));
}

#[test]
fn arbitrary_bytes_never_panic_and_split_the_same() {
    let a = "1".repeat(40);
    let z = "0".repeat(40);
    let seed = pkts(&[
        format!("{z} {a} refs/heads/x\0push-options"),
        "0000".into(),
        "command=fetch".into(),
        "0001".into(),
        format!("want {a}"),
        "# service=git-upload-pack".into(),
        "version 2".into(),
        "push-cert".into(),
        "unpack ok".into(),
    ]);
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    for _ in 0..300 {
        let input = mutate(&seed, &mut next, 60);
        crate::receive::tests::read(&input);
        read_fetch(&input);
        read_advert(&input, AdvertReader::new);
        read_advert(&input, AdvertReader::ls_refs);
        let _ = Report::parse(&input);
        let _ = Capabilities::parse(&input);
    }
}
