//! What the fuzz targets share: the secrets they plant, how a fuzz input becomes a body with
//! planted secrets and a chunking, and the checks on what a masker returned.
//!
//! The planted secrets are assembled at run time, so no file of the repository holds one literally
//! (secret scanners, ghgate's own included, would flag it). Nothing here may rely on the masker's
//! internals: only on the public API of `ghgate-mask` and the documented replacement format.
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use ghgate_mask::{Finding, Masker};
use libfuzzer_sys::arbitrary::Unstructured;

/// The fingerprint key of every masker built here: fixed, so a crash reproduces.
pub const KEY: [u8; 32] = [7; 32];

/// Most secrets planted into one input.
const MAX_PLANTS: usize = 6;

/// Base62 digits in the order GitHub's token checksums use them.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// One secret a fuzz input may plant: what it is (for messages) and its exact bytes.
pub struct Secret {
    pub what: &'static str,
    pub text: String,
}

/// A classic-format GitHub token: `<prefix>_`, 30 base62 characters, then the CRC32 of those 30
/// as 6 base62 digits (most significant first, zero-padded).
pub fn github_classic(prefix: &str, random: &str) -> String {
    assert_eq!(
        random.len(),
        30,
        "a classic GitHub token has 30 random characters"
    );
    let mut crc = crc32fast::hash(random.as_bytes());
    let mut check = [b'0'; 6];
    for digit in check.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    format!("{prefix}_{random}{}", String::from_utf8_lossy(&check))
}

/// A PEM block shaped like an EC (P-256, SEC1) private key: the DER framing is real, the key
/// bytes are a fixed pseudo-random sequence.
fn pem_ec_key() -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let mut der = vec![0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
    der.extend(random(32));
    der.extend([
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]);
    der.extend([0xa1, 0x44, 0x03, 0x42, 0x00, 0x04]);
    der.extend(random(64));
    let body = base64(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
        .collect();
    let label = ["EC", "PRIVATE", "KEY"].join(" ");
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----",
        lines.join("\n")
    )
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | ((*b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The secrets a fuzz input can plant, one per rule family.
pub static SECRETS: LazyLock<Vec<Secret>> = LazyLock::new(|| {
    vec![
        Secret {
            what: "GitHub classic token",
            text: github_classic("ghp", "Zq8m2Kx4TnR7vB1cW9pL3sJ6hD0fGy"),
        },
        Secret {
            what: "AWS access key id",
            text: ["AK", "IA", "Q3EGRVXPL5ZJ7KTU"].concat(),
        },
        Secret {
            what: "PEM private key",
            text: pem_ec_key(),
        },
        Secret {
            what: "Slack bot token",
            text: ["xo", "xb-2154873690-4819236475120-Qm7vT3kZp9XrL2wN8cYh5dFs"].concat(),
        },
    ]
});

/// Checks, once per process, that the rules detect each planted secret on its own line: without
/// this a harness that plants something the rules rightly ignore would report every input.
pub fn self_check(masker: &Masker) {
    for secret in SECRETS.iter() {
        let line = format!("value:\n{}\n", secret.text);
        let (out, findings) = masker.mask_all(line.as_bytes());
        assert!(
            !findings.is_empty() && count(&out, secret.text.as_bytes()) == 0,
            "harness: the builtin rules do not mask the planted {} on a line of its own; \
             the harness's secret or the rule is wrong",
            secret.what
        );
    }
}

/// Where each planted secret goes: (index into [`SECRETS`], byte offset into the filler).
pub struct Plants(Vec<(usize, usize)>);

impl Plants {
    /// Up to [`MAX_PLANTS`] secrets; offsets are reduced modulo the filler length later.
    pub fn arbitrary(u: &mut Unstructured) -> Self {
        let n = u.int_in_range(0..=MAX_PLANTS).unwrap_or(0);
        let plants = (0..n)
            .map(|_| {
                let secret = u.choose_index(SECRETS.len()).unwrap_or(0);
                let at = u.arbitrary::<u16>().unwrap_or(0) as usize;
                (secret, at)
            })
            .collect();
        Self(plants)
    }

    /// `filler` with each secret inserted on a line of its own, so that no rule's word boundary
    /// depends on what the fuzzer put around it. Offsets are moved to the next char boundary when
    /// the filler is text (`char_boundaries`).
    pub fn plant(&self, filler: &[u8], char_boundaries: Option<&str>) -> Vec<u8> {
        let mut at: Vec<(usize, usize)> = self
            .0
            .iter()
            .map(|&(secret, at)| {
                let mut at = at % (filler.len() + 1);
                if let Some(text) = char_boundaries {
                    while !text.is_char_boundary(at) {
                        at += 1;
                    }
                }
                (at, secret)
            })
            .collect();
        at.sort_unstable();
        let mut body = Vec::with_capacity(filler.len() + at.len() * 300);
        let mut from = 0;
        for (at, secret) in at {
            body.extend_from_slice(&filler[from..at]);
            body.push(b'\n');
            body.extend_from_slice(SECRETS[secret].text.as_bytes());
            body.push(b'\n');
            from = at;
        }
        body.extend_from_slice(&filler[from..]);
        body
    }

    /// Panics when `out` holds a planted secret more often than the filler did on its own: the
    /// fuzzer learns the secrets from the comparisons here and may write them into the filler
    /// glued to other characters, where no rule should match them.
    pub fn assert_masked(&self, out: &[u8], filler: &[u8], place: &str) {
        for &(secret, _) in &self.0 {
            let secret = &SECRETS[secret];
            let (left, allowed) = (
                count(out, secret.text.as_bytes()),
                count(filler, secret.text.as_bytes()),
            );
            assert!(
                left <= allowed,
                "a planted {} passed unmasked in {place} ({left} copies out, {allowed} in the filler)",
                secret.what
            );
        }
    }
}

/// Chunk sizes to cycle through: mostly small (around secret lengths, where boundaries bite),
/// sometimes up to 32 KiB, zero allowed (an empty push), never all zero.
pub fn chunk_sizes(u: &mut Unstructured) -> Vec<usize> {
    let n = u.int_in_range(1..=8).unwrap_or(1);
    let mut sizes: Vec<usize> = (0..n)
        .map(|_| {
            let v = u.arbitrary::<u16>().unwrap_or(1);
            if v & 0x8000 == 0 {
                (v % 300) as usize
            } else {
                (v & 0x7fff) as usize
            }
        })
        .collect();
    if sizes.iter().all(|&s| s == 0) {
        sizes.push(1);
    }
    sizes
}

/// `body` cut into consecutive pieces of the given sizes, cycled.
pub fn chunks<'a>(body: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = body;
    let mut sizes = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (*sizes.next()?).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Non-overlapping occurrences of `needle` in `hay`.
pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// Panics, naming the first differing byte, when two outputs differ.
pub fn assert_same_output(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    let around =
        |s: &[u8]| String::from_utf8_lossy(&s[at.saturating_sub(40)..(at + 40).min(s.len())]).into_owned();
    panic!(
        "{what}: outputs differ at byte {at} (lengths {} and {}):\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

/// The comparable part of a finding.
pub fn key(f: &Finding) -> (String, String, u64, usize) {
    (f.rule.clone(), f.fingerprint.clone(), f.offset, f.len)
}
