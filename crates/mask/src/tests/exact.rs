//! Exact values (`with_exact`): masked wherever they appear, whatever their shape, at any
//! chunking; values too short to mask safely are ignored.
use super::*;

fn exact(label: &str, value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (label.to_owned(), value.into())
}

#[test]
fn an_exact_value_of_any_shape_is_masked_wherever_it_appears() {
    let mut rng = Rng::new(50);
    // No rule would find these: spaces, punctuation, non-ASCII.
    let values = [
        format!("{} horse {} staple", rng.alnum(5), rng.alnum(5)),
        format!("pässwörd-{}", rng.alnum(4)),
        format!("{}:{}", rng.pick(DIGITS, 6), rng.pick(DIGITS, 6)),
    ];
    let base = masker();
    for v in &values {
        assert_clean(&base, &format!("x {v} y"));
    }
    let m = base.with_exact(
        &values
            .iter()
            .map(|v| exact("caller-token", v.as_str()))
            .collect::<Vec<_>>(),
    );
    for v in &values {
        assert_masked(
            &m,
            &[
                secret("caller-token", v.clone()),
                plain(" at the start, in the middle of a word:"),
                secret("caller-token", v.clone()),
                secret("caller-token", v.clone()),
                plain(", in JSON {\"k\":\""),
                secret("caller-token", v.clone()),
                plain("\"} and at the end "),
                secret("caller-token", v.clone()),
            ],
        );
    }
}

#[test]
fn an_exact_value_of_arbitrary_bytes_is_masked_split_at_every_point() {
    let mut rng = Rng::new(51);
    let value = rng.bytes(24);
    let m = masker().with_exact(&[exact("brokered", value.clone())]);
    let mut input = b"head \x00\xff ".to_vec();
    let at = input.len();
    input.extend_from_slice(&value);
    input.extend_from_slice(b" tail\n");
    let f = Finding {
        rule: "brokered".into(),
        fingerprint: m.fingerprint(&value),
        offset: at as u64,
        len: value.len(),
    };
    let mut want = input[..at].to_vec();
    want.extend_from_slice(f.replacement().as_bytes());
    want.extend_from_slice(b" tail\n");
    assert_eq!(m.mask_all(&input), (want.clone(), vec![f.clone()]));
    // Every split into two chunks, and every split into three around the value.
    for i in 0..=input.len() {
        assert_eq!(
            stream_cuts(&m, &input, &[i]),
            (want.clone(), vec![f.clone()]),
            "cut at {i}"
        );
    }
    for i in at..at + value.len() {
        for j in i..at + value.len() {
            assert_eq!(
                stream_cuts(&m, &input, &[i, j]),
                (want.clone(), vec![f.clone()]),
                "cuts {i}, {j}"
            );
        }
    }
    assert_eq!(stream_sized(&m, &input, 1), (want, vec![f]));
}

#[test]
fn values_shorter_than_the_minimum_are_ignored() {
    let mut rng = Rng::new(52);
    let short = rng.alnum(MIN_EXACT_LEN - 1);
    let just = rng.alnum(MIN_EXACT_LEN);
    let m = masker().with_exact(&[exact("short", short.as_str()), exact("just", just.as_str())]);
    assert_clean(&m, &format!("{short} and {short}"));
    assert_masked(
        &m,
        &[plain(format!("{short} and ")), secret("just", just.clone())],
    );
    assert_eq!(
        format!("{:?}", m),
        format!("{:?}", masker().with_exact(&[exact("just", just.as_str())]))
    );
    // Only short values: nothing to mask.
    let none = masker().with_exact(&[exact("short", short.as_str()), exact("empty", "")]);
    assert_clean(&none, &short);
}

#[test]
fn exact_values_accumulate_and_the_longest_wins() {
    let mut rng = Rng::new(53);
    let short = rng.alnum(10);
    let long = format!("{short}{}", rng.alnum(6));
    let other = rng.alnum(12);
    let m = masker()
        .with_exact(&[exact("a", short.as_str())])
        .with_exact(&[exact("b", long.as_str()), exact("c", other.as_str())]);
    assert_masked(
        &m,
        &[
            secret("b", long.clone()),
            plain(" "),
            secret("a", short.clone()),
            plain(" "),
            secret("c", other.clone()),
            plain(" "),
            // The start of the longer value and then something else: the shorter one.
            secret("a", short.clone()),
            plain(&long[10..13]),
            plain("!"),
        ],
    );
}

#[test]
fn an_exact_value_inside_a_rule_match_is_masked_once() {
    let mut rng = Rng::new(54);
    let tok = classic(&mut rng, "ghp");
    let m = masker().with_exact(&[exact("caller", tok.as_str())]);
    assert_masked(
        &m,
        &[
            plain("Authorization: token "),
            secret("caller", tok.clone()),
            plain("\r\n"),
        ],
    );
    // Its random part alone is not the value.
    assert_clean(&m, &tok[4..tok.len() - 1]);
}

/// Brokered tokens and passwords are random: about one in a hundred holds a keyword such as
/// `cio`, `aws`, `pwd`, `sk-` or `token` (case-insensitively). A chunk ending after that keyword
/// must not release the value's start (it did, and the whole value came out).
#[test]
fn an_exact_value_containing_a_keyword_is_masked_at_any_chunking() {
    let mut rng = Rng::new(55);
    for value in [
        format!("{}-token-{}", rng.alnum(6), rng.alnum(6)),
        format!("{}cio{}", rng.alnum(6), rng.alnum(8)),
        format!("{}CIO{}", rng.alnum(6), rng.alnum(8)),
        format!("{}aws{}", rng.alnum(10), rng.alnum(10)),
    ] {
        let m = masker().with_exact(&[exact("caller", value.as_str())]);
        assert_masked(&m, &[plain("a "), secret("caller", value.clone()), plain(" b")]);
    }
}
