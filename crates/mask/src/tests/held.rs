//! What a stream holds back: in clean text, never more than the longest keyword minus one
//! byte; at a possible secret, everything from its keyword on, until the secret is decided.
use super::*;

fn keywords() -> Vec<String> {
    Rules::builtin()
        .iter()
        .flat_map(|r| r.keywords.iter().map(|k| k.to_ascii_lowercase()))
        .collect()
}

fn longest_keyword() -> usize {
    keywords().iter().map(String::len).max().unwrap()
}

/// Prose of lowercase words in which no keyword occurs.
fn keyword_free_prose(rng: &mut Rng, len: usize) -> String {
    let keywords = keywords();
    let mut text = String::new();
    while text.len() < len {
        let n = 1 + rng.below(9);
        let word = rng.pick(b"abcdefghijklmnopqrstuvwxyz", n);
        let word = format!("{word}{}", if rng.below(8) == 0 { "\n" } else { " " });
        // Only the last word and what precedes it within a keyword's length can form a new one.
        let tail_from = text.len().saturating_sub(32);
        let tail = format!("{}{word}", &text[tail_from..]);
        if !keywords.iter().any(|k| tail.contains(k.as_str())) {
            text.push_str(&word);
        }
    }
    text
}

#[test]
fn clean_text_holds_at_most_the_longest_keyword_minus_one_byte() {
    let m = masker();
    let bound = longest_keyword() - 1;
    let mut rng = Rng::new(60);
    let text = keyword_free_prose(&mut rng, 20_000);
    for max_chunk in [1, 5, 64, 4096] {
        let mut s = m.stream();
        let (mut out, mut fed) = (Vec::new(), 0);
        while fed < text.len() {
            let n = (1 + rng.below(max_chunk)).min(text.len() - fed);
            s.push(&text.as_bytes()[fed..fed + n], &mut out);
            fed += n;
            assert!(s.held() <= bound, "held {} > {bound} after {fed} bytes", s.held());
            // Released as soon as it cannot begin a keyword: all but the held tail is out.
            assert_eq!(out.len() + s.held(), fed);
            assert_eq!(s.decided(), out.len() as u64);
        }
        s.finish(&mut out);
        assert_eq!(s.held(), 0);
        assert_eq!(out, text.as_bytes());
    }
}

#[test]
fn text_with_keywords_holds_more_only_from_a_keyword() {
    let m = masker();
    let bound = longest_keyword() - 1;
    let keywords = keywords();
    let mut rng = Rng::new(61);
    let words = [
        "the",
        "token",
        "is",
        "kept",
        "in",
        "a",
        "secret",
        "place;",
        "password",
        "reset",
        "links",
        "expire,",
        "api_key",
        "rotation",
        "github_pat_",
        "prefixes",
        "and",
        "https://",
        "example.com",
        "sk-",
        "AKIA",
        "credentials",
        "files.",
        "eyJ",
        "\n",
        "private_key_id",
        "aws",
    ];
    let mut text = String::new();
    while text.len() < 20_000 {
        text.push_str(words[rng.below(words.len())]);
        text.push(' ');
    }
    let mut s = m.stream();
    let (mut out, mut fed) = (Vec::new(), 0);
    let (mut most, mut checked) = (0, 0);
    while fed < text.len() {
        let n = (1 + rng.below(12)).min(text.len() - fed);
        s.push(&text.as_bytes()[fed..fed + n], &mut out);
        fed += n;
        let held = &text[fed - s.held()..fed].to_ascii_lowercase();
        most = most.max(held.len());
        assert!(
            held.len() <= bound || keywords.iter().any(|k| held.starts_with(k.as_str())),
            "held {held:?}, which does not begin with a keyword"
        );
        assert_eq!(out.len(), fed - s.held());
        assert_eq!(&out[checked..], &text.as_bytes()[checked..out.len()]);
        checked = out.len();
    }
    s.finish(&mut out);
    assert_eq!(out, text.as_bytes());
    assert!(
        most > bound,
        "the text never made the stream hold from a keyword: the test tests nothing"
    );
}

#[test]
fn a_secret_is_held_from_its_keyword_and_released_once_decided() {
    let m = masker();
    let bound = longest_keyword() - 1;
    let mut rng = Rng::new(62);
    let tok = classic(&mut rng, "ghp");
    let head = "some clean text first, then the value ";
    let mut s = m.stream();
    let mut out = Vec::new();
    assert!(
        s.push(format!("{head}{}", &tok[..24]).as_bytes(), &mut out)
            .is_empty()
    );
    assert_eq!(out, head.as_bytes(), "everything before the keyword is out");
    assert_eq!(s.held(), 24);
    // All of it arrived, but whether a word character follows is not known yet.
    assert!(s.push(&tok.as_bytes()[24..], &mut out).is_empty());
    assert_eq!(out, head.as_bytes());
    assert_eq!(s.held(), tok.len());
    let f = s.push(b"\nand the rest of the line", &mut out);
    assert_eq!(f.len(), 1);
    let expected = format!("{head}{}\nand the rest of the line", f[0].replacement());
    assert!(s.held() <= bound);
    assert_eq!(
        String::from_utf8_lossy(&out),
        expected[..expected.len() - s.held()]
    );
    assert!(s.finish(&mut out).is_empty());
    assert_eq!(s.held(), 0);
    assert_eq!(String::from_utf8_lossy(&out), expected);
}

#[test]
fn a_private_key_is_held_from_its_header_until_its_footer() {
    let m = masker();
    let mut rng = Rng::new(63);
    let key = pem(&mut rng, "RSA ", 1190);
    let footer = key.find(&format!("{DASHES}END")).unwrap();
    let head = "id_rsa:\n";
    let mut s = m.stream();
    let mut out = Vec::new();
    for chunk in format!("{head}{}", &key[..footer]).as_bytes().chunks(100) {
        assert!(s.push(chunk, &mut out).is_empty());
    }
    assert_eq!(out, head.as_bytes());
    assert_eq!(s.held(), footer);
    let f = s.push(format!("{}\nuser=git\n", &key[footer..]).as_bytes(), &mut out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].len, key.len());
    assert!(s.held() < longest_keyword());
    s.finish(&mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("{head}{}\nuser=git\n", f[0].replacement())
    );
}

#[test]
fn what_is_held_is_bounded_by_the_longest_secret() {
    let m = masker();
    let mut rng = Rng::new(64);
    // A generic value runs to 200 bytes at most; a PEM block to PEM_MAX.
    let long_value = format!("password = {}", rng.alnum(20_000));
    let long_pem = format!("{DASHES}BEGIN PRIVATE KEY{DASHES}\n{}", rng.pick(B64, 20_000));
    for (text, bound) in [(long_value, 300), (long_pem, rules::PEM_MAX + 100)] {
        let mut s = m.stream();
        let mut out = Vec::new();
        let mut most = 0;
        for chunk in text.as_bytes().chunks(100) {
            s.push(chunk, &mut out);
            most = most.max(s.held());
        }
        assert!(most <= bound, "held {most} bytes of {:?}…", &text[..20]);
        s.finish(&mut out);
    }
}

#[test]
fn an_exact_value_is_never_released_in_part() {
    let mut rng = Rng::new(65);
    let value = rng.alnum(40);
    let m = masker().with_exact(&[("caller".to_owned(), value.clone().into_bytes())]);
    let mut s = m.stream();
    let mut out = Vec::new();
    let text = keyword_free_prose(&mut rng, 2000);
    s.push(text.as_bytes(), &mut out);
    // Any tail could be the start of the value: up to its length minus one is held.
    assert!(s.held() < value.len());
    s.push(&value.as_bytes()[..30], &mut out);
    assert!(text.as_bytes().starts_with(&out));
    assert!((30..value.len()).contains(&s.held()), "held {}", s.held());
    let f = s.push(format!("{} end", &value[30..]).as_bytes(), &mut out);
    assert_eq!(f.len(), 1);
    s.finish(&mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("{text}{} end", f[0].replacement())
    );
}
