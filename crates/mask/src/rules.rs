//! The detection rules: ghgate's built-in ruleset and the custom rules a config adds.
//!
//! Every rule is a regex whose match *begins* with one of the rule's keywords (matched ASCII
//! case-insensitively). The engine relies on that: it runs the regex only where a keyword
//! starts, which is what keeps clean text at memory speed. Rules must never match the
//! replacement text `[MASKED:<rule>:<fingerprint>]`.
use std::fmt;

/// What confirms a regex match is a secret, beyond its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    /// The shape is enough.
    None,
    /// GitHub's classic token format: the last 6 characters are the base62 CRC32 of the 30
    /// before them.
    GithubChecksum,
    /// A JWT: three base64url parts, the first two decoding to JSON objects.
    Jwt,
    /// A SAS signature: URL-decodes to the base64 of 32 bytes (an HMAC-SHA256).
    SasSignature,
    /// A free-form value (a password, a generic token): high enough entropy and not a
    /// placeholder or a code identifier.
    Generic,
    /// The password of a URL: not a placeholder (`user:password@`, `user:pass@`).
    UrlPassword,
    /// An AWS access key id other than the examples AWS documents (`AKIAIOSFODNN7EXAMPLE`),
    /// which docs and SDK tests quote everywhere. A real id ends in `EXAMPLE` with odds of one
    /// in 32⁷.
    AwsKeyId,
}

/// How far a match may extend past what its regex matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    None,
    /// A PEM header: the secret runs to its `-----END … PRIVATE KEY-----` line, or, when none
    /// comes within [`PEM_MAX`] bytes, over the base64 body that follows the header.
    PemBody,
}

/// The longest PEM block masked as one secret (an RSA-8192 key in PKCS#1 is about 6.3 KB).
pub const PEM_MAX: usize = 8192;

/// One detection rule.
#[derive(Clone)]
pub struct Rule {
    /// Short, stable name: appears in replacements, records and metrics.
    pub id: String,
    /// Literal starts of a match (ASCII case-insensitive); at least one, each at least 2 bytes.
    pub keywords: Vec<String>,
    /// Byte-oriented regex (no Unicode classes). The capture group `secret`, if present, is what
    /// is masked; otherwise the whole match is.
    pub regex: String,
    pub validator: Validator,
    /// Minimum Shannon entropy (bits per byte) of the secret; 0 disables the check.
    pub min_entropy: f64,
    pub extend: Extend,
    /// One of ghgate's own rules (checked by its tests, not again at every start).
    pub builtin: bool,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An ordered set of rules: when two match at the same place, the earlier rule wins.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub(crate) rules: Vec<Rule>,
}

fn rule(id: &str, keywords: &[&str], regex: &str, validator: Validator) -> Rule {
    Rule {
        id: id.to_owned(),
        keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
        regex: regex.to_owned(),
        validator,
        min_entropy: 0.0,
        extend: Extend::None,
        builtin: true,
    }
}

/// The end of a token whose alphabet is base64url (`-` included, so `\b` would not do): the
/// next byte is outside it, or there is none.
macro_rules! end_urlsafe {
    () => {
        r"(?:[^A-Za-z0-9_-]|$)"
    };
}

/// A word boundary in ASCII terms, usable by the lazy DFA.
macro_rules! b {
    () => {
        r"(?-u:\b)"
    };
}

impl Rules {
    /// ghgate's own ruleset.
    pub fn builtin() -> Rules {
        use Validator::*;
        let mut rules = vec![
            // GitHub: classic formats carry a CRC32 checksum, which cuts false positives to ~0.
            rule(
                "github-pat",
                &["ghp_"],
                concat!(b!(), r"ghp_[A-Za-z0-9]{36}", b!()),
                GithubChecksum,
            ),
            rule(
                "github-oauth",
                &["gho_"],
                concat!(b!(), r"gho_[A-Za-z0-9]{36}", b!()),
                GithubChecksum,
            ),
            rule(
                "github-user-token",
                &["ghu_"],
                concat!(b!(), r"ghu_[A-Za-z0-9]{36}", b!()),
                GithubChecksum,
            ),
            rule(
                "github-app-token",
                &["ghs_"],
                concat!(b!(), r"ghs_[A-Za-z0-9]{36}", b!()),
                GithubChecksum,
            ),
            // Installation tokens in GitHub's stateless format (rolled out from April 2026):
            // `ghs_`, the app id, `_`, and a JWT signed by GitHub (about 520 characters, no
            // checksum; GitHub says not to read the JWT, so only its shape is asked for). The
            // whole token is masked: the app id alone is no secret, but without it the match
            // would not be this rule's.
            rule(
                "github-app-token",
                &["ghs_"],
                concat!(
                    b!(),
                    r"(?P<secret>ghs_[0-9]{1,20}_[A-Za-z0-9_-]{16,4000}\.[A-Za-z0-9_-]{16,8000}",
                    r"\.[A-Za-z0-9_-]{16,2000})",
                    end_urlsafe!()
                ),
                None,
            ),
            rule(
                "github-refresh-token",
                &["ghr_"],
                concat!(b!(), r"ghr_[A-Za-z0-9]{36}", b!()),
                GithubChecksum,
            ),
            rule(
                "github-fine-grained-pat",
                &["github_pat_"],
                // 22 and 59 today; GitHub tells integrators to expect longer tokens.
                concat!(b!(), r"github_pat_[A-Za-z0-9]{22,80}_[A-Za-z0-9]{59,160}", b!()),
                None,
            ),
            // PEM private keys of every kind (RSA, EC, DSA, OpenSSH, PKCS#8, encrypted PKCS#8,
            // PGP); GitHub App keys are RSA PEM. The body is found by `Extend::PemBody`.
            Rule {
                extend: Extend::PemBody,
                ..rule(
                    "private-key",
                    &["-----BEGIN"],
                    r"-----BEGIN[ A-Z0-9]{0,20}PRIVATE KEY(?: BLOCK)?-----",
                    None,
                )
            },
            // AWS: key ids by their fixed prefixes; secret keys only next to an AWS-ish name.
            rule(
                "aws-access-key-id",
                &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"],
                concat!(b!(), r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}", b!()),
                AwsKeyId,
            ),
            Rule {
                min_entropy: 3.5,
                ..rule(
                    "aws-secret-key",
                    &["aws"],
                    concat!(
                        r"(?i)aws[A-Za-z0-9_.-]{0,20}?(?:secret|sk)[A-Za-z0-9_.-]{0,20}",
                        r#"["']?\s{0,4}(?::|=|:=|=>|,)\s{0,4}["']?"#,
                        r"(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"
                    ),
                    None,
                )
            },
            // GCP service-account JSON: the key itself is a PEM (above); its id names it.
            rule(
                "gcp-service-account-key-id",
                &["\"private_key_id\""],
                r#""private_key_id"\s{0,4}:\s{0,4}"(?P<secret>[a-f0-9]{40})""#,
                None,
            ),
            rule(
                "gcp-api-key",
                &["AIza"],
                concat!(b!(), r"(?P<secret>AIza[0-9A-Za-z_-]{35})", end_urlsafe!()),
                None,
            ),
            // Azure: storage account keys in connection strings, SAS signatures.
            rule(
                "azure-storage-key",
                &["AccountKey="],
                r"AccountKey=(?P<secret>[A-Za-z0-9+/]{86}==)",
                None,
            ),
            rule(
                "azure-sas-signature",
                &["sig="],
                r"sig=(?P<secret>[A-Za-z0-9%+/]{43,132})(?:[^A-Za-z0-9%+/]|$)",
                SasSignature,
            ),
            // Slack.
            rule(
                "slack-token",
                &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe"],
                concat!(
                    b!(),
                    r"(?P<secret>xox(?:[bpars]|e(?:\.xox[bp])?-\d)-[0-9A-Za-z-]{10,250})",
                    end_urlsafe!()
                ),
                None,
            ),
            rule(
                "slack-webhook",
                &["hooks.slack.com/"],
                r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9+/_-]{20,120})",
                None,
            ),
            // Stripe secret and restricted keys (live and test).
            rule(
                "stripe-key",
                &["sk_live_", "rk_live_", "sk_test_", "rk_test_"],
                concat!(b!(), r"[sr]k_(?:live|test)_[0-9A-Za-z]{24,247}", b!()),
                None,
            ),
            // Anthropic before OpenAI: both begin with `sk-`.
            rule(
                "anthropic-key",
                &["sk-ant-"],
                concat!(
                    b!(),
                    r"(?P<secret>sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,100})",
                    end_urlsafe!()
                ),
                None,
            ),
            rule(
                "openai-key",
                &["sk-"],
                concat!(
                    b!(),
                    r"(?P<secret>sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200}",
                    r"|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}))",
                    end_urlsafe!()
                ),
                None,
            ),
            // Package registries.
            rule(
                "npm-token",
                &["npm_"],
                concat!(b!(), r"npm_[A-Za-z0-9]{36}", b!()),
                None,
            ),
            rule(
                "pypi-token",
                &["pypi-AgE"],
                concat!(b!(), r"pypi-AgE[A-Za-z0-9_-]{50,300}"),
                None,
            ),
            rule(
                "crates-io-token",
                &["cio"],
                concat!(b!(), r"cio[A-Za-z0-9]{32}", b!()),
                None,
            ),
            // JWTs: header and payload are base64url JSON objects (`eyJ` is `{"`).
            rule(
                "jwt",
                &["eyJ"],
                concat!(
                    b!(),
                    r"(?P<secret>eyJ[A-Za-z0-9_-]{8,4000}\.eyJ[A-Za-z0-9_-]{8,8000}\.[A-Za-z0-9_-]{16,1000})",
                    end_urlsafe!()
                ),
                Jwt,
            ),
            // Credentials in URLs and connection strings: `scheme://user:password@host`.
            rule(
                "url-credentials",
                &["://"],
                r#"://[A-Za-z0-9._~%!$&'()*+,;=-]{1,64}:(?P<secret>[^\s:/?#@\[\]"'\\<>]{1,128})@[A-Za-z0-9.\[-]"#,
                UrlPassword,
            ),
            // key/secret/token/password = "…": only with high entropy and no placeholder.
            Rule {
                min_entropy: 3.0,
                ..rule(
                    "generic-secret",
                    &[
                        "secret",
                        "token",
                        "passwd",
                        "password",
                        "pwd",
                        "api_key",
                        "apikey",
                        "api-key",
                        "access_key",
                        "access-key",
                        "auth_key",
                        "private_key",
                        "credential",
                    ],
                    concat!(
                        r"(?i)(?:secret|token|passwd|password|pwd|api[_-]?key|access[_-]key|auth_key",
                        r"|private_key|credential)[A-Za-z0-9_.-]{0,30}",
                        r#"["']?\]?\s{0,4}(?::|=|:=|=>|\|\|=)\s{0,4}"#,
                        r#"(?:"(?P<secret>[^"\s\\]{8,200})"|'(?P<secret2>[^'\s\\]{8,200})'"#,
                        r"|(?P<secret3>[A-Za-z0-9/+_.~-]{16,200})(?:[\s,;]|$))"
                    ),
                    Generic,
                )
            },
        ];
        for r in &mut rules {
            debug_assert!(!r.keywords.is_empty(), "{}", r.id);
            r.keywords.sort();
        }
        Rules { rules }
    }

    /// No rules at all (exact values only).
    pub fn empty() -> Rules {
        Rules::default()
    }

    /// Appends a rule (custom rules come after the built-in ones).
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// Keeps only the rules `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&Rule) -> bool) {
        self.rules.retain(keep);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Validators

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether a classic GitHub token (`xxx_` + 30 random + 6 checksum) carries a valid checksum.
pub fn github_checksum_ok(token: &[u8]) -> bool {
    let Some(body) = token.get(4..) else { return false };
    if body.len() != 36 {
        return false;
    }
    let (random, check) = body.split_at(30);
    github_checksum(random) == check
}

/// The checksum of a classic GitHub token: the CRC32 of its random part as 6 base62 digits,
/// most significant first.
pub fn github_checksum(random: &[u8]) -> [u8; 6] {
    let mut crc = crc32fast::hash(random);
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    digits
}

/// A classic-format GitHub token, `<prefix>_<random>` and the checksum of `random` (valid when
/// `random` is 30 base62 characters). For tests and fuzzing, which assemble tokens at run time
/// so that no source file holds one.
pub fn github_classic_token(prefix: &str, random: &str) -> String {
    let check = github_checksum(random.as_bytes());
    format!("{prefix}_{random}{}", String::from_utf8_lossy(&check))
}

/// Shannon entropy of `bytes`, in bits per byte.
pub fn entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn b64url_json_object(part: &[u8]) -> bool {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let trimmed: Vec<u8> = part.iter().copied().filter(|&b| b != b'=').collect();
    engine
        .decode(&trimmed)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|v| v.is_object())
}

fn jwt_ok(token: &[u8]) -> bool {
    let mut parts = token.split(|&b| b == b'.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(_sig), None) => b64url_json_object(h) && b64url_json_object(p),
        _ => false,
    }
}

fn sas_signature_ok(sig: &[u8]) -> bool {
    use base64::Engine as _;
    let mut decoded = Vec::with_capacity(sig.len());
    let mut i = 0;
    while i < sig.len() {
        if sig[i] == b'%' && i + 2 < sig.len() {
            let hex = std::str::from_utf8(&sig[i + 1..i + 3]).ok();
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => decoded.push(b),
                None => return false,
            }
            i += 3;
        } else {
            decoded.push(sig[i]);
            i += 1;
        }
    }
    base64::engine::general_purpose::STANDARD
        .decode(&decoded)
        .is_ok_and(|raw| raw.len() == 32)
}

/// Values that look like assignments but are not secrets: placeholders, templating, code.
fn generic_ok(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return true;
    };
    let lower = text.to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "xxxx",
        "****",
        "....",
        "example",
        "changeme",
        "change_me",
        "password",
        "passwd",
        "secret",
        "token",
        "dummy",
        "placeholder",
        "redacted",
        "your_",
        "your-",
        "yourtoken",
        "masked",
        "sample",
        "test1234",
        "abcdef",
        "123456",
        "qwerty",
        "${",
        "{{",
        "<",
        ">",
        "%s",
        "env.",
        "process.",
        "os.environ",
        "getenv",
        "config.",
        "settings.",
        "self.",
        "this.",
        "none",
        "null",
        "undefined",
    ];
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return false;
    }
    let distinct = {
        let mut seen = [false; 256];
        value
            .iter()
            .filter(|&&b| !std::mem::replace(&mut seen[b as usize], true))
            .count()
    };
    if distinct < 6 {
        return false;
    }
    // A dotted/underscored identifier or path (`foo.bar_baz`, `a/b/c`) rather than a secret:
    // secrets mix digits with letters or carry symbols.
    let has_digit = value.iter().any(u8::is_ascii_digit);
    let has_alpha = value.iter().any(u8::is_ascii_alphabetic);
    let has_upper = value.iter().any(u8::is_ascii_uppercase);
    let has_lower = value.iter().any(u8::is_ascii_lowercase);
    let has_symbol = value
        .iter()
        .any(|b| !b.is_ascii_alphanumeric() && !matches!(b, b'_' | b'.' | b'-' | b'/'));
    if !has_digit && !has_symbol {
        return false;
    }
    if !has_alpha && !has_symbol {
        // All digits (and separators): numbers, dates, versions.
        return false;
    }
    // Lowercase words glued with separators and a number (`max_retries_3`, `v1.2.3-beta`).
    if !has_upper && !has_symbol && value.len() < 24 {
        return false;
    }
    // A code identifier: snake_case or CONSTANT_CASE words (`x25519_generate_private_key`,
    // `TLS13_CHACHA20_POLY1305_SHA256`), dotted paths (`crate.module.NAME`).
    let separated = value.iter().any(|&b| b == b'_' || b == b'.');
    let word_like = |part: &[u8]| {
        !part.is_empty()
            && (part.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                || part.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                || camel_words(part))
    };
    if separated
        && value
            .split(|&b| b == b'_' || b == b'.')
            .filter(|p| !p.is_empty())
            .all(word_like)
    {
        return false;
    }
    let _ = has_lower;
    true
}

/// `UserCredentials`, `Http2Client`: capitalised words of at least three letters (digits may
/// follow a word). Random tokens rarely have a lowercase run that long after each capital.
fn camel_words(part: &[u8]) -> bool {
    let mut i = 0;
    let mut words = 0;
    while i < part.len() {
        if !part[i].is_ascii_uppercase() {
            return false;
        }
        let start = i + 1;
        let mut j = start;
        while j < part.len() && part[j].is_ascii_lowercase() {
            j += 1;
        }
        if j - start < 2 {
            return false;
        }
        while j < part.len() && part[j].is_ascii_digit() {
            j += 1;
        }
        words += 1;
        i = j;
    }
    words > 0
}

/// A URL password that is a real one, not the stock example.
fn url_password_ok(value: &[u8]) -> bool {
    let lower = value.to_ascii_lowercase();
    const PLACEHOLDERS: &[&[u8]] = &[
        b"password",
        b"pass",
        b"passwd",
        b"pwd",
        b"secret",
        b"pw",
        b"xxx",
        b"xxxx",
        b"***",
        b"****",
        b"changeme",
        b"token",
        b"example",
        b"foo",
        b"bar",
        b"baz",
        b"test",
    ];
    value.len() >= 3
        && !PLACEHOLDERS.contains(&lower.as_slice())
        && !value.starts_with(b"${")
        && !value.starts_with(b"{{")
        && !value.starts_with(b"%s")
        && !value.starts_with(b"$")
        && !value.iter().all(|&b| b == value[0])
}

impl Validator {
    /// Whether `secret` passes this validator.
    pub fn check(self, secret: &[u8]) -> bool {
        match self {
            Validator::None => true,
            Validator::GithubChecksum => github_checksum_ok(secret),
            Validator::Jwt => jwt_ok(secret),
            Validator::SasSignature => sas_signature_ok(secret),
            Validator::Generic => generic_ok(secret),
            Validator::UrlPassword => url_password_ok(secret),
            Validator::AwsKeyId => !secret.ends_with(b"EXAMPLE"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_constant() {
        assert_eq!(entropy(b"aaaa"), 0.0);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn generic_values() {
        assert!(generic_ok(b"q8Zr2LmX9vTk4PwN"));
        assert!(!generic_ok(b"changeme123"));
        assert!(!generic_ok(b"${SECRET_VALUE}"));
        assert!(!generic_ok(b"self.token_value"));
        assert!(!generic_ok(b"20240101"));
        assert!(!generic_ok(b"max_retries_3"));
        assert!(!generic_ok(b"x25519_generate_private_key"));
        assert!(!generic_ok(b"TLS13_CHACHA20_POLY1305_SHA256_INTERNAL"));
        assert!(generic_ok(b"k9_Xq2Lp8vZr4TnW"));
        assert!(!generic_ok(b"MI_UserCredentials_0"));
        assert!(generic_ok(b"Zq8mKx4_TnR7vB1cW9pL3s"));
        assert!(!url_password_ok(b"password"));
        assert!(url_password_ok(b"hunter2x"));
    }
}
