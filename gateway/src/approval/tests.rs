//! Approvals end to end: real files, the real control socket and HTTPS listener, a real webhook
//! receiver.
use std::{os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use super::{
    config::{HttpControlConfig, TokenConfig, WebhookConfig, WebhookFormat},
    testutil::*,
    *,
};

const HOUR: Duration = Duration::from_secs(3600);

fn alice() -> Approver {
    Approver {
        name: "alice".into(),
        uid: Some(1001),
        via: "socket",
    }
}

fn carol() -> Approver {
    Approver {
        name: "carol".into(),
        uid: None,
        via: "http",
    }
}

fn pending_id(gate: Gate) -> String {
    match gate {
        Gate::Pending { id, .. } => id,
        other => panic!("expected pending, got {other:?}"),
    }
}

#[test]
fn ids_are_short_random_base32() {
    let a = new_id();
    let b = new_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 14);
    assert!(a.starts_with("apr-"));
    assert!(
        a[4..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)),
        "{a}"
    );
}

#[tokio::test]
async fn approved_over_the_socket_passes_once_and_only_that_operation() {
    let dir = tempfile::tempdir().unwrap();
    let me = my_uid();
    let (approvals, _groups, steps) = open(dir.path(), &[], &[me]);
    let op = push("a");
    let gate = approvals
        .check(&op, &bob(), &spec(1, HOUR), "protect-main", None)
        .unwrap();
    let Gate::Pending { id, new: true, .. } = gate else {
        panic!("{gate:?}")
    };
    // A retry (a new process: another session) while pending reuses the approval.
    let retry = Requester {
        session: "s2".into(),
        ..bob()
    };
    let again = approvals
        .check(&op, &retry, &spec(1, HOUR), "protect-main", None)
        .unwrap();
    assert!(
        matches!(&again, Gate::Pending { id: i, new: false, .. } if *i == id),
        "{again:?}"
    );
    assert_eq!(steps.of(&id), vec![Step::Requested]);

    let socket = dir.path().join("control.sock");
    let server = control::serve_unix(approvals.clone(), &socket).await.unwrap();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o666
    );
    let (status, list) = over_unix(&socket, "GET", "/v1/approvals", "").await;
    assert_eq!(status, 200);
    assert_eq!(list["approvals"][0]["id"], id.as_str());
    let (status, body) = over_unix(
        &socket,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        r#"{"reason": "release day"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"]["kind"], "approved");
    let me_name = crate::identity::user_name(me).unwrap_or_else(|| format!("uid:{me}"));
    assert_eq!(body["approvals"][0]["by"], me_name.as_str());
    assert_eq!(body["approvals"][0]["via"], "socket");
    assert_eq!(body["approvals"][0]["reason"], "release day");

    // Another new object id, or another program of the same user: not covered.
    let other_op = pending_id(
        approvals
            .check(&push("b"), &bob(), &spec(1, HOUR), "protect-main", None)
            .unwrap(),
    );
    let other_exe = Requester {
        exe: Some("/usr/bin/curl".into()),
        ..bob()
    };
    let other_who = pending_id(
        approvals
            .check(&op, &other_exe, &spec(1, HOUR), "protect-main", None)
            .unwrap(),
    );
    assert!(other_op != id && other_who != id && other_op != other_who);
    assert_eq!(approvals.get(&id).unwrap().state, State::Approved);

    // The exact operation passes, once.
    let gate = approvals
        .check(&op, &retry, &spec(1, HOUR), "protect-main", None)
        .unwrap();
    assert_eq!(gate, Gate::Approved { id: id.clone() });
    assert!(matches!(approvals.get(&id).unwrap().state, State::Used { .. }));
    let next = pending_id(
        approvals
            .check(&op, &bob(), &spec(1, HOUR), "protect-main", None)
            .unwrap(),
    );
    assert_ne!(next, id);
    assert_eq!(
        steps.of(&id),
        vec![
            Step::Requested,
            Step::Approved {
                by: me_name,
                reason: Some("release day".into())
            },
            Step::Used
        ]
    );
    server.abort();
}

#[tokio::test]
async fn non_members_and_requesters_cannot_decide_and_membership_is_read_at_decision_time() {
    let dir = tempfile::tempdir().unwrap();
    let me = my_uid();
    let (approvals, groups, _steps) = open(dir.path(), &["alice"], &[]);
    let socket = dir.path().join("control.sock");
    let _server = control::serve_unix(approvals.clone(), &socket).await.unwrap();
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );

    let approve = |id: String| {
        let socket = socket.clone();
        async move { over_unix(&socket, "POST", &format!("/v1/approvals/{id}/approve"), "").await }
    };
    let (status, body) = approve(id.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is not in approver group \"maintainers\""),
        "{body}"
    );
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);

    // The same uid asking for an operation cannot approve it, even as a member.
    groups
        .write()
        .unwrap()
        .get_mut("maintainers")
        .unwrap()
        .uids
        .push(me);
    let mine = Requester {
        uid: me,
        user: crate::identity::user_name(me),
        ..bob()
    };
    let own = pending_id(
        approvals
            .check(&push("c"), &mine, &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let (status, body) = approve(own.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cannot decide it"),
        "{body}"
    );
    let (status, body) = over_unix(&socket, "POST", &format!("/v1/approvals/{own}/deny"), "").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(approvals.get(&own).unwrap().state, State::Pending);

    // Now a member, the earlier refusal no longer holds.
    let (status, body) = approve(id.clone()).await;
    assert_eq!(
        (status, body["state"]["kind"].as_str()),
        (200, Some("approved")),
        "{body}"
    );
    let (status, body) = approve(id.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is approved, not pending"),
        "{body}"
    );
    let (status, _) = approve("apr-nosuchthing".into()).await;
    assert_eq!(status, 404);
    let (status, body) = over_unix(&socket, "POST", &format!("/v1/approvals/{own}/approve"), "{nope").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = over_unix(&socket, "DELETE", &format!("/v1/approvals/{own}"), "").await;
    assert_eq!(status, 405);
    let (status, _) = over_unix(&socket, "GET", "/v2/things", "").await;
    assert_eq!(status, 404);
}

#[test]
fn two_of_three_need_two_distinct_approvers() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, steps) = open(dir.path(), &["alice", "carol", "dave"], &[]);
    let op = push("a");
    let id = pending_id(approvals.check(&op, &bob(), &spec(2, HOUR), "r", None).unwrap());
    let a = approvals.approve(&id, &alice(), None).unwrap();
    assert_eq!((a.state.clone(), a.approvals.len()), (State::Pending, 1));
    // alice again, by name over HTTP: the same approver.
    let alice_http = Approver {
        uid: None,
        via: "http",
        ..alice()
    };
    let err = approvals.approve(&id, &alice_http, None).unwrap_err();
    assert!(
        matches!(err, ApprovalError::AlreadyApproved { missing: 1, .. }),
        "{err}"
    );
    assert!(matches!(
        approvals.check(&op, &bob(), &spec(2, HOUR), "r", None).unwrap(),
        Gate::Pending { new: false, .. }
    ));
    let a = approvals.approve(&id, &carol(), Some("lgtm".into())).unwrap();
    assert_eq!(a.state, State::Approved);
    assert_eq!(
        a.approvals.iter().map(|d| d.by.as_str()).collect::<Vec<_>>(),
        ["alice", "carol"]
    );
    let dave = Approver {
        name: "dave".into(),
        uid: None,
        via: "http",
    };
    assert!(matches!(
        approvals.approve(&id, &dave, None),
        Err(ApprovalError::NotPending {
            state: "approved",
            ..
        })
    ));
    assert_eq!(
        approvals.check(&op, &bob(), &spec(2, HOUR), "r", None).unwrap(),
        Gate::Approved { id: id.clone() }
    );
    let approved_steps = steps
        .of(&id)
        .iter()
        .filter(|s| matches!(s, Step::Approved { .. }))
        .count();
    assert_eq!(approved_steps, 2);
}

#[tokio::test]
async fn a_denial_stands_until_its_expiry_then_a_retry_asks_again() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, steps) = open(dir.path(), &["alice", "carol"], &[]);
    let op = push("a");
    let s = spec(2, Duration::from_millis(400));
    let id = pending_id(approvals.check(&op, &bob(), &s, "r", None).unwrap());
    approvals.approve(&id, &alice(), None).unwrap();
    let denied = approvals
        .deny(&id, &carol(), Some("not during the freeze".into()))
        .unwrap();
    assert_eq!(
        denied.state,
        State::Denied {
            by: "carol".into(),
            reason: Some("not during the freeze".into())
        }
    );
    let gate = approvals.check(&op, &bob(), &s, "r", None).unwrap();
    assert_eq!(
        gate,
        Gate::Denied {
            id: id.clone(),
            by: "carol".into(),
            reason: Some("not during the freeze".into())
        }
    );
    assert!(matches!(
        approvals.approve(&id, &carol(), None),
        Err(ApprovalError::NotPending { state: "denied", .. })
    ));
    assert!(approvals.list(false).is_empty());
    assert_eq!(approvals.list(true).len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = pending_id(approvals.check(&op, &bob(), &s, "r", None).unwrap());
    assert_ne!(again, id);
    assert!(steps.of(&id).contains(&Step::Denied {
        by: "carol".into(),
        reason: Some("not during the freeze".into())
    }));
}

#[tokio::test]
async fn expired_approvals_cannot_be_decided_or_used_and_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, steps) = open(dir.path(), &["alice"], &[]);
    let op = push("a");
    let s = spec(1, Duration::from_millis(200));
    let id = pending_id(approvals.check(&op, &bob(), &s, "r", None).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = approvals.approve(&id, &alice(), None).unwrap_err();
    assert!(err.to_string().contains("is expired, not pending"), "{err}");
    assert_eq!(approvals.expire_due().unwrap(), 1);
    assert_eq!(approvals.expire_due().unwrap(), 0);
    assert_eq!(approvals.get(&id).unwrap().state, State::Expired);
    assert_eq!(steps.of(&id), vec![Step::Requested, Step::Expired]);
    let second = pending_id(approvals.check(&op, &bob(), &s, "r", None).unwrap());
    assert_ne!(second, id);

    // Approved but never retried within the window: expired too, and does not pass.
    approvals.approve(&second, &alice(), None).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = pending_id(approvals.check(&op, &bob(), &s, "r", None).unwrap());
    assert_ne!(third, second);
    assert_eq!(approvals.get(&second).unwrap().state, State::Expired);
    assert_eq!(steps.of(&second).last(), Some(&Step::Expired));
}

#[tokio::test]
async fn wait_resolves_on_a_decision_and_times_out_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, _steps) = open(dir.path(), &["alice"], &[]);
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let other = pending_id(
        approvals
            .check(&push("b"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let waiter = {
        let (approvals, id) = (approvals.clone(), id.clone());
        tokio::spawn(async move { approvals.wait(&id, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    approvals.approve(&id, &alice(), None).unwrap();
    assert_eq!(waiter.await.unwrap(), Some(State::Approved));
    assert_eq!(approvals.wait(&other, Duration::from_millis(50)).await, None);
    assert_eq!(approvals.wait("apr-unknown", Duration::from_secs(5)).await, None);

    // The periodic expiry wakes a waiter whose approval runs out.
    let expiry = approvals.spawn_expiry(Duration::from_millis(20));
    let short = pending_id(
        approvals
            .check(
                &push("c"),
                &bob(),
                &spec(1, Duration::from_millis(100)),
                "r",
                None,
            )
            .unwrap(),
    );
    assert_eq!(
        approvals.wait(&short, Duration::from_secs(10)).await,
        Some(State::Expired)
    );
    for _ in 0..100 {
        if approvals.get(&short).unwrap().state == State::Expired {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(approvals.get(&short).unwrap().state, State::Expired);
    expiry.abort();
}

#[test]
fn state_survives_a_restart_and_a_used_approval_stays_used() {
    let dir = tempfile::tempdir().unwrap();
    let op = push("a");
    let (id, pending) = {
        let (approvals, _g, _s) = open(dir.path(), &["alice"], &[]);
        let id = pending_id(
            approvals
                .check(&op, &bob(), &spec(1, HOUR), "r", Some("why"))
                .unwrap(),
        );
        let pending = pending_id(
            approvals
                .check(&push("b"), &bob(), &spec(1, HOUR), "r", None)
                .unwrap(),
        );
        approvals.approve(&id, &alice(), None).unwrap();
        (id, pending)
    };
    let file = dir.path().join(STATE_FILE);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    {
        let (approvals, _g, _s) = open(dir.path(), &["alice"], &[]);
        let a = approvals.get(&id).unwrap();
        assert_eq!((a.state, a.message.as_deref()), (State::Approved, Some("why")));
        let again = approvals
            .check(&push("b"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap();
        assert!(matches!(again, Gate::Pending { id, new: false, .. } if id == pending));
        assert_eq!(
            approvals.check(&op, &bob(), &spec(1, HOUR), "r", None).unwrap(),
            Gate::Approved { id: id.clone() }
        );
    }
    let (approvals, _g, _s) = open(dir.path(), &["alice"], &[]);
    assert!(matches!(approvals.get(&id).unwrap().state, State::Used { .. }));
    let next = pending_id(approvals.check(&op, &bob(), &spec(1, HOUR), "r", None).unwrap());
    assert_ne!(next, id);
    drop(approvals);

    // Finished approvals are dropped once older than KEEP_FINISHED; open ones are kept.
    let mut saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for a in saved["approvals"].as_array_mut().unwrap() {
        a["updated_at"] = 0.into();
    }
    std::fs::write(&file, serde_json::to_vec(&saved).unwrap()).unwrap();
    let (approvals, _g, _s) = open(dir.path(), &["alice"], &[]);
    assert_eq!(approvals.expire_due().unwrap(), 0);
    let kept: Vec<String> = approvals.list(true).into_iter().map(|a| a.id).collect();
    assert_eq!(kept, [pending, next]);
    drop(approvals);

    std::fs::write(&file, b"{not json").unwrap();
    let groups: Arc<dyn ApproverGroups> = Arc::new(BTreeMap::new());
    let err = Approvals::open(dir.path(), groups, Steps::default().hook()).unwrap_err();
    assert!(err.to_string().contains("move it aside"), "{err}");
}

#[test]
fn concurrent_retries_of_an_approved_operation_pass_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, _s) = open(dir.path(), &["alice"], &[]);
    let op = push("a");
    let id = pending_id(approvals.check(&op, &bob(), &spec(1, HOUR), "r", None).unwrap());
    approvals.approve(&id, &alice(), None).unwrap();
    let passed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    matches!(
                        approvals.check(&op, &bob(), &spec(1, HOUR), "r", None).unwrap(),
                        Gate::Approved { .. }
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
    });
    assert_eq!(passed, 1);
}

fn webhook(url: &str, format: WebhookFormat, retries: u32) -> Webhook {
    let config = WebhookConfig {
        url: url.to_owned(),
        format,
        retries,
        timeout_secs: 5,
        headers: BTreeMap::from([("x-receiver-token".to_owned(), "hunter2".to_owned())]),
        backoff_ms: 1,
    };
    Webhook::new(config, Arc::new(HyperPoster), Duration::from_millis(10))
}

#[tokio::test]
async fn the_webhook_is_retried_until_delivered_with_the_approval() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, steps) = open(dir.path(), &["alice"], &[]);
    let rx = receiver(2, false).await;
    approvals.set_webhook(Some(webhook(&rx.url, WebhookFormat::Json, 5)));
    let id = pending_id(
        approvals
            .check(
                &push("a"),
                &bob(),
                &spec(2, HOUR),
                "protect-main",
                Some("force push"),
            )
            .unwrap(),
    );
    let step = steps.wait_for(&id, |s| matches!(s, Step::Notified { .. })).await;
    assert_eq!(
        step,
        Step::Notified {
            ok: true,
            attempts: 3,
            error: None
        }
    );
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let r = &got[2];
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-receiver-token"], "hunter2");
    let b = &r.body;
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["operation"]["kind"], "git_ref");
    assert_eq!(b["operation"]["ref_name"], "refs/heads/main");
    assert_eq!(b["requester"]["user"], "bob");
    assert_eq!(b["rule"], "protect-main");
    assert_eq!(b["group"], "maintainers");
    assert_eq!(b["needed"], 2);
    assert_eq!(b["message"], "force push");
    assert_eq!(b["expires_at"], approvals.get(&id).unwrap().expires_at);
    assert_eq!(b["approve"], format!("ghgate approvals approve {id}"));
    assert_eq!(got[0].body, got[2].body, "every attempt posts the same approval");
    // Only new approvals are announced.
    approvals
        .check(&push("a"), &bob(), &spec(2, HOUR), "protect-main", None)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_slow_webhook_never_blocks_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, steps) = open(dir.path(), &["alice"], &[]);
    let rx = receiver(0, true).await;
    approvals.set_webhook(Some(webhook(&rx.url, WebhookFormat::Json, 0)));
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    // The receiver holds the post unanswered, yet check() has returned and decisions go on.
    for _ in 0..500 {
        if !rx.got.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rx.got.lock().unwrap().len(), 1);
    assert!(!steps.of(&id).iter().any(|s| matches!(s, Step::Notified { .. })));
    approvals.approve(&id, &alice(), None).unwrap();
    rx.release.send(true).unwrap();
    let step = steps.wait_for(&id, |s| matches!(s, Step::Notified { .. })).await;
    assert!(
        matches!(
            step,
            Step::Notified {
                ok: true,
                attempts: 1,
                ..
            }
        ),
        "{step:?}"
    );
}

#[tokio::test]
async fn slack_gets_readable_text_and_failures_are_reported_without_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, steps) = open(dir.path(), &["alice"], &[]);
    let rx = receiver(0, false).await;
    approvals.set_webhook(Some(webhook(&rx.url, WebhookFormat::Slack, 0)));
    let api = Operation::Api {
        host: "api.github.com".into(),
        method: "PUT".into(),
        path: "/repos/acme/app/actions/permissions".into(),
        body_sha256: "ab".repeat(32),
    };
    let id = pending_id(
        approvals
            .check(&api, &bob(), &spec(1, HOUR), "workflow-perms", None)
            .unwrap(),
    );
    steps
        .wait_for(&id, |s| matches!(s, Step::Notified { ok: true, .. }))
        .await;
    let body = rx.got.lock().unwrap()[0].body.clone();
    let obj = body.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["text"]);
    let text = obj["text"].as_str().unwrap();
    for want in [
        id.as_str(),
        "PUT https://api.github.com/repos/acme/app/actions/permissions",
        "bob (uid 4242)",
        "workflow-perms",
        "\"maintainers\"",
        &format!("`ghgate approvals approve {id}`"),
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }

    // A receiver that always fails, then one that is not there: both reported, URL path hidden.
    let failing = receiver(100, false).await;
    approvals.set_webhook(Some(webhook(&failing.url, WebhookFormat::Json, 1)));
    let id = pending_id(
        approvals
            .check(&push("b"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let step = steps.wait_for(&id, |s| matches!(s, Step::Notified { .. })).await;
    assert_eq!(
        step,
        Step::Notified {
            ok: false,
            attempts: 2,
            error: Some("the receiver answered 500".into())
        }
    );
    let gone = failing.url.clone();
    drop(failing);
    tokio::time::sleep(Duration::from_millis(50)).await;
    approvals.set_webhook(Some(webhook(&gone, WebhookFormat::Json, 0)));
    let id = pending_id(
        approvals
            .check(&push("c"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let Step::Notified { ok, error, .. } = steps.wait_for(&id, |s| matches!(s, Step::Notified { .. })).await
    else {
        unreachable!()
    };
    let error = error.unwrap();
    assert!(!ok && error.contains("cannot connect"), "{error}");
    assert!(!error.contains("SECRETPATH") && error.contains("/***"), "{error}");
}

fn sha256_hex(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[tokio::test]
async fn the_https_listener_knows_approvers_by_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, _s) = open(dir.path(), &["alice", "bob"], &[]);
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = |name: &str| TokenConfig {
        name: name.into(),
        sha256: sha256_hex(&format!("{name}-secret-token")),
    };
    let config = HttpControlConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert_file: cert_file,
        tls_key_file: key_file.clone(),
        tokens: vec![token("alice"), token("mallory"), token("bob")],
    };
    let err = control::serve_tls(approvals.clone(), &config).await.unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (addr, server) = control::serve_tls(approvals.clone(), &config).await.unwrap();
    let der = cert.cert.der().to_vec();
    let call = |token: Option<&'static str>, method: &'static str, path: String| {
        let der = der.clone();
        async move { over_tls(addr, &der, token, method, &path, "").await }
    };
    let approve = format!("/v1/approvals/{id}/approve");
    let show = format!("/v1/approvals/{id}");

    let (status, body) = call(None, "GET", "/v1/approvals".into()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(Some("alice-wrong-token"), "POST", approve.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.to_string().contains("alice-wrong-token"));

    // mallory has a token but is in no group: sees only her own approvals (none), decides nothing.
    let (status, body) = call(Some("mallory-secret-token"), "GET", "/v1/approvals".into()).await;
    assert_eq!(
        (status, body["approvals"].as_array().unwrap().len()),
        (200, 0),
        "{body}"
    );
    let (status, _) = call(Some("mallory-secret-token"), "GET", show.clone()).await;
    assert_eq!(status, 403);
    let (status, body) = call(Some("mallory-secret-token"), "POST", approve.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("mallory (via http) is not in approver group")
    );

    // bob is a member, but asked for it: may see it, may not approve it.
    let (status, body) = call(Some("bob-secret-token"), "GET", show.clone()).await;
    assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())));
    let (status, body) = call(Some("bob-secret-token"), "POST", approve.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cannot decide it"),
        "{body}"
    );

    let (status, body) = call(Some("alice-secret-token"), "POST", approve.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"]["kind"], "approved");
    assert_eq!(body["approvals"][0]["by"], "alice");
    assert_eq!(body["approvals"][0]["via"], "http");
    assert_eq!(body["approvals"][0]["uid"], serde_json::Value::Null);
    server.abort();
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, _s) = open(dir.path(), &[], &[]);
    let socket = dir.path().join("control.sock");
    let server = control::serve_unix(approvals.clone(), &socket).await.unwrap();
    let err = control::serve_unix(approvals.clone(), &socket).await.unwrap_err();
    assert!(err.to_string().contains("already serves approvals"), "{err}");
    server.abort();
    let _ = server.await;
    let server = control::serve_unix(approvals.clone(), &socket).await.unwrap();
    let (status, _) = over_unix(&socket, "GET", "/v1/approvals", "").await;
    assert_eq!(status, 200);
    server.abort();
}
