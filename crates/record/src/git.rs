//! The recorder's readings of git smart-HTTP bodies: which refs a push changed and the pack it
//! sent (its length and SHA-256, and the secrets in its objects), which objects a fetch wanted,
//! and which refs an advertisement named. The formats are read by the git crate's parsers; this
//! module adds what only the recorder wants (hashing the pack, running the masker over its
//! objects, naming wanted ids by advertised refs).
//!
//! Bodies arrive as chunks split anywhere, already decoded from their Content-Encoding (the
//! pipeline decodes each body once, with `mask::encoding`, for every stage that reads it).
//! Nothing here holds more than one pkt-line and a pack's 12-byte header, never the pack; and
//! nothing panics: malformed input stops the reading with an error, and later chunks are
//! ignored.
use std::collections::HashMap;

use ghgate_git::{
    ObjectFormat, Oid, RefUpdate,
    advert::AdvertReader,
    pack::{
        HEADER_LEN, Header, PackError,
        scan::{PackEvent, PackScanner, ScanLimits},
    },
    receive::CommandReader,
    upload::UploadPackReader,
};
use sha2::{Digest, Sha256};

use crate::model::Want;
use ghgate_mask::{Finding, Masker, Piece, StreamMasker};

/// A reader of one body, fed its chunks in order.
pub trait Feed {
    fn feed(&mut self, chunk: &[u8]);
}

impl Feed for UploadPackReader {
    fn feed(&mut self, chunk: &[u8]) {
        UploadPackReader::feed(self, chunk);
    }
}

impl Feed for AdvertReader {
    fn feed(&mut self, chunk: &[u8]) {
        AdvertReader::feed(self, chunk);
    }
}

/// A body being read, which stops (keeping what it read) when the body turns out not to decode.
#[derive(Debug)]
pub struct Reading<P> {
    parser: P,
    stopped: Option<String>,
}

impl<P: Feed> Reading<P> {
    pub fn new(parser: P) -> Self {
        Self {
            parser,
            stopped: None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.stopped.is_none() {
            self.parser.feed(chunk);
        }
    }

    /// Stops the reading with this error; later chunks are ignored.
    pub fn fail(&mut self, why: String) {
        self.stopped.get_or_insert(why);
    }

    pub fn parser(&self) -> &P {
        &self.parser
    }

    /// The parser, and why the reading stopped early, if it did.
    pub fn into_parts(self) -> (P, Option<String>) {
        (self.parser, self.stopped)
    }
}

/// What a push request body asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivePack {
    pub updates: Vec<RefUpdate>,
    /// Bytes after the command list (the pack); `None` when there were none (a delete-only push)
    /// or the body could not be read.
    pub pack_len: Option<u64>,
    /// SHA-256 of those bytes, lowercase hex.
    pub pack_sha256: Option<String>,
    /// Ref updates read beyond what is kept.
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
    scanner: PackScanner,
    masker: Masker,
    object: Option<StreamMasker>,
    found: Vec<Finding>,
}

impl PackSecrets {
    fn new(format: ObjectFormat, masker: Masker) -> Self {
        Self {
            scanner: PackScanner::new(format, ScanLimits::default()),
            masker,
            object: None,
            found: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let (masker, object, found) = (&self.masker, &mut self.object, &mut self.found);
        let mut keep = |p: Piece<'_>| {
            if let Piece::Masked { finding: f, .. } = p
                && found.len() < MAX_PACK_SECRETS
                && !found
                    .iter()
                    .any(|k| k.rule == f.rule && k.fingerprint == f.fingerprint)
            {
                found.push(f.clone());
            }
        };
        self.scanner.feed(chunk, &mut |event| match event {
            PackEvent::Object { .. } => *object = Some(masker.stream()),
            PackEvent::Data(data) => {
                if let Some(s) = object.as_mut() {
                    s.push_pieces(data, &mut keep);
                }
            }
            PackEvent::ObjectEnd => {
                if let Some(mut s) = object.take() {
                    s.finish_pieces(&mut keep);
                }
            }
        });
    }
}

/// Reads the request body of `POST …/git-receive-pack`: the command list (with the git crate's
/// reader), then the pack, whose header is checked and whose bytes are hashed as they pass.
pub struct ReceivePackRequest {
    commands: CommandReader,
    header: Vec<u8>,
    pack_len: u64,
    pack_hash: Sha256,
    error: Option<String>,
    masker: Option<Masker>,
    secrets: Option<PackSecrets>,
}

impl Default for ReceivePackRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceivePackRequest {
    pub fn new() -> Self {
        Self {
            commands: CommandReader::new(),
            header: Vec::with_capacity(HEADER_LEN),
            pack_len: 0,
            pack_hash: Sha256::new(),
            error: None,
            masker: None,
            secrets: None,
        }
    }

    /// Also inflate the pack's objects and look for secrets in them with `masker`.
    pub fn scanning_secrets(mut self, masker: Masker) -> Self {
        self.masker = Some(masker);
        self
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.error.is_some() || chunk.is_empty() {
            return;
        }
        match self.commands.feed(&mut chunk) {
            Ok(true) => self.pack(chunk),
            Ok(false) => {}
            Err(e) => self.fail(format!("git-receive-pack request: {e}")),
        }
    }

    fn pack(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.pack_len += chunk.len() as u64;
        self.pack_hash.update(chunk);
        if let Some(masker) = self.masker.take() {
            let format = self.commands.commands().format.unwrap_or_default();
            self.secrets = Some(PackSecrets::new(format, masker));
        }
        if let Some(s) = self.secrets.as_mut() {
            s.feed(chunk);
        }
        if self.header.len() < HEADER_LEN {
            let n = (HEADER_LEN - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..n]);
            if let Err(e) = Header::parse(&self.header) {
                self.fail(format!("git-receive-pack request: {e}"));
            }
        }
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The ref updates read so far.
    pub fn updates(&self) -> &[RefUpdate] {
        &self.commands.commands().updates
    }

    pub fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    pub fn finish(mut self) -> ReceivePack {
        if self.error.is_none() {
            if let Err(e) = self.commands.end() {
                self.fail(format!("git-receive-pack request: {e}"));
            } else if self.pack_len > 0 && self.header.len() < HEADER_LEN {
                let e = PackError::EndedInHeader(self.header.len());
                self.fail(format!("git-receive-pack request: {e}"));
            }
        }
        let pack = self.error.is_none() && self.pack_len > 0;
        let (secrets, scan_error) = match self.secrets {
            Some(s) => (s.found, s.scanner.finish().error.map(|e| e.to_string())),
            None => (Vec::new(), None),
        };
        let commands = self.commands.into_commands();
        ReceivePack {
            updates: commands.updates,
            pack_len: pack.then_some(self.pack_len),
            pack_sha256: pack.then(|| hex::encode(self.pack_hash.finalize())),
            omitted: commands.omitted,
            error: self.error,
            secrets,
            scan_error,
        }
    }
}

/// The wanted ids (duplicates dropped), each with the advertised ref names pointing at it.
pub fn wants_with_refs(wants: &[Oid], advertised: &[(Oid, String)]) -> Vec<Want> {
    let mut names: HashMap<&Oid, Vec<String>> = HashMap::new();
    for (id, name) in advertised {
        let list = names.entry(id).or_default();
        if !list.contains(name) {
            list.push(name.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    wants
        .iter()
        .filter(|w| seen.insert(**w))
        .map(|w| Want {
            oid: *w,
            refs: names.get(w).cloned().unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use ghgate_git::RefOp;

    use super::*;

    fn pkt(data: impl AsRef<[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        ghgate_git::pktline::write(&mut out, data.as_ref()).unwrap();
        out
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    /// Reads `body` as the recorder does: decoded first from `encoding` (as the pipeline decodes
    /// it), in pieces of `step` bytes.
    fn read(body: &[u8], encoding: Option<&str>, step: usize) -> ReceivePack {
        let coding = ghgate_mask::encoding::Coding::parse(encoding).unwrap();
        let mut decoder = coding.map(ghgate_mask::encoding::Decoder::new);
        let mut p = ReceivePackRequest::new();
        for chunk in body.chunks(step.max(1)) {
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
        }
        if let Some(Err(e)) = decoder.as_mut().map(|d| d.finish(&mut Vec::new())) {
            p.fail(e.to_string());
        }
        p.finish()
    }

    /// `read` whole and a byte at a time, the same either way.
    fn read_both(body: &[u8], encoding: Option<&str>) -> ReceivePack {
        let whole = read(body, encoding, usize::MAX);
        assert_eq!(read(body, encoding, 1), whole, "a byte at a time");
        whole
    }

    fn push_body(pack: &[u8]) -> Vec<u8> {
        let mut body = pkt(format!("{Z} {A} refs/heads/new\0 report-status side-band-64k"));
        body.extend(pkt(format!("{A} {B} refs/heads/main")));
        body.extend_from_slice(b"0000");
        body.extend_from_slice(pack);
        body
    }

    #[test]
    fn push_commands_and_the_pack_by_length_and_hash() {
        let pack = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00 pretend objects and a checksum";
        let r = read_both(&push_body(pack), None);
        assert_eq!(r.error, None);
        let ops: Vec<(RefOp, &str)> = r.updates.iter().map(|u| (u.op(), u.name.as_str())).collect();
        assert_eq!(
            ops,
            [
                (RefOp::Create, "refs/heads/new"),
                (RefOp::Update, "refs/heads/main")
            ]
        );
        assert_eq!(r.pack_len, Some(pack.len() as u64));
        assert_eq!(r.pack_sha256, Some(sha256_hex(pack)));
    }

    #[test]
    fn a_delete_only_push_has_no_pack_and_an_empty_body_no_error() {
        let mut body = pkt(format!("{A} {Z} refs/heads/gone\0report-status"));
        body.extend_from_slice(b"0000");
        let r = read_both(&body, None);
        assert_eq!((r.error, r.updates[0].op()), (None, RefOp::Delete));
        assert_eq!((r.pack_len, r.pack_sha256), (None, None));
        assert_eq!(ReceivePackRequest::new().finish(), ReceivePack::default());
    }

    #[test]
    fn malformed_push_bodies_stop_with_an_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"00zz".to_vec(), "invalid pkt-line length"),
            (pkt(format!("{A} {B}")), "malformed ref update"),
            (
                pkt(format!("{A} {B} refs/heads/main\0report-status")),
                "before the flush-pkt",
            ),
            (
                push_body(b"PA"),
                "the pack ended inside its 12-byte header, after 2 bytes",
            ),
            // "PACK" and no more is no pack either (the header check was once the magic alone).
            (
                push_body(b"PACK"),
                "the pack ended inside its 12-byte header, after 4 bytes",
            ),
            (push_body(b"PUCK and more"), "expected a pack"),
            (push_body(b"PACK\0\0\0\x09\0\0\0\0"), "unsupported pack version 9"),
        ];
        for (body, want) in cases {
            let r = read_both(&body, None);
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
        p.feed(&push_body(b""));
        assert_eq!(p.updates(), &[]);
        assert_eq!(p.finish().error, first);
    }

    #[test]
    fn a_large_pack_is_hashed_not_held() {
        let mut p = ReceivePackRequest::new();
        p.feed(&push_body(b""));
        let mut hash = Sha256::new();
        let chunk: Vec<u8> = (0..=255u8).cycle().take(64 << 10).collect();
        let mut first = b"PACK\0\0\0\x02".to_vec();
        first.extend_from_slice(&chunk[8..]);
        p.feed(&first);
        hash.update(&first);
        for _ in 0..159 {
            p.feed(&chunk);
            hash.update(&chunk);
        }
        assert!(p.header.capacity() <= 64);
        let r = p.finish();
        assert_eq!(r.pack_len, Some(160 << 16));
        assert_eq!(r.pack_sha256, Some(hex::encode(hash.finalize())));
    }

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
    fn gzip_bodies_are_read_as_decoded() {
        let body = push_body(b"PACK\0\0\0\x02\0\0\0\0checksum");
        let plain = read_both(&body, None);
        assert_eq!((plain.updates.len(), &plain.error), (2, &None));
        let zipped = gzip(&body);
        assert_eq!(read_both(&zipped, Some("gzip")), plain);
        assert_eq!(read_both(&zipped, Some(" X-GZIP ")), plain);
        assert_eq!(read_both(&body, Some("identity")), plain);
        // A body that does not decode stops the reading with the decoder's error.
        let r = read_both(&zipped[..zipped.len() / 2], Some("gzip"));
        assert!(r.error.is_some() && r.pack_len.is_none(), "{r:?}");
    }

    #[test]
    fn secrets_in_pushed_objects_are_found() {
        use flate2::write::ZlibEncoder;
        let secret = b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n";
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(secret).unwrap();
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        // A blob of that size (type 3), its size over two header bytes.
        let size = secret.len();
        pack.push(0xb0 | (size & 0x0f) as u8);
        pack.push((size >> 4) as u8);
        pack.extend(z.finish().unwrap());
        pack.extend_from_slice(&<sha1::Sha1 as sha1::Digest>::digest(&pack));
        let masker = Masker::new(ghgate_mask::Rules::builtin(), [3; 32]);
        let mut p = ReceivePackRequest::new().scanning_secrets(masker);
        for chunk in push_body(&pack).chunks(7) {
            p.feed(chunk);
        }
        let r = p.finish();
        assert_eq!((r.error, r.scan_error), (None, None));
        assert!(
            !r.secrets.is_empty(),
            "the secret inside the compressed blob is found"
        );
    }

    #[test]
    fn wants_are_named_by_the_advertised_refs() {
        let (a, b, z): (Oid, Oid, Oid) = (A.parse().unwrap(), B.parse().unwrap(), Z.parse().unwrap());
        let advertised = vec![
            (a, "HEAD".to_owned()),
            (a, "refs/heads/main".to_owned()),
            (b, "refs/tags/v1".to_owned()),
            (a, "refs/heads/main".to_owned()),
        ];
        let wants = wants_with_refs(&[a, z, a, b], &advertised);
        assert_eq!(
            wants,
            vec![
                Want {
                    oid: a,
                    refs: vec!["HEAD".into(), "refs/heads/main".into()]
                },
                Want { oid: z, refs: vec![] },
                Want {
                    oid: b,
                    refs: vec!["refs/tags/v1".into()]
                },
            ]
        );
    }

    #[test]
    fn a_reading_stops_where_the_body_failed() {
        let mut r = Reading::new(UploadPackReader::new());
        r.feed(&pkt(format!("want {A}")));
        r.fail("the gzip stream is corrupt".into());
        r.feed(&pkt(format!("want {B}")));
        let (parser, stopped) = r.into_parts();
        let f = parser.finish();
        assert_eq!(f.wants, vec![A.parse::<Oid>().unwrap()]);
        assert_eq!(stopped.as_deref(), Some("the gzip stream is corrupt"));
    }
}
