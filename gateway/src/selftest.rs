//! The gateway's self-test endpoint: one reserved name on one reserved loopback address, answered
//! by the gateway itself, so that `ghgate doctor` can make real clients (curl, git, node, python3,
//! a Go program) do a TLS handshake through the redirect and the gateway, as a job would, with no
//! network beyond loopback.
//!
//! The address is always in the intercept set (on the first TLS port), so a client's connection
//! to it takes the same path as one to GitHub: the kernel redirects it, the gateway peeks its
//! ClientHello. Only the name [`NAME`] is answered here, and it is answered wherever the client
//! dialled; the answer is a constant. This module must never dial anything, forward anything or
//! read a credential: what it adds to mediation is one more destination that goes nowhere.
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use ghgate_git::pktline;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::config::InterceptRule;

/// The reserved name (`.invalid` never resolves, RFC 6761). The interception CA's name
/// constraints include it, so leaves for it verify wherever the CA is trusted.
pub const NAME: &str = "selftest.ghgate.invalid";
/// The reserved loopback address the name is reached at (no test or service uses 127.254.71.0/24).
pub const ADDR: Ipv4Addr = Ipv4Addr::new(127, 254, 71, 71);
/// The first line of every answer's body; `doctor` looks for it.
pub const BODY: &str = "ghgate self-test: ok";
/// The path a git client is pointed at (an empty repository).
pub const GIT_PATH: &str = "/ghgate/selftest.git";

/// The port the self-test is reached on: 443 when it is a TLS port (as for GitHub), else the
/// first TLS port.
pub fn port(tls_ports: &[u16]) -> u16 {
    if tls_ports.contains(&443) {
        443
    } else {
        tls_ports.first().copied().unwrap_or(443)
    }
}

/// The intercept rule that puts the self-test address in the kernel's intercept set.
pub fn rule(tls_ports: &[u16]) -> InterceptRule {
    InterceptRule {
        hosts: Vec::new(),
        cidrs: vec![IpNet::from(IpAddr::V4(ADDR))],
        ports: vec![port(tls_ports)],
    }
}

/// Is this SNI the self-test's? (Compared as the TLS peek compares names.)
pub fn is_name(sni: &str) -> bool {
    sni.trim_end_matches('.').eq_ignore_ascii_case(NAME)
}

/// How long a self-test client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Answers one HTTP/1.1 request on an established TLS stream and closes it: git's smart-HTTP
/// discovery of an empty repository for `GIT_PATH/info/refs?service=git-upload-pack`, a short
/// text for anything else.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request head"))??;
    let target = head
        .split(|&b| b == b' ')
        .nth(1)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default();
    let (content_type, body) = response_for(&target);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// The content type and body for a request target.
fn response_for(target: &str) -> (&'static str, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == format!("{GIT_PATH}/info/refs") && query.split('&').any(|q| q == "service=git-upload-pack") {
        // Protocol v0 discovery of an empty repository: the service line, a flush, the
        // capabilities on the zero id, a flush. `git ls-remote` lists nothing and succeeds.
        let mut body = Vec::new();
        pktline::write_text(&mut body, "# service=git-upload-pack\n");
        pktline::flush(&mut body);
        let zero = "0".repeat(40);
        pktline::write_text(
            &mut body,
            &format!("{zero} capabilities^{{}}\0agent=ghgate-selftest\n"),
        );
        pktline::flush(&mut body);
        return ("application/x-git-upload-pack-advertisement", body);
    }
    ("text/plain; charset=utf-8", format!("{BODY}\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_and_port_are_fixed_and_compared_as_the_peek_compares() {
        assert!(is_name("selftest.ghgate.invalid"));
        assert!(is_name("SelfTest.GHGATE.invalid."));
        assert!(!is_name("selftest.ghgate.invalid.example"));
        assert!(!is_name("github.com"));
        assert_eq!(port(&[8443, 443]), 443);
        assert_eq!(port(&[8443]), 8443);
        let rule = rule(&[443]);
        assert_eq!(rule.cidrs, vec!["127.254.71.71/32".parse::<IpNet>().unwrap()]);
        assert_eq!(rule.ports, vec![443]);
    }

    #[tokio::test]
    async fn answers_git_discovery_and_plain_requests_then_closes() {
        for (request, expect_type, expect_body) in [
            (
                format!("GET {GIT_PATH}/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: {NAME}\r\n\r\n"),
                "application/x-git-upload-pack-advertisement",
                "001e# service=git-upload-pack\n0000".to_owned(),
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n"),
                "text/plain",
                BODY.to_owned(),
            ),
        ] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let served = tokio::spawn(answer(server));
            client.write_all(request.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            served.await.unwrap().unwrap();
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
            assert!(got.contains(&format!("content-type: {expect_type}")), "{got}");
            let body = got.split_once("\r\n\r\n").unwrap().1;
            assert!(body.starts_with(&expect_body), "{body:?}");
            let length: usize = got
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, body.len());
        }
    }
}
