//! Streaming parsers for git smart-HTTP bodies, so the recorder can say which refs a push changed,
//! which pack it sent, and which objects a fetch wanted.
//!
//! Bodies arrive as chunks split anywhere, already decoded from their Content-Encoding (the
//! pipeline decodes each body once, with `mask::encoding`, for every stage that reads it). These
//! parsers must never hold more than one pkt-line (at most 64 KiB) of a body, never the pack, and
//! never panic: malformed input stops the parser with an error string, and later chunks are
//! ignored.
use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::{
    model::{RefOp, RefUpdate, Want},
    pack,
};
use crate::mask::{Finding, Masker, Piece, StreamMasker};

/// How many items (ref updates, wants, advertised refs, capabilities) one body may add to a
/// result; further items are counted in `omitted` instead of kept.
pub const MAX_ITEMS: usize = 100_000;

/// A parser fed with a body's chunks in order.
pub trait BodyParser {
    type Output;
    fn feed(&mut self, chunk: &[u8]);
    /// Stops the parser with this error, unless it has already stopped with one.
    fn fail(&mut self, error: String);
    fn error(&self) -> Option<&str>;
    fn finish(self) -> Self::Output;
}

// ---------------------------------------------------------------------------------------------
// pkt-line framing

enum Pkt<'a> {
    Flush,
    Delim,
    ResponseEnd,
    Data(&'a [u8]),
}

/// Splits a byte stream into pkt-lines. Holds at most one payload: the 4 hex digits cap it at
/// 65531 bytes.
#[derive(Debug, Default)]
struct PktReader {
    head: [u8; 4],
    head_len: usize,
    in_payload: bool,
    remaining: usize,
    payload: Vec<u8>,
}

impl PktReader {
    /// Takes bytes from `input` until one pkt-line is complete; `Ok(None)` when `input` ran out first.
    fn next<'a>(&'a mut self, input: &mut &[u8]) -> Result<Option<Pkt<'a>>, String> {
        if !self.in_payload {
            while self.head_len < 4 {
                let Some((&b, rest)) = input.split_first() else {
                    return Ok(None);
                };
                self.head[self.head_len] = b;
                self.head_len += 1;
                *input = rest;
            }
            self.head_len = 0;
            let len = self
                .head
                .iter()
                .try_fold(0usize, |n, &b| Some(n * 16 + (b as char).to_digit(16)? as usize))
                .ok_or_else(|| format!("invalid pkt-line length {}", preview(&self.head)))?;
            match len {
                0 => return Ok(Some(Pkt::Flush)),
                1 => return Ok(Some(Pkt::Delim)),
                2 => return Ok(Some(Pkt::ResponseEnd)),
                3 => return Err("invalid pkt-line length 0003".into()),
                n => {
                    self.in_payload = true;
                    self.remaining = n - 4;
                    self.payload.clear();
                }
            }
        }
        let take = self.remaining.min(input.len());
        self.payload.extend_from_slice(&input[..take]);
        *input = &input[take..];
        self.remaining -= take;
        if self.remaining > 0 {
            return Ok(None);
        }
        self.in_payload = false;
        Ok(Some(Pkt::Data(&self.payload)))
    }

    /// Whether the input stopped inside a pkt-line.
    fn mid_pkt(&self) -> bool {
        self.head_len > 0 || self.in_payload
    }
}

/// A pkt-line's text without its one trailing LF.
fn chomp(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// The start of some bytes, quoted, for an error message.
fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let more = if bytes.len() > MAX { "…" } else { "" };
    format!("{text:?}{more}")
}

/// A SHA-1 (40 hex digits) or SHA-256 (64) object id, lowercased.
fn oid(bytes: &[u8]) -> Option<String> {
    if (bytes.len() == 40 || bytes.len() == 64) && bytes.iter().all(u8::is_ascii_hexdigit) {
        Some(String::from_utf8_lossy(bytes).to_ascii_lowercase())
    } else {
        None
    }
}

fn is_zero_oid(oid: &str) -> bool {
    oid.bytes().all(|b| b == b'0')
}

fn keep<T>(list: &mut Vec<T>, omitted: &mut u64, item: T) {
    if list.len() < MAX_ITEMS {
        list.push(item);
    } else {
        *omitted += 1;
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// git-receive-pack request

/// What a push request body asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivePack {
    pub updates: Vec<RefUpdate>,
    /// Bytes after the command list (the pack); `None` when there were none (a delete-only push)
    /// or the body could not be parsed.
    pub pack_len: Option<u64>,
    /// SHA-256 of those bytes, lowercase hex.
    pub pack_sha256: Option<String>,
    /// Ref updates parsed beyond `MAX_ITEMS` and not kept.
    pub omitted: u64,
    pub error: Option<String>,
    /// Secrets found in the pack's objects (one per rule and fingerprint), when scanned.
    pub secrets: Vec<Finding>,
    /// Why the pack's objects could not all be scanned.
    pub scan_error: Option<String>,
}

/// The most distinct secrets one pack reports.
const MAX_PACK_SECRETS: usize = 1000;

/// Inflates a pushed pack's objects and runs the masker over each, keeping only what it found:
/// the pack itself is compressed, so a secret in a pushed file is invisible in its bytes.
struct PackSecrets {
    scanner: pack::PackScanner,
    masker: Masker,
    object: Option<StreamMasker>,
    found: Vec<Finding>,
}

impl std::fmt::Debug for PackSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackSecrets")
            .field("found", &self.found.len())
            .finish_non_exhaustive()
    }
}

impl PackSecrets {
    fn feed(&mut self, chunk: &[u8]) {
        let (masker, object, found) = (&self.masker, &mut self.object, &mut self.found);
        let mut keep = |f: &Finding| {
            if found.len() < MAX_PACK_SECRETS
                && !found
                    .iter()
                    .any(|k| k.rule == f.rule && k.fingerprint == f.fingerprint)
            {
                found.push(f.clone());
            }
        };
        self.scanner.feed(chunk, &mut |event| match event {
            pack::PackEvent::Object { .. } => *object = Some(masker.stream()),
            pack::PackEvent::Data(data) => {
                if let Some(s) = object.as_mut() {
                    s.push_pieces(data, &mut |p| {
                        if let Piece::Masked { finding, .. } = p {
                            keep(finding);
                        }
                    });
                }
            }
            pack::PackEvent::ObjectEnd => {
                if let Some(mut s) = object.take() {
                    s.finish_pieces(&mut |p| {
                        if let Piece::Masked { finding, .. } = p {
                            keep(finding);
                        }
                    });
                }
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushPhase {
    Commands,
    /// Inside a push certificate, before the blank line that ends its header.
    CertHeader,
    /// Commands signed by the certificate.
    CertBody,
    CertSignature,
    /// After the command list's flush-pkt, when the client announced `push-options`.
    PushOptions,
    /// Everything left is the pack.
    Pack,
}

/// Parses the request body of `POST …/git-receive-pack`: shallow lines, ref update commands (or a
/// push certificate holding them), a flush-pkt, push options when announced, then the pack, which
/// is hashed as it passes and never held.
#[derive(Debug)]
pub struct ReceivePackRequest {
    pkts: PktReader,
    phase: PushPhase,
    push_options: bool,
    seen: bool,
    updates: Vec<RefUpdate>,
    omitted: u64,
    magic: [u8; 4],
    pack_len: u64,
    pack_hash: Sha256,
    error: Option<String>,
    secrets: Option<Box<PackSecrets>>,
}

impl Default for ReceivePackRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceivePackRequest {
    pub fn new() -> Self {
        Self {
            pkts: PktReader::default(),
            phase: PushPhase::Commands,
            push_options: false,
            seen: false,
            updates: Vec::new(),
            omitted: 0,
            magic: [0; 4],
            pack_len: 0,
            pack_hash: Sha256::new(),
            error: None,
            secrets: None,
        }
    }

    /// Also inflate the pack's objects and look for secrets in them with `masker`.
    pub fn scanning_secrets(mut self, masker: Masker) -> Self {
        self.secrets = Some(Box::new(PackSecrets {
            scanner: pack::PackScanner::new(pack::Limits::default()),
            masker,
            object: None,
            found: Vec::new(),
        }));
        self
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.error.is_some() || chunk.is_empty() {
            return;
        }
        self.seen = true;
        while self.phase != PushPhase::Pack {
            let pkt = match self.pkts.next(&mut chunk) {
                Ok(Some(pkt)) => pkt,
                Ok(None) => return,
                Err(e) => return self.fail(format!("git-receive-pack request: {e}")),
            };
            let step = push_step(
                self.phase,
                pkt,
                &mut self.push_options,
                &mut self.updates,
                &mut self.omitted,
            );
            match step {
                Ok(phase) => self.phase = phase,
                Err(e) => return self.fail(format!("git-receive-pack request: {e}")),
            }
        }
        self.pack(chunk);
    }

    fn pack(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let before = self.pack_len;
        self.pack_len += chunk.len() as u64;
        self.pack_hash.update(chunk);
        if let Some(s) = self.secrets.as_mut() {
            s.feed(chunk);
        }
        if before < 4 {
            let start = before as usize;
            let n = (4 - start).min(chunk.len());
            self.magic[start..start + n].copy_from_slice(&chunk[..n]);
            if start + n == 4 && &self.magic != b"PACK" {
                self.fail(format!(
                    "git-receive-pack request: expected a pack (\"PACK\") after the command list, found {}",
                    preview(&self.magic)
                ));
            }
        }
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The ref updates parsed so far.
    pub fn updates(&self) -> &[RefUpdate] {
        &self.updates
    }

    pub fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    pub fn finish(mut self) -> ReceivePack {
        if self.error.is_none() && self.seen {
            if self.pkts.mid_pkt() {
                self.fail("git-receive-pack request: the body ended inside a pkt-line".into());
            } else if self.phase != PushPhase::Pack {
                self.fail(
                    "git-receive-pack request: the body ended before the flush-pkt ending the command list"
                        .into(),
                );
            } else if (1..4).contains(&self.pack_len) {
                self.fail(format!(
                    "git-receive-pack request: the pack ended after {} bytes",
                    self.pack_len
                ));
            }
        }
        let pack = self.error.is_none() && self.pack_len > 0;
        let (secrets, scan_error) = match self.secrets {
            Some(s) => {
                let summary = s.scanner.finish();
                (s.found, summary.error)
            }
            None => (Vec::new(), None),
        };
        ReceivePack {
            updates: self.updates,
            pack_len: pack.then_some(self.pack_len),
            pack_sha256: pack.then(|| hex::encode(self.pack_hash.finalize())),
            omitted: self.omitted,
            error: self.error,
            secrets,
            scan_error,
        }
    }
}

/// One pkt-line of a push request before its pack: the phase it leads to.
fn push_step(
    phase: PushPhase,
    pkt: Pkt<'_>,
    push_options: &mut bool,
    updates: &mut Vec<RefUpdate>,
    omitted: &mut u64,
) -> Result<PushPhase, String> {
    use PushPhase::*;
    let line = match pkt {
        Pkt::Data(line) => line,
        // receive-pack ends the command list at a flush even inside an unfinished certificate.
        Pkt::Flush => {
            return Ok(match phase {
                Commands | CertHeader | CertBody | CertSignature if *push_options => PushOptions,
                _ => Pack,
            });
        }
        Pkt::Delim | Pkt::ResponseEnd => {
            return Err(
                "unexpected delim-pkt or response-end-pkt (protocol v2 is not used for pushes)".into(),
            );
        }
    };
    if phase == PushOptions {
        return Ok(phase);
    }
    let (line, caps) = match line.iter().position(|&b| b == 0) {
        Some(nul) => (&line[..nul], Some(chomp(&line[nul + 1..]))),
        None => (chomp(line), None),
    };
    if let Some(caps) = caps
        && caps.split(|&b| b == b' ').any(|c| c == b"push-options")
    {
        *push_options = true;
    }
    Ok(match phase {
        Commands if line == b"push-cert" => CertHeader,
        Commands if line.starts_with(b"shallow ") => Commands,
        Commands | CertBody => {
            if phase == CertBody {
                if line == b"push-cert-end" {
                    return Ok(Commands);
                }
                if line.starts_with(b"-----BEGIN ") {
                    return Ok(CertSignature);
                }
            }
            let update = command(line).ok_or_else(|| {
                format!(
                    "malformed ref update {} (expected \"<old-oid> <new-oid> <refname>\")",
                    preview(line)
                )
            })?;
            keep(updates, omitted, update);
            phase
        }
        CertHeader if line.is_empty() => CertBody,
        CertHeader | CertSignature if line == b"push-cert-end" => Commands,
        CertHeader | CertSignature | PushOptions | Pack => phase,
    })
}

/// `<old-oid> SP <new-oid> SP <refname>`, both ids of the same length.
fn command(line: &[u8]) -> Option<RefUpdate> {
    let sp = line.iter().position(|&b| b == b' ')?;
    let old = oid(&line[..sp])?;
    let rest = &line[sp + 1..];
    let new = oid(rest.get(..sp)?)?;
    let name = rest.get(sp..)?.strip_prefix(b" ")?;
    if name.is_empty() || name.contains(&b' ') {
        return None;
    }
    let op = if is_zero_oid(&new) {
        RefOp::Delete
    } else if is_zero_oid(&old) {
        RefOp::Create
    } else {
        RefOp::Update
    };
    Some(RefUpdate {
        old,
        new,
        name: text(name),
        op,
    })
}

// ---------------------------------------------------------------------------------------------
// git-upload-pack request

/// What a fetch request body asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadPack {
    /// 0 for a protocol v0/v1 request, 2 for v2.
    pub version: u8,
    /// The v2 command ("fetch", "ls-refs", …); "fetch" for v0, whose requests are always a fetch
    /// negotiation; empty when the body was empty.
    pub command: String,
    /// Object ids from `want` lines, in order.
    pub wants: Vec<String>,
    /// Ref names from v2 `want-ref` lines.
    pub want_refs: Vec<String>,
    /// How many `have` lines the client sent.
    pub haves: u64,
    /// Whether the client sent `done` (the last round of negotiation).
    pub done: bool,
    /// Wants parsed beyond `MAX_ITEMS` and not kept.
    pub omitted: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchPhase {
    Start,
    V0,
    V2Capabilities,
    V2Arguments,
    End,
}

/// Parses the request body of `POST …/git-upload-pack`, protocol v0 (want/have/done lines) or v2
/// (`command=…`, capabilities, delim-pkt, arguments, flush-pkt).
#[derive(Debug)]
pub struct UploadPackRequest {
    pkts: PktReader,
    phase: FetchPhase,
    /// In v0, whether the body may end here (after a flush-pkt or `done`).
    at_boundary: bool,
    out: UploadPack,
}

impl Default for UploadPackRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl UploadPackRequest {
    pub fn new() -> Self {
        Self {
            pkts: PktReader::default(),
            phase: FetchPhase::Start,
            at_boundary: true,
            out: UploadPack::default(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while self.out.error.is_none() {
            let pkt = match self.pkts.next(&mut chunk) {
                Ok(Some(pkt)) => pkt,
                Ok(None) => return,
                Err(e) => return self.fail(format!("git-upload-pack request: {e}")),
            };
            if let Err(e) = fetch_step(&mut self.phase, &mut self.at_boundary, pkt, &mut self.out) {
                self.fail(format!("git-upload-pack request: {e}"));
            }
        }
    }

    /// The command seen so far ("fetch", "ls-refs", …; "fetch" for v0), empty before the first line.
    pub fn command(&self) -> &str {
        &self.out.command
    }

    pub fn error(&self) -> Option<&str> {
        self.out.error.as_deref()
    }

    pub fn fail(&mut self, error: String) {
        self.out.error.get_or_insert(error);
    }

    pub fn finish(mut self) -> UploadPack {
        if self.out.error.is_none() {
            if self.pkts.mid_pkt() {
                self.fail("git-upload-pack request: the body ended inside a pkt-line".into());
            } else if matches!(self.phase, FetchPhase::V2Capabilities | FetchPhase::V2Arguments)
                || (self.phase == FetchPhase::V0 && !self.at_boundary)
            {
                self.fail("git-upload-pack request: the body ended before its final flush-pkt".into());
            }
        }
        self.out
    }
}

fn fetch_step(
    phase: &mut FetchPhase,
    at_boundary: &mut bool,
    pkt: Pkt<'_>,
    out: &mut UploadPack,
) -> Result<(), String> {
    use FetchPhase::*;
    if *phase == Start {
        if let Pkt::Data(line) = pkt
            && let Some(command) = chomp(line).strip_prefix(b"command=")
        {
            out.version = 2;
            out.command = text(command);
            *phase = V2Capabilities;
            return Ok(());
        }
        out.command = "fetch".into();
        *phase = V0;
    }
    match (*phase, pkt) {
        (End, _) => Err("data after the flush-pkt ending the command".into()),
        (V0, Pkt::Flush) => {
            *at_boundary = true;
            Ok(())
        }
        (V0, Pkt::Data(line)) => {
            let line = chomp(line);
            *at_boundary = line == b"done";
            argument(line, out)
        }
        (V2Capabilities, Pkt::Data(_)) => Ok(()),
        (V2Capabilities, Pkt::Delim) => {
            *phase = V2Arguments;
            Ok(())
        }
        (V2Capabilities | V2Arguments, Pkt::Flush) => {
            *phase = End;
            Ok(())
        }
        (V2Arguments, Pkt::Data(line)) => argument(chomp(line), out),
        (V0 | V2Arguments, Pkt::Delim) => Err("unexpected delim-pkt".into()),
        (_, Pkt::ResponseEnd) => Err("unexpected response-end-pkt".into()),
        // Start was resolved to V0 or V2Capabilities above.
        (Start, _) => Ok(()),
    }
}

/// One request line of either protocol; lines the recorder does not need are ignored.
fn argument(line: &[u8], out: &mut UploadPack) -> Result<(), String> {
    let (word, rest) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &b""[..]),
    };
    match word {
        b"want" => {
            // v0 puts capabilities after the first want's id.
            let id = rest.split(|&b| b == b' ' || b == 0).next().unwrap_or_default();
            let id = oid(id).ok_or_else(|| format!("malformed want line {}", preview(line)))?;
            keep(&mut out.wants, &mut out.omitted, id);
        }
        b"want-ref" => {
            if rest.is_empty() {
                return Err(format!("malformed want-ref line {}", preview(line)));
            }
            keep(&mut out.want_refs, &mut out.omitted, text(rest));
        }
        b"have" => out.haves += 1,
        b"done" => out.done = true,
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ref advertisements

/// What a ref advertisement (`info/refs`) or a v2 `ls-refs` response announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    /// 0 (refs with capabilities on the first line), 1 (the same after "version 1") or 2
    /// (capabilities only, or an `ls-refs` response).
    pub version: u8,
    /// From the `# service=…` line smart HTTP puts first.
    pub service: Option<String>,
    /// (object id, ref name); peeled tags appear as a second entry named `<tag>^{}`.
    pub refs: Vec<(String, String)>,
    /// (ref, target) from v0 `symref=` capabilities and v2 `symref-target:` attributes.
    pub symrefs: Vec<(String, String)>,
    pub capabilities: Vec<String>,
    /// Items parsed beyond `MAX_ITEMS` and not kept.
    pub omitted: u64,
    pub error: Option<String>,
}

impl Advertised {
    pub fn into_refs(self) -> Vec<(String, String)> {
        self.refs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdvertPhase {
    Start,
    /// After `# service=…`: a flush-pkt comes next.
    ServiceFlush,
    /// The first line after the service header, which may announce the version.
    Version,
    V2Capabilities,
    Refs,
    End,
}

/// Parses `GET …/info/refs?service=…` response bodies (v0/v1 refs or a v2 capability
/// advertisement) and v2 `ls-refs` response bodies.
#[derive(Debug)]
pub struct Advertisement {
    pkts: PktReader,
    phase: AdvertPhase,
    seen: bool,
    out: Advertised,
}

impl Default for Advertisement {
    fn default() -> Self {
        Self::new()
    }
}

impl Advertisement {
    pub fn new() -> Self {
        Self {
            pkts: PktReader::default(),
            phase: AdvertPhase::Start,
            seen: false,
            out: Advertised::default(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.seen |= !chunk.is_empty();
        while self.out.error.is_none() {
            let pkt = match self.pkts.next(&mut chunk) {
                Ok(Some(pkt)) => pkt,
                Ok(None) => return,
                Err(e) => return self.fail(format!("ref advertisement: {e}")),
            };
            if let Err(e) = advert_step(&mut self.phase, pkt, &mut self.out) {
                self.fail(format!("ref advertisement: {e}"));
            }
        }
    }

    /// The refs parsed so far.
    pub fn refs(&self) -> &[(String, String)] {
        &self.out.refs
    }

    pub fn error(&self) -> Option<&str> {
        self.out.error.as_deref()
    }

    pub fn fail(&mut self, error: String) {
        self.out.error.get_or_insert(error);
    }

    pub fn finish(mut self) -> Advertised {
        if self.out.error.is_none() && self.seen {
            if self.pkts.mid_pkt() {
                self.fail("ref advertisement: the body ended inside a pkt-line".into());
            } else if self.phase != AdvertPhase::End {
                self.fail("ref advertisement: the body ended before its final flush-pkt".into());
            }
        }
        self.out
    }
}

fn advert_step(phase: &mut AdvertPhase, pkt: Pkt<'_>, out: &mut Advertised) -> Result<(), String> {
    use AdvertPhase::*;
    let line = match pkt {
        Pkt::Data(line) => chomp(line),
        Pkt::Flush => {
            *phase = match *phase {
                Start | Version | V2Capabilities | Refs => End,
                ServiceFlush => Version,
                End => return Err("data after the final flush-pkt".into()),
            };
            return Ok(());
        }
        Pkt::Delim | Pkt::ResponseEnd => return Err("unexpected delim-pkt or response-end-pkt".into()),
    };
    if let Some(message) = line.strip_prefix(b"ERR ") {
        return Err(format!("the server refused: {}", text(message)));
    }
    match *phase {
        Start if line.starts_with(b"# service=") => {
            out.service = Some(text(&line[b"# service=".len()..]));
            *phase = ServiceFlush;
            return Ok(());
        }
        ServiceFlush => {
            return Err(format!(
                "expected a flush-pkt after the service line, found {}",
                preview(line)
            ));
        }
        End => return Err("data after the final flush-pkt".into()),
        _ => {}
    }
    if matches!(*phase, Start | Version) {
        if line == b"version 2" {
            out.version = 2;
            *phase = V2Capabilities;
            return Ok(());
        }
        *phase = Refs;
        if line == b"version 1" {
            out.version = 1;
            return Ok(());
        }
    }
    if *phase == V2Capabilities {
        keep(&mut out.capabilities, &mut out.omitted, text(line));
        return Ok(());
    }
    ref_line(line, out)
}

/// `<oid> SP <ref> [NUL caps]` (v0) or `<oid|unborn> SP <ref> [SP attribute]*` (v2 ls-refs), or
/// a v0 `shallow <oid>` line.
fn ref_line(line: &[u8], out: &mut Advertised) -> Result<(), String> {
    let (line, caps) = match line.iter().position(|&b| b == 0) {
        Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
        None => (line, None),
    };
    for cap in caps
        .into_iter()
        .flat_map(|c| c.split(|&b| b == b' '))
        .filter(|c| !c.is_empty())
    {
        let cap = text(cap);
        if let Some((from, to)) = cap.strip_prefix("symref=").and_then(|s| s.split_once(':')) {
            keep(
                &mut out.symrefs,
                &mut out.omitted,
                (from.to_owned(), to.to_owned()),
            );
        }
        keep(&mut out.capabilities, &mut out.omitted, cap);
    }
    let mut words = line.split(|&b| b == b' ');
    let first = words.next().unwrap_or_default();
    let name = words.next().filter(|n| !n.is_empty());
    let malformed = || {
        format!(
            "malformed ref line {} (expected \"<oid> <refname>\")",
            preview(line)
        )
    };
    if first == b"shallow" {
        return Ok(());
    }
    let name = text(name.ok_or_else(malformed)?);
    let id = if first == b"unborn" {
        None
    } else {
        Some(oid(first).ok_or_else(malformed)?)
    };
    let mut peeled = None;
    for attr in words {
        if let Some(target) = attr.strip_prefix(b"symref-target:") {
            keep(&mut out.symrefs, &mut out.omitted, (name.clone(), text(target)));
        } else if let Some(id) = attr.strip_prefix(b"peeled:") {
            peeled = Some(oid(id).ok_or_else(malformed)?);
        }
    }
    // An empty repository advertises its capabilities on a placeholder; alternates as ".have".
    if let Some(id) = id
        && name != "capabilities^{}"
        && name != ".have"
    {
        if let Some(peeled) = peeled {
            let tag = format!("{name}^{{}}");
            keep(&mut out.refs, &mut out.omitted, (id, name));
            keep(&mut out.refs, &mut out.omitted, (peeled, tag));
        } else {
            keep(&mut out.refs, &mut out.omitted, (id, name));
        }
    }
    Ok(())
}

/// The wanted ids (duplicates dropped), each with the advertised ref names pointing at it.
pub fn wants_with_refs(wants: &[String], advertised: &[(String, String)]) -> Vec<Want> {
    let mut names: HashMap<&str, Vec<String>> = HashMap::new();
    for (id, name) in advertised {
        let list = names.entry(id.as_str()).or_default();
        if !list.contains(name) {
            list.push(name.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    wants
        .iter()
        .filter(|w| seen.insert(w.as_str()))
        .map(|w| Want {
            oid: w.clone(),
            refs: names.get(w.as_str()).cloned().unwrap_or_default(),
        })
        .collect()
}

macro_rules! body_parser {
    ($parser:ty, $output:ty) => {
        impl BodyParser for $parser {
            type Output = $output;
            fn feed(&mut self, chunk: &[u8]) {
                <$parser>::feed(self, chunk)
            }
            fn fail(&mut self, error: String) {
                <$parser>::fail(self, error)
            }
            fn error(&self) -> Option<&str> {
                <$parser>::error(self)
            }
            fn finish(self) -> $output {
                <$parser>::finish(self)
            }
        }
    };
}

body_parser!(ReceivePackRequest, ReceivePack);
body_parser!(UploadPackRequest, UploadPack);
body_parser!(Advertisement, Advertised);

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::io::Write as _;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::*;

    fn pkt(data: impl AsRef<[u8]>) -> Vec<u8> {
        let data = data.as_ref();
        let mut out = format!("{:04x}", data.len() + 4).into_bytes();
        out.extend_from_slice(data);
        out
    }

    fn pkts<S: AsRef<[u8]>>(lines: &[S]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| match l.as_ref() {
                b"0000" | b"0001" | b"0002" => l.as_ref().to_vec(),
                data => pkt(data),
            })
            .collect()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Parses `input` cut at `cuts`, decoded first from `encoding` as the pipeline decodes it.
    fn parse_split<P: BodyParser + Default>(
        input: &[u8],
        cuts: &[usize],
        encoding: Option<&str>,
    ) -> P::Output {
        let coding = crate::mask::encoding::Coding::parse(encoding).unwrap();
        let mut decoder = coding.map(crate::mask::encoding::Decoder::new);
        let mut p = P::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            let chunk = &input[from..cut];
            match decoder.as_mut() {
                Some(d) => {
                    let mut out = Vec::new();
                    match d.push(chunk, &mut out) {
                        Ok(()) => p.feed(&out),
                        Err(e) => p.fail(e.to_string()),
                    }
                }
                None => p.feed(chunk),
            }
            from = cut;
        }
        if let Some(Err(e)) = decoder.as_mut().map(|d| d.finish(&mut Vec::new())) {
            p.fail(e.to_string());
        }
        p.finish()
    }

    /// Parses `input` whole, in 1-byte chunks, cut once at every offset (small inputs) and at
    /// random offsets, asserting every split gives the same result.
    fn parse_all_ways<P>(input: &[u8], encoding: Option<&str>) -> P::Output
    where
        P: BodyParser + Default,
        P::Output: PartialEq + Debug,
    {
        let whole = parse_split::<P>(input, &[], encoding);
        let ones: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_split::<P>(input, &ones, encoding), whole, "1-byte chunks");
        if input.len() <= 2048 {
            for cut in 0..=input.len() {
                assert_eq!(parse_split::<P>(input, &[cut], encoding), whole, "cut at {cut}");
            }
        }
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..30 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                at += 1 + (rng % 700) as usize;
                if at >= input.len() {
                    break;
                }
                cuts.push(at);
            }
            assert_eq!(parse_split::<P>(input, &cuts, encoding), whole, "cuts {cuts:?}");
        }
        whole
    }

    fn update(old: &str, new: &str, name: &str, op: RefOp) -> RefUpdate {
        RefUpdate {
            old: old.into(),
            new: new.into(),
            name: name.into(),
            op,
        }
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    // ---- receive-pack, crafted ----------------------------------------------------------------

    #[test]
    fn push_commands_and_pack() {
        let pack = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00 pretend objects and a checksum".to_vec();
        let mut body = pkts(&[
            format!(
                "{Z} {A} refs/heads/new\0 report-status side-band-64k object-format=sha1 agent=git/2.47.3"
            ),
            format!("{A} {B} refs/heads/main\n"),
            format!("{B} {Z} refs/heads/old"),
            "0000".into(),
        ]);
        body.extend_from_slice(&pack);
        let r = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(r.error, None);
        assert_eq!(
            r.updates,
            vec![
                update(Z, A, "refs/heads/new", RefOp::Create),
                update(A, B, "refs/heads/main", RefOp::Update),
                update(B, Z, "refs/heads/old", RefOp::Delete),
            ]
        );
        assert_eq!(r.pack_len, Some(pack.len() as u64));
        assert_eq!(r.pack_sha256, Some(sha256_hex(&pack)));
    }

    #[test]
    fn push_with_sha256_ids_shallow_lines_and_uppercase_hex() {
        let old = "ab".repeat(32);
        let new = "CD".repeat(32);
        let zero = "0".repeat(64);
        let mut body = pkts(&[
            format!("shallow {old}"),
            format!("{old} {new} refs/heads/main\0object-format=sha256"),
            format!("{zero} {new} refs/tags/v1"),
            "0000".into(),
        ]);
        body.extend_from_slice(b"PACK\0\0\0\x02");
        let r = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(r.error, None);
        let lower = new.to_ascii_lowercase();
        assert_eq!(
            r.updates,
            vec![
                update(&old, &lower, "refs/heads/main", RefOp::Update),
                update(&zero, &lower, "refs/tags/v1", RefOp::Create),
            ]
        );
        assert_eq!(r.pack_len, Some(8));
    }

    #[test]
    fn a_delete_only_push_has_no_pack() {
        let body = pkts(&[format!("{A} {Z} refs/heads/gone\0report-status"), "0000".into()]);
        let r = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(r.error, None);
        assert_eq!(r.updates, vec![update(A, Z, "refs/heads/gone", RefOp::Delete)]);
        assert_eq!((r.pack_len, r.pack_sha256), (None, None));
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
        let r = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(r.error, None);
        assert_eq!(
            r.updates,
            vec![
                update(A, B, "refs/heads/main", RefOp::Update),
                update(Z, A, "refs/heads/topic", RefOp::Create)
            ]
        );
        assert_eq!(r.pack_len, Some(8));
        assert_eq!(r.pack_sha256, Some(sha256_hex(b"PACK0123")));
    }

    #[test]
    fn push_options_are_skipped_before_the_pack() {
        let mut body = pkts(&[
            format!("{A} {B} refs/heads/main\0report-status push-options"),
            "0000".into(),
            "ci.skip".into(),
            "merge_request.create".into(),
            "0000".into(),
        ]);
        body.extend_from_slice(b"PACKdata");
        let r = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!((r.error, r.updates.len(), r.pack_len), (None, 1, Some(8)));

        // Without the capability, what follows the flush is the pack, and here it is not one.
        let mut body = pkts(&[format!("{A} {B} refs/heads/main\0report-status"), "0000".into()]);
        body.extend_from_slice(&pkt("ci.skip"));
        let r = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert!(r.error.unwrap().contains("expected a pack"));
        assert_eq!((r.pack_len, r.pack_sha256), (None, None));
    }

    #[test]
    fn malformed_push_bodies_stop_with_an_error() {
        let good = pkt(format!("{A} {B} refs/heads/main\0report-status"));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"00zz".to_vec(), "invalid pkt-line length"),
            (b"0003".to_vec(), "invalid pkt-line length"),
            (pkt(format!("{A} {B}")), "malformed ref update"),
            (
                pkt(format!("{A} {} refs/heads/x", &B[..39])),
                "malformed ref update",
            ),
            (
                pkt(format!("{A} {} refs/heads/x", "ab".repeat(32))),
                "malformed ref update",
            ),
            (pkt(format!("{A}  {B} refs/heads/x")), "malformed ref update"),
            (pkt(format!("{A} {B} ")), "malformed ref update"),
            ([good.clone(), b"0001".to_vec()].concat(), "delim-pkt"),
            ([good.clone(), b"00".to_vec()].concat(), "inside a pkt-line"),
            ([good.clone(), b"0040abc".to_vec()].concat(), "inside a pkt-line"),
            (good.clone(), "before the flush-pkt"),
            (
                [good.clone(), b"0000PA".to_vec()].concat(),
                "pack ended after 2 bytes",
            ),
            (
                [good.clone(), b"0000PUCK and more".to_vec()].concat(),
                "expected a pack",
            ),
        ];
        for (body, want) in cases {
            let r = parse_all_ways::<ReceivePackRequest>(&body, None);
            let error = r.error.unwrap_or_default();
            assert!(
                error.contains(want),
                "{:?}: {error:?}",
                String::from_utf8_lossy(&body)
            );
            assert!(error.starts_with("git-receive-pack request: "), "{error}");
            assert_eq!((r.pack_len, r.pack_sha256), (None, None));
        }
        // After an error, further chunks change nothing.
        let mut p = ReceivePackRequest::new();
        p.feed(b"00zz");
        let first = p.error().map(str::to_owned);
        p.feed(&good);
        assert_eq!(p.updates(), &[]);
        assert_eq!(p.finish().error, first);
        // An empty body is not an error: there is simply nothing to record.
        assert_eq!(ReceivePackRequest::new().finish(), ReceivePack::default());
    }

    #[test]
    fn a_large_pack_is_hashed_not_held() {
        let mut p = ReceivePackRequest::new();
        p.feed(&pkts(&[
            format!("{Z} {A} refs/heads/main\0report-status"),
            "0000".into(),
        ]));
        let mut hash = Sha256::new();
        let chunk: Vec<u8> = (0..=255u8).cycle().take(64 << 10).collect();
        let mut first = b"PACK".to_vec();
        first.extend_from_slice(&chunk[4..]);
        p.feed(&first);
        hash.update(&first);
        for _ in 0..159 {
            p.feed(&chunk);
            hash.update(&chunk);
        }
        assert!(p.pkts.payload.capacity() < 64 << 10);
        let r = p.finish();
        assert_eq!(r.pack_len, Some(160 << 16));
        assert_eq!(r.pack_sha256, Some(hex::encode(hash.finalize())));
    }

    #[test]
    fn many_updates_are_counted_beyond_the_cap() {
        let mut p = ReceivePackRequest::new();
        for i in 0..MAX_ITEMS + 5 {
            p.feed(&pkt(format!("{Z} {A} refs/heads/b{i}")));
        }
        p.feed(b"0000");
        let r = p.finish();
        assert_eq!((r.updates.len(), r.omitted, r.error), (MAX_ITEMS, 5, None));
    }

    // ---- upload-pack, crafted -----------------------------------------------------------------

    #[test]
    fn v0_fetch_request() {
        let body = pkts(&[
            format!(
                "want {A} multi_ack_detailed no-done side-band-64k thin-pack ofs-delta agent=git/2.47.3\n"
            ),
            format!("want {B}\n"),
            format!("shallow {A}\n"),
            "deepen 1\n".into(),
            "filter blob:none\n".into(),
            "0000".into(),
            format!("have {A}\n"),
            format!("have {B}\n"),
            "0000".into(),
            format!("have {Z}\n"),
            "done\n".into(),
        ]);
        let r = parse_all_ways::<UploadPackRequest>(&body, None);
        assert_eq!(r.error, None);
        assert_eq!((r.version, r.command.as_str()), (0, "fetch"));
        assert_eq!(r.wants, vec![A.to_owned(), B.to_owned()]);
        assert_eq!((r.haves, r.done), (3, true));
    }

    #[test]
    fn v2_fetch_request_with_want_ref() {
        let body = pkts(&[
            "command=fetch".to_owned(),
            "agent=git/2.47.3".into(),
            "object-format=sha1".into(),
            "0001".into(),
            "thin-pack".into(),
            "ofs-delta".into(),
            format!("want {A}\n"),
            "want-ref refs/heads/main\n".into(),
            "want-ref refs/pull/1/head\n".into(),
            format!("have {B}\n"),
            "done\n".into(),
            "0000".into(),
        ]);
        let r = parse_all_ways::<UploadPackRequest>(&body, None);
        assert_eq!(r.error, None);
        assert_eq!((r.version, r.command.as_str()), (2, "fetch"));
        assert_eq!(r.wants, vec![A.to_owned()]);
        assert_eq!(
            r.want_refs,
            vec!["refs/heads/main".to_owned(), "refs/pull/1/head".to_owned()]
        );
        assert_eq!((r.haves, r.done), (1, true));
    }

    #[test]
    fn v2_ls_refs_request_wants_nothing() {
        let body = pkts(&[
            "command=ls-refs\n",
            "agent=git/2.47.3\n",
            "0001",
            "peel\n",
            "symrefs\n",
            "ref-prefix refs/heads/\n",
            "0000",
        ]);
        let r = parse_all_ways::<UploadPackRequest>(&body, None);
        assert_eq!((r.command.as_str(), r.wants.len(), r.error), ("ls-refs", 0, None));
        let mut p = UploadPackRequest::new();
        p.feed(&body[..20]);
        assert_eq!(p.command(), "ls-refs", "known as soon as the first line is in");
    }

    #[test]
    fn malformed_fetch_bodies_stop_with_an_error() {
        let v2 = pkts(&["command=fetch", "0001", "done", "0000"]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (pkt("want nothex"), "malformed want line"),
            (pkt(format!("want {}", &A[1..])), "malformed want line"),
            (
                pkts(&["command=fetch", "0001", "want-ref", "0000"]),
                "malformed want-ref",
            ),
            ([v2.clone(), pkt("done")].concat(), "data after the flush-pkt"),
            (pkts(&["command=fetch", "0001", "0001"]), "unexpected delim-pkt"),
            (
                pkts(&[format!("want {A}"), "0001".into()]),
                "unexpected delim-pkt",
            ),
            (pkts(&["command=fetch", "0002"]), "unexpected response-end-pkt"),
            (
                pkts(&["command=fetch", "0001", "done"]),
                "before its final flush-pkt",
            ),
            (pkts(&[format!("want {A}")]), "before its final flush-pkt"),
            (v2[..v2.len() - 2].to_vec(), "inside a pkt-line"),
        ];
        for (body, want) in cases {
            let r = parse_all_ways::<UploadPackRequest>(&body, None);
            let error = r.error.unwrap_or_default();
            assert!(
                error.contains(want),
                "{:?}: {error:?}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(UploadPackRequest::new().finish(), UploadPack::default());
    }

    // ---- content encodings --------------------------------------------------------------------

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run gzip");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn gzip_bodies_are_decoded_as_they_stream() {
        let body = pkts(&[
            "command=fetch".to_owned(),
            "0001".into(),
            format!("want {A}"),
            format!("want {B}"),
            "done".into(),
            "0000".into(),
        ]);
        let plain = parse_all_ways::<UploadPackRequest>(&body, None);
        assert_eq!((plain.wants.len(), &plain.error), (2, &None));
        let zipped = gzip(&body);
        assert_eq!(parse_all_ways::<UploadPackRequest>(&zipped, Some("gzip")), plain);
        assert_eq!(
            parse_all_ways::<UploadPackRequest>(&zipped, Some(" X-GZIP ")),
            plain
        );
        assert_eq!(
            parse_all_ways::<UploadPackRequest>(&body, Some("identity")),
            plain
        );
    }

    // ---- advertisements, crafted --------------------------------------------------------------

    #[test]
    fn ls_refs_response_with_symrefs_peeled_tags_and_unborn() {
        let body = pkts(&[
            format!("{A} HEAD symref-target:refs/heads/main\n"),
            format!("{A} refs/heads/main\n"),
            format!("{B} refs/tags/v1 peeled:{A}\n"),
            "unborn refs/heads/none symref-target:refs/heads/x\n".into(),
            "0000".into(),
        ]);
        let r = parse_all_ways::<Advertisement>(&body, None);
        assert_eq!(r.error, None);
        assert_eq!(r.version, 0);
        assert_eq!(
            r.refs,
            vec![
                (A.to_owned(), "HEAD".to_owned()),
                (A.to_owned(), "refs/heads/main".to_owned()),
                (B.to_owned(), "refs/tags/v1".to_owned()),
                (A.to_owned(), "refs/tags/v1^{}".to_owned()),
            ]
        );
        assert_eq!(
            r.symrefs,
            vec![
                ("HEAD".to_owned(), "refs/heads/main".to_owned()),
                ("refs/heads/none".to_owned(), "refs/heads/x".to_owned())
            ]
        );
        // An empty ls-refs response is just a flush-pkt.
        let r = parse_all_ways::<Advertisement>(b"0000", None);
        assert_eq!((r.refs.len(), r.error), (0, None));
    }

    #[test]
    fn malformed_advertisements_stop_with_an_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (pkts(&["ERR access denied"]), "the server refused: access denied"),
            (
                pkts(&["# service=git-upload-pack", "version 2"]),
                "expected a flush-pkt",
            ),
            (pkts(&[A]), "malformed ref line"),
            (pkts(&["nothex refs/heads/main"]), "malformed ref line"),
            (
                pkts(&[format!("{B} refs/tags/v1 peeled:xyz")]),
                "malformed ref line",
            ),
            (
                pkts(&[format!("{A} refs/heads/main"), "0000".into(), "0000".into()]),
                "after the final flush",
            ),
            (
                pkts(&[format!("{A} refs/heads/main")]),
                "before its final flush-pkt",
            ),
            (pkts(&["version 2", "0001"]), "unexpected delim-pkt"),
        ];
        for (body, want) in cases {
            let r = parse_all_ways::<Advertisement>(&body, None);
            let error = r.error.unwrap_or_default();
            assert!(
                error.contains(want),
                "{:?}: {error:?}",
                String::from_utf8_lossy(&body)
            );
            assert!(error.starts_with("ref advertisement: "), "{error}");
        }
    }

    #[test]
    fn wants_are_named_by_the_advertised_refs() {
        let advertised = vec![
            (A.to_owned(), "HEAD".to_owned()),
            (A.to_owned(), "refs/heads/main".to_owned()),
            (B.to_owned(), "refs/tags/v1".to_owned()),
            (A.to_owned(), "refs/heads/main".to_owned()),
        ];
        let wants = wants_with_refs(
            &[A.to_owned(), Z.to_owned(), A.to_owned(), B.to_owned()],
            &advertised,
        );
        assert_eq!(
            wants,
            vec![
                Want {
                    oid: A.into(),
                    refs: vec!["HEAD".into(), "refs/heads/main".into()]
                },
                Want {
                    oid: Z.into(),
                    refs: vec![]
                },
                Want {
                    oid: B.into(),
                    refs: vec!["refs/tags/v1".into()]
                },
            ]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_the_same() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let seed = pkts(&[
            format!("{Z} {A} refs/heads/x\0push-options"),
            "0000".into(),
            "command=fetch".into(),
            "0001".into(),
            format!("want {A}"),
            "# service=git-upload-pack".into(),
            "version 2".into(),
            "push-cert".into(),
        ]);
        for _ in 0..300 {
            let mut input = seed.clone();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => {
                        let end = (at + (next() % 60) as usize).min(input.len());
                        input.drain(at..end);
                    }
                    _ => input.truncate(at.max(1)),
                }
                if input.is_empty() {
                    break;
                }
            }
            parse_all_ways::<ReceivePackRequest>(&input, None);
            parse_all_ways::<UploadPackRequest>(&input, None);
            parse_all_ways::<Advertisement>(&input, None);
            parse_all_ways::<Advertisement>(&input, Some("gzip"));
        }
    }

    // ---- real git ------------------------------------------------------------------------------

    use crate::testgit::{git, git_in};

    /// A work repository with two commits on main, an annotated tag and a branch, and an empty
    /// bare repository; `format` is "sha1" or "sha256".
    struct Repos {
        _tmp: tempfile::TempDir,
        work: std::path::PathBuf,
        bare: std::path::PathBuf,
        capture: std::path::PathBuf,
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
            use std::os::unix::fs::PermissionsExt;
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
    }

    /// Checks that the pack the parser measured is the tail of the body, and a pack git accepts.
    fn assert_real_pack(repo: &Path, body: &[u8], r: &ReceivePack) {
        let len = r.pack_len.expect("a pack") as usize;
        let pack = &body[body.len() - len..];
        assert!(pack.starts_with(b"PACK"));
        assert_eq!(r.pack_sha256.as_deref(), Some(sha256_hex(pack).as_str()));
        git_in(repo, &["index-pack", "--stdin", "--fix-thin"], pack, &[]);
    }

    fn real_pushes(format: &str) {
        let r = repos(format);
        let url = r.bare.to_str().unwrap();
        let zero = "0".repeat(r.rev("HEAD").len());

        let body = r.push(&[url, "main", "topic", "v1"]);
        let p = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(p.error, None);
        let mut updates = p.updates.clone();
        updates.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            updates,
            vec![
                update(&zero, &r.rev("main"), "refs/heads/main", RefOp::Create),
                update(&zero, &r.rev("topic"), "refs/heads/topic", RefOp::Create),
                update(&zero, &r.rev("v1"), "refs/tags/v1", RefOp::Create),
            ]
        );
        assert_real_pack(&r.work, &body, &p);

        // An update with push options: a thin pack after the options block.
        let old = r.rev("main");
        std::fs::write(r.work.join("c.txt"), "three\n").unwrap();
        git(&r.work, &["add", "c.txt"]);
        git(&r.work, &["commit", "-q", "-m", "c"]);
        let body = r.push(&["-o", "ci.skip", "-o", "note=x y", url, "main"]);
        let p = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(p.error, None);
        assert_eq!(
            p.updates,
            vec![update(&old, &r.rev("main"), "refs/heads/main", RefOp::Update)]
        );
        assert!(body.windows(7).any(|w| w == b"ci.skip"), "the options were sent");
        assert_real_pack(&r.work, &body, &p);

        // A delete-only push sends no pack at all.
        let body = r.push(&[url, ":refs/heads/topic"]);
        let p = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(p.error, None);
        assert_eq!(
            p.updates,
            vec![update(&r.rev("topic"), &zero, "refs/heads/topic", RefOp::Delete)]
        );
        assert_eq!((p.pack_len, p.pack_sha256), (None, None));
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
    fn real_pack_objects_output_after_crafted_commands() {
        let r = repos("sha1");
        let pack = git_in(
            &r.work,
            &["pack-objects", "--revs", "--stdout", "-q"],
            b"main\n",
            &[],
        );
        let mut body = pkts(&[
            format!("{Z} {} refs/heads/main\0report-status", r.rev("main")),
            "0000".into(),
        ]);
        body.extend_from_slice(&pack);
        let p = parse_all_ways::<ReceivePackRequest>(&body, None);
        assert_eq!(p.error, None);
        assert_eq!(p.pack_len, Some(pack.len() as u64));
        assert_eq!(p.pack_sha256, Some(sha256_hex(&pack)));
    }

    /// Splits a stream at each flush-pkt (test-side framing, independent of the parser's).
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
        let clone = r.capture.with_file_name("clone");

        // v0: the whole stateful conversation is one request body's worth of lines.
        git(
            &r.work,
            &[
                "clone",
                "-q",
                "--no-local",
                "--bare",
                &up,
                url,
                clone.to_str().unwrap(),
            ],
        );
        let body = std::fs::read(&r.capture).unwrap();
        let f = parse_all_ways::<UploadPackRequest>(&body, None);
        assert_eq!(
            (f.error.as_deref(), f.version, f.command.as_str(), f.done),
            (None, 0, "fetch", true)
        );
        // HEAD and main name the same commit: git asks for it twice.
        let mut wants = f.wants.clone();
        wants.sort();
        wants.dedup();
        let mut expected = vec![r.rev("main"), r.rev("topic"), r.rev("v1")];
        expected.sort();
        expected.dedup();
        assert_eq!(wants, expected);

        // v2: ls-refs, then fetch, each a request body of its own over HTTP.
        let clone2 = r.capture.with_file_name("clone2");
        git(
            &r.work,
            &[
                "-c",
                "protocol.version=2",
                "clone",
                "-q",
                "--no-local",
                "--bare",
                &up,
                url,
                clone2.to_str().unwrap(),
            ],
        );
        let stream = std::fs::read(&r.capture).unwrap();
        let bodies = split_at_flushes(&stream);
        assert_eq!(bodies.len(), 2, "{:?}", String::from_utf8_lossy(&stream));
        let ls = parse_all_ways::<UploadPackRequest>(&bodies[0], None);
        assert_eq!(
            (ls.error, ls.version, ls.command.as_str(), ls.wants.len()),
            (None, 2, "ls-refs", 0)
        );
        let f = parse_all_ways::<UploadPackRequest>(&bodies[1], None);
        assert_eq!(
            (f.error.as_deref(), f.command.as_str(), f.done),
            (None, "fetch", true)
        );
        let mut wants = f.wants.clone();
        wants.sort();
        wants.dedup();
        assert_eq!(wants, expected);

        // The same fetch request gzip-encoded, as git sends large ones over HTTP.
        assert_eq!(
            parse_all_ways::<UploadPackRequest>(&gzip(&bodies[1]), Some("gzip")),
            f
        );

        // And the server's ls-refs answer to that request, named for the wants.
        let answer = git_in(
            &r.bare,
            &["upload-pack", "--stateless-rpc", "."],
            &bodies[0],
            &[("GIT_PROTOCOL", "version=2")],
        );
        let adv = parse_all_ways::<Advertisement>(&answer, None);
        assert_eq!(adv.error, None);
        let named = wants_with_refs(&f.wants, &adv.refs);
        let main = named.iter().find(|w| w.oid == r.rev("main")).unwrap();
        assert!(main.refs.contains(&"refs/heads/main".to_owned()), "{named:?}");
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
            (r.rev("main"), "HEAD".to_owned()),
            (r.rev("main"), "refs/heads/main".to_owned()),
            (r.rev("topic"), "refs/heads/topic".to_owned()),
            (r.rev("v1"), "refs/tags/v1".to_owned()),
            (r.rev("v1^{}"), "refs/tags/v1^{}".to_owned()),
        ];

        let v0 = git_in(
            &r.bare,
            &["upload-pack", "--advertise-refs", "--stateless-rpc", "."],
            b"",
            &[],
        );
        let a = parse_all_ways::<Advertisement>(&with_header("upload-pack", v0), None);
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
        let a = parse_all_ways::<Advertisement>(&with_header("receive-pack", rp), None);
        assert_eq!(a.error, None);
        assert_eq!(
            a.refs,
            expected[1..4].to_vec(),
            "receive-pack shows no HEAD and no peeled tags"
        );
        assert!(a.capabilities.iter().any(|c| c == "report-status"));

        let v2 = git_in(
            &r.bare,
            &["upload-pack", "--advertise-refs", "--stateless-rpc", "."],
            b"",
            &[("GIT_PROTOCOL", "version=2")],
        );
        let a = parse_all_ways::<Advertisement>(&with_header("upload-pack", v2), None);
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
        let a = parse_all_ways::<Advertisement>(&answer, None);
        assert_eq!(a.error, None);
        assert_eq!(a.refs, expected);
        assert_eq!(a.symrefs, vec![("HEAD".to_owned(), "refs/heads/main".to_owned())]);
        // A v0 empty repository advertises only its capabilities.
        let empty = r.capture.with_file_name("empty.git");
        git(&r.work, &["init", "-q", "--bare", empty.to_str().unwrap()]);
        let v0 = git_in(
            &empty,
            &["upload-pack", "--advertise-refs", "--stateless-rpc", "."],
            b"",
            &[],
        );
        let a = parse_all_ways::<Advertisement>(&with_header("upload-pack", v0), None);
        assert_eq!(
            (a.error, a.refs.len(), a.capabilities.is_empty()),
            (None, 0, false)
        );
    }
}
