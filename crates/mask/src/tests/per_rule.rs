//! Each built-in rule on true positives in the contexts it meets, and on the near-misses it
//! must leave alone.
use super::*;

#[test]
fn github_classic_tokens_of_every_prefix() {
    let m = masker();
    let mut rng = Rng::new(10);
    for (prefix, rule) in [
        ("ghp", "github-pat"),
        ("gho", "github-oauth"),
        ("ghu", "github-user-token"),
        ("ghs", "github-app-token"),
        ("ghr", "github-refresh-token"),
    ] {
        let tok = classic(&mut rng, prefix);
        assert_masked(&m, &[plain("token "), secret(rule, tok.clone()), plain(" used")]);
        assert_masked(&m, &[plain("{\"t\":\""), secret(rule, tok.clone()), plain("\"}")]);
        assert_masked(
            &m,
            &[
                plain("Authorization: Bearer "),
                secret(rule, tok.clone()),
                plain("\r\n"),
            ],
        );
        assert_masked(&m, &[secret(rule, tok)]);
    }
}

#[test]
fn a_github_token_assigned_to_a_variable_is_named_for_github() {
    let m = masker();
    let mut rng = Rng::new(11);
    let tok = classic(&mut rng, "ghp");
    assert_masked(
        &m,
        &[
            plain("GITHUB_TOKEN="),
            secret("github-pat", tok.clone()),
            plain("\n"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("token: \""),
            secret("github-pat", tok.clone()),
            plain("\"\n"),
        ],
    );
    assert_masked(
        &m,
        &[plain("const token = '"), secret("github-pat", tok), plain("';")],
    );
}

#[test]
fn github_near_misses() {
    let m = masker();
    let mut rng = Rng::new(12);
    for prefix in ["ghp", "gho", "ghu", "ghs", "ghr"] {
        let tok = classic(&mut rng, prefix);
        // Wrong checksum: the last character changed.
        let mut bad = tok[..tok.len() - 1].to_owned();
        bad.push(if tok.ends_with('a') { 'b' } else { 'a' });
        assert_clean(&m, &format!("value {bad} end"));
        // Valid checksums of their own, on 29 and 31 random characters: wrong length.
        let short = github_token(prefix, &rng.alnum(29));
        let long = github_token(prefix, &rng.alnum(31));
        assert_clean(&m, &format!("short {short} long {long}"));
        // Glued to a word: not a token boundary.
        assert_clean(&m, &format!("x{tok}"));
    }
    assert_clean(
        &m,
        "if t.starts_with(\"ghp_\") || t.starts_with(\"gho_\") { return Kind::Classic; }",
    );
    assert_clean(&m, "// tokens look like ghp_ followed by 36 characters");
}

#[test]
fn github_fine_grained_pat_and_near_misses() {
    let m = masker();
    let mut rng = Rng::new(13);
    let tok = fine_grained(&mut rng);
    assert_masked(
        &m,
        &[
            plain("GH_PAT "),
            secret("github-fine-grained-pat", tok.clone()),
            plain("\n"),
        ],
    );
    assert_masked(
        &m,
        &[plain("x-access-token "), secret("github-fine-grained-pat", tok)],
    );
    // GitHub tells integrators to expect longer tokens: a longer one is still masked.
    let long = format!("github{}{}_{}", "_pat_", rng.alnum(30), rng.alnum(90));
    assert_masked(
        &m,
        &[plain("pat="), secret("github-fine-grained-pat", long), plain(";")],
    );
    let short = format!("github{}{}_{}", "_pat_", rng.alnum(21), rng.alnum(59));
    let short_tail = format!("github{}{}_{}", "_pat_", rng.alnum(22), rng.alnum(58));
    assert_clean(&m, &format!("{short} and {short_tail}"));
    assert_clean(&m, "if t.starts_with(\"github_pat_\") {");
}

/// Installation tokens in the stateless format (`ghs_<app id>_<JWT>`, about 520 characters)
/// where they occur: the access-token API's answer, an Authorization header, a clone URL (too
/// long for the URL-credentials rule alone), an env line; masked whole at every chunking.
#[test]
fn github_installation_tokens_in_the_stateless_format() {
    let m = masker();
    let mut rng = Rng::new(14);
    let tok = stateless_installation_token(&mut rng);
    assert!(tok.len() > 500 && tok.matches('.').count() == 2, "{}", tok.len());
    let rule = "github-app-token";
    assert_masked(
        &m,
        &[
            plain("{\"token\":\""),
            secret(rule, tok.clone()),
            plain("\",\"expires_at\":\"2026-05-01T12:00:00Z\",\"permissions\":{\"contents\":\"write\"}}"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("Authorization: token "),
            secret(rule, tok.clone()),
            plain("\r\n\r\n"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("https://x-access-token:"),
            secret(rule, tok.clone()),
            plain("@github.com/o/r.git"),
        ],
    );
    assert_masked(&m, &[plain("GH_TOKEN="), secret(rule, tok.clone()), plain("\n")]);
    // Two back to back, the second cut at its dots by the chunking.
    let other = stateless_installation_token(&mut rng);
    let (first_dot, second_dot) = (other.find('.').unwrap(), other.rfind('.').unwrap());
    let input = format!("{tok} {other}");
    let at = tok.len() + 1;
    for cuts in [
        vec![at + first_dot],
        vec![at + 4, at + second_dot + 1],
        vec![3, at + 10, at + other.len() - 1],
    ] {
        let (out, findings) = stream_cuts(&m, input.as_bytes(), &cuts);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(findings.len(), 2, "{out}");
        assert!(findings.iter().all(|f| f.rule == rule), "{findings:?}");
        assert_eq!((findings[1].offset as usize, findings[1].len), (at, other.len()));
        assert!(!out.contains("eyJ") && !out.contains("ghs_"), "{out}");
    }
}

#[test]
fn stateless_installation_token_near_misses() {
    let m = masker();
    assert_clean(
        &m,
        "installation tokens now look like ghs_APPID_JWT (about 520 characters)",
    );
    assert_clean(&m, "let re = /ghs_[A-Za-z0-9._]{36,}/;");
    assert_clean(&m, "ghs_12345_short.parts.only");
    let mut rng = Rng::new(15);
    let tok = stateless_installation_token(&mut rng);
    // Glued to a word: not a token boundary (as for the classic form).
    assert_clean(&m, &format!("x{tok}"));
    // Without its signature, it is not a token.
    assert_clean(&m, &format!("{} end", &tok[..tok.rfind('.').unwrap()]));
}

#[test]
fn private_keys_of_every_kind_are_masked_header_to_footer() {
    let m = masker();
    let mut rng = Rng::new(14);
    for (kind, len) in [
        ("RSA ", 1190),
        ("EC ", 121),
        ("OPENSSH ", 400),
        ("", 1218),
        ("ENCRYPTED ", 1300),
        ("DSA ", 440),
    ] {
        let key = pem(&mut rng, kind, len);
        assert_masked(
            &m,
            &[
                plain("key file:\n"),
                secret("private-key", key.clone()),
                plain("\nnext: line\n"),
            ],
        );
        assert_masked(&m, &[secret("private-key", key)]);
    }
}

#[test]
fn a_private_key_with_crlf_line_endings() {
    let m = masker();
    let mut rng = Rng::new(141);
    let key = pem(&mut rng, "EC ", 121).replace('\n', "\r\n");
    assert_masked(
        &m,
        &[
            plain("key:\r\n"),
            secret("private-key", key),
            plain("\r\nnext\r\n"),
        ],
    );
}

#[test]
fn a_pgp_private_key_block_is_masked() {
    let m = masker();
    let mut rng = Rng::new(15);
    let body = b64(&rng.bytes(600));
    let key = format!(
        "{DASHES}BEGIN PGP PRIVATE KEY BLOCK{DASHES}\n\n{body}\n{DASHES}END PGP PRIVATE KEY BLOCK{DASHES}"
    );
    assert_masked(&m, &[plain("gpg:\n"), secret("private-key", key), plain("\n")]);
}

#[test]
fn a_json_escaped_private_key_in_a_service_account_file() {
    let m = masker();
    let mut rng = Rng::new(16);
    // The key as a JSON string holds it: its line breaks are the two characters `\n`.
    let key = pem(&mut rng, "", 1218).replace('\n', "\\n");
    let key_id = hex::encode(rng.bytes(20));
    let out = assert_masked(&m, &service_account(key_id, key));
    serde_json::from_str::<serde_json::Value>(&out).expect("still valid JSON");
}

/// A GCP service-account key file, with its key id and its JSON-escaped private key.
fn service_account(key_id: String, key: String) -> Vec<Part> {
    vec![
        plain("{\n  \"type\": \"service_account\",\n  \"project_id\": \"demo\",\n  \"private_key_id\": \""),
        secret("gcp-service-account-key-id", key_id),
        plain("\",\n  \"private_key\": \""),
        secret("private-key", key),
        plain("\\n\",\n  \"client_email\": \"svc@demo.iam.gserviceaccount.com\"\n}\n"),
    ]
}

/// A chunk ending inside `-----END` must not end the key before its END line (it did: the
/// END line came out after the replacement, under the fingerprint of fewer bytes).
#[test]
fn a_private_key_cut_inside_its_end_line_is_masked_to_the_end_line() {
    let m = masker();
    let mut rng = Rng::new(191);
    let key = pem(&mut rng, "RSA ", 300);
    let text = format!("key:\n{key}\nnext\n");
    let footer = text.find(&format!("{DASHES}END")).unwrap();
    let whole = m.mask_all(text.as_bytes());
    let want = format!(
        "key:\n[MASKED:private-key:{}]\nnext\n",
        m.fingerprint(key.as_bytes())
    );
    assert_eq!(lossy_of(&whole.0), want);
    for cut in footer + 1..footer + 8 {
        let streamed = stream_cuts(&m, text.as_bytes(), &[cut]);
        assert_eq!(
            lossy_of(&streamed.0),
            want,
            "one cut {} bytes into the END line",
            cut - footer
        );
    }
    for kind in ["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED "] {
        let key = pem(&mut rng, kind, 200);
        assert_masked(
            &m,
            &[
                plain("key file:\n"),
                secret("private-key", key),
                plain("\nnext: line\n"),
            ],
        );
    }
    let key = pem(&mut rng, "", 1218).replace('\n', "\\n");
    assert_masked(&m, &service_account(hex::encode(rng.bytes(20)), key));
}

/// A legacy encrypted PEM carries `Proc-Type`/`DEK-Info` headers before its body. Streamed,
/// the key must not be decided at the `:` of `Proc-Type:` before its END line arrives (it was,
/// and the encrypted body came out in clear).
#[test]
fn a_legacy_encrypted_private_key_is_masked_whole_when_streamed() {
    let m = masker();
    let mut rng = Rng::new(192);
    let body = b64(&rng.bytes(600));
    let key = format!(
        "{DASHES}BEGIN RSA PRIVATE KEY{DASHES}\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{}\n\n{body}\n\
         {DASHES}END RSA PRIVATE KEY{DASHES}",
        hex::encode_upper(rng.bytes(16))
    );
    assert_masked(&m, &[plain("id_rsa:\n"), secret("private-key", key), plain("\n")]);
}

fn lossy_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_private_key_without_its_end_line() {
    let m = masker();
    let mut rng = Rng::new(17);
    let full = pem(&mut rng, "RSA ", 900);
    let cut = &full[..full.find(&format!("{DASHES}END")).unwrap()];
    // Cut off at the end of the stream: all of it, to the last byte.
    assert_masked(&m, &[plain("truncated:\n"), secret("private-key", cut)]);
    // Followed by other text: the header and the base64 body with its line breaks.
    assert_masked(
        &m,
        &[plain("truncated:\n"), secret("private-key", cut), plain("(cut)")],
    );
    // JSON-escaped and cut short: the body runs over its escaped line breaks to the quote.
    let escaped = cut.replace('\n', "\\n");
    let out = assert_masked(
        &m,
        &[
            plain("{\"private_key\": \""),
            secret("private-key", escaped),
            plain("\"}"),
        ],
    );
    serde_json::from_str::<serde_json::Value>(&out).expect("still valid JSON");
    // JSON in a JSON string, cut short: the masked run must not take the backslash of the
    // inner closing quote's escape, or the outer JSON breaks.
    let inner = serde_json::json!({"private_key": cut}).to_string();
    let outer = serde_json::json!({"payload": inner, "n": 1}).to_string();
    let (out, findings) = m.mask_str(&outer);
    assert_eq!(findings.len(), 1, "{out}");
    assert_eq!(findings[0].rule, "private-key");
    let v: serde_json::Value = serde_json::from_str(&out).expect("the outer JSON is still valid");
    let inner_out = v["payload"].as_str().expect("payload is a string");
    let iv: serde_json::Value = serde_json::from_str(inner_out).expect("the inner JSON is still valid");
    assert!(
        iv["private_key"]
            .as_str()
            .unwrap()
            .starts_with("[MASKED:private-key:"),
        "{inner_out}"
    );
    assert_eq!(v["n"], 1);
    for line in cut.lines().skip(1) {
        assert!(!out.contains(line), "a line of the key is still there: {out}");
    }
}

#[test]
fn things_that_are_not_private_keys() {
    let m = masker();
    let mut rng = Rng::new(18);
    let body = b64(&rng.bytes(300));
    for what in [
        "PUBLIC KEY",
        "CERTIFICATE",
        "CERTIFICATE REQUEST",
        "RSA PUBLIC KEY",
        "OPENSSH PUBLIC KEY",
    ] {
        assert_clean(
            &m,
            &format!("{DASHES}BEGIN {what}{DASHES}\n{body}\n{DASHES}END {what}{DASHES}\n"),
        );
    }
    assert_clean(&m, "let header = format!(\"BEGIN {kind} PRIVATE KEY\");");
}

#[test]
fn aws_access_key_ids_and_near_misses() {
    let m = masker();
    let mut rng = Rng::new(19);
    let id = aws_key_id(&mut rng);
    assert_masked(
        &m,
        &[
            plain("key id "),
            secret("aws-access-key-id", id.clone()),
            plain("."),
        ],
    );
    let sts = format!("AS{}{}", "IA", rng.pick(UPPER_B32, 16));
    assert_masked(
        &m,
        &[
            plain("\"AccessKeyId\": \""),
            secret("aws-access-key-id", sts),
            plain("\""),
        ],
    );
    // Lowercase after the prefix, too short, glued to a word.
    assert_clean(
        &m,
        &format!("AKIA{}", rng.pick(b"abcdefghijklmnopqrstuvwxyz", 16)),
    );
    assert_clean(&m, &format!("AKIA{} end", rng.pick(UPPER_B32, 15)));
    assert_clean(&m, &format!("X{id}"));
}

#[test]
fn aws_secret_keys_next_to_an_aws_name() {
    let m = masker();
    let mut rng = Rng::new(20);
    let id = aws_key_id(&mut rng);
    let sk = aws_secret(&mut rng);
    assert_masked(
        &m,
        &[
            plain("[default]\naws_access_key_id = "),
            secret("aws-access-key-id", id),
            plain("\naws_secret_access_key = "),
            secret("aws-secret-key", sk.clone()),
            plain("\nregion = eu-west-1\n"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("AWS_SECRET_ACCESS_KEY: \""),
            secret("aws-secret-key", sk.clone()),
            plain("\"\n"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("export AWS_SECRET_ACCESS_KEY="),
            secret("aws-secret-key", sk.clone()),
        ],
    );
    // Forty base64 characters with no AWS name before them are not taken for one.
    assert_clean(&m, &format!("checksum {sk}\n"));
    // Low entropy, and 41 characters.
    assert_clean(&m, &format!("aws_secret_access_key = {}\n", "A".repeat(40)));
    assert_clean(&m, "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}\n");
}

#[test]
fn gcp_service_account_key_ids_and_api_keys() {
    let m = masker();
    let mut rng = Rng::new(21);
    let id = hex::encode(rng.bytes(20));
    assert_masked(
        &m,
        &[
            plain("{\"private_key_id\":\""),
            secret("gcp-service-account-key-id", id.clone()),
            plain("\"}"),
        ],
    );
    // Not lowercase hex: not this rule's (nor, without digits, a generic secret).
    assert_clean(
        &m,
        &format!(
            "{{\"private_key_id\": \"{}\"}}",
            id.to_uppercase().replace(char::is_numeric, "Z")
        ),
    );
    // 39 digits: not a key id, though still high-entropy enough for the generic rule.
    assert_masked(
        &m,
        &[
            plain("{\"private_key_id\": \""),
            secret("generic-secret", &id[..39]),
            plain("\"}"),
        ],
    );
    let key = gcp_api_key(&mut rng);
    assert_masked(
        &m,
        &[
            plain("https://maps.googleapis.com/maps/api/js?key="),
            secret("gcp-api-key", key.clone()),
            plain("&callback=init"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("\"current_key\": \""),
            secret("gcp-api-key", key.clone()),
            plain("\""),
        ],
    );
    assert_clean(&m, &format!("{} {}", &key[..38], "end"));
}

/// The keyword `"private_key_id"` holds the generic keyword `private_key`: a chunk ending
/// inside it must not let `private_key` claim the id (it did, as `generic-secret`).
#[test]
fn a_gcp_key_id_is_named_for_gcp_at_any_chunking() {
    let m = masker();
    let mut rng = Rng::new(211);
    let before = "{\"private_key_id\": \"";
    let id = hex::encode(rng.bytes(20));
    let text = format!("{before}{id}\"}}");
    for cut in 1..before.len() {
        let (out, f) = stream_cuts(&m, text.as_bytes(), &[cut]);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].rule,
            "gcp-service-account-key-id",
            "one cut at {cut}: {}",
            lossy_of(&out)
        );
    }
    assert_masked(
        &m,
        &[
            plain(before),
            secret("gcp-service-account-key-id", id),
            plain("\"}"),
        ],
    );
}

/// Google API keys are 39 characters of `[0-9A-Za-z_-]` after `AIza`; the last can be `-`
/// (such a key was not masked at all: the rule's trailing `\b` needed a word character).
#[test]
fn a_gcp_api_key_ending_in_a_dash() {
    let m = masker();
    let mut rng = Rng::new(22);
    let key = format!("AI{}{}-", "zaSy", rng.alnum(32));
    assert_masked(
        &m,
        &[plain("?key="), secret("gcp-api-key", key.clone()), plain("&v=3")],
    );
    assert_masked(
        &m,
        &[
            plain("\"current_key\": \""),
            secret("gcp-api-key", key),
            plain("\""),
        ],
    );
}

#[test]
fn azure_storage_keys_in_connection_strings() {
    let m = masker();
    let mut rng = Rng::new(23);
    let key = azure_account_key(&mut rng);
    assert_masked(
        &m,
        &[
            plain("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="),
            secret("azure-storage-key", key.clone()),
            plain(";EndpointSuffix=core.windows.net"),
        ],
    );
    assert_masked(
        &m,
        &[plain("AccountKey="), secret("azure-storage-key", key.clone())],
    );
    // 85 characters before the padding.
    assert_clean(&m, &format!("AccountKey={}==;", &key[1..86]));
    assert_clean(&m, "AccountKey=;AccountName=acct");
}

#[test]
fn azure_sas_signatures_and_wrong_lengths() {
    let m = masker();
    let mut rng = Rng::new(24);
    let url = "https://acct.blob.core.windows.net/c/report.csv?sv=2022-11-02&ss=b&srt=o&sp=r\
               &se=2030-01-01T00:00:00Z&st=2024-01-01T00:00:00Z&spr=https&sig=";
    for _ in 0..8 {
        let sig = sas_sig(&mut rng, 32);
        assert_masked(&m, &[plain(url), secret("azure-sas-signature", sig.clone())]);
        assert_masked(
            &m,
            &[
                plain(format!("\"{url}")),
                secret("azure-sas-signature", sig),
                plain("\"\n"),
            ],
        );
    }
    // Only the padding percent-encoded, '+' and '/' left as they are.
    let half = b64(&rng.bytes(32)).replace('=', "%3D");
    assert_masked(
        &m,
        &[
            plain("?sp=r&sig="),
            secret("azure-sas-signature", half),
            plain("&x=1"),
        ],
    );
    for wrong in [31, 33, 48] {
        assert_clean(&m, &format!("{url}{}\n", sas_sig(&mut rng, wrong)));
    }
}

#[test]
fn slack_tokens_and_webhooks() {
    let m = masker();
    let mut rng = Rng::new(25);
    let tok = slack_token(&mut rng);
    assert_masked(
        &m,
        &[
            plain("SLACK_BOT="),
            secret("slack-token", tok.clone()),
            plain("\n"),
        ],
    );
    let user = format!(
        "xo{}{}-{}-{}-{}",
        "xp-",
        rng.pick(DIGITS, 12),
        rng.pick(DIGITS, 12),
        rng.pick(DIGITS, 13),
        rng.pick(b"0123456789abcdef", 32)
    );
    assert_masked(&m, &[plain("user "), secret("slack-token", user)]);
    let path = slack_webhook_path(&mut rng);
    assert_masked(
        &m,
        &[
            plain("curl -X POST https://hooks.slack.com/services/"),
            secret("slack-webhook", path),
            plain(" -d @msg.json"),
        ],
    );
    assert_clean(&m, "xoxb-123 is too short");
    assert_clean(&m, "see https://hooks.slack.com/ for docs");
}

#[test]
fn stripe_keys() {
    let m = masker();
    let mut rng = Rng::new(26);
    for kind in ["sk", "rk"] {
        let key = stripe_key(&mut rng, kind);
        assert_masked(&m, &[plain("stripe.api_key = "), secret("stripe-key", key)]);
    }
    let test = format!("sk_{}{}", "test_", rng.alnum(24));
    assert_masked(&m, &[plain("STRIPE="), secret("stripe-key", test), plain(" ")]);
    assert_clean(&m, &format!("sk_live_{}", rng.alnum(12)));
    assert_clean(&m, "ask_live_chat and risk_test_suite");
}

#[test]
fn anthropic_and_openai_keys() {
    let m = masker();
    let mut rng = Rng::new(27);
    let ant = anthropic_key(&mut rng);
    assert_masked(
        &m,
        &[plain("x-api-key: "), secret("anthropic-key", ant), plain("\r\n")],
    );
    let oai = openai_key(&mut rng);
    assert_masked(
        &m,
        &[
            plain("Authorization: Bearer "),
            secret("openai-key", oai.clone()),
            plain("\r\n"),
        ],
    );
    assert_masked(&m, &[plain("OPENAI_API_KEY="), secret("openai-key", oai)]);
    let legacy = format!("sk-{}{}{}", rng.alnum(20), "T3BlbkFJ", rng.alnum(20));
    assert_masked(&m, &[plain("key "), secret("openai-key", legacy)]);
}

#[test]
fn words_containing_sk_dash_are_not_keys() {
    let m = masker();
    let mut rng = Rng::new(28);
    let tail = format!("{}{}{}", rng.alnum(30), "T3BlbkFJ", rng.alnum(30));
    assert_clean(&m, &format!("task-runner-{}", rng.alnum(40)));
    assert_clean(&m, &format!("task-proj-{tail}"));
    assert_clean(&m, &format!("desk-{tail}"));
    assert_clean(&m, "risk-free, disk-backed, sk-learn");
    // The shape without its marker.
    assert_clean(&m, &format!("sk-proj-{}", rng.alnum(60)));
}

#[test]
fn package_registry_tokens() {
    let m = masker();
    let mut rng = Rng::new(29);
    let npm = npm_token(&mut rng);
    assert_masked(
        &m,
        &[
            plain("//registry.npmjs.org/:_authToken="),
            secret("npm-token", npm),
            plain("\n"),
        ],
    );
    let pypi = pypi_token(&mut rng);
    assert_masked(
        &m,
        &[
            plain("[pypi]\nusername = __token__\npassword = "),
            secret("pypi-token", pypi),
            plain("\n"),
        ],
    );
    let cio = crates_token(&mut rng);
    assert_masked(
        &m,
        &[
            plain("[registry]\ntoken = \""),
            secret("crates-io-token", cio),
            plain("\"\n"),
        ],
    );
    assert_clean(&m, &format!("npm_{} and npm_config_cache", rng.alnum(20)));
    assert_clean(&m, "pypi-AgE is how they begin");
    assert_clean(&m, &format!("socio{} x", rng.alnum(32)));
    assert_clean(&m, &format!("x cio{} x", rng.alnum(31)));
}

#[test]
fn jwts_and_near_misses() {
    let m = masker();
    let mut rng = Rng::new(30);
    let t = jwt(&mut rng);
    assert_masked(
        &m,
        &[
            plain("Authorization: Bearer "),
            secret("jwt", t.clone()),
            plain("\r\n"),
        ],
    );
    assert_masked(
        &m,
        &[plain("{\"id_token\":\""), secret("jwt", t.clone()), plain("\"}")],
    );
    assert_masked(
        &m,
        &[plain("cookie: session="), secret("jwt", t), plain("; Path=/")],
    );
    // Parts that begin like JSON objects but are not JSON.
    let not_json = format!(
        "{}.{}.{}",
        b64url(b"{\"alg\" HS256 but not json"),
        b64url(b"{\"sub\" also not json at all"),
        b64url(&rng.bytes(32))
    );
    assert!(not_json.starts_with("eyJ"));
    assert_clean(&m, &format!("bearer {not_json}\n"));
    // A JSON array payload is not a claims object.
    let array = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"none"}"#),
        b64url(br#"["a","b","c","d"]"#),
        b64url(&rng.bytes(32))
    );
    assert_clean(&m, &format!("bearer {array}\n"));
}

#[test]
fn url_credentials_mask_only_the_password() {
    let m = masker();
    let mut rng = Rng::new(31);
    let pw = generic_value(&mut rng);
    assert_masked(
        &m,
        &[
            plain("https://alice:"),
            secret("url-credentials", pw.clone()),
            plain("@example.com/repo.git"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("DATABASE_URL=postgres://app:"),
            secret("url-credentials", pw.clone()),
            plain("@db.internal:5432/app\n"),
        ],
    );
    assert_masked(
        &m,
        &[
            plain("redis://default:"),
            secret("url-credentials", format!("{}!{}", rng.alnum(6), rng.alnum(6))),
            plain("@10.0.0.5:6379"),
        ],
    );
    // A GitHub token as the password is masked as a URL credential, all of it.
    let tok = classic(&mut rng, "ghs");
    assert_masked(
        &m,
        &[
            plain("https://x-access-token:"),
            secret("url-credentials", tok),
            plain("@github.com/o/r.git"),
        ],
    );
    assert_clean(
        &m,
        "https://github.com/o/r and https://user@example.com/ and http://host:8080/x",
    );
    assert_clean(&m, "git@github.com:o/r.git");
}

#[test]
fn generic_assignments_in_many_styles() {
    let m = masker();
    let mut rng = Rng::new(32);
    let styles: [(&str, &str); 9] = [
        ("SECRET_KEY = \"", "\"\n"),
        ("client_secret='", "'\n"),
        ("const apiKey = '", "';\n"),
        ("  password: ", "\n"),
        ("  password: \"", "\"\n"),
        ("DB_PASSWORD=", "\n"),
        ("\"auth_token\": \"", "\",\n"),
        ("credentials := \"", "\"\n"),
        ("    'api-key' => '", "',\n"),
    ];
    for (before, after) in styles {
        let v = generic_value(&mut rng);
        assert_masked(&m, &[plain(before), secret("generic-secret", v), plain(after)]);
    }
    // Unquoted values end at whitespace, ',' or ';'.
    let v = generic_value(&mut rng);
    assert_masked(
        &m,
        &[
            plain("token="),
            secret("generic-secret", v.clone()),
            plain(";next=1"),
        ],
    );
    assert_masked(&m, &[plain("token="), secret("generic-secret", v)]);
}

#[test]
fn generic_placeholders_and_identifiers_are_not_secrets() {
    let m = masker();
    for text in [
        "password = \"changeme\"",
        "password = \"changeme123\"",
        "token = \"${TOKEN}\"",
        "token: \"{{ secrets.TOKEN }}\"",
        "api_key = os.environ[\"X\"]",
        "api_key = os.environ[\"OPENAI_API_KEY\"]",
        "secret = \"xxxxxxxxxxxx\"",
        "secret = \"************\"",
        "token = self.next_token_id",
        "token = self.next_token_id\n",
        "password = process.env.DB_PASSWORD;",
        "password: <your-password-here>",
        "SECRET_KEY = \"your_secret_key_here\"",
        "token = None",
        "max_tokens = 4096",
        "token_count = 1234567890123456\n",
        "password_hash = hash_password(password)",
        "secret_name = \"prod/db/credentials\"",
        "api_key = config.openai_api_key\n",
        "the token is stored in the vault",
    ] {
        assert_clean(&m, text);
    }
}
