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
        login: Login::default(),
        oidc: None,
        unix_user: None,
        via: "socket",
    }
}

fn carol() -> Approver {
    Approver::http("carol".into(), None)
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
    let server = control::serve_unix(approvals.clone(), &socket, true)
        .await
        .unwrap();
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
                identity: format!("uid {me}, {}, via socket", my_login()),
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
    let _server = control::serve_unix(approvals.clone(), &socket, true)
        .await
        .unwrap();
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

/// A requester asking for approval of a new operation with every request gets at most
/// `MAX_PENDING_PER_REQUESTER` pending (each posted to the approvers), then is refused without
/// a new approval; asking again for one already pending still finds it; varying its
/// executable (part of its bound identity) reaches its uid's cap and no further, so another
/// uid is still asked for; past `MAX_PENDING` in all, everyone is refused; a decided one makes
/// room.
#[test]
fn pending_approvals_are_capped_per_requester_per_uid_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, steps) = open(dir.path(), &["alice"], &[]);
    let op = |n: usize| push(&format!("{n:040x}"));
    let ask = |n: usize, who: &Requester| approvals.check(&op(n), who, &spec(1, HOUR), "r", None).unwrap();
    let ids: Vec<String> = (0..MAX_PENDING_PER_REQUESTER)
        .map(|n| pending_id(ask(n, &bob())))
        .collect();
    assert_eq!(
        ask(MAX_PENDING_PER_REQUESTER, &bob()),
        Gate::TooMany {
            pending: MAX_PENDING_PER_REQUESTER,
            whose: Whose::Requester
        }
    );
    assert!(matches!(ask(3, &bob()), Gate::Pending { new: false, .. }));
    // Each pending one was requested (and posted) once; the refused one made no approval.
    assert!(ids.iter().all(|id| steps.of(id) == [Step::Requested]));
    assert_eq!(approvals.list(true).len(), MAX_PENDING_PER_REQUESTER);
    // A decision makes room.
    approvals.deny(&ids[0], &alice(), None).unwrap();
    assert!(matches!(ask(100, &bob()), Gate::Pending { new: true, .. }));
    // Asks until refused, as `who(i)` for the i-th ask; the refusal.
    let mut n = 1000;
    let mut fill = |who: &dyn Fn(usize) -> Requester| {
        for i in 0.. {
            let gate = ask(n, &who(i));
            n += 1;
            if !matches!(gate, Gate::Pending { new: true, .. }) {
                return gate;
            }
        }
        unreachable!()
    };
    // The same uid under copies of its executable: the uid's cap.
    let copy = |uid: u32| {
        move |i: usize| Requester {
            uid,
            exe: Some(format!("/tmp/copy-{}/git", i / MAX_PENDING_PER_REQUESTER)),
            ..bob()
        }
    };
    assert_eq!(
        fill(&copy(4242)),
        Gate::TooMany {
            pending: MAX_PENDING_PER_UID,
            whose: Whose::Uid
        }
    );
    // Other uids, each to its own cap, until the total.
    let gate = fill(&|i: usize| copy(5000 + (i / MAX_PENDING_PER_UID) as u32)(i));
    assert_eq!(
        gate,
        Gate::TooMany {
            pending: MAX_PENDING,
            whose: Whose::All
        }
    );
    assert_eq!(
        approvals
            .list(false)
            .iter()
            .filter(|a| a.state == State::Pending)
            .count(),
        MAX_PENDING
    );
}

/// The caps are settings: an admin's smaller (or larger) caps bind where the defaults would not.
#[test]
fn pending_caps_are_the_configured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, _steps) = open(dir.path(), &["alice"], &[]);
    approvals.set_pending_caps(PendingCaps {
        per_requester: 2,
        per_uid: 3,
        total: 5,
    });
    let op = |n: usize| push(&format!("{n:040x}"));
    let ask = |n: usize, who: &Requester| approvals.check(&op(n), who, &spec(1, HOUR), "r", None).unwrap();
    let as_exe = |uid: u32, exe: &str| Requester {
        uid,
        exe: Some(exe.into()),
        ..bob()
    };
    let gates: Vec<Gate> = [
        as_exe(1, "/a"),
        as_exe(1, "/a"),
        as_exe(1, "/a"),
        as_exe(1, "/b"),
        as_exe(1, "/c"),
        as_exe(2, "/a"),
        as_exe(3, "/a"),
        as_exe(4, "/a"),
    ]
    .iter()
    .enumerate()
    .map(|(n, who)| ask(n, who))
    .collect();
    let refused: Vec<(usize, Option<(usize, Whose)>)> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            (
                i,
                match g {
                    Gate::TooMany { pending, whose } => Some((*pending, *whose)),
                    _ => None,
                },
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (0, None),
            (1, None),
            (2, Some((2, Whose::Requester))),
            (3, None),
            (4, Some((3, Whose::Uid))),
            (5, None),
            (6, None),
            (7, Some((5, Whose::All))),
        ]
    );
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
    let dave = Approver::http("dave".into(), None);
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
        identity: "via http".into(),
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
    let (approvals, _g, _s) = open(dir.path(), &["alice", "bob", "ops"], &[]);
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let (cert_file, key_file, der) = tls_files(dir.path());
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = |name: &str| TokenConfig {
        name: name.into(),
        sha256: sha256_hex(&format!("{name}-secret-token")),
        user: None,
    };
    // A shared "ops" token held by bob, who is the Unix user bob on the runners.
    let ops = TokenConfig {
        user: Some("bob".into()),
        ..token("ops")
    };
    let config = HttpControlConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert_file: cert_file,
        tls_key_file: key_file.clone(),
        tokens: vec![token("alice"), token("mallory"), token("bob"), ops],
        oidc: None,
    };
    let err = control::serve_tls(approvals.clone(), &config, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (addr, server) = control::serve_tls(approvals.clone(), &config, None)
        .await
        .unwrap();
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
    // Nor through a token of another name whose Unix user is bob.
    let (status, body) = call(Some("ops-secret-token"), "POST", approve.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("its user bob is the requester's"),
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
    let server = control::serve_unix(approvals.clone(), &socket, true)
        .await
        .unwrap();
    let err = control::serve_unix(approvals.clone(), &socket, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already serves approvals"), "{err}");
    server.abort();
    let _ = server.await;
    let server = control::serve_unix(approvals.clone(), &socket, true)
        .await
        .unwrap();
    let (status, _) = over_unix(&socket, "GET", "/v1/approvals", "").await;
    assert_eq!(status, 200);
    server.abort();
}

/// A self-signed certificate for "localhost" in `dir`: (cert file, key file, DER).
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert_file, key_file, cert.cert.der().to_vec())
}

/// An approver known by an OIDC ID token of the approvers' issuer decides, and is recorded by
/// the name its `email` claim gives with the issuer and subject beside it; a token for another
/// audience, of another issuer (even one the gateway knows for callers), or with no name is
/// refused, and none of them is echoed.
#[tokio::test]
async fn the_https_listener_knows_approvers_by_oidc_id_tokens() {
    use ghgate_test_support::oidc::{Issuer, SigningKey};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, steps) = open(dir.path(), &["alice@example.com"], &[]);
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let key = SigningKey::rs256("approvers-1");
    let idp = Issuer::start(std::net::Ipv4Addr::LOCALHOST.into(), &[&key]);
    let other_key = SigningKey::rs256("ci-1");
    let ci = Issuer::start(std::net::Ipv4Addr::LOCALHOST.into(), &[&other_key]);
    let issuer = |url: &str| crate::config::OidcIssuer {
        issuer: url.to_owned(),
        audiences: vec!["ghgate-approvals".into()],
        jwks_uri: None,
        leeway_secs: 60,
        jwks_ttl_secs: 3600,
        min_refetch_secs: 1,
    };
    let oidc = config::ApproverOidcConfig {
        name_claim: "email".into(),
        user_claim: Some("preferred_username".into()),
        issuers: vec![issuer(idp.url())],
    };
    let validator = Arc::new(crate::identity::oidc::OidcValidator::new(
        &oidc.issuers(),
        crate::outbound::tests::outbound(None, Duration::from_secs(5)),
    ));
    let (cert_file, key_file, der) = tls_files(dir.path());
    let config = HttpControlConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert_file: cert_file,
        tls_key_file: key_file,
        tokens: Vec::new(),
        oidc: Some(oidc),
    };
    let (addr, server) = control::serve_tls(approvals.clone(), &config, Some(validator))
        .await
        .unwrap();
    let approve = format!("/v1/approvals/{id}/approve");
    let claims = |iss: &str, aud: &str| {
        let now = ghgate_test_support::oidc::now_secs();
        json!({"iss": iss, "aud": aud, "sub": "user-4711", "email": "alice@example.com",
               "preferred_username": "alice", "iat": now - 5, "exp": now + 300})
    };

    let refused = [
        (key.sign(&claims(idp.url(), "some-other-app")), "audience"),
        (
            other_key.sign(&claims(ci.url(), "ghgate-approvals")),
            "is not one of the configured",
        ),
        (
            key.sign(&{
                let mut c = claims(idp.url(), "ghgate-approvals");
                c.as_object_mut().unwrap().remove("email");
                c
            }),
            "no `email` claim",
        ),
        (
            key.sign(&{
                let mut c = claims(idp.url(), "ghgate-approvals");
                c.as_object_mut().unwrap().remove("preferred_username");
                c
            }),
            "no `preferred_username` claim",
        ),
        (
            key.sign(&{
                let mut c = claims(idp.url(), "ghgate-approvals");
                c["email_verified"] = json!(false);
                c
            }),
            "not verified",
        ),
        // Signed by the approvers' issuer's key name, but not its key.
        (
            other_key.sign_as("approvers-1", &claims(idp.url(), "ghgate-approvals")),
            "signature",
        ),
        (
            key.sign(&{
                let mut c = claims(idp.url(), "ghgate-approvals");
                c["exp"] = json!(ghgate_test_support::oidc::now_secs() - 3600);
                c
            }),
            "expired",
        ),
        // Unsigned: `alg: none` with the approvers' key id and an empty signature.
        (
            {
                use base64::Engine as _;
                let b64 = |v: &serde_json::Value| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                };
                let header = json!({"alg": "none", "typ": "JWT", "kid": "approvers-1"});
                format!(
                    "{}.{}.",
                    b64(&header),
                    b64(&claims(idp.url(), "ghgate-approvals"))
                )
            },
            "`alg: none` tokens are refused",
        ),
    ];
    for (token, why) in &refused {
        let (status, body) = over_tls(addr, &der, Some(token), "POST", &approve, "").await;
        assert_eq!(status, 401, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(why), "expected {why:?} in {error}");
        assert!(!error.contains(token.as_str()), "{error}");
    }
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);

    let token = key.sign(&claims(idp.url(), "ghgate-approvals"));
    let (status, body) = over_tls(addr, &der, Some(&token), "POST", &approve, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"]["kind"], "approved");
    let decision = &body["approvals"][0];
    assert_eq!(decision["by"], "alice@example.com");
    assert_eq!(decision["via"], "http");
    let identity = format!("oidc {} subject user-4711, unix user alice, via http", idp.url());
    assert_eq!(decision["identity"], identity.as_str());
    assert!(steps.of(&id).contains(&Step::Approved {
        by: "alice@example.com".into(),
        identity,
        reason: None,
    }));

    // Root, logged in as nobody, asks: an ID token whose Unix user is nobody is that person,
    // and so is one whose subject is the one the requester presented.
    let id = root_asks(&approvals, "b", Some("user-9"));
    let approve = format!("/v1/approvals/{id}/approve");
    let as_nobody = key.sign(&{
        let mut c = claims(idp.url(), "ghgate-approvals");
        c["preferred_username"] = json!("nobody");
        c
    });
    let (status, body) = over_tls(addr, &der, Some(&as_nobody), "POST", &approve, "").await;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("its user nobody is the one the requester logged in as (login uid 65534)"),
        "{error}"
    );
    let same_subject = key.sign(&{
        let mut c = claims(idp.url(), "ghgate-approvals");
        c["sub"] = json!("user-9");
        c
    });
    let (status, body) = over_tls(addr, &der, Some(&same_subject), "POST", &approve, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("its OIDC subject user-9 is the one the requester presented"),
        "{body}"
    );
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);
    let (status, body) = over_tls(addr, &der, Some(&token), "POST", &approve, "").await;
    assert_eq!(status, 200, "another person approves: {body}");
    server.abort();
}

/// Root, logged in as nobody (login uid 65534), presenting `oidc_subject`, asks to push `r`:
/// the approval's id.
fn root_asks(approvals: &Approvals, r: &str, oidc_subject: Option<&str>) -> String {
    let root = Requester {
        uid: 0,
        user: Some("root".into()),
        oidc_subject: oidc_subject.map(str::to_owned),
        login: Login {
            uid: Some(65534),
            session: Some(3),
        },
        ..bob()
    };
    pending_id(
        approvals
            .check(&push(r), &root, &spec(1, HOUR), "r", None)
            .unwrap(),
    )
}

/// Over HTTPS an approver is a name (and maybe a Unix user): one that is the user the requester
/// logged in as is refused, whichever uid the requester runs under (sudo to root keeps the login).
#[test]
fn an_https_approver_who_is_the_requester_s_login_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, _steps) = open(dir.path(), &["nobody", "carol", "root", "ops@example.com"], &[]);
    let id = root_asks(&approvals, "a", None);
    for who in [
        Approver::http("nobody".into(), None),
        Approver::http("ops@example.com".into(), None).with_unix_user(Some("nobody".into())),
    ] {
        let err = approvals.approve(&id, &who, None).unwrap_err();
        assert!(matches!(err, ApprovalError::SamePerson { .. }), "{who}: {err}");
        assert!(err.to_string().contains("login uid 65534"), "{err}");
    }
    let err = approvals
        .approve(&id, &Approver::http("root".into(), None), None)
        .unwrap_err();
    assert!(matches!(err, ApprovalError::SelfDecision { .. }), "{err}");
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);
    let a = approvals.approve(&id, &carol(), None).unwrap();
    assert_eq!(a.state, State::Approved);
}

/// The person behind an approver is the login uid, which `sudo -u`, `su` and `setpriv` keep:
/// the requester under another uid, or in its login session, is refused; another person passes.
#[test]
fn a_requester_under_another_uid_is_still_the_requester() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, steps) = open(dir.path(), &["nobody", "daemon", "alice", "eve"], &[]);
    let login = |uid, session| Login {
        uid: Some(uid),
        session: Some(session),
    };
    // root, logged in as alice (1000), asks.
    let requester = Requester {
        uid: 0,
        user: Some("root".into()),
        login: login(1000, 7),
        ..bob()
    };
    let id = pending_id(
        approvals
            .check(&push("a"), &requester, &spec(2, HOUR), "r", None)
            .unwrap(),
    );
    let socket = |name: &str, uid, login| Approver {
        name: name.into(),
        uid: Some(uid),
        login,
        oidc: None,
        unix_user: None,
        via: "socket",
    };
    // `sudo -u nobody ghgate approvals approve`: alice's login uid, a new uid.
    let sudo = socket("nobody", 65534, login(1000, 7));
    let err = approvals.approve(&id, &sudo, None).unwrap_err();
    assert!(matches!(err, ApprovalError::SamePerson { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("its login uid 1000 is the requester's") && text.contains("sudo"),
        "{text}"
    );
    // The same login session under another login uid (root rewrote it): still refused.
    let rewritten = socket("daemon", 1, login(1234, 7));
    let err = approvals.deny(&id, &rewritten, None).unwrap_err().to_string();
    assert!(err.contains("login session 7"), "{err}");
    // A process with no login, whose uid is the requester's login uid.
    let err = approvals
        .approve(&id, &socket("alice", 1000, Login::default()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("its uid 1000 is the requester's login uid"), "{err}");
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);
    assert!(steps.of(&id).iter().all(|s| matches!(s, Step::Requested)));

    // eve (login uid 1001), through sudo -u nobody, is another person.
    let eve = socket("nobody", 65534, login(1001, 9));
    let a = approvals.approve(&id, &eve, None).unwrap();
    assert_eq!(a.approvals[0].login, login(1001, 9));
    assert_eq!(
        a.approvals[0].identity.as_deref(),
        Some("uid 65534, login uid 1001, session 9, via socket")
    );
    // eve again under her own uid counts once.
    let err = approvals
        .approve(&id, &socket("eve", 1001, login(1001, 12)), None)
        .unwrap_err();
    assert!(matches!(err, ApprovalError::AlreadyApproved { .. }), "{err}");
    let daemon = socket("daemon", 1, login(1002, 10));
    assert_eq!(
        approvals.approve(&id, &daemon, None).unwrap().state,
        State::Approved
    );
}

/// Where neither side has a login (services, this test harness), the uids tell people apart as
/// before; root without another user's login behind it is nobody in particular.
#[test]
fn without_logins_uids_decide_and_anonymous_root_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, _steps) = open(dir.path(), &["nobody"], &[]);
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    // Logged in as bob's uid, through `sudo -u nobody`: that is bob.
    let logged_in_bob = Approver::socket(
        65534,
        Login {
            uid: Some(4242),
            session: Some(4),
        },
    );
    let err = approvals.approve(&id, &logged_in_bob, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("its login uid 4242 is the requester's uid"),
        "{err}"
    );
    let nobody = Approver::socket(65534, Login::default());
    assert_eq!(
        approvals.approve(&id, &nobody, None).unwrap().state,
        State::Approved
    );

    let root = |login_uid| {
        Approver::socket(
            0,
            Login {
                uid: login_uid,
                session: None,
            },
        )
    };
    assert!(root(None).is_anonymous_root());
    assert!(root(Some(0)).is_anonymous_root());
    assert!(
        !root(Some(1000)).is_anonymous_root(),
        "sudo by a person is that person"
    );
    assert!(!Approver::http("root".into(), None).is_anonymous_root());
    assert!(!alice().is_anonymous_root());
}

/// A requester that is root with no login could start a child under any uid (setpriv
/// --reuid, a setuid() call), which has no login either: such an approver is refused, a
/// logged-in one passes.
#[test]
fn a_root_requester_without_a_login_needs_a_logged_in_approver() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _groups, _steps) = open(dir.path(), &["nobody"], &[]);
    let root = Requester {
        uid: 0,
        user: Some("root".into()),
        ..bob()
    };
    let id = pending_id(
        approvals
            .check(&push("a"), &root, &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let child = Approver::socket(65534, Login::default());
    let err = approvals.approve(&id, &child, None).unwrap_err();
    assert!(matches!(err, ApprovalError::SamePerson { .. }), "{err}");
    assert!(
        err.to_string().contains("the requester is root with none"),
        "{err}"
    );
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);
    let person = Approver::socket(
        65534,
        Login {
            uid: Some(1001),
            session: Some(3),
        },
    );
    assert_eq!(
        approvals.approve(&id, &person, None).unwrap().state,
        State::Approved
    );
}

/// Root without a login cannot decide on the socket unless `allow_root_socket`; it may still
/// list. Needs to run as root with no login uid (as the test harness does).
#[tokio::test]
async fn anonymous_root_decides_on_the_socket_only_when_allowed() {
    if my_uid() != 0 || my_login().uid.is_some() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs the unit tests as root"
        );
        eprintln!("skipped: needs uid 0 with no login uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (approvals, _g, _s) = open(dir.path(), &[], &[0]);
    let id = pending_id(
        approvals
            .check(&push("a"), &bob(), &spec(1, HOUR), "r", None)
            .unwrap(),
    );
    let socket = dir.path().join("control.sock");
    let server = control::serve_unix(approvals.clone(), &socket, false)
        .await
        .unwrap();
    let (status, list) = over_unix(&socket, "GET", "/v1/approvals", "").await;
    assert_eq!(
        (status, list["approvals"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (status, body) = over_unix(&socket, "POST", &format!("/v1/approvals/{id}/approve"), "").await;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("allow_root_socket = true") && error.contains("root (uid 0, no login uid"),
        "{error}"
    );
    assert_eq!(approvals.get(&id).unwrap().state, State::Pending);
    server.abort();
    let _ = server.await;
    let server = control::serve_unix(approvals.clone(), &socket, true)
        .await
        .unwrap();
    let (status, body) = over_unix(&socket, "POST", &format!("/v1/approvals/{id}/approve"), "").await;
    assert_eq!(
        (status, body["state"]["kind"].as_str()),
        (200, Some("approved")),
        "{body}"
    );
    server.abort();
}
