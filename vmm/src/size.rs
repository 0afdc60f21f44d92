//! Human-readable byte sizes, as operators type them: `256M`, `1G`, `4096`.

use std::fmt;
use std::str::FromStr;

/// A size in bytes parsed from `<digits>[K|M|G|T][i][B]` (binary units:
/// `K` = 1024). A bare number is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Why a size string was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("'{0}' does not start with a number (expected e.g. 256M, 1G, 4096)")]
    NotANumber(String),
    #[error("'{0}' has an unknown unit (use K, M, G or T)")]
    UnknownUnit(String),
    #[error("'{0}' overflows 64 bits")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits_end == 0 {
            return Err(SizeError::NotANumber(s.to_string()));
        }
        let number: u64 = s[..digits_end]
            .parse()
            .map_err(|_| SizeError::Overflow(s.to_string()))?;
        let shift = match s[digits_end..].to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(SizeError::UnknownUnit(s.to_string())),
        };
        number
            .checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            if self.0 != 0 && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{}", self.0 >> shift, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_sizes() {
        assert_eq!("256M".parse(), Ok(ByteSize(256 << 20)));
        assert_eq!("1G".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("64mib".parse(), Ok(ByteSize(64 << 20)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("16KB".parse(), Ok(ByteSize(16 << 10)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!("".parse::<ByteSize>(), Err(SizeError::Empty));
        assert!(matches!(
            "M".parse::<ByteSize>(),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(
            "12Q".parse::<ByteSize>(),
            Err(SizeError::UnknownUnit(_))
        ));
        assert!(matches!(
            "-1M".parse::<ByteSize>(),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(
            "99999999999T".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536K");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }
}
