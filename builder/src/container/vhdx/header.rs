//! The VHDX header (MS-VHDX 2.2.2): a 4 KiB structure stored twice, at 64 KiB and
//! 128 KiB; the valid copy with the larger sequence number is the current one.

use abforge_partitions::Guid;

use super::{MIB, VhdxError, crc32c_with_zeroed_field, guid_at, le16, le32, le64, put_guid};

pub const HEADER_SIZE: usize = 4096;
const SIGNATURE: &[u8; 4] = b"head";
const CHECKSUM_AT: usize = 4;
const SEQUENCE_NUMBER_AT: usize = 8;
const FILE_WRITE_GUID_AT: usize = 16;
const DATA_WRITE_GUID_AT: usize = 32;
const LOG_GUID_AT: usize = 48;
const LOG_VERSION_AT: usize = 64;
const VERSION_AT: usize = 66;
const LOG_LENGTH_AT: usize = 68;
const LOG_OFFSET_AT: usize = 72;
/// The only version defined (qemu rejects others).
pub const VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sequence_number: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    /// Zero when the log holds nothing to replay.
    pub log_guid: Guid,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(SIGNATURE);
        b[SEQUENCE_NUMBER_AT..SEQUENCE_NUMBER_AT + 8]
            .copy_from_slice(&self.sequence_number.to_le_bytes());
        put_guid(&mut b, FILE_WRITE_GUID_AT, self.file_write_guid);
        put_guid(&mut b, DATA_WRITE_GUID_AT, self.data_write_guid);
        put_guid(&mut b, LOG_GUID_AT, self.log_guid);
        b[LOG_VERSION_AT..LOG_VERSION_AT + 2].copy_from_slice(&0u16.to_le_bytes());
        b[VERSION_AT..VERSION_AT + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[LOG_LENGTH_AT..LOG_LENGTH_AT + 4].copy_from_slice(&self.log_length.to_le_bytes());
        b[LOG_OFFSET_AT..LOG_OFFSET_AT + 8].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc32c_with_zeroed_field(&b, CHECKSUM_AT);
        b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks one header copy (`which` names it in errors).
    pub fn parse(b: &[u8], which: &str) -> Result<Header, VhdxError> {
        if b.len() < HEADER_SIZE {
            return Err(VhdxError::Corrupt(format!("{which} is truncated")));
        }
        let b = &b[..HEADER_SIZE];
        if &b[0..4] != SIGNATURE {
            return Err(VhdxError::Corrupt(format!("{which} has no \"head\" signature")));
        }
        let stored = le32(b, CHECKSUM_AT);
        let computed = crc32c_with_zeroed_field(b, CHECKSUM_AT);
        if stored != computed {
            return Err(VhdxError::Corrupt(format!(
                "{which} has a bad checksum (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        let version = le16(b, VERSION_AT);
        if version != VERSION {
            return Err(VhdxError::Unsupported(format!(
                "{which} has version {version}, only version 1 is defined"
            )));
        }
        let header = Header {
            sequence_number: le64(b, SEQUENCE_NUMBER_AT),
            file_write_guid: guid_at(b, FILE_WRITE_GUID_AT),
            data_write_guid: guid_at(b, DATA_WRITE_GUID_AT),
            log_guid: guid_at(b, LOG_GUID_AT),
            log_length: le32(b, LOG_LENGTH_AT),
            log_offset: le64(b, LOG_OFFSET_AT),
        };
        if !header.log_offset.is_multiple_of(MIB) || u64::from(header.log_length) % MIB != 0 {
            return Err(VhdxError::Corrupt(format!(
                "{which} places the log at byte {} with length {}, not whole MiB",
                header.log_offset, header.log_length
            )));
        }
        Ok(header)
    }
}

/// The current header of two copies: the valid one with the larger sequence number.
pub fn current_header(
    first: Result<Header, VhdxError>,
    second: Result<Header, VhdxError>,
) -> Result<Header, VhdxError> {
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(if b.sequence_number > a.sequence_number { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => Err(VhdxError::Corrupt(format!("no valid VHDX header: {a}; {b}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sequence_number: u64) -> Header {
        Header {
            sequence_number,
            file_write_guid: Guid::from_rfc_bytes([1; 16]),
            data_write_guid: Guid::from_rfc_bytes([2; 16]),
            log_guid: Guid::NIL,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        }
    }

    #[test]
    fn round_trip_and_checksum() {
        let bytes = sample(5).to_bytes();
        assert_eq!(&bytes[0..4], b"head");
        assert_eq!(le16(&bytes, 66), 1);
        assert_eq!(Header::parse(&bytes, "header 1").unwrap(), sample(5));
        let mut bad = bytes.clone();
        bad[4000] ^= 0x80; // inside the 4 KiB the checksum covers
        let err = Header::parse(&bad, "header 1").unwrap_err().to_string();
        assert!(err.contains("header 1 has a bad checksum"), "{err}");
    }

    #[test]
    fn current_is_the_valid_one_with_larger_sequence() {
        let a = Header::parse(&sample(1).to_bytes(), "1");
        let b = Header::parse(&sample(2).to_bytes(), "2");
        assert_eq!(current_header(a, b).unwrap().sequence_number, 2);
        let a = Header::parse(&sample(7).to_bytes(), "1");
        let b = Header::parse(&sample(2).to_bytes(), "2");
        assert_eq!(current_header(a, b).unwrap().sequence_number, 7);
        let bad = Header::parse(&[0u8; 4096], "header 2");
        let a = Header::parse(&sample(1).to_bytes(), "1");
        assert_eq!(current_header(a, bad).unwrap().sequence_number, 1);
        let none = current_header(
            Header::parse(&[0u8; 4096], "header 1"),
            Header::parse(&[0u8; 4096], "header 2"),
        );
        assert!(none.unwrap_err().to_string().starts_with("no valid VHDX header"));
    }
}
