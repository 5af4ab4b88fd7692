//! Fingerprints: stable for one secret under one key (across maskers, rules and contexts),
//! different under another key, and never revealing the secret.
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

fn findings_of(m: &Masker, text: &str) -> Vec<Finding> {
    m.mask_all(text.as_bytes()).1
}

#[test]
fn one_secret_has_one_fingerprint_across_maskers_rules_and_contexts() {
    let mut rng = Rng::new(40);
    let tok = classic(&mut rng, "ghp");
    let a = masker();
    let b = Masker::new(Rules::builtin(), [7; 32]);
    let contexts = [
        (format!("plain {tok} text"), "github-pat"),
        (format!("GITHUB_TOKEN={tok}\n"), "github-pat"),
        (format!("{{\"token\": \"{tok}\"}}"), "github-pat"),
        (
            ["git clone https://x-access-token:", &tok, "@github.com/o/r"].concat(),
            "url-credentials",
        ),
    ];
    let mut prints = Vec::new();
    for (text, rule) in &contexts {
        for m in [&a, &b] {
            let f = findings_of(m, text);
            assert_eq!(f.len(), 1, "{text}");
            assert_eq!(f[0].rule, *rule, "{text}");
            assert_eq!(f[0].len, tok.len(), "{text}");
            prints.push(f[0].fingerprint.clone());
        }
    }
    assert!(prints.iter().all(|p| *p == prints[0]), "{prints:?}");
    assert_eq!(prints[0], a.fingerprint(tok.as_bytes()));
    // Streaming gives the same fingerprint as masking whole.
    let (_, f) = stream_sized(&a, contexts[0].0.as_bytes(), 1);
    assert_eq!(f[0].fingerprint, prints[0]);
    // And an exact value equal to the token: same bytes, same fingerprint, its own label.
    let e = a.with_exact(&[("broker".to_owned(), tok.clone().into_bytes())]);
    let f = findings_of(&e, &contexts[0].0);
    assert_eq!(f[0].rule, "broker");
    assert_eq!(f[0].fingerprint, prints[0]);
}

#[test]
fn different_secrets_and_different_keys_give_different_fingerprints() {
    let mut rng = Rng::new(41);
    let tok = classic(&mut rng, "ghp");
    let other = classic(&mut rng, "ghp");
    let a = masker();
    let b = Masker::new(Rules::builtin(), [8; 32]);
    let text = format!("a {tok} b");
    let fa = findings_of(&a, &text);
    let fb = findings_of(&b, &text);
    assert_eq!((fa.len(), fb.len()), (1, 1));
    assert_eq!(fa[0].rule, fb[0].rule);
    assert_ne!(fa[0].fingerprint, fb[0].fingerprint);
    assert_ne!(a.fingerprint(tok.as_bytes()), a.fingerprint(other.as_bytes()));
    // Replacements differ only in the fingerprint.
    let (oa, _) = a.mask_str(&text);
    let (ob, _) = b.mask_str(&text);
    assert_ne!(oa, ob);
    assert_eq!(oa.len(), ob.len());
}

#[test]
fn the_fingerprint_is_a_truncated_hmac_and_reveals_nothing_of_the_secret() {
    let m = masker();
    let mut rng = Rng::new(42);
    for sample in samples(&mut rng) {
        let input = input_of(&sample);
        let (out, findings) = m.mask_str(&input);
        for (p, f) in sample
            .iter()
            .filter_map(|p| match p {
                Part::Secret { value, .. } => Some(value),
                Part::Plain(_) => None,
            })
            .zip(&findings)
        {
            let mut mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
            mac.update(p.as_bytes());
            let want = hex::encode(&mac.finalize().into_bytes()[..6]);
            assert_eq!(f.fingerprint, want);
            assert_eq!(f.fingerprint.len(), 12);
            assert!(
                f.fingerprint
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            // No 8-byte run of the secret is in the fingerprint, nor the secret in the output.
            for w in p.as_bytes().windows(8) {
                let w = std::str::from_utf8(w).unwrap();
                assert!(
                    !f.fingerprint.contains(w),
                    "{} contains {w:?} of {p:?}",
                    f.fingerprint
                );
            }
            assert!(!out.contains(p.as_str()));
        }
    }
}

#[test]
fn the_key_is_never_printed() {
    let key = FingerprintKey::new([0x5a; 32]);
    assert_eq!(format!("{key:?}"), "FingerprintKey(***)");
    let m = Masker::try_new(Rules::builtin(), key).unwrap();
    let shown = format!("{m:?}");
    assert!(
        !shown.contains("90") && !shown.contains("5a") && !shown.contains("5A"),
        "{shown}"
    );
}
