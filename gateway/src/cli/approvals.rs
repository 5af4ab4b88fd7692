//! `ghgate approvals list|show|approve|deny`: approvers decide pending operations through the
//! gateway's control socket, which knows them by their uid and the kernel's login uid and session
//! (no token, no password).
//!
//! Never decides anything itself: every check (group membership, self-approval, expiry) is the
//! gateway's, and its refusal is printed as it gave it.
use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Subcommand;
use http::{Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use crate::approval::{Approval, Micros, Operation, State, now_micros, rfc3339};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's control socket [default: the config's `[approvals] socket`, else /run/ghgate/control.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List pending and approved operations, oldest first.
    List {
        /// Also used, denied and expired ones (kept for 7 days).
        #[arg(long)]
        all: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one approval: the exact operation, who asked, the rule, decisions so far, expiry.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve as yourself (the gateway takes your uid and login uid from the socket: another
    /// uid through sudo is still you). The requester's next identical attempt then passes, once.
    Approve {
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny: the requester's identical attempts are refused until the approval's expiry.
    Deny {
        id: String,
        /// Why, for the record (and the requester).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs the subcommand against `--socket`, or `default_socket` (the state directory's).
pub fn run(args: Args, default_socket: PathBuf) -> anyhow::Result<ExitCode> {
    run_to(args, default_socket, &mut io::stdout().lock())
}

fn run_to(args: Args, default_socket: PathBuf, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let socket = args.socket.unwrap_or(default_socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let now = now_micros();
    match args.command {
        Command::List { all, json } => {
            let path = if all {
                "/v1/approvals?all=1"
            } else {
                "/v1/approvals"
            };
            let answer = rt.block_on(call(&socket, Method::GET, path, None))?;
            let list: Vec<Approval> = serde_json::from_value(answer["approvals"].clone())
                .context("the gateway's list of approvals is not understood (is it another version?)")?;
            if json {
                for a in &list {
                    writeln!(out, "{}", serde_json::to_string(a)?)?;
                }
            } else if list.is_empty() {
                writeln!(
                    out,
                    "no {}approvals",
                    if all { "" } else { "pending or approved " }
                )?;
            } else {
                table(out, &list, now)?;
            }
        }
        Command::Show { id, json } => {
            let answer = rt.block_on(call(
                &socket,
                Method::GET,
                &format!("/v1/approvals/{}", checked(&id)?),
                None,
            ))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
            } else {
                details(out, &parse(answer)?, now)?;
            }
        }
        Command::Approve { id, reason } => {
            let body = serde_json::json!({ "reason": reason });
            let answer = rt.block_on(call(
                &socket,
                Method::POST,
                &format!("/v1/approvals/{}/approve", checked(&id)?),
                Some(body),
            ))?;
            let a = parse(answer)?;
            if a.state == State::Approved {
                writeln!(
                    out,
                    "approved {}: the requester's next identical attempt passes, once, until {} ({})",
                    a.id,
                    rfc3339(a.expires_at),
                    relative(a.expires_at, now)
                )?;
            } else {
                writeln!(
                    out,
                    "approval recorded for {}: {} of {}; it needs {} more approver(s) of group {:?}",
                    a.id,
                    a.approvals.len(),
                    a.needed,
                    (a.needed as usize).saturating_sub(a.approvals.len()),
                    a.group
                )?;
            }
        }
        Command::Deny { id, reason } => {
            let body = serde_json::json!({ "reason": reason });
            let answer = rt.block_on(call(
                &socket,
                Method::POST,
                &format!("/v1/approvals/{}/deny", checked(&id)?),
                Some(body),
            ))?;
            let a = parse(answer)?;
            writeln!(
                out,
                "denied {}: the requester's identical attempts are refused until {}",
                a.id,
                rfc3339(a.expires_at)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An id as it may stand in a URL path.
fn checked(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!(
            "{id:?} is not an approval id (they look like apr-abcdefghij; `ghgate approvals list` lists them)"
        );
    }
    Ok(id)
}

fn parse(answer: serde_json::Value) -> anyhow::Result<Approval> {
    serde_json::from_value(answer).context("the gateway's answer is not understood (is it another version?)")
}

/// One request to the control socket; the parsed JSON answer, or the gateway's `error` as `Err`.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "the gateway is not running: there is no control socket at {} (start it with `ghgate run`, \
             or give --socket)",
                socket.display()
            ),
            io::ErrorKind::ConnectionRefused => anyhow!(
                "the gateway is not running: nothing listens on {} (start it with `ghgate run`)",
                socket.display()
            ),
            _ => anyhow!(
                "cannot connect to the gateway's control socket {}: {e}",
                socket.display()
            ),
        })?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v)?)
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(req.body(Full::new(body))?).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "the gateway did not answer on {} within {TIMEOUT:?}",
                socket.display()
            )
        })?
        .with_context(|| format!("request to the gateway on {} failed", socket.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the gateway answered {status} with something other than JSON"))?;
    if !status.is_success() {
        match value.get("error").and_then(|e| e.as_str()) {
            Some(e) => bail!("{e}"),
            None => bail!("the gateway answered {status}"),
        }
    }
    Ok(value)
}

/// "in 14m", "3h ago".
fn relative(at: Micros, now: Micros) -> String {
    let (secs, future) = if at >= now {
        ((at - now) / 1_000_000, true)
    } else {
        ((now - at) / 1_000_000, false)
    };
    let span = match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn state_text(a: &Approval) -> String {
    match &a.state {
        State::Pending => format!("pending ({} of {} approvals)", a.approvals.len(), a.needed),
        State::Denied { by, reason } => match reason {
            Some(r) => format!("denied by {by}: {r}"),
            None => format!("denied by {by}"),
        },
        State::Used { at } => format!("approved and used at {}", rfc3339(*at)),
        other => other.name().to_owned(),
    }
}

fn table(out: &mut dyn Write, list: &[Approval], now: Micros) -> io::Result<()> {
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|a| {
            let expires = if a.state.is_done() {
                "-".to_owned()
            } else {
                relative(a.expires_at, now)
            };
            [
                a.id.clone(),
                a.state.name().to_owned(),
                format!("{}/{}", a.approvals.len(), a.needed),
                expires,
                a.rule.clone(),
                a.requester.to_string(),
                a.operation.to_string(),
            ]
        })
        .collect();
    let head = ["ID", "STATE", "OK", "EXPIRES", "RULE", "REQUESTER", "OPERATION"];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 7]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == cells.len() - 1 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, head)?;
    for row in &rows {
        line(out, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

fn details(out: &mut dyn Write, a: &Approval, now: Micros) -> io::Result<()> {
    writeln!(out, "approval     {}", a.id)?;
    writeln!(out, "state        {}", state_text(a))?;
    match &a.operation {
        Operation::GitRef {
            repository,
            ref_name,
            old,
            new,
        } => {
            writeln!(out, "operation    ref update")?;
            writeln!(out, "  repository {repository}")?;
            writeln!(out, "  ref        {ref_name}")?;
            writeln!(out, "  old        {old}")?;
            writeln!(out, "  new        {new}")?;
        }
        Operation::Api {
            host,
            method,
            path,
            body_sha256,
        } => {
            writeln!(out, "operation    API request")?;
            writeln!(out, "  request    {method} https://{host}{path}")?;
            writeln!(out, "  body       sha256 {body_sha256}")?;
        }
    }
    let r = &a.requester;
    writeln!(
        out,
        "requester    {} (uid {})",
        r.user.as_deref().unwrap_or("(unknown user)"),
        r.uid
    )?;
    for (label, value) in [
        ("exe", r.exe.as_deref()),
        ("ci repo", r.ci_repository.as_deref()),
        ("oidc sub", r.oidc_subject.as_deref()),
        ("session", Some(r.session.as_str())),
        (
            "login",
            (r.login != Default::default())
                .then(|| r.login.to_string())
                .as_deref(),
        ),
    ] {
        if let Some(v) = value {
            writeln!(out, "  {label:<10} {v}")?;
        }
    }
    writeln!(out, "rule         {}", a.rule)?;
    writeln!(out, "group        {} ({} approval(s) needed)", a.group, a.needed)?;
    if let Some(m) = &a.message {
        writeln!(out, "message      {m}")?;
    }
    writeln!(
        out,
        "created      {} ({})",
        rfc3339(a.created_at),
        relative(a.created_at, now)
    )?;
    writeln!(
        out,
        "expires      {} ({})",
        rfc3339(a.expires_at),
        relative(a.expires_at, now)
    )?;
    for d in &a.approvals {
        let how = d.identity.clone().unwrap_or_else(|| format!("via {}", d.via));
        write!(out, "approved by  {} ({how}) at {}", d.by, rfc3339(d.at))?;
        match &d.reason {
            Some(reason) => writeln!(out, ": {reason}")?,
            None => writeln!(out)?,
        }
    }
    if a.state == State::Pending {
        writeln!(out, "decide with  ghgate approvals approve|deny {}", a.id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::approval::{Gate, control, testutil::*};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(clap::Subcommand)]
    enum Top {
        Approvals(Args),
    }

    /// `ghgate approvals ARGS…` against `socket`: its standard output, or its error.
    async fn ghgate(socket: &Path, args: &[&str]) -> Result<String, String> {
        let argv: Vec<String> = ["ghgate", "approvals"]
            .iter()
            .chain(args)
            .map(|s| (*s).to_owned())
            .collect();
        let Top::Approvals(args) = Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command;
        let socket = socket.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            run_to(args, socket, &mut out)
                .map(|_| String::from_utf8(out).unwrap())
                .map_err(|e| format!("{e:#}"))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn list_show_approve_and_errors_against_a_served_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (approvals, _g, _s) = open(dir.path(), &[], &[my_uid()]);
        let socket = dir.path().join("control.sock");
        let server = control::serve_unix(approvals.clone(), &socket, true)
            .await
            .unwrap();
        let Gate::Pending { id, .. } = approvals
            .check(
                &push("a"),
                &bob(),
                &spec(1, Duration::from_secs(600)),
                "protect-main",
                Some("release"),
            )
            .unwrap()
        else {
            panic!()
        };

        let list = ghgate(&socket, &["list"]).await.unwrap();
        let mut lines = list.lines();
        assert!(lines.next().unwrap().starts_with("ID "), "{list}");
        let row = lines.next().unwrap();
        for want in [
            &id,
            "pending",
            "0/1",
            "in 9m",
            "protect-main",
            "bob (uid 4242)",
            "push github.com/acme/app",
        ] {
            assert!(row.contains(want), "{want:?} not in {row:?}");
        }

        let show = ghgate(&socket, &["show", &id]).await.unwrap();
        for want in [
            format!("approval     {id}"),
            "state        pending (0 of 1 approvals)".into(),
            "  ref        refs/heads/main".into(),
            format!("  new        {}", "a".repeat(40)),
            "requester    bob (uid 4242)".into(),
            "  exe        /usr/bin/git".into(),
            "rule         protect-main".into(),
            "group        maintainers (1 approval(s) needed)".into(),
            "message      release".into(),
        ] {
            assert!(show.contains(&want), "{want:?} not in:\n{show}");
        }
        let json = ghgate(&socket, &["show", &id, "--json"]).await.unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["id"], id.as_str());

        let done = ghgate(&socket, &["approve", &id, "--reason", "ok by me"])
            .await
            .unwrap();
        assert!(done.starts_with(&format!("approved {id}: ")), "{done}");
        let show = ghgate(&socket, &["show", &id]).await.unwrap();
        let me = my_uid();
        let how = format!("(uid {me}, {}, via socket) at ", my_login());
        assert!(show.contains(&how), "{how:?} not in:\n{show}");
        assert_eq!(
            approvals.get(&id).unwrap().approvals[0].reason.as_deref(),
            Some("ok by me")
        );
        let err = ghgate(&socket, &["deny", &id]).await.unwrap_err();
        assert!(
            err.contains(&format!("approval {id} is approved, not pending")),
            "{err}"
        );
        assert_eq!(
            ghgate(&socket, &["list"]).await.unwrap().lines().count(),
            2,
            "approved is listed"
        );
        let err = ghgate(&socket, &["show", "apr-nope"]).await.unwrap_err();
        assert!(err.contains("no approval apr-nope"), "{err}");
        let err = ghgate(&socket, &["show", "../etc"]).await.unwrap_err();
        assert!(err.contains("is not an approval id"), "{err}");

        server.abort();
        let _ = server.await;
        let err = ghgate(&socket, &["list"]).await.unwrap_err();
        assert!(
            err.contains("the gateway is not running: nothing listens on"),
            "{err}"
        );
        let missing = dir.path().join("nowhere.sock");
        let err = ghgate(&missing, &["list"]).await.unwrap_err();
        assert!(
            err.contains("the gateway is not running") && err.contains(&missing.display().to_string()),
            "{err}"
        );
        let err = ghgate(&socket, &["list", "--socket", missing.to_str().unwrap()])
            .await
            .unwrap_err();
        assert!(err.contains("nowhere.sock"), "{err}");
    }

    #[test]
    fn times_read_as_people_say_them() {
        let s = 1_000_000;
        assert_eq!(relative(100 * s, 100 * s), "in 0s");
        assert_eq!(relative(100 * s + 90 * s, 100 * s), "in 1m");
        assert_eq!(relative(100 * s, 100 * s + 7200 * s), "2h ago");
        assert_eq!(relative(3 * 86400 * s, 0), "in 3d");
    }
}
