//! Byte sizes as written in manifests and on the command line: `512`, `8MiB`,
//! `4GiB`, `2TiB` (binary units) or `1MB`, `4GB` (powers of ten), or `auto`.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Size(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("PB", 1_000_000_000_000_000),
];

/// Why a size did not parse; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{text}' is not a size: {reason} (write e.g. 512, 8MiB, 4GiB or 2TiB; MB and GB are powers of ten)"
)]
pub struct ParseSizeError {
    pub text: String,
    pub reason: &'static str,
}

impl FromStr for Size {
    type Err = ParseSizeError;

    fn from_str(text: &str) -> Result<Size, ParseSizeError> {
        let err = |reason| ParseSizeError { text: text.to_string(), reason };
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        if digits.is_empty() {
            return Err(err("it does not start with a number"));
        }
        let number: u64 = digits.parse().map_err(|_| err("the number is too large"))?;
        let unit = unit.trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS.iter().find(|(name, _)| *name == unit).map(|(_, m)| *m).ok_or_else(|| {
                err("the unit is not one of B, KiB, MiB, GiB, TiB, kB, MB, GB, TB")
            })?
        };
        number.checked_mul(multiplier).map(Size).ok_or_else(|| err("it is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (name, unit) in
            [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        {
            if bytes >= unit && bytes.is_multiple_of(unit) {
                return write!(f, "{}{name}", bytes / unit);
            }
        }
        write!(f, "{bytes} bytes")
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as 512, 8MiB or 4GiB")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        v.parse().map_err(E::custom)
    }
}

/// A partition or file-system size: fixed, or `auto` (just big enough for the
/// contents plus headroom).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SizeSpec {
    Fixed(Size),
    Auto,
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SizeSpec, D::Error> {
        struct SpecVisitor;
        impl Visitor<'_> for SpecVisitor {
            type Value = SizeSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 8MiB or 4GiB, or auto")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeSpec, E> {
                Ok(SizeSpec::Fixed(Size(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeSpec, E> {
                SizeVisitor.visit_i64(v).map(SizeSpec::Fixed)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeSpec, E> {
                if v == "auto" {
                    Ok(SizeSpec::Auto)
                } else {
                    SizeVisitor.visit_str(v).map(SizeSpec::Fixed)
                }
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        let cases = [
            ("512", 512),
            ("8MiB", 8 << 20),
            ("4GiB", 4 << 30),
            ("2TiB", 2 << 40),
            ("1MB", 1_000_000),
            ("4GB", 4_000_000_000),
            ("16 KiB", 16 << 10),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<Size>().unwrap(), Size(bytes), "{text}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        for text in ["", "MiB", "4 gigs", "4G", "-1", "99999999999TiB", "1.5GiB"] {
            let err = text.parse::<Size>().unwrap_err();
            assert!(err.to_string().contains("is not a size"), "{text}: {err}");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Size(8 << 20).to_string(), "8MiB");
        assert_eq!(Size(2 << 40).to_string(), "2TiB");
        assert_eq!(Size(1000).to_string(), "1000 bytes");
    }
}
