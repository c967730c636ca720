//! Money as integer cents, parsed from the decimal strings the provider uses.

use std::fmt;
use std::str::FromStr;

/// A non-negative amount in US cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(u64);

/// Why a string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("is empty")]
    Empty,
    #[error("is negative; amounts must be zero or more")]
    Negative,
    #[error("has more than two decimals")]
    TooManyDecimals,
    #[error("is not a decimal number like 12.50")]
    NotDecimal,
    #[error("is too large")]
    TooLarge,
}

impl Amount {
    /// The amount in cents.
    pub fn cents(self) -> u64 {
        self.0
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if s.starts_with('-') {
            return Err(AmountError::Negative);
        }
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, f),
            None => (s, ""),
        };
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(frac)
            || (s.contains('.') && frac.is_empty())
        {
            return Err(AmountError::NotDecimal);
        }
        if frac.len() > 2 {
            return Err(AmountError::TooManyDecimals);
        }
        let whole: u64 = whole.parse().map_err(|_| AmountError::TooLarge)?;
        let mut cents: u64 = frac.parse().unwrap_or(0);
        if frac.len() == 1 {
            cents *= 10;
        }
        whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(cents))
            .map(Amount)
            .ok_or(AmountError::TooLarge)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_amounts() {
        for (text, cents) in [
            ("8", 800),
            ("8.5", 850),
            ("8.50", 850),
            ("0", 0),
            ("0.01", 1),
        ] {
            assert_eq!(text.parse::<Amount>().unwrap().cents(), cents, "{text}");
        }
    }

    #[test]
    fn rejects_invalid_amounts() {
        use AmountError::*;
        for (text, err) in [
            ("12.345", TooManyDecimals),
            ("abc", NotDecimal),
            ("-5", Negative),
            ("1e3", NotDecimal),
            ("", Empty),
            (".5", NotDecimal),
            ("5.", NotDecimal),
            ("1,000", NotDecimal),
            (" 5", NotDecimal),
            ("99999999999999999999", TooLarge),
        ] {
            assert_eq!(text.parse::<Amount>(), Err(err), "{text}");
        }
    }

    #[test]
    fn displays_with_two_decimals() {
        assert_eq!("8.5".parse::<Amount>().unwrap().to_string(), "8.50");
    }
}
