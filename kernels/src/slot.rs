//! Slot names (`a`, `b`): short, lowercase, safe to embed in file names, GRUB
//! scripts, kernel parameters and GRUB environment variables without quoting.

use std::fmt;
use std::str::FromStr;

/// Longest slot name accepted.
pub const MAX_SLOT_NAME_LEN: usize = 16;

/// The name of an A/B slot: 1 to 16 characters from `a-z`, `0-9`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Slot(String);

/// The text is not a valid slot name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a slot name: use 1 to 16 characters from a-z and 0-9 (like 'a' or 'b')")]
pub struct ParseSlotError(pub String);

impl Slot {
    /// Slot `a`.
    pub fn a() -> Slot {
        Slot("a".to_string())
    }

    /// Slot `b`.
    pub fn b() -> Slot {
        Slot("b".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Slot {
    type Err = ParseSlotError;

    fn from_str(s: &str) -> Result<Slot, ParseSlotError> {
        let valid = !s.is_empty()
            && s.len() <= MAX_SLOT_NAME_LEN
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid { Ok(Slot(s.to_string())) } else { Err(ParseSlotError(s.to_string())) }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_invalid_names() {
        assert_eq!("a".parse::<Slot>().unwrap(), Slot::a());
        assert_eq!("slot2".parse::<Slot>().unwrap().as_str(), "slot2");
        for bad in ["", "A", "a-b", "a b", "abcdefghijklmnopq", "é"] {
            assert!(bad.parse::<Slot>().is_err(), "{bad:?} accepted");
        }
    }
}
