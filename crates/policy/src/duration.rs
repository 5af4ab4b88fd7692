//! The durations a policy file writes: a whole number and one unit, `s`, `m`, `h` or `d`
//! ("90s", "30m", "24h", "7d"). Never reads a clock.
use std::time::Duration;

/// The longest duration a policy may give: a pending approval kept for longer than a year is a
/// typo, not a plan.
const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration a policy file cannot use; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "\"{0}\" is not a duration: write a whole number and s, m, h or d (\"90s\", \"30m\", \"24h\", \"7d\")"
    )]
    Unreadable(String),
    #[error("\"{0}\" is zero: give a positive duration")]
    Zero(String),
    #[error("\"{0}\" is longer than a year")]
    TooLong(String),
}

/// Parses "90s", "30m", "24h", "7d".
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Unreadable(text.to_owned());
    let t = text.trim();
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    let d = Duration::from_secs(n.checked_mul(scale).ok_or_else(bad)?);
    if d.is_zero() {
        return Err(DurationError::Zero(text.to_owned()));
    }
    if d > MAX {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    Ok(d)
}

/// The largest whole unit that writes `d` exactly: 3600 s is "1h", 90 s is "90s" (but a day
/// stays "24h", as people say it).
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        _ if s.is_multiple_of(86400) && s > 86400 => format!("{}d", s / 86400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_units() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "h",
            "10",
            "1.5h",
            "-1h",
            "1 h",
            "1H",
            "1w",
            "1h30m",
            "99999999999999999999d",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e, DurationError::Unreadable(bad.into()));
            assert!(e.to_string().contains("not a duration"), "{bad}: {e}");
        }
        assert_eq!(parse("0s"), Err(DurationError::Zero("0s".into())));
        assert!(
            parse("400d")
                .unwrap_err()
                .to_string()
                .contains("longer than a year")
        );
    }

    #[test]
    fn formats_with_the_largest_exact_unit() {
        for text in ["90s", "30m", "24h", "7d", "25h", "61s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(format(parse("60m").unwrap()), "1h");
    }
}
