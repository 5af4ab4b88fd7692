//! Leaf certificates for terminated names: minted on first use with the interception CA,
//! short-lived, kept in a bounded LRU, and minted once per name however many handshakes ask at
//! the same moment.
//!
//! Used as rustls's certificate resolver, so it is synchronous; minting an ECDSA leaf takes
//! well under a millisecond. This module never mints for a name the caller did not decide to
//! terminate, and never exports a leaf's key.
use std::{
    num::NonZeroUsize,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use time::{Duration, OffsetDateTime};

use super::ca::Ca;

/// How long a minted leaf is valid, and how long before its end it is replaced.
const LIFETIME: Duration = Duration::hours(24);
const RENEW_BEFORE: Duration = Duration::hours(1);
/// Clients whose clocks run a little behind still accept a fresh leaf.
const BACKDATE: Duration = Duration::hours(1);

struct Minted {
    key: Arc<CertifiedKey>,
    renew_at: OffsetDateTime,
}

type Slot = Arc<OnceLock<Result<Minted, String>>>;

pub struct LeafCache {
    ca: Ca,
    slots: Mutex<LruCache<String, Slot>>,
    mints: AtomicU64,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("mints", &self.mints())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    pub fn new(ca: Ca, capacity: NonZeroUsize) -> Self {
        Self {
            ca,
            slots: Mutex::new(LruCache::new(capacity)),
            mints: AtomicU64::new(0),
        }
    }

    /// How many leaves have been minted (for tests and status).
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// The leaf for `name`, minted if missing or close to expiry.
    pub fn get(&self, name: &str) -> Result<Arc<CertifiedKey>, String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        loop {
            let slot = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots
                    .get_or_insert(name.clone(), || Arc::new(OnceLock::new()))
                    .clone()
            };
            // Whoever gets here first mints; concurrent callers for the same name wait for it.
            let minted = slot.get_or_init(|| self.mint(&name));
            match minted {
                Ok(m) if OffsetDateTime::now_utc() < m.renew_at => return Ok(m.key.clone()),
                Ok(_) => {
                    // Expiring: drop this slot (only if nobody replaced it yet) and mint anew.
                    let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                    if slots.peek(&name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                        slots.pop(&name);
                    }
                }
                Err(e) => {
                    let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                    slots.pop(&name);
                    return Err(e.clone());
                }
            }
        }
    }

    fn mint(&self, name: &str) -> Result<Minted, String> {
        self.mints.fetch_add(1, Ordering::Relaxed);
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a leaf key: {e}"))?;
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| format!("cannot mint for {name:?}: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LIFETIME;
        let cert = params
            .signed_by(&key, self.ca.issuer())
            .map_err(|e| format!("cannot sign a leaf for {name}: {e}"))?;
        let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = any_supported_type(&der_key).map_err(|e| format!("unusable leaf key: {e}"))?;
        let chain = vec![
            cert.der().clone(),
            CertificateDer::from_pem_slice_compat(self.ca.cert_pem())?,
        ];
        Ok(Minted {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            renew_at: now + LIFETIME - RENEW_BEFORE,
        })
    }
}

/// Parses the first certificate of a PEM text.
trait FromPemCompat: Sized {
    fn from_pem_slice_compat(pem: &str) -> Result<Self, String>;
}

impl FromPemCompat for CertificateDer<'static> {
    fn from_pem_slice_compat(pem: &str) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("bad CA certificate PEM: {e}"))
    }
}

/// rustls asks this for each terminated handshake; the SNI was already vetted by the caller.
#[derive(Debug)]
pub struct ForName {
    pub cache: Arc<LeafCache>,
    pub name: String,
}

impl ResolvesServerCert for ForName {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.cache.get(&self.name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(name = %self.name, error = %e, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(cap: usize) -> (tempfile::TempDir, LeafCache) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::init(&tmp.path().join("ca"), &["github.com".into()], false).unwrap();
        (tmp, LeafCache::new(ca, NonZeroUsize::new(cap).unwrap()))
    }

    #[test]
    fn one_mint_per_name_under_concurrency() {
        let (_tmp, cache) = cache(16);
        let cache = Arc::new(cache);
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let c = cache.clone();
                std::thread::spawn(move || {
                    c.get(if i % 2 == 0 {
                        "api.github.com"
                    } else {
                        "GitHub.com."
                    })
                    .unwrap()
                })
            })
            .collect();
        let keys: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(cache.mints(), 2, "one mint per distinct name");
        assert!(keys.iter().step_by(2).all(|k| Arc::ptr_eq(k, &keys[0])));
    }

    #[test]
    fn bounded_lru_evicts_the_least_recently_used() {
        let (_tmp, cache) = cache(2);
        cache.get("a.github.com").unwrap();
        cache.get("b.github.com").unwrap();
        cache.get("a.github.com").unwrap();
        cache.get("c.github.com").unwrap(); // evicts b
        assert_eq!(cache.mints(), 3);
        cache.get("a.github.com").unwrap();
        assert_eq!(cache.mints(), 3, "a stayed cached");
        cache.get("b.github.com").unwrap();
        assert_eq!(cache.mints(), 4, "b was evicted and minted again");
    }

    #[test]
    fn leaf_chains_to_the_ca_and_verifies_for_its_name() {
        use rustls::client::danger::ServerCertVerifier as _;
        let (_tmp, cache) = cache(4);
        let key = cache.get("api.github.com").unwrap();
        assert_eq!(key.cert.len(), 2, "leaf plus CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(key.cert[1].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.github.com").unwrap();
        verifier
            .verify_server_cert(&key.cert[0], &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("leaf verifies for its own name");
        let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&key.cert[0], &[], &other, &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
    }
}
