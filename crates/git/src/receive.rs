//! The request of a push (`POST …/git-receive-pack`) up to its pack: shallow lines, ref update
//! commands (or a push certificate holding them), the end of the list, and push options when
//! asked for. What follows is the pack (see [`crate::pack`]).
//!
//! [`CommandReader`] reads it as git's `read_head_info` does, fed as the body streams:
//!
//! - a line `shallow <oid>` (anywhere in the list) names a shallow commit;
//! - a line holding a NUL carries capabilities after it, on any line (git reads each);
//! - a line `push-cert` opens a certificate: its payloads, unchomped, are its text until a
//!   `push-cert-end` line; its commands are the lines after the first blank line and before the
//!   signature, read once the list has ended, after the unsigned ones;
//! - any other line is a command (`<old> <new> <ref>`, see [`RefUpdate::parse`]);
//! - any packet that is not data (flush, delim, response end) ends the list; inside a
//!   certificate only a flush does (and ends the list), anything else is an error;
//! - with `push-options` asked for, option lines follow until the next such packet.
//!
//! It holds at most one pkt-line, one line of a certificate and [`MAX_ITEMS`] updates and
//! shallow ids (more are counted, not kept). It never panics on hostile bytes: malformed input is
//! an error naming what was wrong, and it stops there.
use std::ops::Range;

use crate::bounded::{MAX_ITEMS, keep};
use crate::caps::{Capabilities, UnknownObjectFormat};
use crate::oid::{ObjectFormat, Oid, OidError, preview};
use crate::pktline::{self, Pkt, PktError, PktReader, Truncated};
use crate::refs::{RefUpdate, RefUpdateError};

/// The longest line of a push certificate it reads (a command with SHA-256 ids and a long ref
/// name fits many times over).
const MAX_CERT_LINE: usize = 64 << 10;

/// The lines git takes as the start of a signature (`gpg-interface.c`).
const SIGNATURE_STARTS: [&[u8]; 4] = [
    b"-----BEGIN PGP SIGNATURE-----",
    b"-----BEGIN PGP MESSAGE-----",
    b"-----BEGIN SIGNED MESSAGE-----",
    b"-----BEGIN SSH SIGNATURE-----",
];

fn starts_signature(line: &[u8]) -> bool {
    SIGNATURE_STARTS.iter().any(|s| line.starts_with(s))
}

/// Why a push's command list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Pkt(#[from] PktError),
    #[error(transparent)]
    RefUpdate(#[from] RefUpdateError),
    #[error("malformed shallow line {0}: {1}")]
    Shallow(String, OidError),
    #[error(transparent)]
    UnknownFormat(#[from] UnknownObjectFormat),
    #[error("object ids of {0} in a push that uses {1}")]
    MixedFormats(ObjectFormat, ObjectFormat),
    #[error("unexpected {0} inside a push certificate")]
    UnexpectedInCertificate(&'static str),
    #[error("malformed push certificate: {0}")]
    Certificate(&'static str),
    #[error(transparent)]
    Truncated(#[from] Truncated),
    #[error("the body ended before the flush-pkt ending the command list")]
    EndedInList,
    #[error("the body ended before the flush-pkt ending the push options")]
    EndedInOptions,
}

/// What the command list of a push held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    /// The unsigned commands, then those of the certificate, as git queues them.
    pub updates: Vec<RefUpdate>,
    /// Shallow commits the client named.
    pub shallow: Vec<Oid>,
    /// Updates and shallow ids read beyond [`MAX_ITEMS`] and not kept.
    pub omitted: u64,
    /// The capabilities of every line that carried some, in order.
    pub caps: Capabilities,
    /// The commands came in a push certificate (`git push --signed`).
    pub certificate: bool,
    /// The ids' format, once a capability list or an id said it.
    pub format: Option<ObjectFormat>,
    /// Where the push options lie in the body (empty without them), from the first option's
    /// pkt-line to the end of the flush-pkt after the last.
    pub options: Range<u64>,
    /// Where the pack starts in the body: the bytes read.
    pub end: u64,
}

/// How the client wants to hear how its push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplyStyle {
    /// `report-status` or `report-status-v2`.
    pub report_status: bool,
    /// `side-band-64k`: the answer is multiplexed (git's receive-pack knows no other side-band).
    pub sideband: bool,
}

/// Why a command list cannot be written again with fewer commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("a signed push cannot be forwarded in part: its certificate covers every command")]
    Signed,
    #[error("the push names more than {MAX_ITEMS} refs or shallow commits: not all were kept")]
    Omitted,
}

impl Commands {
    /// The client asked for an all-or-nothing push.
    pub fn atomic(&self) -> bool {
        self.caps.has("atomic")
    }

    /// The client asked to sign the push, by capability or with a certificate.
    pub fn signed(&self) -> bool {
        self.certificate || self.caps.has("push-cert")
    }

    pub fn reply_style(&self) -> ReplyStyle {
        ReplyStyle {
            report_status: self.caps.has("report-status") || self.caps.has("report-status-v2"),
            sideband: self.caps.has("side-band-64k"),
        }
    }

    /// Whether any update `keep` keeps needs the pack (deletes need none: git's receive-pack then
    /// reads no pack).
    pub fn needs_pack(&self, keep: &[bool]) -> bool {
        self.updates.iter().zip(keep).any(|(u, k)| *k && !u.new.is_zero())
    }

    /// The command section again with only the updates `keep` says, as git's send-pack writes it
    /// (shallow lines, the commands with the capabilities after the first, a flush), then
    /// `options` (the body's bytes in [`Commands::options`], verbatim). What follows in the body
    /// (the pack) is the caller's to append.
    pub fn render(&self, keep: &[bool], options: &[u8]) -> Result<Vec<u8>, RenderError> {
        if self.certificate {
            return Err(RenderError::Signed);
        }
        if self.omitted > 0 {
            return Err(RenderError::Omitted);
        }
        let mut out = Vec::new();
        for id in &self.shallow {
            pktline::write(&mut out, format!("shallow {id}\n").as_bytes()).expect("short");
        }
        let mut caps = Some(self.caps.render());
        for (u, _) in self.updates.iter().zip(keep).filter(|(_, k)| **k) {
            let mut line = u.render();
            if let Some(caps) = caps.take() {
                line.extend_from_slice(b"\0 ");
                line.extend_from_slice(&caps);
            }
            // A line the client sent fits one pkt-line; the same line rewritten fits too.
            pktline::write(&mut out, &line).expect("no longer than the line it came from");
        }
        pktline::flush(&mut out);
        out.extend_from_slice(options);
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    List,
    Certificate,
    Options,
    Done,
}

/// A push certificate's text, read as it streams: header lines until the first blank line that
/// follows a line end (git looks for "\n\n"), then command lines until a signature starts.
#[derive(Debug, Default)]
struct Certificate {
    /// Bytes of certificate text seen.
    len: u64,
    line: Vec<u8>,
    /// Lines ended so far.
    lines: u64,
    header_done: bool,
    /// A signature start in the header: git's commands end at the last signature start, so
    /// lines after the header are commands only if another comes.
    header_signature: bool,
    /// A signature started after the header.
    signature: bool,
    /// Lines after the header waiting for a signature start to make them commands.
    pending: Vec<RefUpdate>,
    updates: Vec<RefUpdate>,
    /// Commands beyond [`MAX_ITEMS`], counted (apart for the pending ones).
    omitted: u64,
    pending_omitted: u64,
}

/// Reads the command list at the start of a push body.
#[derive(Debug)]
pub struct CommandReader {
    pkts: PktReader,
    phase: Phase,
    out: Commands,
    cert: Certificate,
    error: Option<CommandError>,
}

impl Default for CommandReader {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandReader {
    pub fn new() -> Self {
        Self {
            pkts: PktReader::new(),
            phase: Phase::List,
            out: Commands::default(),
            cert: Certificate::default(),
            error: None,
        }
    }

    /// Takes bytes of the command section from the front of `input`: `Ok(true)` once the section
    /// has ended (`input` then starts with the pack), `Ok(false)` when it needs more. After an
    /// error it takes nothing more and returns that error again.
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<bool, CommandError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        while self.phase != Phase::Done {
            let (pos, len) = (self.pkts.position(), input.len());
            let step = match self.pkts.next(input) {
                Ok(Some(pkt)) => {
                    let at = pos + (len - input.len()) as u64;
                    step(&mut self.phase, &mut self.out, &mut self.cert, pkt, at)
                }
                Ok(None) => return Ok(false),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = step {
                self.error = Some(e.clone());
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Whether the section has ended.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The error that stopped it, if one did.
    pub fn error(&self) -> Option<&CommandError> {
        self.error.as_ref()
    }

    /// What it read so far.
    pub fn commands(&self) -> &Commands {
        &self.out
    }

    /// The body ended: an error if that was inside the section (an empty body is none: there
    /// was nothing to read).
    pub fn end(&mut self) -> Result<(), CommandError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.pkts.position() == 0 {
            return Ok(());
        }
        let error = match (self.pkts.end(true), self.phase) {
            (Err(e), _) => e.into(),
            (Ok(()), Phase::List | Phase::Certificate) => CommandError::EndedInList,
            (Ok(()), Phase::Options) => CommandError::EndedInOptions,
            (Ok(()), Phase::Done) => return Ok(()),
        };
        self.error = Some(error.clone());
        Err(error)
    }

    /// What it read, whether or not the section ended.
    pub fn into_commands(self) -> Commands {
        self.out
    }
}

/// One pkt-line of the command section; `at` is the position after it.
fn step(
    phase: &mut Phase,
    out: &mut Commands,
    cert: &mut Certificate,
    pkt: Pkt<'_>,
    at: u64,
) -> Result<(), CommandError> {
    match (*phase, pkt) {
        (Phase::List, Pkt::Data(data)) => list_line(phase, out, pktline::chomp(data)),
        (Phase::List, _) => end_list(phase, out, cert, at),
        (Phase::Certificate, Pkt::Flush) => end_list(phase, out, cert, at),
        (Phase::Certificate, Pkt::Data(data)) => {
            // git reads the certificate unchomped, each payload as a C string.
            let text = data.split(|&b| b == 0).next().unwrap_or_default();
            if text == b"push-cert-end\n" {
                *phase = Phase::List;
                return Ok(());
            }
            cert.text(text, out.format)
        }
        (Phase::Certificate, other) => Err(CommandError::UnexpectedInCertificate(other.name())),
        (Phase::Options, Pkt::Data(_)) => Ok(()),
        (Phase::Options, _) => {
            out.options.end = at;
            out.end = at;
            *phase = Phase::Done;
            Ok(())
        }
        (Phase::Done, _) => Ok(()),
    }
}

fn list_line(phase: &mut Phase, out: &mut Commands, line: &[u8]) -> Result<(), CommandError> {
    // git: `pktlen > 8 && starts_with(line, "shallow ")`.
    if line.len() > 8
        && let Some(hex) = line.strip_prefix(b"shallow ")
    {
        let id = match out.format {
            Some(f) => Oid::from_hex_in(f, hex),
            None => Oid::from_hex(hex),
        }
        .map_err(|e| CommandError::Shallow(preview(line), e))?;
        settle_format(out, id.format())?;
        keep(&mut out.shallow, &mut out.omitted, id);
        return Ok(());
    }
    let (line, caps) = match line.iter().position(|&b| b == 0) {
        Some(nul) => (&line[..nul], Some(Capabilities::parse(&line[nul + 1..]))),
        None => (line, None),
    };
    if let Some(caps) = caps {
        // git compares each list's object-format (sha1 when it names none) with its own.
        settle_format(out, caps.object_format()?.unwrap_or(ObjectFormat::Sha1))?;
        out.caps.extend(caps);
    }
    if line == b"push-cert" {
        out.certificate = true;
        *phase = Phase::Certificate;
        return Ok(());
    }
    let update = RefUpdate::parse(line, out.format)?;
    settle_format(out, update.old.format())?;
    keep(&mut out.updates, &mut out.omitted, update);
    Ok(())
}

/// The list ended (at a packet that is not data, or a flush inside a certificate).
fn end_list(
    phase: &mut Phase,
    out: &mut Commands,
    cert: &mut Certificate,
    at: u64,
) -> Result<(), CommandError> {
    if out.certificate {
        cert.finish(out.format)?;
        out.omitted += std::mem::take(&mut cert.omitted);
        for u in std::mem::take(&mut cert.updates) {
            settle_format(out, u.old.format())?;
            keep(&mut out.updates, &mut out.omitted, u);
        }
    }
    out.options = at..at;
    out.end = at;
    *phase = if out.caps.has("push-options") {
        Phase::Options
    } else {
        Phase::Done
    };
    Ok(())
}

fn settle_format(out: &mut Commands, format: ObjectFormat) -> Result<(), CommandError> {
    match out.format {
        Some(f) if f != format => Err(CommandError::MixedFormats(format, f)),
        _ => {
            out.format = Some(format);
            Ok(())
        }
    }
}

impl Certificate {
    /// More certificate text (git concatenates every block's).
    fn text(&mut self, text: &[u8], format: Option<ObjectFormat>) -> Result<(), CommandError> {
        self.len += text.len() as u64;
        let mut rest = text;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.append(&rest[..nl])?;
            let line = std::mem::take(&mut self.line);
            self.line_ended(&line, format)?;
            self.line = line;
            self.line.clear();
            rest = &rest[nl + 1..];
        }
        self.append(rest)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), CommandError> {
        if self.line.len() + bytes.len() > MAX_CERT_LINE {
            return Err(CommandError::Certificate("a line is longer than 64 KiB"));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_ended(&mut self, line: &[u8], format: Option<ObjectFormat>) -> Result<(), CommandError> {
        self.lines += 1;
        if !self.header_done {
            self.header_signature |= starts_signature(line);
            // The first "\n\n": an empty line that is not the first.
            self.header_done = line.is_empty() && self.lines > 1;
            return Ok(());
        }
        self.command_line(line, format)
    }

    /// A line after the header: a command, unless it is past the signature's start.
    fn command_line(&mut self, line: &[u8], format: Option<ObjectFormat>) -> Result<(), CommandError> {
        if starts_signature(line) {
            if self.signature {
                // git's commands run to the last signature start, so the earlier one would be
                // read as a command, which it is not.
                return Err(CommandError::Certificate("it holds two signatures"));
            }
            self.signature = true;
            for u in std::mem::take(&mut self.pending) {
                keep(&mut self.updates, &mut self.omitted, u);
            }
            self.omitted += std::mem::take(&mut self.pending_omitted);
            return Ok(());
        }
        if self.signature {
            return Ok(());
        }
        let update = RefUpdate::parse(line, format)?;
        if self.header_signature {
            keep(&mut self.pending, &mut self.pending_omitted, update);
        } else {
            keep(&mut self.updates, &mut self.omitted, update);
        }
        Ok(())
    }

    /// The list ended: the last line, if it had no LF, and what is left pending.
    fn finish(&mut self, format: Option<ObjectFormat>) -> Result<(), CommandError> {
        if self.len == 0 {
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        if !self.header_done {
            return Err(CommandError::Certificate("its header does not end"));
        }
        if !line.is_empty() {
            self.command_line(&line, format)?;
        }
        // Lines after a signature in the header, with none after: git reads no commands.
        self.pending.clear();
        self.pending_omitted = 0;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::refs::RefOp;
    use crate::testutil::{A, B, Z, pieces, pkt, pkts, split_all_ways};

    /// Reads `body` fed in the pieces `cuts` makes: the commands, the error, and what was left
    /// for the pack.
    fn read_split(body: &[u8], cuts: &[usize]) -> (Commands, Option<CommandError>, Vec<u8>) {
        let mut r = CommandReader::new();
        let mut pack = Vec::new();
        let mut error = None;
        for mut chunk in pieces(body, cuts) {
            match r.feed(&mut chunk) {
                Ok(_) => pack.extend_from_slice(chunk),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = r.end() {
            error.get_or_insert(e);
        }
        (r.into_commands(), error, pack)
    }

    pub(crate) fn read(body: &[u8]) -> (Commands, Option<CommandError>, Vec<u8>) {
        split_all_ways(body, |cuts| read_split(body, cuts))
    }

    fn ok(body: &[u8]) -> Commands {
        let (c, e, _) = read(body);
        assert_eq!(e, None);
        c
    }

    fn update(old: &str, new: &str, name: &str) -> RefUpdate {
        RefUpdate::new(old.parse().unwrap(), new.parse().unwrap(), name)
    }

    #[test]
    fn commands_capabilities_and_where_the_pack_starts() {
        let mut body = pkts(&[
            format!(
                "{Z} {A} refs/heads/new\0 report-status side-band-64k object-format=sha1 agent=git/2.47.3"
            ),
            format!("{A} {B} refs/heads/main\n"),
            format!("{B} {Z} refs/heads/old"),
            "0000".into(),
        ]);
        let end = body.len() as u64;
        body.extend_from_slice(b"PACK....");
        let (c, e, pack) = read(&body);
        assert_eq!((e, pack.as_slice()), (None, &b"PACK...."[..]));
        assert_eq!(
            c.updates,
            vec![
                update(Z, A, "refs/heads/new"),
                update(A, B, "refs/heads/main"),
                update(B, Z, "refs/heads/old"),
            ]
        );
        assert_eq!(
            c.updates.iter().map(RefUpdate::op).collect::<Vec<_>>(),
            [RefOp::Create, RefOp::Update, RefOp::Delete]
        );
        assert_eq!(
            (c.end, c.options.clone(), c.format),
            (end, end..end, Some(ObjectFormat::Sha1))
        );
        assert_eq!(
            c.reply_style(),
            ReplyStyle {
                report_status: true,
                sideband: true
            }
        );
        // git's probe before a large push: a bare flush.
        assert_eq!(
            ok(b"0000"),
            Commands {
                end: 4,
                options: 4..4,
                ..Commands::default()
            }
        );
        // An empty body is not an error: there was nothing to read.
        assert_eq!(read(b""), (Commands::default(), None, Vec::new()));
    }

    #[test]
    fn sha256_ids_shallow_lines_and_upper_case_hex() {
        let old = "ab".repeat(32);
        let new = "CD".repeat(32);
        let zero = "0".repeat(64);
        let c = ok(&pkts(&[
            format!("shallow {old}"),
            format!("{old} {new} refs/heads/main\0object-format=sha256"),
            format!("{zero} {new} refs/tags/v1"),
            "0000".into(),
        ]));
        let lower = new.to_ascii_lowercase();
        assert_eq!(
            c.updates,
            vec![
                update(&old, &lower, "refs/heads/main"),
                update(&zero, &lower, "refs/tags/v1")
            ]
        );
        assert_eq!((c.format, c.shallow.len()), (Some(ObjectFormat::Sha256), 1));
        // A list that names no object-format means sha1 to git.
        let (_, e, _) = read(&pkts(&[
            format!("{old} {new} refs/heads/main\0report-status"),
            "0000".into(),
        ]));
        assert!(matches!(e, Some(CommandError::RefUpdate(_))), "{e:?}");
        let (_, e, _) = read(&pkts(&[
            format!("{A} {B} refs/heads/main\0object-format=sha256"),
            "0000".into(),
        ]));
        assert!(e.is_some());
        let (_, e, _) = read(&pkts(&[
            format!("{A} {B} refs/heads/main\0object-format=md5"),
            "0000".into(),
        ]));
        assert_eq!(e.unwrap().to_string(), "unsupported object format \"md5\"");
    }

    #[test]
    fn shallow_lines_count_anywhere_in_the_list() {
        // One copy took them only before the first command and refused the push otherwise; git
        // reads them wherever they come.
        let c = ok(&pkts(&[
            format!("{A} {B} refs/heads/main\0report-status"),
            format!("shallow {A}\n"),
            format!("{Z} {B} refs/heads/dev"),
            "0000".into(),
        ]));
        assert_eq!((c.updates.len(), c.shallow.len()), (2, 1));
        // git requires an id after "shallow ".
        let (_, e, _) = read(&pkts(&["shallow nothex".to_owned(), "0000".into()]));
        assert!(matches!(e, Some(CommandError::Shallow(..))), "{e:?}");
        // "shallow " alone is not a shallow line to git (it needs more than 8 bytes): a command.
        let (_, e, _) = read(&pkts(&["shallow ".to_owned(), "0000".into()]));
        assert!(matches!(e, Some(CommandError::RefUpdate(_))), "{e:?}");
    }

    #[test]
    fn capabilities_are_read_from_every_line() {
        // One copy read only the first line's; git reads each line's list.
        let mut body = pkts(&[
            format!("{A} {B} refs/heads/main\0report-status"),
            format!("{Z} {B} refs/heads/dev\0push-options atomic"),
            "0000".into(),
            "ci.skip".into(),
            "0000".into(),
        ]);
        let options_at = body.len() as u64 - 15;
        body.extend_from_slice(b"PACK");
        let (c, e, pack) = read(&body);
        assert_eq!((e, pack.as_slice()), (None, &b"PACK"[..]));
        assert!(c.atomic());
        assert_eq!(c.options, options_at..options_at + 15);
    }

    #[test]
    fn push_options_only_when_asked_for() {
        let mut body = pkts(&[
            format!("{A} {B} refs/heads/main\0report-status push-options"),
            "0000".into(),
            "ci.skip".into(),
            "merge_request.create".into(),
            "0000".into(),
        ]);
        body.extend_from_slice(b"PACKdata");
        let (c, e, pack) = read(&body);
        assert_eq!((e, c.updates.len(), pack.as_slice()), (None, 1, &b"PACKdata"[..]));
        // Without the capability, what follows the flush is the pack's.
        let mut body = pkts(&[format!("{A} {B} refs/heads/main\0report-status"), "0000".into()]);
        body.extend_from_slice(&pkt("ci.skip"));
        let (_, e, pack) = read(&body);
        assert_eq!((e, pack), (None, pkt("ci.skip")));
    }

    #[test]
    fn any_packet_that_is_not_data_ends_the_list() {
        // Both copies refused a delim-pkt or response-end-pkt here; git's read_head_info ends
        // the list at any packet that is not data.
        for special in ["0001", "0002"] {
            let mut body = pkts(&[format!("{A} {B} refs/heads/main\0report-status"), special.into()]);
            body.extend_from_slice(b"PACK");
            let (c, e, pack) = read(&body);
            assert_eq!(
                (e, c.updates.len(), pack.as_slice()),
                (None, 1, &b"PACK"[..]),
                "{special}"
            );
        }
    }

    #[test]
    fn signed_push_commands_come_from_the_certificate() {
        let mut body = pkts(&[
            "push-cert\0report-status push-options side-band-64k\n".to_owned(),
            "certificate version 0.1\n".into(),
            "pusher A U Thor <author@example.com> 1700000000 +0000\n".into(),
            "pushee https://github.com/o/r.git\n".into(),
            "nonce 1700000000-abcdef\n".into(),
            "push-option ci.skip\n".into(),
            "\n".into(),
            format!("{A} {B} refs/heads/main\n"),
            format!("{Z} {A} refs/heads/topic\n"),
            "-----BEGIN PGP SIGNATURE-----\n".into(),
            "\n".into(),
            format!("{A} {B} refs/heads/not-a-command\n"),
            "-----END PGP SIGNATURE-----\n".into(),
            "push-cert-end\n".into(),
            "0000".into(),
            "ci.skip".into(),
            "0000".into(),
        ]);
        body.extend_from_slice(b"PACK0123");
        let (c, e, pack) = read(&body);
        assert_eq!((e, pack.as_slice()), (None, &b"PACK0123"[..]));
        assert!(c.certificate && c.signed());
        assert_eq!(
            c.updates,
            vec![update(A, B, "refs/heads/main"), update(Z, A, "refs/heads/topic")]
        );
        assert_eq!(c.render(&[true, true], b""), Err(RenderError::Signed));
    }

    /// A certificate block around `lines`, then a flush.
    fn cert(lines: &[String]) -> Vec<u8> {
        let mut all = vec!["push-cert\0report-status\n".to_owned()];
        all.extend(lines.iter().cloned());
        all.push("push-cert-end\n".into());
        all.push("0000".into());
        pkts(&all)
    }

    #[test]
    fn certificates_are_read_as_gits_text_not_as_packets() {
        let header = ["certificate version 0.1\n".to_owned(), "\n".into()];
        // A command split across two packets is one line to git (it concatenates the text).
        let split = [
            header.to_vec(),
            vec![format!("{A} {B} refs/he"), "ads/main\n".into()],
        ]
        .concat();
        assert_eq!(ok(&cert(&split)).updates, vec![update(A, B, "refs/heads/main")]);
        // The header ends at the first "\n\n", however the packets fall.
        let odd = vec![
            "certificate version 0.1\n\n".to_owned(),
            format!("{A} {B} refs/heads/main"),
        ];
        assert_eq!(ok(&cert(&odd)).updates, vec![update(A, B, "refs/heads/main")]);
        // A line that merely looks like a signature is a command to git, and not one: an error
        // (a copy stopped reading commands at any "-----BEGIN ").
        let fake = [header.to_vec(), vec!["-----BEGIN FOO-----\n".into()]].concat();
        assert!(matches!(read(&cert(&fake)).1, Some(CommandError::RefUpdate(_))));
        // Commands after a first signature start are commands to git if a second follows, and
        // the first start is then read as a command: git refuses such a push.
        let two = [
            header.to_vec(),
            vec![
                "-----BEGIN PGP SIGNATURE-----\n".into(),
                format!("{A} {B} refs/heads/hidden\n"),
                "-----BEGIN SSH SIGNATURE-----\n".into(),
            ],
        ]
        .concat();
        assert_eq!(
            read(&cert(&two)).1,
            Some(CommandError::Certificate("it holds two signatures"))
        );
        // A certificate whose header never ends.
        let open = vec![
            "certificate version 0.1\n".to_owned(),
            format!("{A} {B} refs/heads/main\n"),
        ];
        assert_eq!(
            read(&cert(&open)).1,
            Some(CommandError::Certificate("its header does not end"))
        );
        // Inside a certificate, only a flush ends the list.
        let (_, e, _) = read(&pkts(&["push-cert".to_owned(), "0001".into()]));
        assert_eq!(e, Some(CommandError::UnexpectedInCertificate("delim-pkt")));
        // A signature start in the header, none after: git reads no commands at all.
        let in_header = vec![
            "-----BEGIN PGP SIGNATURE-----\n".to_owned(),
            "\n".into(),
            format!("{A} {B} refs/heads/main\n"),
        ];
        assert_eq!(ok(&cert(&in_header)).updates, vec![]);
    }

    #[test]
    fn malformed_lists_stop_with_an_error() {
        let good = pkt(format!("{A} {B} refs/heads/main\0report-status"));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"00zz".to_vec(), "invalid pkt-line length"),
            (b"0003".to_vec(), "invalid pkt-line length"),
            (pkt(format!("{A} {B}")), "malformed ref update"),
            (
                pkt(format!("{A} {} refs/heads/x", &B[..39])),
                "malformed ref update",
            ),
            (pkt(format!("{A}  {B} refs/heads/x")), "malformed ref update"),
            ([good.clone(), b"00".to_vec()].concat(), "inside a pkt-line"),
            ([good.clone(), b"0040abc".to_vec()].concat(), "inside a pkt-line"),
            (good.clone(), "before the flush-pkt ending the command list"),
            (
                pkts(&[
                    format!("{A} {B} refs/heads/main\0push-options"),
                    "0000".into(),
                    "x".into(),
                ]),
                "ending the push options",
            ),
        ];
        for (body, want) in cases {
            let (_, e, _) = read(&body);
            let e = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{:?}: {e:?}", String::from_utf8_lossy(&body));
        }
        // After an error, further bytes change nothing.
        let mut r = CommandReader::new();
        assert!(r.feed(&mut &b"00zz"[..]).is_err());
        assert!(r.feed(&mut good.as_slice()).is_err());
        assert_eq!(r.commands().updates, vec![]);
    }

    #[test]
    fn many_updates_are_counted_beyond_the_cap() {
        let mut r = CommandReader::new();
        for i in 0..MAX_ITEMS + 5 {
            assert!(
                !r.feed(&mut pkt(format!("{Z} {A} refs/heads/b{i}")).as_slice())
                    .unwrap()
            );
        }
        assert!(r.feed(&mut &b"0000"[..]).unwrap());
        let c = r.into_commands();
        assert_eq!((c.updates.len(), c.omitted), (MAX_ITEMS, 5));
        assert_eq!(c.render(&vec![true; MAX_ITEMS], b""), Err(RenderError::Omitted));
    }

    #[test]
    fn a_rewrite_keeps_capabilities_options_and_shallow_lines() {
        let mut b = pkt(format!("shallow {A}\n"));
        b.extend(pkts(&[
            format!("{A} {B} refs/heads/main\0 report-status push-options"),
            format!("{Z} {B} refs/heads/dev"),
            "0000".into(),
            "x=y\n".into(),
            "0000".into(),
        ]));
        let c = ok(&b);
        let options = &b[c.options.start as usize..c.options.end as usize];
        let out = c.render(&[false, true], options).unwrap();
        let again = ok(&out);
        assert_eq!(again.updates, vec![c.updates[1].clone()]);
        assert_eq!((again.caps, again.shallow), (c.caps.clone(), c.shallow.clone()));
        assert!(out.starts_with(format!("0035shallow {A}\n").as_bytes()));
        assert!(out.ends_with(b"00000008x=y\n0000"));
        assert!(c.needs_pack(&[false, true]) && !c.needs_pack(&[false, false]));
    }

    #[test]
    fn side_band_alone_is_not_a_side_band_to_receive_pack() {
        // A copy answered "side-band" clients on a side-band; git's receive-pack knows only
        // side-band-64k and answers others plainly.
        let c = ok(&pkts(&[
            format!("{A} {B} refs/heads/main\0report-status side-band"),
            "0000".into(),
        ]));
        assert_eq!(
            c.reply_style(),
            ReplyStyle {
                report_status: true,
                sideband: false
            }
        );
    }

    proptest::proptest! {
        /// Whatever bytes follow a real command list, the reader answers (or refuses) without
        /// panicking, and a rewrite of what it accepted reads back as the commands kept.
        #[test]
        fn hostile_bytes_never_panic(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            keep_first in proptest::bool::ANY,
        ) {
            let mut b = pkts(&[
                format!("{A} {B} refs/heads/main\0report-status side-band-64k"),
                format!("{Z} {B} refs/heads/dev"),
            ]);
            b.extend_from_slice(&raw);
            let (c, e, _) = read_split(&b, &[]);
            if e.is_none() && c.updates.len() == 2 {
                let rewritten = c.render(&[keep_first, !keep_first], b"").unwrap();
                let (again, e, _) = read_split(&rewritten, &[]);
                proptest::prop_assert_eq!(e, None);
                proptest::prop_assert_eq!(again.updates.len(), 1);
            }
            let _ = read_split(&raw, &[raw.len() / 2]);
        }
    }
}
