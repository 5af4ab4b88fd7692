//! report-status: how receive-pack tells a client what became of each ref of a push (`unpack ok`,
//! then `ok <ref>` or `ng <ref> <why>` lines, with v2's `option …` lines after an `ok`, then a
//! flush-pkt), plainly or inside side-band band 1 when the client asked for `side-band-64k`.
//!
//! Read as git's `send-pack` reads it ([`Report::parse`]), written as receive-pack writes it
//! ([`reply`], for a push the gateway answers itself), and [`merge`]d: the refs the gateway held
//! back added to the upstream's answer to the rest.
use crate::oid::preview;
use crate::pktline::{self, Pkt, PktError, PktReader, SidebandError, chomp};
use crate::receive::ReplyStyle;

/// What became of one ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// `ng`, and why.
    Rejected(String),
}

/// One ref's lines of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefStatus {
    pub name: String,
    pub status: Status,
    /// v2 `option <key> [<value>]` lines after an `ok` (`refname`, `old-oid`, `new-oid`,
    /// `forced-update`).
    pub options: Vec<(String, Option<String>)>,
}

/// A whole report-status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `None` for `unpack ok`, else what the server said went wrong.
    pub unpack_error: Option<String>,
    pub refs: Vec<RefStatus>,
}

/// Why bytes are not a report-status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Pkt(#[from] PktError),
    #[error(transparent)]
    Sideband(#[from] SidebandError),
    #[error("the report-status does not start with an unpack status: {0}")]
    NoUnpack(String),
    #[error("invalid status line {0}")]
    Line(String),
    #[error("an option line without an ok line before it")]
    Option,
    #[error("unexpected {0} in the report-status")]
    Unexpected(&'static str),
    #[error("the report-status is truncated")]
    Truncated,
}

impl Report {
    /// Reads a report-status (pkt-lines up to its flush-pkt) from the front of `bytes`; also
    /// returns where its flush-pkt starts, and where it ends.
    pub fn parse(bytes: &[u8]) -> Result<(Report, usize, usize), ReportError> {
        let mut reader = PktReader::new();
        let mut rest = bytes;
        let mut report = Report {
            unpack_error: None,
            refs: Vec::new(),
        };
        let mut first = true;
        loop {
            let before = reader.position() as usize;
            let line = match reader.next(&mut rest)?.ok_or(ReportError::Truncated)? {
                Pkt::Flush if !first => return Ok((report, before, reader.position() as usize)),
                Pkt::Data(d) => chomp(d),
                other => return Err(ReportError::Unexpected(other.name())),
            };
            if std::mem::take(&mut first) {
                let status = line
                    .strip_prefix(b"unpack ")
                    .ok_or_else(|| ReportError::NoUnpack(preview(line)))?;
                report.unpack_error = (status != b"ok").then(|| text(status));
                continue;
            }
            report.line(line)?;
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<(), ReportError> {
        let invalid = || ReportError::Line(preview(line));
        let sp = line.iter().position(|&b| b == b' ').ok_or_else(invalid)?;
        let (head, rest) = (&line[..sp], &line[sp + 1..]);
        let (first, second) = match rest.iter().position(|&b| b == b' ') {
            Some(sp) => (&rest[..sp], Some(text(&rest[sp + 1..]))),
            None => (rest, None),
        };
        match head {
            b"option" => {
                let last = self
                    .refs
                    .last_mut()
                    .filter(|r| r.status == Status::Ok)
                    .ok_or(ReportError::Option)?;
                last.options.push((text(first), second));
            }
            b"ok" | b"ng" => self.refs.push(RefStatus {
                name: text(first),
                status: if head == b"ok" {
                    Status::Ok
                } else {
                    Status::Rejected(second.unwrap_or_else(|| "failed".into()))
                },
                options: Vec::new(),
            }),
            _ => return Err(invalid()),
        }
        Ok(())
    }

    /// The report's pkt-lines and its flush-pkt.
    pub fn write(&self, out: &mut Vec<u8>) {
        match &self.unpack_error {
            None => pktline::write_text(out, "unpack ok\n"),
            Some(e) => pktline::write_text(out, &format!("unpack {}\n", one_line(e))),
        }
        for r in &self.refs {
            ref_lines(out, r);
        }
        pktline::flush(out);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Text on one line: git shows a reason after the ref, in parentheses.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn ref_lines(out: &mut Vec<u8>, r: &RefStatus) {
    match &r.status {
        Status::Ok => pktline::write_text(out, &format!("ok {}\n", r.name)),
        Status::Rejected(why) => pktline::write_text(out, &format!("ng {} {}\n", r.name, one_line(why))),
    }
    for (key, value) in &r.options {
        let line = match value {
            Some(v) => format!("option {key} {v}\n"),
            None => format!("option {key}\n"),
        };
        pktline::write_text(out, &line);
    }
}

/// Messages for the user's terminal (git prints them as `remote: …`), on band 2.
fn notes_out(out: &mut Vec<u8>, notes: &[String]) {
    for n in notes {
        pktline::write_sideband(
            out,
            2,
            format!("{}\n", one_line(n)).as_bytes(),
            pktline::MAX_SIDEBAND_DATA,
        );
    }
}

/// A rejected ref, as a line of a report.
fn rejected(name: &str, why: &str) -> RefStatus {
    RefStatus {
        name: name.to_owned(),
        status: Status::Rejected(why.to_owned()),
        options: Vec::new(),
    }
}

/// The whole answer to a push answered without forwarding it: `unpack ok` (nothing was
/// unpacked, but the refusal is per ref) and a line for each ref, as the client asked to hear it;
/// `notes` on the side-band, when there is one.
pub fn reply(style: ReplyStyle, refs: &[RefStatus], notes: &[String]) -> Vec<u8> {
    let mut status = Vec::new();
    if style.report_status {
        Report {
            unpack_error: None,
            refs: refs.to_vec(),
        }
        .write(&mut status);
    }
    if !style.sideband {
        return status;
    }
    let mut out = Vec::new();
    notes_out(&mut out, notes);
    pktline::write_sideband(&mut out, 1, &status, pktline::MAX_SIDEBAND_DATA);
    pktline::flush(&mut out);
    out
}

/// The upstream's answer to a push that went up without some refs, with an `ng <ref> <why>` line
/// for each `held` ref added to its report-status (and `notes` on the side-band).
pub fn merge(
    style: ReplyStyle,
    upstream: &[u8],
    held: &[(String, String)],
    notes: &[String],
) -> Result<Vec<u8>, ReportError> {
    if !style.report_status {
        return Ok(upstream.to_vec());
    }
    let add = |status: &[u8]| -> Result<Vec<u8>, ReportError> {
        let (_, flush_at, _) = Report::parse(status)?;
        let mut out = status[..flush_at].to_vec();
        for (name, why) in held {
            ref_lines(&mut out, &rejected(name, why));
        }
        out.extend_from_slice(&status[flush_at..]);
        Ok(out)
    };
    if !style.sideband {
        return add(upstream);
    }
    let parts = pktline::demultiplex(upstream)?;
    let mut out = parts.others;
    notes_out(&mut out, notes);
    pktline::write_sideband(&mut out, 1, &add(&parts.data)?, pktline::MAX_SIDEBAND_DATA);
    pktline::flush(&mut out);
    out.extend_from_slice(parts.rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn style(report_status: bool, sideband: bool) -> ReplyStyle {
        ReplyStyle {
            report_status,
            sideband,
        }
    }

    fn refs() -> Vec<RefStatus> {
        vec![
            RefStatus {
                name: "refs/heads/dev".into(),
                status: Status::Ok,
                options: Vec::new(),
            },
            rejected("refs/heads/main", "held for approval\nid 7"),
        ]
    }

    #[test]
    fn replies_speak_git() {
        let plain = reply(style(true, false), &refs(), &[]);
        assert_eq!(
            String::from_utf8(plain.clone()).unwrap(),
            "000eunpack ok\n0016ok refs/heads/dev\n002eng refs/heads/main held for approval id 7\n0000"
        );
        let (report, _, end) = Report::parse(&plain).unwrap();
        assert_eq!(end, plain.len());
        assert_eq!(
            report.refs[1].status,
            Status::Rejected("held for approval id 7".into())
        );
        let banded = reply(style(true, true), &refs(), &["ghgate: held".into()]);
        assert!(banded.starts_with(b"0012\x02ghgate: held\n"));
        assert!(banded.ends_with(b"0000"));
        assert_eq!(reply(style(false, false), &refs(), &["x".into()]), b"");
    }

    #[test]
    fn held_refs_are_merged_into_the_upstreams_answer() {
        let held = [("refs/heads/main".to_owned(), "held for approval id 7".to_owned())];
        let notes = ["ghgate: held".to_owned()];
        // Band 1 carries the same report-status as a reply naming every ref would.
        let upstream = reply(style(true, true), &refs()[..1], &[]);
        let merged = merge(style(true, true), &upstream, &held, &notes).unwrap();
        assert_eq!(merged, reply(style(true, true), &refs(), &notes));
        let upstream = reply(style(true, false), &refs()[..1], &[]);
        let merged = merge(style(true, false), &upstream, &held, &notes).unwrap();
        assert_eq!(merged, reply(style(true, false), &refs(), &notes));
        // Without report-status there is nothing to add to.
        assert_eq!(
            merge(style(false, true), b"junk", &held, &notes).unwrap(),
            b"junk"
        );
        assert!(matches!(
            merge(style(true, false), b"000eunpack ok\n", &held, &[]),
            Err(ReportError::Truncated)
        ));
    }

    #[test]
    fn v2_options_and_failures_are_read_as_send_pack_reads_them() {
        let mut bytes = Vec::new();
        for line in [
            "unpack index-pack abnormal exit\n",
            "ok refs/heads/main\n",
            "option refname refs/heads/main\n",
            "option forced-update\n",
            "ng refs/heads/x\n",
        ] {
            pktline::write_text(&mut bytes, line);
        }
        pktline::flush(&mut bytes);
        let (r, _, _) = Report::parse(&bytes).unwrap();
        assert_eq!(r.unpack_error.as_deref(), Some("index-pack abnormal exit"));
        assert_eq!(
            r.refs[0].options,
            vec![
                ("refname".to_owned(), Some("refs/heads/main".to_owned())),
                ("forced-update".to_owned(), None)
            ]
        );
        // An ng without a reason is "failed" to git.
        assert_eq!(r.refs[1].status, Status::Rejected("failed".into()));
        let mut again = Vec::new();
        r.write(&mut again);
        assert_eq!(Report::parse(&again).unwrap().0.refs[0], r.refs[0]);

        let bad = |lines: &[&str]| {
            let mut b = Vec::new();
            for l in lines {
                pktline::write_text(&mut b, l);
            }
            pktline::flush(&mut b);
            Report::parse(&b).unwrap_err()
        };
        assert!(matches!(bad(&["ok refs/heads/x"]), ReportError::NoUnpack(_)));
        assert!(matches!(
            bad(&["unpack ok", "option refname x"]),
            ReportError::Option
        ));
        assert!(matches!(
            bad(&["unpack ok", "maybe refs/heads/x"]),
            ReportError::Line(_)
        ));
        assert!(matches!(bad(&["unpack ok", "ok"]), ReportError::Line(_)));
        assert!(matches!(
            Report::parse(b"0000"),
            Err(ReportError::Unexpected("flush-pkt"))
        ));
    }

    proptest::proptest! {
        /// Whatever the upstream answers, merging never panics.
        #[test]
        fn hostile_bytes_never_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let held = [("refs/heads/x".to_owned(), "held".to_owned())];
            let _ = merge(style(true, true), &raw, &held, &[]);
            let _ = merge(style(true, false), &raw, &held, &[]);
            let _ = Report::parse(&raw);
        }
    }
}
