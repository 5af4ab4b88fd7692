//! The git side of policy on pushes, on the wire: the command list at the start of a
//! `git-receive-pack` request, the report-status a push gets back, and the push advertisement.
//!
//! - [`scan_commands`] reads the ref updates from the start of a push body (the gateway holds
//!   back only that much before deciding; the pack follows untouched).
//! - [`Commands::rewrite`] drops refs the policy held or denied from what goes upstream.
//! - [`report`] answers a push the gateway refuses entirely, in git's own words (`ng <ref> <why>`,
//!   over the side-band when the client asked for it), and [`merge_report`] adds those lines to
//!   the upstream's answer when only some refs were held back.
//! - [`PushAdvert`] rewrites the receive-pack advertisement's capabilities as it passes:
//!   `push-cert` goes (GitHub does not take push certificates, and the gateway refuses them), and
//!   with a policy `no-thin` is added, so clients send packs whose objects are all in the pack (a
//!   policy that reads the pushed trees needs them).
//!
//! Everything here works on bytes the caller bounded; nothing panics on hostile input: malformed
//! input is an `Err` naming what was wrong.
use std::ops::Range;

/// A pkt-line payload is at most this long (65520 minus the 4-byte length).
const MAX_PKT_DATA: usize = 65516;

/// The all-zero object id: a ref that does not exist (yet, or any more).
pub fn is_zero(oid: &str) -> bool {
    !oid.is_empty() && oid.bytes().all(|b| b == b'0')
}

/// One pkt-line in a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Pkt<'a> {
    Flush,
    /// A delimiter or response-end packet (protocol v2); not expected in a push.
    Special,
    Data(&'a [u8]),
}

/// The first pkt-line of `buf` and the length it took; `Ok(None)` when `buf` ends inside it.
fn next_pkt(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, String> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = std::str::from_utf8(head)
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("invalid pkt-line length {:?}", String::from_utf8_lossy(head)))?;
    match len {
        0 => Ok(Some((Pkt::Flush, 4))),
        1 | 2 => Ok(Some((Pkt::Special, 4))),
        3 => Err("invalid pkt-line length 0003".into()),
        n => Ok(buf.get(4..n).map(|data| (Pkt::Data(data), n))),
    }
}

/// `data` framed as one pkt-line.
fn pkt(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

fn chomp(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

fn is_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One ref update a push asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: String,
    pub new: String,
    pub name: String,
}

/// `<old> <new> <ref>` (the capabilities already split off).
fn command(line: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(chomp(line)).map_err(|_| "a ref update is not UTF-8".to_string())?;
    let mut parts = text.splitn(3, ' ');
    let (old, new, name) = (parts.next(), parts.next(), parts.next());
    match (old, new, name) {
        (Some(old), Some(new), Some(name)) if is_oid(old) && is_oid(new) && !name.is_empty() => Ok(Command {
            old: old.to_ascii_lowercase(),
            new: new.to_ascii_lowercase(),
            name: name.to_owned(),
        }),
        _ => Err(format!("malformed ref update {text:?}")),
    }
}

/// The command list at the start of a push body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    pub commands: Vec<Command>,
    /// Capabilities the client asked for (after the NUL of the first command).
    pub caps: Vec<String>,
    /// The commands are inside a signed push certificate: they cannot be rewritten.
    pub certificate: bool,
    /// `shallow` lines before the commands, verbatim.
    shallow: Range<usize>,
    /// The push options section (after the command list's flush), verbatim.
    options: Range<usize>,
    /// Where the pack (if any) starts.
    pub end: usize,
}

/// What [`scan_commands`] made of the start of a push body.
#[derive(Debug)]
pub enum Scan {
    /// The command list does not end within these bytes: read more.
    Incomplete,
    Done(Commands),
}

/// Reads the command list from the start of a `git-receive-pack` request body: shallow lines,
/// the ref updates (or a push certificate holding them), a flush, and push options when the
/// client announced them. An empty body part (`0000` alone: git's probe before a large push)
/// is a list with no commands.
pub fn scan_commands(buf: &[u8]) -> Result<Scan, String> {
    let mut at = 0;
    let mut shallow = 0..0;
    let mut commands = Vec::new();
    let mut caps = Vec::new();
    let mut certificate = false;
    let mut in_cert = false;
    let mut cert_header = true;
    loop {
        let Some((p, n)) = next_pkt(&buf[at..])? else {
            return Ok(Scan::Incomplete);
        };
        let start = at;
        at += n;
        match p {
            Pkt::Flush if !in_cert => break,
            Pkt::Flush | Pkt::Special => return Err("unexpected special packet in the command list".into()),
            Pkt::Data(data) => {
                if in_cert {
                    let line = chomp(data);
                    if line == b"push-cert-end" {
                        in_cert = false;
                    } else if cert_header {
                        cert_header = !line.is_empty();
                    } else if line.starts_with(b"-----BEGIN") {
                        cert_header = true; // the signature: nothing more to read until the end
                    } else if let Ok(c) = command(line) {
                        commands.push(c);
                    }
                    continue;
                }
                if commands.is_empty() && !certificate && data.starts_with(b"shallow ") {
                    if shallow.is_empty() {
                        shallow.start = start;
                    }
                    shallow.end = at;
                    continue;
                }
                let (line, more_caps) = match data.iter().position(|&b| b == 0) {
                    Some(i) => (&data[..i], Some(&data[i + 1..])),
                    None => (data, None),
                };
                if let Some(c) = more_caps.filter(|_| commands.is_empty() && !certificate) {
                    caps = String::from_utf8_lossy(chomp(c))
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                if commands.is_empty() && !certificate && chomp(line) == b"push-cert" {
                    certificate = true;
                    in_cert = true;
                    continue;
                }
                commands.push(command(line)?);
            }
        }
    }
    if shallow.is_empty() {
        shallow = 0..0;
    }
    let mut options = at..at;
    if caps.iter().any(|c| c == "push-options") {
        loop {
            let Some((p, n)) = next_pkt(&buf[at..])? else {
                return Ok(Scan::Incomplete);
            };
            at += n;
            if p == Pkt::Flush {
                break;
            }
        }
        options.end = at;
    }
    Ok(Scan::Done(Commands {
        commands,
        caps,
        certificate,
        shallow,
        options,
        end: at,
    }))
}

/// How the client wants to hear how its push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyStyle {
    pub report_status: bool,
    /// Data bytes per side-band packet, when the client asked for the side-band.
    pub sideband: Option<usize>,
}

impl Commands {
    pub fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }

    /// The client asked for an all-or-nothing push.
    pub fn atomic(&self) -> bool {
        self.has("atomic")
    }

    pub fn reply_style(&self) -> ReplyStyle {
        ReplyStyle {
            report_status: self.has("report-status") || self.has("report-status-v2"),
            sideband: if self.has("side-band-64k") {
                Some(MAX_PKT_DATA - 1)
            } else if self.has("side-band") {
                Some(999)
            } else {
                None
            },
        }
    }

    /// The command section again with only the commands `keep` says (the first kept one carries
    /// the capabilities); what follows `end` in the body (the pack) is appended by the caller.
    /// `Err` for a signed push, whose certificate covers every command.
    pub fn rewrite(&self, body: &[u8], keep: &[bool]) -> Result<Vec<u8>, String> {
        if self.certificate {
            return Err("a signed push cannot be forwarded in part".into());
        }
        let mut out = Vec::with_capacity(self.end);
        out.extend_from_slice(&body[self.shallow.clone()]);
        let mut first = true;
        for (c, _) in self.commands.iter().zip(keep).filter(|(_, k)| **k) {
            let mut line = format!("{} {} {}", c.old, c.new, c.name).into_bytes();
            if first {
                line.push(0);
                line.extend_from_slice(self.caps.join(" ").as_bytes());
                first = false;
            }
            line.push(b'\n');
            pkt(&mut out, &line);
        }
        out.extend_from_slice(b"0000");
        out.extend_from_slice(&body[self.options.clone()]);
        Ok(out)
    }
}

/// One line of a report: `ok <ref>` or `ng <ref> <why>`.
fn status_line(out: &mut Vec<u8>, name: &str, result: &Result<(), String>) {
    let line = match result {
        Ok(()) => format!("ok {name}\n"),
        // One line: git shows it after the ref, in parentheses.
        Err(why) => format!("ng {name} {}\n", why.replace(['\n', '\r'], " ")),
    };
    pkt(out, line.as_bytes());
}

/// Frames `data` as side-band packets of `band`.
fn sideband(out: &mut Vec<u8>, band: u8, data: &[u8], max: usize) {
    for part in data.chunks(max.max(1)) {
        let mut p = Vec::with_capacity(part.len() + 1);
        p.push(band);
        p.extend_from_slice(part);
        pkt(out, &p);
    }
}

/// Messages for the user's terminal (git prints them as `remote: …`).
fn notes_out(out: &mut Vec<u8>, notes: &[String], max: usize) {
    for n in notes {
        sideband(
            out,
            2,
            format!("{}\n", n.replace(['\n', '\r'], " ")).as_bytes(),
            max,
        );
    }
}

/// The whole answer to a push the gateway refuses without forwarding it: `unpack ok` (nothing
/// was unpacked, but the refusal is per ref) and one line per ref.
pub fn report(style: ReplyStyle, refs: &[(String, Result<(), String>)], notes: &[String]) -> Vec<u8> {
    let mut status = Vec::new();
    if style.report_status {
        pkt(&mut status, b"unpack ok\n");
        for (name, result) in refs {
            status_line(&mut status, name, result);
        }
        status.extend_from_slice(b"0000");
    }
    match style.sideband {
        None => status,
        Some(max) => {
            let mut out = Vec::new();
            notes_out(&mut out, notes, max);
            if !status.is_empty() {
                sideband(&mut out, 1, &status, max);
            }
            out.extend_from_slice(b"0000");
            out
        }
    }
}

/// The upstream's answer to a push that went up without some refs, with an `ng` line for each of
/// those added to its report-status (and `notes` on the side-band).
pub fn merge_report(
    style: ReplyStyle,
    upstream: &[u8],
    held: &[(String, String)],
    notes: &[String],
) -> Result<Vec<u8>, String> {
    if !style.report_status {
        return Ok(upstream.to_vec());
    }
    let add = |status: &[u8]| -> Result<Vec<u8>, String> {
        // The report-status ends with a flush: the added lines go just before it.
        let mut at = 0;
        loop {
            let (p, n) = next_pkt(&status[at..])?.ok_or("the upstream's report-status is truncated")?;
            if p == Pkt::Flush {
                break;
            }
            at += n;
        }
        let mut out = status[..at].to_vec();
        for (name, why) in held {
            status_line(&mut out, name, &Err(why.clone()));
        }
        out.extend_from_slice(&status[at..]);
        Ok(out)
    };
    let Some(max) = style.sideband else {
        return add(upstream);
    };
    let mut status = Vec::new();
    let mut others = Vec::new();
    let mut at = 0;
    loop {
        let (p, n) = next_pkt(&upstream[at..])?.ok_or("the upstream's answer is truncated")?;
        let whole = &upstream[at..at + n];
        at += n;
        match p {
            Pkt::Flush => break,
            Pkt::Special => return Err("unexpected special packet in the upstream's answer".into()),
            Pkt::Data([1, rest @ ..]) => status.extend_from_slice(rest),
            Pkt::Data(_) => others.extend_from_slice(whole),
        }
    }
    let mut out = others;
    notes_out(&mut out, notes, max);
    sideband(&mut out, 1, &add(&status)?, max);
    out.extend_from_slice(b"0000");
    out.extend_from_slice(&upstream[at..]);
    Ok(out)
}

/// Rewrites the capabilities of a receive-pack advertisement as it streams by (drops
/// `push-cert=<nonce>`; adds `no-thin` when asked): holds bytes only until the first ref line has
/// passed (at most one pkt-line more than the service header), then passes everything through.
/// Anything it does not recognise passes unchanged.
#[derive(Debug, Default)]
pub struct PushAdvert {
    no_thin: bool,
    held: Vec<u8>,
    done: bool,
}

impl PushAdvert {
    /// The most it holds before giving up and passing bytes on unchanged.
    const MAX_HELD: usize = 2 * 65536;

    /// `no_thin`: add `no-thin` (a policy that reads pushed trees needs whole packs).
    pub fn new(no_thin: bool) -> Self {
        Self {
            no_thin,
            ..Self::default()
        }
    }

    /// The bytes to send for `chunk` (possibly fewer, held back, or more, released).
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        if self.done {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        match self.rewrite() {
            Ok(Some(out)) => {
                self.done = true;
                out
            }
            Ok(None) if !end && self.held.len() < Self::MAX_HELD => Vec::new(),
            Ok(None) | Err(_) => {
                self.done = true;
                std::mem::take(&mut self.held)
            }
        }
    }

    /// `Ok(Some)` once the first ref line is in and rewritten.
    fn rewrite(&mut self) -> Result<Option<Vec<u8>>, String> {
        let buf = &self.held;
        let mut at = 0;
        loop {
            let Some((p, n)) = next_pkt(&buf[at..])? else {
                return Ok(None);
            };
            match p {
                Pkt::Data(d) if d.starts_with(b"# service=") || chomp(d) == b"version 1" => at += n,
                Pkt::Flush => at += n,
                Pkt::Data(d) => {
                    let Some(nul) = d.iter().position(|&b| b == 0) else {
                        return Err("the first ref line has no capabilities".into());
                    };
                    let caps: Vec<&[u8]> = chomp(&d[nul + 1..])
                        .split(|&b| b == b' ')
                        .filter(|c| !c.is_empty())
                        .collect();
                    let mut kept: Vec<&[u8]> = caps
                        .iter()
                        .copied()
                        .filter(|c| !(*c == b"push-cert" || c.starts_with(b"push-cert=")))
                        .collect();
                    if self.no_thin && !kept.contains(&&b"no-thin"[..]) {
                        kept.push(b"no-thin");
                    }
                    if kept == caps {
                        return Ok(Some(std::mem::take(&mut self.held)));
                    }
                    let mut line = d[..nul + 1].to_vec();
                    line.extend_from_slice(&kept.join(&b' '));
                    line.push(b'\n');
                    let mut out = buf[..at].to_vec();
                    pkt(&mut out, &line);
                    out.extend_from_slice(&buf[at + n..]);
                    self.held.clear();
                    return Ok(Some(out));
                }
                Pkt::Special => return Err("unexpected special packet".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn body(lines: &[&str], caps: &str, options: Option<&[&str]>, pack: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let mut line = l.as_bytes().to_vec();
            if i == 0 {
                line.push(0);
                line.extend_from_slice(caps.as_bytes());
            }
            line.push(b'\n');
            pkt(&mut out, &line);
        }
        out.extend_from_slice(b"0000");
        if let Some(opts) = options {
            for o in opts {
                pkt(&mut out, format!("{o}\n").as_bytes());
            }
            out.extend_from_slice(b"0000");
        }
        out.extend_from_slice(pack);
        out
    }

    fn done(buf: &[u8]) -> Commands {
        match scan_commands(buf).unwrap() {
            Scan::Done(c) => c,
            Scan::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn commands_are_read_whole_or_not_at_all() {
        let main = format!("{A} {B} refs/heads/main");
        let del = format!("{A} {Z} refs/heads/old");
        let b = body(
            &[&main, &del],
            "report-status side-band-64k atomic push-options",
            Some(&["ci.skip"]),
            b"PACK....",
        );
        let c = done(&b);
        assert_eq!(c.commands.len(), 2);
        assert_eq!(c.commands[1].name, "refs/heads/old");
        assert!(is_zero(&c.commands[1].new));
        assert!(c.atomic());
        assert_eq!(&b[c.end..], b"PACK....");
        assert_eq!(c.reply_style().sideband, Some(65515));
        for cut in 0..c.end {
            assert!(
                matches!(scan_commands(&b[..cut]), Ok(Scan::Incomplete)),
                "cut at {cut} is not complete"
            );
        }
        // git's probe before a large push: a bare flush.
        assert!(done(b"0000").commands.is_empty());
        assert!(scan_commands(b"zzzz").is_err());
        assert!(scan_commands(b"0009nope\n0000").is_err());
    }

    #[test]
    fn a_rewrite_keeps_capabilities_options_and_shallow_lines() {
        let mut b = Vec::new();
        pkt(&mut b, format!("shallow {A}\n").as_bytes());
        let tail = body(
            &[
                &format!("{A} {B} refs/heads/main"),
                &format!("{Z} {B} refs/heads/dev"),
            ],
            "report-status push-options",
            Some(&["x=y"]),
            b"PACK",
        );
        b.extend_from_slice(&tail);
        let c = done(&b);
        let out = c.rewrite(&b, &[false, true]).unwrap();
        let again = done(&[out.as_slice(), b"PACK"].concat());
        assert_eq!(again.commands, vec![c.commands[1].clone()]);
        assert_eq!(again.caps, c.caps);
        assert!(out.starts_with(format!("0035shallow {A}\n").as_bytes()));
        assert!(out.ends_with(b"00000008x=y\n0000"));
    }

    #[test]
    fn reports_speak_git() {
        let refs = vec![
            ("refs/heads/dev".to_string(), Ok(())),
            (
                "refs/heads/main".to_string(),
                Err("held for approval\nid 7".to_string()),
            ),
        ];
        let plain = report(
            ReplyStyle {
                report_status: true,
                sideband: None,
            },
            &refs,
            &[],
        );
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            "000eunpack ok\n0016ok refs/heads/dev\n002eng refs/heads/main held for approval id 7\n0000"
        );
        let banded = report(
            ReplyStyle {
                report_status: true,
                sideband: Some(999),
            },
            &refs,
            &["ghgate: held".into()],
        );
        assert!(banded.starts_with(b"0012\x02ghgate: held\n"));
        assert!(banded.ends_with(b"0000"));
        // Band 1 carries the same report-status.
        let merged = merge_report(
            ReplyStyle {
                report_status: true,
                sideband: Some(999),
            },
            &report(
                ReplyStyle {
                    report_status: true,
                    sideband: Some(999),
                },
                &refs[..1],
                &[],
            ),
            &[("refs/heads/main".into(), "held for approval id 7".into())],
            &["ghgate: held".into()],
        )
        .unwrap();
        assert_eq!(merged, banded);
    }

    #[test]
    fn no_thin_is_added_to_the_first_ref_line_wherever_the_chunks_split() {
        let mut adv = Vec::new();
        pkt(&mut adv, b"# service=git-receive-pack\n");
        adv.extend_from_slice(b"0000");
        pkt(
            &mut adv,
            format!("{A} refs/heads/main\0report-status delete-refs\n").as_bytes(),
        );
        pkt(&mut adv, format!("{B} refs/heads/dev\n").as_bytes());
        adv.extend_from_slice(b"0000");
        let mut want = Vec::new();
        pkt(&mut want, b"# service=git-receive-pack\n");
        want.extend_from_slice(b"0000");
        pkt(
            &mut want,
            format!("{A} refs/heads/main\0report-status delete-refs no-thin\n").as_bytes(),
        );
        pkt(&mut want, format!("{B} refs/heads/dev\n").as_bytes());
        want.extend_from_slice(b"0000");
        assert_eq!(rewritten(&adv, true), want);
        // Without a policy nothing needs adding: the advertisement passes as it came.
        assert_eq!(rewritten(&adv, false), adv);
        // Something else passes unchanged.
        let mut n = PushAdvert::new(true);
        assert_eq!(n.push(b"not a pkt stream", true), b"not a pkt stream");
    }

    /// An advertisement through `PushAdvert`, the same whatever the chunks.
    fn rewritten(adv: &[u8], no_thin: bool) -> Vec<u8> {
        let mut first = None;
        for step in [1, 3, 7, 64, adv.len()] {
            let mut n = PushAdvert::new(no_thin);
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = adv.chunks(step).collect();
            for (i, c) in chunks.iter().enumerate() {
                out.extend(n.push(c, i + 1 == chunks.len()));
            }
            assert_eq!(first.get_or_insert_with(|| out.clone()), &out, "chunks of {step}");
        }
        first.unwrap()
    }

    #[test]
    fn push_cert_is_taken_out_of_the_advertisement() {
        let adv = |caps: &str| {
            let mut adv = Vec::new();
            pkt(&mut adv, b"# service=git-receive-pack\n");
            adv.extend_from_slice(b"0000");
            pkt(&mut adv, format!("{A} refs/heads/main\0{caps}\n").as_bytes());
            pkt(&mut adv, format!("{B} refs/heads/dev\n").as_bytes());
            adv.extend_from_slice(b"0000");
            adv
        };
        // As git-receive-pack advertises it with receive.certNonceSeed set.
        let signed = adv("report-status delete-refs push-cert=1700000000-5f1a2b quiet atomic ofs-delta");
        assert_eq!(
            rewritten(&signed, false),
            adv("report-status delete-refs quiet atomic ofs-delta")
        );
        assert_eq!(
            rewritten(&signed, true),
            adv("report-status delete-refs quiet atomic ofs-delta no-thin")
        );
        // An empty repository advertises its capabilities on a placeholder line.
        let mut empty = Vec::new();
        pkt(
            &mut empty,
            format!("{Z} capabilities^{{}}\0report-status push-cert=abc\n").as_bytes(),
        );
        empty.extend_from_slice(b"0000");
        let mut want = Vec::new();
        pkt(
            &mut want,
            format!("{Z} capabilities^{{}}\0report-status\n").as_bytes(),
        );
        want.extend_from_slice(b"0000");
        assert_eq!(rewritten(&empty, false), want);
    }

    proptest::proptest! {
        /// Whatever bytes arrive, the parsers answer (or refuse) without panicking, and a
        /// rewrite of what they accepted reads back as the commands kept.
        #[test]
        fn hostile_bytes_never_panic(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cut in 0usize..600,
            keep_first in proptest::bool::ANY,
        ) {
            let style = ReplyStyle { report_status: true, sideband: Some(999) };
            let _ = merge_report(style, &raw, &[("refs/heads/x".into(), "held".into())], &[]);
            let mut n = PushAdvert::new(true);
            let cut = cut.min(raw.len());
            let mut out = n.push(&raw[..cut], false);
            out.extend(n.push(&raw[cut..], true));
            let cert = memchr::memmem::find(&raw, b"push-cert").is_some();
            proptest::prop_assert!(cert || out.len() >= raw.len(), "only push-cert is ever dropped");
            // Real command lists with hostile tails.
            let main = format!("{A} {B} refs/heads/main");
            let dev = format!("{Z} {B} refs/heads/dev");
            let mut b = body(&[&main, &dev], "report-status side-band-64k", None, b"");
            b.extend_from_slice(&raw);
            if let Ok(Scan::Done(c)) = scan_commands(&b) {
                let rewritten = c.rewrite(&b, &[keep_first, !keep_first]).unwrap();
                let Ok(Scan::Done(again)) = scan_commands(&rewritten) else {
                    panic!("a rewrite does not read back");
                };
                proptest::prop_assert_eq!(again.commands.len(), 1);
            }
            let _ = scan_commands(&raw);
        }
    }
}
