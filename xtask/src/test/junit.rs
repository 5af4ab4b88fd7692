//! The failed tests of a nextest run, read from its JUnit report, for the summary that ends
//! `cargo xtask test`.
//!
//! nextest names its failures at the end of its own output, but the fuzz run and the guest tests
//! print a great deal after it: a CI log cut to its head and tail would lose which test failed and
//! why. The summary repeats each failed (and each flaky) test with the end of what it printed.
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// Where nextest writes the report, as `.config/nextest.toml` asks (default profile).
pub const REPORT: &str = "target/nextest/default/junit.xml";

/// How many of a failed test's last output lines the summary shows.
const TAIL_LINES: usize = 30;
/// How many lines of its panic message.
const PANIC_LINES: usize = 20;

#[derive(Deserialize)]
struct Testsuites {
    #[serde(rename = "testsuite", default)]
    suites: Vec<Testsuite>,
}

#[derive(Deserialize)]
struct Testsuite {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "testcase", default)]
    cases: Vec<Testcase>,
}

#[derive(Deserialize)]
struct Testcase {
    #[serde(rename = "@name")]
    name: String,
    failure: Option<Outcome>,
    error: Option<Outcome>,
    #[serde(rename = "flakyFailure", default)]
    flaky: Vec<Outcome>,
    #[serde(rename = "system-out")]
    stdout: Option<String>,
    #[serde(rename = "system-err")]
    stderr: Option<String>,
}

#[derive(Deserialize)]
struct Outcome {
    #[serde(rename = "@message")]
    message: Option<String>,
    #[serde(rename = "@type")]
    kind: Option<String>,
    #[serde(rename = "$text")]
    text: Option<String>,
    /// A retried attempt's own output (a flaky test's failed try); the final attempt's is the
    /// test case's.
    #[serde(rename = "system-out")]
    stdout: Option<String>,
    #[serde(rename = "system-err")]
    stderr: Option<String>,
}

/// One test that did not simply pass.
#[derive(Debug, PartialEq)]
pub struct Failed {
    /// `binary::test`, as nextest names it.
    pub name: String,
    /// Failed in the end (else it passed on a retry: flaky).
    pub failed: bool,
    /// How it failed, as nextest put it (exit code, signal, timeout).
    pub how: String,
    /// Its panic message (without the backtrace), when it panicked.
    pub panic: Vec<String>,
    /// The last lines it printed before that (stdout, then stderr).
    pub tail: Vec<String>,
}

/// The failed and flaky tests of the report at `path`.
pub fn read(path: &Path) -> Result<Vec<Failed>> {
    let xml = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&xml).with_context(|| format!("parsing {}", path.display()))
}

fn parse(xml: &str) -> Result<Vec<Failed>> {
    let report: Testsuites = quick_xml::de::from_str(xml)?;
    let mut out = Vec::new();
    for suite in report.suites {
        for case in suite.cases {
            let (outcome, failed) = match (case.failure.as_ref().or(case.error.as_ref()), case.flaky.last()) {
                (Some(outcome), _) => (outcome, true),
                (None, Some(outcome)) => (outcome, false),
                (None, None) => continue,
            };
            let how = outcome
                .kind
                .clone()
                .or_else(|| outcome.message.clone())
                .unwrap_or_default();
            let panic = outcome
                .text
                .as_deref()
                .unwrap_or_default()
                .lines()
                .take_while(|line| !line.starts_with("stack backtrace:"))
                .take(PANIC_LINES)
                .map(str::to_owned)
                .collect();
            // The panic (and its backtrace) ends stderr; what the test logged comes before it.
            let (stdout, stderr) = if failed {
                (&case.stdout, &case.stderr)
            } else {
                (&outcome.stdout, &outcome.stderr)
            };
            let printed: Vec<&str> = [stdout.as_deref(), stderr.as_deref()]
                .into_iter()
                .flatten()
                .flat_map(str::lines)
                .take_while(|line| !(line.starts_with("thread '") && line.contains("panicked at")))
                .filter(|line| !line.trim().is_empty())
                .collect();
            let tail = printed[printed.len().saturating_sub(TAIL_LINES)..]
                .iter()
                .map(|line| (*line).to_owned())
                .collect();
            out.push(Failed {
                name: format!("{}::{}", suite.name, case.name),
                failed,
                how,
                panic,
                tail,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape nextest 0.9 writes: the panic as the failure's text, the test's output after.
    #[test]
    fn names_failed_and_flaky_tests_with_their_panic_and_what_they_printed_before_it() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="1" errors="0">
  <testsuite name="ghgate-e2e::https" tests="3" failures="1">
    <testcase name="passes" classname="ghgate-e2e::https" time="0.1"/>
    <testcase name="breaks" classname="ghgate-e2e::https" time="2.5">
      <failure message="thread &apos;breaks&apos; panicked at tests/https.rs:9:5" type="test failure with exit code 101">thread &apos;breaks&apos; panicked at tests/https.rs:9:5:
left: 24 &lt; right: 16
stack backtrace:
   0: __rustc::rust_begin_unwind</failure>
      <system-out>
running 1 test
test breaks ... FAILED</system-out>
      <system-err>gateway: listening
thread &apos;breaks&apos; panicked at tests/https.rs:9:5:
left: 24 &lt; right: 16
stack backtrace:
   0: __rustc::rust_begin_unwind</system-err>
    </testcase>
    <testcase name="wobbles" classname="ghgate-e2e::https">
      <flakyFailure type="test failure" message="timed out">thread &apos;wobbles&apos; panicked at tests/https.rs:20:1:
waited 10 s
stack backtrace:<system-err>slow
thread &apos;wobbles&apos; panicked at tests/https.rs:20:1:</system-err></flakyFailure>
      <system-out>the passing try</system-out>
    </testcase>
  </testsuite>
</testsuites>"#;
        let failed = parse(xml).unwrap();
        assert_eq!(
            failed,
            [
                Failed {
                    name: "ghgate-e2e::https::breaks".into(),
                    failed: true,
                    how: "test failure with exit code 101".into(),
                    panic: vec![
                        "thread 'breaks' panicked at tests/https.rs:9:5:".into(),
                        "left: 24 < right: 16".into(),
                    ],
                    tail: vec![
                        "running 1 test".into(),
                        "test breaks ... FAILED".into(),
                        "gateway: listening".into(),
                    ],
                },
                Failed {
                    name: "ghgate-e2e::https::wobbles".into(),
                    failed: false,
                    how: "test failure".into(),
                    panic: vec![
                        "thread 'wobbles' panicked at tests/https.rs:20:1:".into(),
                        "waited 10 s".into(),
                    ],
                    tail: vec!["slow".into()],
                },
            ]
        );
    }

    #[test]
    fn keeps_only_the_last_lines() {
        let err: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let xml = format!(
            r#"<testsuites><testsuite name="s"><testcase name="t"><failure type="x"/><system-err>{err}</system-err></testcase></testsuite></testsuites>"#
        );
        let failed = parse(&xml).unwrap();
        assert_eq!(failed[0].tail.len(), TAIL_LINES);
        assert_eq!(failed[0].tail.last().unwrap(), "line 99");
        assert!(
            parse("<testsuites><testsuite").is_err(),
            "a cut report is an error"
        );
    }
}
