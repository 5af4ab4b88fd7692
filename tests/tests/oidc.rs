//! OIDC end to end: a test issuer on loopback (discovery and JWKS over HTTP); curl under
//! `ghgate exec` presents an ID token instead of a GitHub credential, as a bearer token or as
//! the password of basic auth. A valid token gets the profile its claims match and its claims are
//! recorded; expired, wrong audience, wrong issuer, bad signature, unknown kid and `alg: none`
//! tokens are each refused with their reason; a key rotation is picked up.
use std::{os::unix::fs::PermissionsExt, time::Duration};

use base64::Engine as _;
use ghgate_e2e::{
    https::{Auth, TlsGateway},
    privileged,
};
use ghgate_test_support::oidc::{Issuer, SigningKey, now_secs as now};
use serde_json::{Value, json};

#[test]
fn oidc_tokens_are_validated_mapped_to_profiles_and_refused_with_their_reason() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (k1, k2) = (SigningKey::rs256("k1"), SigningKey::rs256("k2"));
    let issuer = Issuer::start(ghgate_e2e::loopback_v4().into(), &[&k1]);
    let static_token = format!("ghs_static{}x{}", std::process::id(), now());
    let token_file = tmp.path().join("ci.token");
    std::fs::write(&token_file, &static_token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let auth = Auth::new(1, 1, String::new(), vec![static_token.clone()]);
    let iss = issuer.url().to_owned();
    let file = token_file.display().to_string();
    let s = TlsGateway::start_with(&["api.github.com"], true, None, Some(auth.clone()), &|_| {
        format!(
            "[[oidc.issuer]]\nissuer = \"{iss}\"\naudiences = [\"ghgate\"]\nmin_refetch_secs = 1\n\
             [credentials]\n[credentials.profile.octo]\ntoken_file = \"{file}\"\n\
             [[credentials.rule]]\nprofile = \"octo\"\noidc = {{ repository = \"octo/*\" }}\n"
        )
    });
    let claims = |over: Value| {
        let mut c = json!({"iss": iss, "aud": "ghgate", "sub": "repo:octo/app:ref:refs/heads/main",
            "repository": "octo/app", "workflow": "release", "iat": now(), "exp": now() + 300});
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let call = |auth_args: &[&str]| {
        let out = s.curl(
            "api.github.com",
            "/repos/octo/app",
            &[auth_args, &["-w", "\n%{http_code}"]].concat(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bearer = |t: &str| call(&["-H", &format!("Authorization: Bearer {t}")]);

    // A valid token: the upstream sees the profile's token, the record the claims.
    let good = k1.sign(&claims(json!({})));
    let answer = bearer(&good);
    assert!(
        answer.ends_with("200") && answer.contains("path=/repos/octo/app"),
        "{answer}"
    );
    // As git sends it: the password of basic auth.
    let answer = call(&["-u", &format!("x-oidc:{good}")]);
    assert!(answer.ends_with("200"), "{answer}");

    // Each bad token refused with its reason, and nothing forwarded.
    let served = s.upstream.served();
    let refused = [
        (
            k1.sign(&claims(json!({"exp": now() - 3600, "iat": now() - 7200}))),
            "expired",
        ),
        (k1.sign(&claims(json!({"aud": "someone-else"}))), "audience"),
        (k2.sign_as("k1", &claims(json!({}))), "signature does not verify"),
        (k2.sign_as("k9", &claims(json!({}))), "no key with kid \"k9\""),
        (
            {
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                format!(
                    "{}.{}.",
                    b64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
                    b64.encode(claims(json!({})).to_string())
                )
            },
            "`alg: none` tokens are refused",
        ),
    ];
    for (t, reason) in &refused {
        let answer = bearer(t);
        assert!(
            answer.ends_with("401") && answer.contains(reason),
            "{reason}: {answer}"
        );
    }
    // A token of an issuer ghgate does not know is not an OIDC token to it: it passes as the
    // caller's own credential, which the upstream refuses.
    let other = k1.sign(&claims(json!({"iss": "https://elsewhere.example"})));
    assert!(bearer(&other).ends_with("401"));
    assert_eq!(
        s.upstream.served(),
        served + 1,
        "refused OIDC tokens are not forwarded"
    );

    // Valid, but the claims match no rule.
    let answer = bearer(&k1.sign(&claims(json!({"repository": "other/x", "sub": "repo:other/x"}))));
    assert!(
        answer.ends_with("403") && answer.contains("no credential profile matches this OIDC identity"),
        "{answer}"
    );

    // Key rotation: the issuer now signs with k2 only; after the refetch interval it validates.
    issuer.publish(&[&k2]);
    std::thread::sleep(Duration::from_millis(1100));
    let rotated = k2.sign(&claims(json!({})));
    assert!(
        bearer(&rotated).ends_with("200"),
        "a token signed with the rotated key is accepted"
    );

    // The record: the OIDC identity and its claims, the profile; the reasons of the refusals.
    let shown = s.gw.shown_when("the record", |text| text.contains("alg: none"));
    assert!(
        shown.contains(&format!(
            "identity oidc repo:octo/app:ref:refs/heads/main ({iss})"
        )) && shown.contains("\"workflow\":\"release\"")
            && shown.contains("credential brokered from profile octo"),
        "{shown}"
    );
    assert!(
        shown.contains("refused: the OIDC token was refused: the OIDC token expired"),
        "{shown}"
    );

    // No token (ID tokens or the static one) in the log or the store.
    let mut texts = vec![s.gw.log_text(), shown];
    for f in std::fs::read_dir(s.gw.state_dir.join("record"))
        .unwrap()
        .flatten()
    {
        if f.path().is_file() {
            texts.push(String::from_utf8_lossy(&std::fs::read(f.path()).unwrap()).into_owned());
        }
    }
    for text in &texts {
        for secret in [&good, &rotated, &static_token] {
            assert!(!text.contains(secret.as_str()), "a token was written out");
        }
    }
}
