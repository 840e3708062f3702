//! 16-byte identifiers and their two on-disk byte orders.
//!
//! GPT and VHDX store GUIDs in the Microsoft mixed-endian form (the first three
//! fields little-endian); ext4 `s_uuid` and the dm-verity superblock store them in
//! RFC 4122 order, the same order as the printed string. A [`Guid`] keeps the RFC
//! order internally and converts only at the edges.

use std::fmt;
use std::str::FromStr;

/// A GUID/UUID held in RFC 4122 byte order (the order of its printed form).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid([u8; 16]);

/// The text was not a GUID of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a GUID of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
pub struct ParseGuidError(pub String);

impl Guid {
    /// The all-zero GUID (an unused GPT entry, a VHDX "no log" id).
    pub const NIL: Guid = Guid([0; 16]);

    /// From bytes in RFC 4122 order.
    pub const fn from_rfc_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The bytes in RFC 4122 order (ext4, dm-verity).
    pub const fn to_rfc_bytes(self) -> [u8; 16] {
        self.0
    }

    /// From the mixed-endian on-disk form used by GPT and VHDX.
    pub fn from_mixed_endian(bytes: [u8; 16]) -> Guid {
        Guid(swap_mixed(bytes))
    }

    /// The mixed-endian on-disk form used by GPT and VHDX.
    pub fn to_mixed_endian(self) -> [u8; 16] {
        swap_mixed(self.0)
    }

    /// Forces the RFC 4122 version-4 and variant bits, as systemd-repart does for
    /// identities derived from a hash.
    pub fn with_v4_bits(mut self) -> Guid {
        self.0[6] = (self.0[6] & 0x0f) | 0x40;
        self.0[8] = (self.0[8] & 0x3f) | 0x80;
        self
    }

    pub fn is_nil(self) -> bool {
        self.0 == [0; 16]
    }
}

/// Reverses the first three fields (4, 2 and 2 bytes): the conversion is its own inverse.
fn swap_mixed(b: [u8; 16]) -> [u8; 16] {
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = ParseGuidError;

    fn from_str(text: &str) -> Result<Guid, ParseGuidError> {
        let err = || ParseGuidError(text.to_string());
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(err());
        }
        let hex: String = groups.concat();
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Guid(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_guid_round_trips_through_mixed_endian() {
        let esp: Guid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap();
        assert_eq!(
            esp.to_mixed_endian(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_mixed_endian(esp.to_mixed_endian()), esp);
        assert_eq!(esp.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "c12a7328f81f11d2ba4b00a0c93ec93b", "c12a7328-f81f-11d2-ba4b-00a0c93ec93g"]
        {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn v4_bits_are_forced() {
        let g = Guid::from_rfc_bytes([0xff; 16]).with_v4_bits();
        assert_eq!(g.to_string(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
