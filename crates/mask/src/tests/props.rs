//! Property tests: secrets planted at random places in random filler, masked at random
//! chunkings. Streaming gives what masking whole gives, no planted secret comes out, and where
//! the filler cannot hold a secret the output is the input with each secret replaced.
use proptest::{collection::vec, prelude::*, sample::Index, test_runner::Config};

use super::*;

/// Moderate case counts keep the suite fast in a debug build (`PROPTEST_CASES` overrides them
/// for a longer hunt); failures are not persisted to files next to the sources.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Filler in which no rule can fire: lowercase words (all shorter than any secret), spaces and
/// newlines.
fn clean_filler() -> BoxedStrategy<Vec<u8>> {
    "([a-z]{1,12}[ \n]){0,6}[a-z]{0,12}"
        .prop_map(String::into_bytes)
        .boxed()
}

fn ascii_filler() -> BoxedStrategy<Vec<u8>> {
    "[ -~\t\n]{0,80}".prop_map(String::into_bytes).boxed()
}

fn byte_filler() -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..80).boxed()
}

/// Filler made of the keywords, operators and shapes the rules look for, so that places where
/// a secret could begin are everywhere and are decided at every kind of chunk boundary.
fn keyword_filler() -> BoxedStrategy<Vec<u8>> {
    // `|`-separated: some fragments are spaces and operators.
    let words = concat!(
        "token|password|secret|api_key| = |: |=|:=|\"|'|;|,| |\n|\r\n|\\n|.|@|",
        "ghp_|gho_|github_pat_|https://|postgres://|user:|sig=|%2B|%3D|AccountKey=|AKIA|",
        "aws_secret_access_key|eyJ|xoxb-|sk-|sk-proj-|T3BlbkFJ|sk_live_|npm_|cio|pypi-AgE|",
        "hooks.slack.com/services/|\"private_key_id\"|AIza",
    );
    let armour = [
        format!("{DASHES}BEGIN RSA PRIVATE KEY{DASHES}"),
        format!("{DASHES}END RSA PRIVATE KEY{DASHES}"),
        format!("{DASHES}BEGIN PRIVATE KEY{DASHES}\\n"),
    ];
    let fragments: Vec<String> = words.split('|').map(str::to_owned).chain(armour).collect();
    vec(
        prop_oneof![
            2 => prop::sample::select(fragments),
            1 => "[A-Za-z0-9+/_-]{1,40}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat().into_bytes())
    .boxed()
}

/// Where the stream is cut: at random places, or into chunks of a few bytes.
#[derive(Debug, Clone)]
enum Chunking {
    Cuts(Vec<Index>),
    Size(usize),
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![
        3 => vec(any::<Index>(), 0..24).prop_map(Chunking::Cuts),
        1 => (1usize..8).prop_map(Chunking::Size),
    ]
}

fn stream_with(m: &Masker, input: &[u8], chunking: &Chunking) -> (Vec<u8>, Vec<Finding>) {
    match chunking {
        Chunking::Cuts(at) => {
            let cuts: Vec<usize> = at.iter().map(|i| i.index(input.len() + 1)).collect();
            stream_cuts(m, input, &cuts)
        }
        Chunking::Size(n) => stream_sized(m, input, *n),
    }
}

/// Filler and samples, each sample between newlines: `filler \n sample \n filler \n …`.
struct Planted {
    input: Vec<u8>,
    /// (offset, rule, value) of each planted secret.
    secrets: Vec<(u64, String, String)>,
}

fn plant(seed: u64, planted: &[(Vec<u8>, Index)], last: &[u8]) -> Planted {
    let samples = samples(&mut super::Rng::new(seed));
    let mut p = Planted {
        input: Vec::new(),
        secrets: Vec::new(),
    };
    for (filler, pick) in planted {
        p.input.extend_from_slice(filler);
        p.input.push(b'\n');
        for part in &samples[pick.index(samples.len())] {
            match part {
                Part::Plain(s) => p.input.extend_from_slice(s.as_bytes()),
                Part::Secret { rule, value } => {
                    p.secrets
                        .push((p.input.len() as u64, rule.clone(), value.clone()));
                    p.input.extend_from_slice(value.as_bytes());
                }
            }
        }
        p.input.push(b'\n');
    }
    p.input.extend_from_slice(last);
    p
}

/// The input with each planted secret replaced, and the findings for them.
fn replaced(m: &Masker, p: &Planted) -> (Vec<u8>, Vec<Finding>) {
    let (mut out, mut findings, mut at) = (Vec::new(), Vec::new(), 0usize);
    for (offset, rule, value) in &p.secrets {
        let f = Finding {
            rule: rule.clone(),
            fingerprint: m.fingerprint(value.as_bytes()),
            offset: *offset,
            len: value.len(),
        };
        out.extend_from_slice(&p.input[at..*offset as usize]);
        out.extend_from_slice(f.replacement().as_bytes());
        at = *offset as usize + value.len();
        findings.push(f);
    }
    out.extend_from_slice(&p.input[at..]);
    (out, findings)
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// (a) streamed equals whole, findings included; (b) no planted secret in the output.
fn check_stream_and_secrets(p: &Planted, chunking: &Chunking) -> Result<(), TestCaseError> {
    let m = masker();
    let (whole, whole_findings) = m.mask_all(&p.input);
    let (streamed, streamed_findings) = stream_with(&m, &p.input, chunking);
    prop_assert!(
        streamed == whole,
        "streamed {:?}\nwhole    {:?}\ninput    {:?}",
        lossy(&streamed),
        lossy(&whole),
        lossy(&p.input)
    );
    prop_assert_eq!(streamed_findings, whole_findings);
    for (_, rule, value) in &p.secrets {
        prop_assert!(
            memchr::memmem::find(&whole, value.as_bytes()).is_none(),
            "the {} secret {:?} is in the output {:?}",
            rule,
            value,
            lossy(&whole)
        );
    }
    Ok(())
}

/// A seed for the samples, (filler, pick) pairs, a last filler, and a chunking.
type Planting = (u64, Vec<(Vec<u8>, Index)>, Vec<u8>, Chunking);

fn planting(filler: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Planting> {
    (
        any::<u64>(),
        vec((filler.clone(), any::<Index>()), 0..6),
        filler,
        chunking(),
    )
}

/// (c) where the filler cannot hold a secret: the input with each planted secret replaced.
fn check_replaced(p: &Planted, chunking: &Chunking) -> Result<(), TestCaseError> {
    check_stream_and_secrets(p, chunking)?;
    let m = masker();
    let (want, want_findings) = replaced(&m, p);
    let (got, findings) = stream_with(&m, &p.input, chunking);
    prop_assert!(got == want, "got  {:?}\nwant {:?}", lossy(&got), lossy(&want));
    prop_assert_eq!(findings, want_findings);
    // Replacements are never taken for secrets: masking again changes nothing.
    let (again, found) = m.mask_all(&got);
    prop_assert!(again == got, "masked again: {:?}", lossy(&again));
    prop_assert!(found.is_empty(), "{:?}", found);
    Ok(())
}

/// Exact values planted in keyword soup, streamed: what masking whole gives, values gone.
fn check_exact(values: &[String], fillers: &[Vec<u8>], chunking: &Chunking) -> Result<(), TestCaseError> {
    let labelled: Vec<(String, Vec<u8>)> = values
        .iter()
        .map(|v| ("caller".to_owned(), v.clone().into_bytes()))
        .collect();
    let m = masker().with_exact(&labelled);
    let mut input = Vec::new();
    for (i, filler) in fillers.iter().enumerate() {
        input.extend_from_slice(filler);
        input.extend_from_slice(values[i % values.len()].as_bytes());
    }
    let (whole, whole_findings) = m.mask_all(&input);
    let (streamed, streamed_findings) = stream_with(&m, &input, chunking);
    prop_assert!(
        streamed == whole,
        "streamed {:?}\nwhole    {:?}\ninput    {:?}",
        lossy(&streamed),
        lossy(&whole),
        lossy(&input)
    );
    prop_assert_eq!(streamed_findings, whole_findings);
    for v in values {
        prop_assert!(
            memchr::memmem::find(&whole, v.as_bytes()).is_none(),
            "{:?} in {:?}",
            v,
            lossy(&whole)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn streamed_equals_whole_in_random_bytes((seed, planted, last, chunking) in planting(byte_filler())) {
        check_stream_and_secrets(&plant(seed, &planted, &last), &chunking)?;
    }

    #[test]
    fn streamed_equals_whole_in_random_text((seed, planted, last, chunking) in planting(ascii_filler())) {
        check_stream_and_secrets(&plant(seed, &planted, &last), &chunking)?;
    }

    #[test]
    fn streamed_equals_whole_among_keywords(
        (seed, planted, last, chunking) in planting(keyword_filler())
    ) {
        check_stream_and_secrets(&plant(seed, &planted, &last), &chunking)?;
    }

    #[test]
    fn clean_filler_comes_out_unchanged_around_replaced_secrets(
        (seed, planted, last, chunking) in planting(clean_filler())
    ) {
        check_replaced(&plant(seed, &planted, &last), &chunking)?;
    }

    /// Exact values with a keyword inside (as random tokens sometimes have), among keywords.
    #[test]
    fn exact_values_stream_like_whole(
        values in vec(
            ("[A-Za-z0-9]{3,12}", prop::sample::select(vec!["token", "cio", "Aws", "pwd", "sk-", "ghp_"]), "[A-Za-z0-9 ]{3,12}")
                .prop_map(|(a, k, b)| format!("{a}{k}{b}")),
            1..4,
        ),
        fillers in vec(keyword_filler(), 1..6),
        chunking in chunking(),
    ) {
        check_exact(&values, &fillers, &chunking)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Keyword soup alone (no planted secret), cut anywhere: the same output at every chunking.
    #[test]
    fn any_chunking_of_keyword_soup_gives_one_output(
        input in keyword_filler(),
        a in chunking(),
        b in chunking(),
    ) {
        let m = masker();
        let (oa, fa) = stream_with(&m, &input, &a);
        let (ob, fb) = stream_with(&m, &input, &b);
        prop_assert!(oa == ob, "{:?}\nvs {:?}\ninput {:?}", lossy(&oa), lossy(&ob), lossy(&input));
        prop_assert_eq!(fa, fb);
    }
}
