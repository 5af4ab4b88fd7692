//! Session recording end to end: real curl and git through the real redirect and proxy, then the
//! record read back with `ghgate sessions …` — what an auditor would run.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ghgate_e2e::{
    eventually,
    fixtures::{SmallDisk, commit, files_under, github_token, served_repo},
    https::{TestCa, TlsGateway, Upstream},
    loopback_v4, privileged,
};
use serde_json::Value;

const TOKEN: &str = "ghp_R3c0rdM3N0tAnyw4yAtAll0123456789abcd";

fn sessions(s: &TlsGateway) -> Vec<Value> {
    s.gw.ghgate_ok(&["sessions", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("sessions list --json prints JSON lines"))
        .collect()
}

/// Once the gateway has stopped: the whole store verifies, and the session that `text` appears
/// in (as `ghgate sessions show` prints it).
fn verified_session_with(s: &TlsGateway, text: &str) -> String {
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(verified.starts_with("OK"), "{verified}");
    let shown = shown_sessions(s, &sessions(s));
    shown
        .into_iter()
        .find(|t| t.contains(text))
        .unwrap_or_else(|| panic!("no recorded session shows {text}"))
}

/// `ghgate sessions show` of each of `rows` (from `sessions`).
fn shown_sessions(s: &TlsGateway, rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()]))
        .collect()
}

#[test]
fn curl_sse_and_git_are_recorded_and_shown() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, _, first) = served_repo(tmp.path());
    let s = TlsGateway::start(&["github.com", "api.github.com"], true, Some(root), "");

    // curl: one HTTP/2 POST carrying a prompt and a credential, one SSE stream.
    let out = s.curl(
        "api.github.com",
        "/chat/completions",
        &[
            "--http2",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "-H",
            "content-type: application/json",
            "--data",
            r#"{"messages":[{"role":"user","content":"write a hello world"}]}"#,
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.curl("api.github.com", "/sse?n=3", &["-N"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // git: clone, then push an update of main and a new branch.
    let port = s.upstream.addr.port();
    let url = format!("https://github.com:{port}/o/r.git");
    s.git(tmp.path(), &["clone", "-q", &url, "work"]);
    let work = tmp.path().join("work");
    let second = commit(&work, "second.txt");
    s.git(
        &work,
        &["push", "-q", "origin", "main", "main:refs/heads/feature"],
    );

    // One session per process: two curls, two gits (clone and push).
    let curls: Vec<_> = sessions(&s)
        .into_iter()
        .filter(|r| r["exe"].as_str().is_some_and(|e| e.ends_with("/curl")))
        .collect();
    assert_eq!(curls.len(), 2, "each curl run is its own session: {curls:?}");
    for c in &curls {
        assert_eq!(c["uid"], 0);
        assert_eq!(c["user"], "root");
    }

    // The SSE session: caller, URL, status and the events in order.
    let sse = curls
        .iter()
        .find(|c| {
            let shown = s.gw.ghgate_ok(&["sessions", "show", c["id"].as_str().unwrap()]);
            shown.contains("/sse?n=3")
        })
        .expect("a curl session with the SSE exchange");
    let shown =
        s.gw.ghgate_ok(&["sessions", "show", "--events", sse["id"].as_str().unwrap()]);
    assert!(shown.contains("curl"), "{shown}");
    assert!(shown.contains("https://api.github.com"), "{shown}");
    assert!(shown.contains("200"), "{shown}");
    let positions: Vec<_> = (0..3)
        .map(|i| {
            shown
                .find(&format!("{{\"event\":{i}}}"))
                .unwrap_or_else(|| panic!("event {i} missing from:\n{shown}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "events out of order:\n{shown}"
    );

    // The git push: ref updates with the right ids and operations.
    // git's HTTP transport runs in git-remote-https: the clone and the push are two processes.
    let all = sessions(&s);
    let gits = all
        .iter()
        .filter(|r| {
            r["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("/git-remote-https"))
        })
        .count();
    assert_eq!(gits, 2, "clone and push are a session each: {all:?}");
    let pushed = all
        .iter()
        .map(|r| s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()]))
        .find(|text| text.contains("refs/heads/feature"))
        .expect("a session shows the push of refs/heads/feature");
    assert!(pushed.contains("refs/heads/main"), "{pushed}");
    assert!(
        pushed.contains(&first[..7]) && pushed.contains(&second[..7]),
        "{pushed}"
    );
    assert!(pushed.contains("create") && pushed.contains("update"), "{pushed}");

    // Nothing in the store holds the credential in clear; the header is recorded masked.
    let record_dir = s.gw.state_dir.join("record");
    for entry in files_under(&record_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the bearer token in clear",
            entry.display()
        );
    }
    let prompt_session = curls.iter().find(|c| c["id"] != sse["id"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let har: Value =
        serde_json::from_str(
            &s.gw
                .ghgate_ok(&["sessions", "export", &prompt_session, "--format", "har"]),
        )
        .unwrap();
    let entry = &har["log"]["entries"][0];
    assert_eq!(har["log"]["version"], "1.2");
    assert_eq!(entry["request"]["method"], "POST");
    assert_eq!(entry["response"]["status"], 200);
    let auth = entry["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| {
            h["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
        })
        .expect("the authorization header is recorded (masked)");
    let value = auth["value"].as_str().unwrap();
    assert!(
        value.starts_with("Bearer [MASKED:credential:") && !value.contains(TOKEN),
        "the credential is masked, with its fingerprint: {value}"
    );
    assert!(
        entry["request"]["postData"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("write a hello world")),
        "the prompt is in the record: {entry}"
    );

    // The HTML export, opened in a real browser, shows the prompt and the streamed events.
    let page = tmp.path().join("sse.html");
    let out_dir = tmp.path().join("chromium");
    for (id, want) in [
        (
            &prompt_session,
            vec!["/chat/completions", "write a hello world", "POST"],
        ),
        (
            &sse["id"].as_str().unwrap().to_owned(),
            vec!["/sse?n=3", "{\"event\":0}", "{\"event\":2}"],
        ),
    ] {
        s.gw.ghgate_ok(&[
            "sessions",
            "export",
            id,
            "--format",
            "html",
            "-o",
            page.to_str().unwrap(),
        ]);
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(
            !html.contains("<script src") && !html.contains("<link"),
            "the page fetches nothing"
        );
        let rendered = match ghgate_e2e::chromium::render(&page, &out_dir) {
            Ok(r) => r,
            Err(e)
                if ghgate_e2e::chromium::is_missing(&e) && std::env::var("CI").as_deref() != Ok("true") =>
            {
                eprintln!("skipping the browser check: {e}");
                continue;
            }
            Err(e) => panic!("rendering the HTML export in chromium: {e:#}"),
        };
        for text in want {
            assert!(
                rendered.dom_text.contains(text),
                "the rendered page lacks {text:?}:\n{}",
                rendered.dom_text
            );
        }
        let png = std::fs::read(&rendered.screenshot).unwrap();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "a screenshot was taken"
        );
    }

    // The whole store verifies.
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(verified.starts_with("OK"), "{verified}");
}

/// The last segment file of a store.
fn last_segment(record_dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(record_dir.join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// curl reading `path` of api.github.com as a stream, in the background: the process and its
/// output's lines as they come.
fn stream(s: &TlsGateway, path: &str) -> (std::process::Child, impl Iterator<Item = String> + use<>) {
    let (url, resolve) = s.url("api.github.com", path);
    let mut curl =
        s.gw.exec("curl")
            .args(["-sSN", "--max-time", "60", "--cacert"])
            .arg(&s.ca_file)
            .args(["--resolve", &resolve, &url])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let lines = ghgate_e2e::lines_of(&mut curl);
    (curl, lines)
}

#[test]
fn kill_9_mid_stream_loses_no_completed_exchange_and_the_torn_tail_is_reported() {
    if !privileged() {
        return;
    }
    let mut s = TlsGateway::start(&["api.github.com"], true, None, "");
    let done = s.curl("api.github.com", "/before-the-kill", &[]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    // A long SSE stream (an event every 0.7 s), killed in the middle.
    let (mut streaming, mut lines) = stream(&s, "/sse?n=30");
    for want in ["{\"event\":0}", "{\"event\":1}"] {
        let got = lines.find(|l| l.contains(want));
        assert!(got.is_some(), "the stream did not deliver {want}");
    }
    s.gw.kill9();
    let _ = streaming.wait();

    // A write torn by the kill: the start of a frame that never finished.
    let record_dir = s.gw.state_dir.join("record");
    let seg = last_segment(&record_dir);
    let mut torn = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut torn, &[0x00, 0x10, 0x00, 0x00, 0xde, 0xad]).unwrap();
    drop(torn);

    s.gw.spawn();
    let logs = s.gw.logs();
    assert!(
        logs.iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("torn tail"))),
        "the restart reports the torn tail:\n{}",
        s.gw.log_text()
    );
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(verified.starts_with("OK"), "{verified}");

    // Both curl runs are there: the completed exchange whole, the streamed one up to the kill.
    let all = sessions(&s);
    let shown = shown_sessions(&s, &all);
    let before = shown
        .iter()
        .find(|t| t.contains("/before-the-kill"))
        .unwrap_or_else(|| panic!("the exchange completed before the kill is missing: {shown:?}"));
    assert!(before.contains("200"), "{before}");
    let cut = shown
        .iter()
        .find(|t| t.contains("/sse?n=30"))
        .unwrap_or_else(|| panic!("the interrupted stream is missing: {shown:?}"));
    assert!(
        cut.contains("{\"event\":1}"),
        "events delivered before the kill are recorded:\n{cut}"
    );
}

#[test]
fn a_stop_lets_the_exchange_in_flight_end_and_records_it_whole_while_refusing_new_ones() {
    if !privileged() {
        return;
    }
    let mut s = TlsGateway::start(&["api.github.com"], true, None, "");
    // A stream of 4 events 0.7 s apart, stopped (SIGTERM, as `systemctl restart` would) after its
    // first event.
    let (mut streaming, mut lines) = stream(&s, "/sse?n=4");
    assert!(
        lines.any(|l| l.contains("{\"event\":0}")),
        "the stream did not start"
    );
    s.gw.begin_stop();

    // While it drains, a new connection is refused, not served and not sent around it.
    std::thread::sleep(Duration::from_millis(300));
    let served = s.upstream.served();
    let late = s.curl("api.github.com", "/after-the-stop", &["--max-time", "10"]);
    assert!(
        !late.status.success(),
        "a connection made while the gateway stops was served: {}",
        String::from_utf8_lossy(&late.stdout)
    );
    assert_eq!(
        s.upstream.served(),
        served,
        "a connection made while the gateway stops reached the upstream"
    );

    // The stream in flight ends whole.
    let rest: Vec<String> = lines.collect();
    let status = streaming.wait().unwrap();
    assert!(status.success(), "the stream was cut: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("{\"event\":3}")),
        "the stream's last event is missing: {rest:?}"
    );
    // The gateway stops on its own once the stream's connection has closed (a second SIGTERM
    // would cut what is still open, so none is sent before).
    s.gw.wait_log("the drain", Duration::from_secs(15), |l| {
        l.iter()
            .any(|l| l["message"] == "every connection in flight ended")
    });
    s.gw.terminate();

    // And its record is whole: the exchange's end, with the last event.
    let stream = verified_session_with(&s, "/sse?n=4");
    assert!(
        stream.contains("{\"event\":3}") && stream.contains("200"),
        "the stream is recorded whole, with its end:\n{stream}"
    );
}

/// Sends SIGTERM and waits for the gateway to stop; how long that took, and its log line of the
/// connections the drain deadline cut (the test fails if there is none).
fn stop_and_cut(s: &mut TlsGateway) -> (Duration, Value) {
    let stop = std::time::Instant::now();
    s.gw.begin_stop();
    let logs = s.gw.wait_log("the stop", Duration::from_secs(10), |l| {
        l.iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stopping; the redirect stays"))
        })
    });
    let took = stop.elapsed();
    let cut = logs
        .into_iter()
        .find(|l| l["message"] == "stopping with connections still open: they are cut")
        .unwrap_or_else(|| panic!("no connection was cut at the stop:\n{}", s.gw.log_text()));
    (took, cut)
}

#[test]
fn a_client_that_never_ends_holds_a_stop_only_until_the_drain_deadline() {
    if !privileged() {
        return;
    }
    // A stream of 30 events 0.7 s apart (21 s): a client that would keep the gateway from
    // stopping, were the drain not bounded.
    let mut s = TlsGateway::start_tweaked(
        &["api.github.com"],
        true,
        None,
        None,
        &|_| String::new(),
        &|spec| spec.drain_secs = Some(1),
    );
    let (mut streaming, mut lines) = stream(&s, "/sse?n=30");
    assert!(
        lines.any(|l| l.contains("{\"event\":1}")),
        "the stream did not start"
    );
    let (took, cut) = stop_and_cut(&mut s);
    assert!(
        took < Duration::from_secs(5),
        "the stop waited {took:?} for a stream that does not end (drain_secs = 1)"
    );
    assert_eq!(cut["connections"], 1, "{cut}");
    let _ = streaming.wait();
    s.gw.terminate();

    // The record seals: the cut stream is there up to the events it delivered.
    let stream = verified_session_with(&s, "/sse?n=30");
    assert!(stream.contains("{\"event\":1}"), "{stream}");
}

/// A WebSocket outlives the HTTP handler it was upgraded from: a stop still counts it, waits for
/// it up to the drain deadline, and then cuts it; what it carried before is recorded.
#[test]
fn a_websocket_open_at_a_stop_is_waited_for_until_the_drain_deadline() {
    if !privileged() {
        return;
    }
    let mut s = TlsGateway::start_tweaked(
        &["api.githubcopilot.com"],
        true,
        None,
        None,
        &|_| String::new(),
        &|spec| spec.drain_secs = Some(2),
    );
    // Eight messages 1.5 s apart: open for about 10 s.
    let mut probe =
        s.gw.exec(ghgate_e2e::bin("ghgate-probe"))
            .args(["ws", &s.upstream.addr.to_string(), "api.githubcopilot.com"])
            .arg(&s.ca_file)
            .args(["--pause-ms", "1500"])
            .args((1..=8).map(|i| format!("message {i}")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    // The first message and its echo pass at once; the second comes 1.5 s later.
    std::thread::sleep(Duration::from_millis(800));
    let (took, cut) = stop_and_cut(&mut s);
    assert_eq!(cut["connections"], 1, "{cut}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "the stop took {took:?} with drain_secs = 2"
    );
    let _ = probe.kill();
    let _ = probe.wait();
    s.gw.terminate();
    let shown = verified_session_with(&s, "message 1");
    assert!(shown.contains("echo: message 1"), "{shown}");
}

/// A gateway for api.github.com whose record store is on an 8 MiB tmpfs of its own, started
/// after `prepare` has run on that disk. Bound in the order returned, they drop in reverse:
/// the gateway first, the temporary directory the disk is mounted in last.
fn on_small_disk<R>(
    prepare: impl FnOnce(&SmallDisk) -> R,
) -> (tempfile::TempDir, SmallDisk, PathBuf, R, TlsGateway) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(tmp.path(), "8m");
    let prepared = prepare(&disk);
    let record_dir = disk.dir.join("record");
    let s = TlsGateway::start(
        &["api.github.com"],
        true,
        None,
        &format!("\n[record]\ndir = \"{}\"\n", record_dir.display()),
    );
    (tmp, disk, record_dir, prepared, s)
}

#[test]
fn a_full_disk_refuses_requests_with_503_and_recovers_when_space_returns() {
    if !privileged() {
        return;
    }
    let (_tmp, disk, record_dir, (), s) = on_small_disk(|_| ());
    let ok = s.curl(
        "api.github.com",
        "/first",
        &["-w", "%{http_code}", "-o", "/dev/null"],
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200");

    let filler = disk.fill();
    // The segment's last, partly used page may still take a record or two: ask until the store
    // runs out, checking that every request is either recorded and answered, or refused and
    // never forwarded.
    let mut refused = None;
    for i in 0..200 {
        let served_before = s.upstream.served();
        let path = format!("/while-full-{i}");
        let out = s.curl(
            "api.github.com",
            &path,
            &["-w", "\n%{http_code}", "--data", &"x".repeat(2048)],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with("503") {
            // Refused at its head (its first record could not be written): the upstream saw
            // nothing. Refused at its body (the head's record fit in the last page, the body's
            // did not): the head had gone up, the upstream saw the request fail before its
            // first body byte, and nothing of the body reached it.
            let at_most = if text.contains("its body could not be recorded") {
                served_before + 1
            } else {
                served_before
            };
            assert!(
                s.upstream.served() <= at_most,
                "a refused request was forwarded: {text}"
            );
            refused = Some(text);
            break;
        }
        assert!(text.ends_with("200"), "{path}: {text}");
    }
    let text = refused.expect("requests are refused once the store's disk is full");
    assert!(
        text.contains("recorder cannot write") && text.contains("No space left on device"),
        "the answer names the cause: {text}"
    );
    // Past the writer's probes (one a second): a probe's checkpoint may fit in what the cut-back
    // write left free and clear the failure. A read (a GET, which may otherwise be written with
    // its answer) is then written before it goes upstream all the same: refused if its request's
    // records do not fit; if they do (the room left may take them), forwarded recorded, and its
    // answer cut short when its end does not fit.
    std::thread::sleep(Duration::from_millis(2500));
    let served_before = s.upstream.served();
    let again = s.curl(
        "api.github.com",
        "/still-full",
        &["-w", "%{http_code}", "-o", "/dev/null"],
    );
    let still_full = String::from_utf8_lossy(&again.stdout).into_owned();
    let forwarded = s.upstream.served() > served_before;
    if !forwarded {
        assert_eq!(still_full, "503", "refused, as nothing was forwarded");
    }

    std::fs::remove_file(&filler).unwrap();
    let code = eventually(
        "the recorder to recover once space returns",
        Duration::from_secs(10),
        || {
            let out = s.curl(
                "api.github.com",
                "/after",
                &["-w", "%{http_code}", "-o", "/dev/null"],
            );
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            (code == "200").then_some(code)
        },
    );
    assert_eq!(code, "200");
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(verified.starts_with("OK"), "{verified}");
    if forwarded {
        // It went up only once its request was in the store.
        use ghgate::record::{model::Record, store};
        let recorded = store::read_records(&record_dir)
            .unwrap()
            .map(|r| r.unwrap().1)
            .any(|r| matches!(&r, Record::Request(q) if q.url.ends_with("/still-full")));
        assert!(
            recorded,
            "/still-full was forwarded unrecorded (answer {still_full})"
        );
    }
    // The index may lag the store by a batch.
    eventually("both exchanges in the index", Duration::from_secs(10), || {
        let shown: String = sessions(&s)
            .iter()
            .map(|r| s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()]))
            .collect();
        (shown.contains("/first") && shown.contains("/after")).then_some(())
    });
}

/// A gateway started on a filesystem with less than 1 MiB free writes a plain read before it
/// goes upstream, as after a store failure: its answer's end may not fit, and the read would
/// then have gone up with no record at all. Once the filesystem has room, reads are written
/// with their answers again.
#[test]
fn a_gateway_started_on_a_nearly_full_disk_writes_reads_ahead_until_there_is_room() {
    if !privileged() {
        return;
    }
    // 7.5 of the 8 MiB: half a MiB left, room for the store's start and a few exchanges.
    let (_tmp, _disk, record_dir, filler, s) = on_small_disk(|disk| disk.fill_with(15 << 19));
    // A GET whose answer the upstream holds 3 s; whether its request is in the store 1.5 s in.
    let held_read = |name: &str| -> bool {
        let path = format!("/held/{name}?hold_ms=3000");
        let client = status_curl(&s, &path, &[]);
        std::thread::sleep(Duration::from_millis(1500));
        let early = requests_so_far(&record_dir)
            .iter()
            .any(|(_, u)| u.ends_with(&path));
        let out = client.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{name}");
        assert!(
            requests_so_far(&record_dir)
                .iter()
                .any(|(_, u)| u.ends_with(&path)),
            "{name}: answered, and not in the store"
        );
        early
    };
    assert!(
        held_read("nearly-full"),
        "a read was held upstream with no record of it, on a disk with less than 1 MiB free"
    );
    std::fs::remove_file(&filler).unwrap();
    // The writer looks at the free space at least once a second.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !held_read("roomy"),
        "with room again, a read is still written before its answer"
    );
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(verified.starts_with("OK"), "{verified}");
}

#[test]
fn tampering_with_a_real_store_is_detected_and_named() {
    if !privileged() {
        return;
    }
    let mut s = TlsGateway::start(&["api.github.com"], true, None, "");
    for path in ["/one", "/two", "/three"] {
        let out = s.curl("api.github.com", path, &[]);
        assert!(out.status.success());
    }
    s.gw.terminate();
    let record_dir = s.gw.state_dir.join("record");
    let verify = |dir: &Path| {
        let config = std::fs::read_to_string(&s.gw.config).unwrap()
            + &format!("\n[record]\ndir = \"{}\"\n", dir.display());
        let cfg = dir
            .parent()
            .unwrap()
            .join(format!("{}.toml", dir.file_name().unwrap().to_string_lossy()));
        std::fs::write(&cfg, config).unwrap();
        Command::new(ghgate_e2e::bin("ghgate"))
            .args(["sessions", "verify", "--all", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let untouched = verify(&record_dir);
    assert!(
        untouched.status.success(),
        "{}",
        String::from_utf8_lossy(&untouched.stdout)
    );

    // One byte flipped in the middle of the first segment.
    let copy = tempfile::tempdir().unwrap();
    let flipped = copy.path().join("flipped");
    copy_dir(&record_dir, &flipped);
    let seg = first_segment(&flipped);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
    let out = verify(&flipped);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a flipped byte must fail verify: {text}");
    assert!(
        text.contains("FAILED") && text.contains("offset"),
        "the failure names the place: {text}"
    );

    // The index edited: a record's hash changed.
    let edited = copy.path().join("edited");
    copy_dir(&record_dir, &edited);
    edit_index(&edited.join("index.sqlite"));
    let out = verify(&edited);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "an edited index must fail verify: {text}");
    assert!(text.contains("index"), "{text}");
}

fn first_segment(record_dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(record_dir.join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    segs.remove(0)
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Changes one indexed record's hash, as someone covering their tracks might.
fn edit_index(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let changed = conn
        .execute(
            "UPDATE records SET hash = zeroblob(32) WHERE seq = (SELECT min(seq) FROM records)",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "one index row edited");
}

#[test]
fn replay_paces_the_stream_and_prune_leaves_a_verifiable_tombstone() {
    if !privileged() {
        return;
    }
    let mut s = TlsGateway::start(&["api.github.com"], true, None, "");
    let out = s.curl("api.github.com", "/sse?n=3", &["-N"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = eventually("the SSE session", Duration::from_secs(10), || {
        sessions(&s)
            .into_iter()
            .find(|r| r["exchanges"].as_u64() >= Some(1))
            .map(|r| r["id"].as_str().unwrap().to_owned())
    });

    // The events came 0.7 s apart: at double speed the replay still takes about 0.7 s, with the
    // events in their order.
    let started = std::time::Instant::now();
    let replayed = s.gw.ghgate_ok(&["sessions", "replay", &id, "--speed", "2"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "replay did not keep the pacing: {took:?}\n{replayed}"
    );
    let at = |i: usize| {
        replayed
            .find(&format!("{{\"event\":{i}}}"))
            .unwrap_or_else(|| panic!("{replayed}"))
    };
    assert!(at(0) < at(1) && at(1) < at(2), "{replayed}");
    let instant = std::time::Instant::now();
    s.gw.ghgate_ok(&["sessions", "replay", &id, "--speed", "0"]);
    assert!(instant.elapsed() < took, "--speed 0 plays without pauses");

    // A restart seals the first segment; pruning everything sealed removes it, leaves a signed
    // tombstone, and the store still verifies, saying what was pruned.
    s.gw.terminate();
    s.gw.spawn();
    let pruned = s.gw.ghgate_ok(&["sessions", "prune", "--older-than", "0s"]);
    assert!(
        pruned.contains("000000000001") || pruned.contains("segment"),
        "{pruned}"
    );
    let tombstones = s.gw.state_dir.join("record/tombstones");
    assert_eq!(
        std::fs::read_dir(&tombstones).unwrap().count(),
        1,
        "one tombstone"
    );
    assert!(!s.gw.state_dir.join("record/segments/000000000001.seg").exists());
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(
        verified.starts_with("OK") && verified.contains("prun"),
        "{verified}"
    );

    // Without its tombstone, the gap is a failure.
    for t in std::fs::read_dir(&tombstones).unwrap().flatten() {
        std::fs::remove_file(t.path()).unwrap();
    }
    let out = s.gw.ghgate(&["sessions", "verify", "--all"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn websocket_messages_and_relayed_connections_are_recorded() {
    if !privileged() {
        return;
    }
    // The passthrough name is a site of its own (its own CA, address and certificate): on
    // Copilot's server it would be refused, as it could front for it.
    let site_ca = TestCa::new();
    let site = Upstream::start(
        SocketAddr::new(loopback_v4().into(), 0),
        &site_ca,
        &["pinned.example"],
    );
    let s = TlsGateway::start_tweaked(
        &["api.githubcopilot.com"],
        true,
        None,
        None,
        &|_| String::new(),
        &|spec| {
            spec.tls_passthrough = vec!["pinned.example".into()];
            let (ip, port) = (site.addr.ip().to_string(), site.addr.port());
            spec.intercept
                .push((vec![], vec![format!("{ip}/32")], vec![port]));
            spec.tls_ports.push(port);
            spec.overrides.push(("pinned.example".into(), vec![ip]));
        },
    );
    let site_ca_file = site_ca.write_pem(s.dir.path());
    let out =
        s.gw.exec(ghgate_e2e::bin("ghgate-probe"))
            .args(["ws", &s.upstream.addr.to_string(), "api.githubcopilot.com"])
            .arg(&s.ca_file)
            .args(["first prompt", "second prompt"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A name ghgate does not terminate: relayed untouched, recorded as a connection.
    let port = site.addr.port();
    let url = format!("https://pinned.example:{port}/");
    let resolve = format!("pinned.example:{port}:{}", site.addr.ip());
    let out =
        s.gw.exec("curl")
            .args(["-sS", "-o", "/dev/null", "--cacert"])
            .arg(&site_ca_file)
            .args(["--resolve", &resolve, &url])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let shown = eventually("both sessions recorded", Duration::from_secs(10), || {
        let text: String = sessions(&s)
            .iter()
            .map(|r| s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()]))
            .collect();
        (text.contains("echo: second prompt") && text.contains("pinned.example")).then_some(text)
    });
    let at = |t: &str| shown.find(t).unwrap_or_else(|| panic!("{t:?} missing:\n{shown}"));
    assert!(
        at("first prompt") < at("echo: first prompt") && at("echo: first prompt") < at("echo: second prompt"),
        "WebSocket messages are recorded in order, both ways:\n{shown}"
    );
    let relayed = shown
        .lines()
        .find(|l| l.contains("passthrough") && l.contains("pinned.example"))
        .unwrap_or_else(|| panic!("no passthrough line:\n{shown}"));
    assert!(
        relayed.contains(&site.addr.to_string()),
        "the relayed connection's destination: {relayed}"
    );
}

/// An inline code completion as the Copilot language server asks for one (a legacy completions
/// request: the code before the cursor as `prompt`, the code after it as `suffix`, streamed
/// `choices[].text` back), with a token in the code that came back: `sessions show` prints the
/// prompt, the suffix and the reassembled code, masked; `sessions replay` plays the code back as
/// it streamed, not the raw events.
#[test]
fn an_inline_completion_is_shown_as_prompt_and_code_and_replayed_as_it_streamed() {
    if !privileged() {
        return;
    }
    let s = TlsGateway::start(&["api.githubcopilot.com"], true, None, "");
    // A token of a valid shape (its checksum right), which the masker's rules know.
    let token = github_token("Cmpl3t10nL34kT0k3nXyZ012345678");
    let code = format!("let token = \"{token}\";\n    client.auth(token)");
    let hex: String = code.bytes().map(|b| format!("{b:02x}")).collect();
    let request = serde_json::json!({
        "prompt": "// Path: src/main.rs\nfn main() {\n    ",
        "suffix": "\n}\n",
        "max_tokens": 500, "temperature": 0, "top_p": 1, "n": 1, "stop": ["\n\n\n"],
        "stream": true,
        "extra": {"language": "rust", "next_indent": 0, "trim_by_indentation": true}
    })
    .to_string();
    let out = s.curl(
        "api.githubcopilot.com",
        &format!("/v1/engines/copilot-codex/completions?pieces=6&text={hex}"),
        &[
            "-N",
            "-H",
            "content-type: application/json",
            "-H",
            "editor-version: vscode/1.96.0",
            "-H",
            "copilot-integration-id: vscode-chat",
            "--data",
            &request,
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let streamed = String::from_utf8_lossy(&out.stdout);
    assert!(streamed.contains("\"text\""), "{streamed}");
    assert!(!streamed.contains(&token), "the token reached the client");

    let id = eventually("the completion's session", Duration::from_secs(10), || {
        sessions(&s)
            .into_iter()
            .find(|r| r["exchanges"].as_u64() >= Some(1))
            .map(|r| r["id"].as_str().unwrap().to_owned())
    });
    let shown = eventually("the completion's record", Duration::from_secs(10), || {
        let shown = s.gw.ghgate_ok(&["sessions", "show", &id]);
        shown.contains("answer, choice 0").then_some(shown)
    });
    for want in [
        "      // Path: src/main.rs\n",
        "      fn main() {\n",
        "  [suffix: the answer leads into this]\n",
        "answer, choice 0 (masked as recorded):\n",
        "      let token = \"[MASKED:",
        "          client.auth(token)\n",
        "stream events (listed with --events)",
    ] {
        assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
    }
    assert!(
        !shown.contains(&token),
        "the token is in `sessions show`:\n{shown}"
    );
    assert!(
        !shown.contains("cmpl-test"),
        "raw events shown without --events:\n{shown}"
    );
    let events = s.gw.ghgate_ok(&["sessions", "show", "--events", &id]);
    assert!(events.contains("cmpl-test"), "{events}");

    let replayed = s.gw.ghgate_ok(&["sessions", "replay", &id, "--speed", "0"]);
    assert!(replayed.contains("prompt [suffix]"), "{replayed}");
    let answer = replayed
        .split_once("answer, choice 0:\n")
        .unwrap_or_else(|| panic!("no answer in the replay:\n{replayed}"))
        .1;
    assert!(
        answer.starts_with("let token = \"[MASKED:") && answer.contains("\";\n    client.auth(token)\n"),
        "the code as it streamed, masked:\n{replayed}"
    );
    assert!(
        !replayed.contains(&token) && !replayed.contains("cmpl-test"),
        "{replayed}"
    );
}

/// Request records in the store so far, in store order: (exchange, URL). A frame being written
/// as it is read ends the list there (the next read sees it whole).
/// curl in the gateway's cgroup asking api.github.com for `path` with `args`, started and left
/// running: its stdout is the answer's status, its stdin is open (a body may be written to it).
fn status_curl(s: &TlsGateway, path: &str, args: &[&str]) -> std::process::Child {
    let (url, resolve) = s.url("api.github.com", path);
    s.gw.exec("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&s.ca_file)
        .args(["--resolve", &resolve])
        .args(args)
        .arg(&url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn requests_so_far(record_dir: &Path) -> Vec<(u64, String)> {
    use ghgate::record::{model::Record, store};
    let Ok(records) = store::read_records(record_dir) else {
        return Vec::new();
    };
    records
        .map_while(Result::ok)
        .filter_map(|(_, r)| match r {
            Record::Request(r) => Some((r.exchange.get(), r.url)),
            _ => None,
        })
        .collect()
}

/// What a hostile client would try to get a write past the store unrecorded: each shape of a
/// request that can change anything is written before it goes upstream, and only a plain read
/// (GET or HEAD, no body, no override) waits to be written with its answer, before the client
/// sees that answer.
#[test]
fn a_request_that_can_write_is_recorded_before_it_goes_upstream_and_a_read_with_its_answer() {
    if !privileged() {
        return;
    }
    let s = TlsGateway::start(&["api.github.com"], true, None, "");
    // Each answer is held 3 s upstream.
    let cases: &[(&str, &[&str], bool)] = &[
        ("read", &[], false),
        ("head", &["-I"], false),
        ("override", &["-H", "X-HTTP-Method-Override: DELETE"], true),
        ("override-lower", &["-H", "x-http-method: PATCH"], true),
        ("get-with-body", &["-X", "GET", "--data", "x=1"], true),
        (
            "get-with-body-h1",
            &["--http1.1", "-X", "GET", "--data", "x=1"],
            true,
        ),
        (
            "get-chunked",
            &["-X", "GET", "-H", "Transfer-Encoding: chunked", "--data", "x=1"],
            true,
        ),
        // A body that has not come yet (stdin, held open below): its head is on its way up.
        ("get-body-to-come", &["-X", "GET", "-T", "-"], true),
        ("post", &["--data", "x=1"], true),
        ("graphql", &[], true),
    ];
    let url_of = |name: &str| match name {
        "graphql" => "/graphql?hold_ms=3000".to_owned(),
        _ => format!("/held/{name}?hold_ms=3000"),
    };
    let clients: Vec<_> = cases
        .iter()
        .map(|(name, args, _)| status_curl(&s, &url_of(name), args))
        .collect();
    let started = std::time::Instant::now();
    let record_dir = s.gw.state_dir.join("record");
    let recorded = |name: &str, requests: &[(u64, String)]| {
        let want = url_of(name);
        requests.iter().any(|(_, url)| url.ends_with(&want))
    };
    // Every request that can write is in the store while its answer is still held upstream.
    let early = eventually("the writing requests' records", Duration::from_secs(10), || {
        let now = requests_so_far(&record_dir);
        cases
            .iter()
            .filter(|(_, _, ahead)| *ahead)
            .all(|(name, _, _)| recorded(name, &now))
            .then_some(now)
    });
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the writing requests were recorded only {:?} after they were sent: the test cannot tell \
         them from answered ones",
        started.elapsed()
    );
    for (name, _, ahead) in cases {
        if !ahead {
            assert!(
                !recorded(name, &early),
                "the read {name} was written before its answer came: {early:?}"
            );
        }
    }
    for (mut client, (name, _, _)) in clients.into_iter().zip(cases) {
        let mut stdin = client.stdin.take().unwrap();
        if *name == "get-body-to-come" {
            std::io::Write::write_all(&mut stdin, b"x=1").unwrap();
        }
        drop(stdin);
        let out = std::io::read_to_string(client.stdout.take().unwrap()).unwrap();
        assert!(client.wait().unwrap().success(), "{name}: curl failed");
        assert!(out.starts_with('2'), "{name}: status {out}");
    }
    // Once answered, every request is recorded; a read's request record is written together
    // with the rest of its exchange, in one contiguous write.
    use ghgate::record::{model::Record, store};
    let all: Vec<Record> = store::read_records(&record_dir)
        .unwrap()
        .map(|r| r.unwrap().1)
        .collect();
    for (name, _, ahead) in cases {
        let want = url_of(name);
        let at = all
            .iter()
            .position(|r| matches!(r, Record::Request(q) if q.url.ends_with(&want)))
            .unwrap_or_else(|| panic!("{name}: no request record"));
        let exchange = all[at].exchange();
        if !ahead {
            let rest: Vec<_> = all[at..]
                .iter()
                .take_while(|r| r.exchange() == exchange)
                .collect();
            assert!(
                rest.iter().any(|r| matches!(r, Record::Exchange(_))),
                "{name}: its request record is not written with its end: {rest:?}"
            );
        }
    }
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    assert!(verified.starts_with("OK"), "{verified}");
}
