//! The interception CA: created once by `ghgate ca init`, trusted by the host, used to mint leaf
//! certificates for the names the gateway terminates.
//!
//! The private key lives in one file, mode 0600, in the state directory; the gateway refuses to
//! start if anyone but its owner can read it. This module never writes the key anywhere else and
//! never prints it.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
use time::{Duration, OffsetDateTime};

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca-key.pem";

/// Where the CA's files live inside the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ca")
}

/// A loaded CA, able to sign leaves.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca { key: *** }")
    }
}

/// DNS subtrees the CA may sign for: `*.github.com` and `github.com` both become `github.com`,
/// which RFC 5280 matches for the name and all its subdomains.
pub fn permitted_subtrees(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .map(|n| {
            n.trim_start_matches("*.")
                .trim_end_matches('.')
                .to_ascii_lowercase()
        })
        .collect();
    out.sort();
    out.dedup();
    // Drop names already covered by a shorter suffix (api.github.com under github.com).
    let all = out.clone();
    out.retain(|n| !all.iter().any(|p| p != n && n.ends_with(&format!(".{p}"))));
    out
}

impl Ca {
    /// Creates a new CA in `dir`; refuses to overwrite one unless `force`.
    pub fn init(dir: &Path, constrain_to: &[String], force: bool) -> anyhow::Result<Ca> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if !force && (cert_path.exists() || key_path.exists()) {
            bail!(
                "a CA already exists in {} (clients trust it); pass --force to replace it",
                dir.display()
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ghgate interception CA");
        dn.push(DnType::OrganizationName, "ghgate");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        // The self-test name is signed for by every constrained CA: `ghgate doctor` checks trust
        // with it (and an unconstrained CA signs for it anyway).
        let mut names = constrain_to.to_vec();
        if !names.is_empty() {
            names.push(crate::selftest::NAME.to_owned());
        }
        let subtrees = permitted_subtrees(&names);
        if !subtrees.is_empty() {
            params.name_constraints = Some(NameConstraints {
                permitted_subtrees: subtrees.into_iter().map(GeneralSubtree::DnsName).collect(),
                excluded_subtrees: Vec::new(),
            });
        }
        let cert = params
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        let cert_pem = cert.pem();
        // The key is written through a 0600 file created fresh: never world-readable, not even
        // for an instant.
        let _ = fs::remove_file(&key_path);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("cannot create {}", key_path.display()))?;
        f.write_all(key.serialize_pem().as_bytes())?;
        f.sync_all()?;
        fs::write(&cert_path, &cert_pem).with_context(|| format!("cannot write {}", cert_path.display()))?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// Loads the CA from `dir`, refusing a key file that others can read.
    pub fn load(dir: &Path) -> anyhow::Result<Ca> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let meta = fs::metadata(&key_path).with_context(|| {
            format!(
                "no CA key at {} (create one with `ghgate ca init`)",
                key_path.display()
            )
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the CA key {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                key_path.display(),
                key_path.display()
            );
        }
        let key_pem =
            fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        let cert_pem =
            fs::read_to_string(&cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
        Ok(Ca { issuer, cert_pem })
    }

    /// The CA certificate, PEM, for trust stores.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtrees_collapse_wildcards_and_covered_names() {
        let names = [
            "*.github.com",
            "api.github.com",
            "github.com",
            "*.githubusercontent.com",
            "API.GitHubCopilot.com",
        ];
        let got = permitted_subtrees(&names.map(String::from));
        assert_eq!(
            got,
            ["api.githubcopilot.com", "github.com", "githubusercontent.com"]
        );
    }

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = Ca::init(&dir, &["github.com".into()], false).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = Ca::init(&dir, &[], false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        let again = Ca::load(&dir).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }

    #[test]
    fn load_refuses_a_key_readable_by_others() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        Ca::init(&dir, &[], false).unwrap();
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ca::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("readable by others") && err.contains("chmod 600"),
            "{err}"
        );
    }
}
