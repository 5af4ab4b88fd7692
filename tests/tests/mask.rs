//! Secret masking end to end, through the real redirect and proxy with real curl and git: a
//! streamed completion carrying a token reaches the client masked and valid, event by event; a
//! gzip-compressed answer arrives decoded and masked; `alert` routes pass the secret but record
//! it masked; the same token later pushed in a file gets the same fingerprint in the record; and
//! no export or store file holds the token.
use std::time::Duration;

use ghgate_e2e::{
    eventually,
    fixtures::{commit_file, files_under, github_token, served_repo},
    https::TlsGateway,
    privileged,
};
use serde_json::Value;

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The events of an SSE stream, strictly: every line a field, a comment or blank.
fn sse_events(stream: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in stream.split('\n') {
        if line.is_empty() {
            events.extend(data.take());
            continue;
        }
        let value = line
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data line: {line:?}"));
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    assert!(data.is_none(), "the stream ends inside an event");
    events
}

/// The completion text reassembled from a chat-completion stream's events.
fn completion_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            let v: Value =
                serde_json::from_str(e).unwrap_or_else(|err| panic!("event is not JSON ({err}): {e}"));
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// The fingerprint in the first `[MASKED:<rule>:<fp>]` of `text`.
fn fingerprint(text: &str, rule: &str) -> String {
    let tag = format!("[MASKED:{rule}:");
    let at = text.find(&tag).unwrap_or_else(|| panic!("no {tag} in {text}")) + tag.len();
    text[at..].split(']').next().unwrap().to_owned()
}

#[test]
fn secrets_are_masked_for_clients_and_in_records_with_stable_fingerprints() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, _, _) = served_repo(tmp.path());

    let s = TlsGateway::start(
        &["api.githubcopilot.com", "github.com"],
        true,
        Some(root),
        "[mask]\nresponses = \"mask\"\n[[mask.route]]\npath = \"/alert/*\"\nresponses = \"alert\"\n",
    );
    let token = github_token("Zq8m2Kx4TnR7vB1cW9pL3sJ6hD0fGy");
    let text = format!("Sure. Set it like this:\nexport GITHUB_TOKEN={token}\nand run the script again.");

    // A completion whose token arrives split over ten events: masked, still SSE and JSON.
    // The prompt carries the token too: it goes upstream as sent, and is recorded masked.
    let prompt = serde_json::json!({"messages": [{"role": "user", "content": format!("my token is {token}, fix the script")}]}).to_string();
    let path = format!("/v1/completion?pieces=10&text={}", hex(&text));
    let out = s.curl(
        "api.githubcopilot.com",
        &path,
        &["-N", "-H", "content-type: application/json", "--data", &prompt],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(!body.contains(&token), "the token reached the client: {body}");
    let events = sse_events(&body);
    assert_eq!(
        events.len(),
        13,
        "role, 10 pieces, finish and [DONE]: one event each, as sent: {body}"
    );
    let got = completion_text(&events);
    let fp = fingerprint(&got, "github-pat");
    assert_eq!(
        got,
        text.replace(&token, &format!("[MASKED:github-pat:{fp}]")),
        "only the token changed"
    );

    // A gzip-compressed JSON answer: decoded, masked, sent identity-encoded.
    let out = s.curl(
        "api.githubcopilot.com",
        &format!("/gzip-json?text={}", hex(&text)),
        &["-D", "-"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.gw.log_text()
    );
    let answer = String::from_utf8(out.stdout).unwrap();
    let (head, json) = answer.split_once("\r\n\r\n").unwrap();
    assert!(!head.to_ascii_lowercase().contains("content-encoding"), "{head}");
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert_eq!(
        v["text"].as_str().unwrap(),
        got,
        "the same text, masked the same way"
    );

    // An `alert` route: the client gets the token; the record does not.
    let out = s.curl(
        "api.githubcopilot.com",
        &format!("/alert/completion?pieces=3&text={}", hex(&text)),
        &["-N"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let passed = completion_text(&sse_events(&String::from_utf8_lossy(&out.stdout)));
    assert_eq!(passed, text, "alert mode passes the response as sent");

    // A WebSocket message carrying the token (and its echo): recorded masked.
    let out =
        s.gw.exec(ghgate_e2e::bin("ghgate-probe"))
            .args(["ws", &s.upstream.addr.to_string(), "api.githubcopilot.com"])
            .arg(&s.ca_file)
            .arg(format!("deploy with {token} please"))
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(
        !replies.contains(&token)
            && replies.contains(&format!("echo: deploy with [MASKED:github-pat:{fp}] please")),
        "the server's text message reaches the client masked: {replies}"
    );

    // The token, pushed in a file: the pushed pack's objects are scanned.
    let work = s.clone_o_r(tmp.path());
    commit_file(
        &work,
        "deploy.sh",
        &format!("#!/bin/sh\nGITHUB_TOKEN={token} ./deploy\n"),
    );
    s.git(&work, &["push", "-q", "origin", "main"]);

    // The record: every session shown, masked lines with the one fingerprint.
    let shown =
        s.gw.shown_when("the push's record", |text| text.contains("git push pack"));
    assert!(
        !shown.contains(&token),
        "sessions show prints the token:\n{shown}"
    );
    for place in [
        "request body",
        "response body",
        "websocket messages",
        "git push pack",
    ] {
        let line = format!("masked github-pat [{fp}] in the {place}");
        assert!(shown.contains(&line), "{line:?} missing:\n{shown}");
    }
    assert!(
        shown.contains(&format!(
            "masked github-pat [{fp}] in the response body  (the client received it unmasked)"
        )),
        "the alert is recorded as such:\n{shown}"
    );

    // No export and no file of the store holds the token; the HTML page lists what was masked.
    let mut pages = String::new();
    for line in s.gw.ghgate_ok(&["sessions", "list", "--json"]).lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let id = r["id"].as_str().unwrap();
        for format in ["har", "jsonl", "html"] {
            let exported = s.gw.ghgate_ok(&["sessions", "export", id, "--format", format]);
            assert!(
                !exported.contains(&token),
                "the {format} export of {id} holds the token"
            );
            if format == "html" {
                pages.push_str(&exported);
            }
        }
    }
    assert!(
        pages.contains(&format!("my token is [MASKED:github-pat:{fp}], fix the script")),
        "the prompt is recorded masked"
    );
    assert!(
        pages.contains("Secrets masked")
            && pages.contains(&format!(
                "fingerprint <span class=\"mono\">{fp}</span> in the git push pack"
            )),
        "the HTML export lists the masked secrets"
    );
    for file in files_under(&s.gw.state_dir) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{} holds the token in clear",
            file.display()
        );
    }
    assert!(
        !s.gw.log_text().contains(&token),
        "the gateway's log holds the token"
    );
    // And the gateway's counters say what it masked.
    let metrics = eventually("the metrics file", Duration::from_secs(10), || {
        std::fs::read_to_string(s.gw.state_dir.join("metrics.json"))
            .ok()
            .filter(|m| m.contains("git push pack"))
    });
    assert!(metrics.contains("\"rule\":\"github-pat\""), "{metrics}");
    let status = s.gw.ghgate_ok(&["status"]);
    assert!(
        status.contains("masked since the gateway started")
            && status.contains("github-pat")
            && status.contains("git push pack"),
        "{status}"
    );
}
