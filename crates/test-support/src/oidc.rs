//! An OIDC issuer on loopback, as GitHub Actions' is seen by a relying party: discovery at
//! `/.well-known/openid-configuration`, its keys at `/jwks` (which a test may change, or make
//! fail), and signing keys whose tokens it vouches for.
//!
//! Plain HTTP on loopback, one thread per connection, `Connection: close`: no runtime of its
//! own, so a synchronous end-to-end test and an async unit test start it alike.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// A signing key of the issuer, and its public JWK (with its `kid`).
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn new(kid: &str, alg: Algorithm, enc: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&enc, alg).expect("a JWK for the key");
        jwk.common.key_id = Some(kid.into());
        Self {
            kid: kid.into(),
            alg,
            enc,
            jwk: serde_json::to_value(jwk).expect("a JWK as JSON"),
        }
    }

    /// An RS256 key: one RSA key per kid per test process (generating one is slow in a debug
    /// build), so two kids are two keys and a kid is always the same key.
    pub fn rs256(kid: &str) -> Self {
        static DER: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
        let mut ders = DER.get_or_init(Default::default).lock().expect("the RSA keys");
        let der = ders.entry(kid.to_owned()).or_insert_with(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            let key = rsa::PrivateKey::new(&mut OsRng, 2048).expect("an RSA key");
            key.to_pkcs1_der().expect("PKCS#1 DER").as_bytes().to_vec()
        });
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(der))
    }

    /// An ES256 key, new each time.
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(&pair.serialize_der()),
        )
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A token with these claims, signed with this key (its `kid` in the header).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token signed with this key whose header names another key's `kid` (a forgery, or a
    /// key the issuer never published).
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.enc).expect("a signed token")
    }
}

/// rsa's key generation wants a rand_core 0.10 RNG: the OS one, through the crate's own traits.
struct OsRng;

impl rsa::rand_core::TryRng for OsRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand_core::RngCore::next_u32(&mut rand_core::OsRng))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand_core::RngCore::next_u64(&mut rand_core::OsRng))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, dst);
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for OsRng {}

/// Seconds since 1970, as a token's `iat`/`exp` count them.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A loopback OIDC issuer, stopped on drop.
pub struct Issuer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    jwks_status: Arc<AtomicU16>,
    jwks_fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Issuer {
    /// Listens on `ip` (any free port) and publishes `keys`.
    pub fn start(ip: IpAddr, keys: &[&SigningKey]) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let issuer = Self {
            url: url.clone(),
            jwks: Arc::new(Mutex::new(Value::Null)),
            jwks_status: Arc::new(AtomicU16::new(200)),
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        issuer.publish(keys);
        let (jwks, status, fetches, stop) = (
            issuer.jwks.clone(),
            issuer.jwks_status.clone(),
            issuer.jwks_fetches.clone(),
            issuer.stop.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (url, jwks, status, fetches) =
                            (url.clone(), jwks.clone(), status.clone(), fetches.clone());
                        thread::spawn(move || {
                            let _ = answer(stream, &url, &jwks, &status, &fetches);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        issuer
    }

    /// The issuer's URL (its `iss`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Publishes exactly these keys from now on (a rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.jwks.lock().expect("the JWKS") = json!({ "keys": keys });
    }

    /// The JWKS endpoint answers with this status from now on (200 by default).
    pub fn set_jwks_status(&self, status: u16) {
        self.jwks_status.store(status, Ordering::SeqCst);
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a GitHub Actions-like token from this issuer for `aud`, valid from now for
    /// five minutes.
    pub fn actions_claims(&self, aud: &str) -> Value {
        let now = now_secs();
        json!({
            "iss": self.url,
            "aud": aud,
            "sub": "repo:octo-org/app:ref:refs/heads/main",
            "repository": "octo-org/app",
            "workflow": "ci",
            "groups": ["dev", "release"],
            "iat": now - 10,
            "nbf": now - 10,
            "exp": now + 300,
        })
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request, one answer, then the connection closes.
fn answer(
    stream: TcpStream,
    url: &str,
    jwks: &Mutex<Value>,
    status: &AtomicU16,
    fetches: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let (code, body) = match path.as_str() {
        "/.well-known/openid-configuration" => (
            200,
            json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") }).to_string(),
        ),
        "/jwks" => {
            fetches.fetch_add(1, Ordering::SeqCst);
            let code = status.load(Ordering::SeqCst);
            (code, jwks.lock().map(|j| j.to_string()).unwrap_or_default())
        }
        _ => (404, String::new()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
