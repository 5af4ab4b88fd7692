//! The store's Ed25519 key: loading it (refusing one others can read), creating it, and the exact
//! messages that seals, checkpoints and tombstones sign.
//!
//! The private key never leaves this process's memory except into its own 0600 file.
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::frame::Hash;
use super::{Error, Result};

/// Every signed message starts with this, so no signature of the store can be replayed as
/// anything else signed with the same key.
pub(super) const DOMAIN: &[u8; 17] = b"ghgate-record-v1\0";
/// The "kind" byte of a tombstone's signed message (frame kinds use 1..=4).
pub(super) const KIND_TOMBSTONE: u8 = 5;

/// `DOMAIN | kind | u64 segment | u64 seq | [u8; 32] head | u64 records`, integers little-endian.
/// `seq` is the signed frame's own; `head` is its prev hash: the hash of everything before it.
fn frame_message(
    kind: u8,
    segment: u64,
    seq: u64,
    head: &Hash,
    records: u64,
) -> [u8; 17 + 1 + 8 + 8 + 32 + 8] {
    let mut m = [0u8; 74];
    m[..17].copy_from_slice(DOMAIN);
    m[17] = kind;
    m[18..26].copy_from_slice(&segment.to_le_bytes());
    m[26..34].copy_from_slice(&seq.to_le_bytes());
    m[34..66].copy_from_slice(head);
    m[66..74].copy_from_slice(&records.to_le_bytes());
    m
}

pub(super) fn sign_frame(
    key: &SigningKey,
    kind: u8,
    segment: u64,
    seq: u64,
    head: &Hash,
    records: u64,
) -> [u8; 64] {
    key.sign(&frame_message(kind, segment, seq, head, records))
        .to_bytes()
}

pub(super) fn verify_frame(
    key: &VerifyingKey,
    kind: u8,
    segment: u64,
    seq: u64,
    head: &Hash,
    records: u64,
    sig: &[u8; 64],
) -> bool {
    let msg = frame_message(kind, segment, seq, head, records);
    key.verify_strict(&msg, &Signature::from_bytes(sig)).is_ok()
}

/// `DOMAIN | 5 | u64 first | u64 last | u64 last_seq | [u8; 32] last_hash | u64 at |
/// u32 reason_len | reason`.
pub(super) fn tombstone_message(
    first: u64,
    last: u64,
    last_seq: u64,
    last_hash: &Hash,
    at: u64,
    reason: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(17 + 1 + 8 * 4 + 32 + 4 + reason.len());
    m.extend_from_slice(DOMAIN);
    m.push(KIND_TOMBSTONE);
    m.extend_from_slice(&first.to_le_bytes());
    m.extend_from_slice(&last.to_le_bytes());
    m.extend_from_slice(&last_seq.to_le_bytes());
    m.extend_from_slice(last_hash);
    m.extend_from_slice(&at.to_le_bytes());
    m.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    m.extend_from_slice(reason.as_bytes());
    m
}

/// Where a store directory keeps its signing key.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("recorder.key")
}

/// Loads the store's signing key (PKCS#8 PEM), creating it with mode 0600 when it does not exist.
/// Refuses a key file that group or others may read or write.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    match fs::metadata(path) {
        Ok(_) => load_key(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_key(path),
        Err(e) => Err(Error::io("read record signing key", path, e)),
    }
}

fn load_key(path: &Path) -> Result<SigningKey> {
    let meta = fs::metadata(path).map_err(|e| Error::io("read record signing key", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Key {
            path: path.to_owned(),
            what: format!(
                "is accessible to group or others (mode {mode:04o}); restrict it with: chmod 600 {}",
                path.display()
            ),
        });
    }
    let pem = fs::read_to_string(path).map_err(|e| Error::io("read record signing key", path, e))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::Key {
        path: path.to_owned(),
        what: format!("is not an Ed25519 PKCS#8 PEM private key ({e})"),
    })
}

fn create_key(path: &Path) -> Result<SigningKey> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io("create the directory of", path, e))?;
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| Error::Key {
        path: path.to_owned(),
        what: format!("cannot be encoded ({e})"),
    })?;
    // Written whole under a temporary name, then linked into place: a crash never leaves a
    // half-written key, and of two processes racing to create it, both end up using the winner's.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write record signing key", &tmp, e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                super::sync_dir(parent)?;
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_key(path),
        Err(e) => Err(Error::io("create record signing key", path, e)),
    }
}

/// The public half as SPKI PEM, for `verify` on another machine.
pub fn public_key_pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key always encodes as SPKI")
}

/// Loads a public key written by `public_key_pem`.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey> {
    let pem = fs::read_to_string(path).map_err(|e| Error::io("read record public key", path, e))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| Error::Key {
        path: path.to_owned(),
        what: format!("is not an Ed25519 SPKI PEM public key ({e})"),
    })
}
