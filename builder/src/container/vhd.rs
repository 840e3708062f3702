//! Fixed VHD: the raw disk followed by a 512-byte footer.
//!
//! Follows Microsoft's "Virtual Hard Disk Image Format Specification" (v1.0, 2006),
//! footer and CHS geometry algorithm (appendix). Supported: fixed disks only (disk
//! type 2), written and read. Left out: dynamic and differencing VHDs (their
//! dynamic header and BAT), which the reader rejects with a clear error.
//!
//! All footer fields are big-endian, unlike VHDX. The virtual size is rounded up
//! to a whole MiB, as Azure requires. The creator application is `win ` (what
//! Hyper-V writes) because readers such as qemu take the footer's current size as
//! the disk size only for creators known to do so; for any other creator qemu
//! derives the size from the CHS geometry, which cannot express most sizes and
//! would cut off the end of the disk (where the backup GPT lives).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use abforge_partitions::Guid;

use super::source::RawFile;
use super::{DiskSource, invalid_data};

pub const FOOTER_SIZE: u64 = 512;
pub const COOKIE: &[u8; 8] = b"conectix";
const FEATURES_RESERVED: u32 = 2;
const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// Fixed disks have no dynamic header.
const NO_DATA_OFFSET: u64 = u64::MAX;
const CREATOR_APPLICATION: &[u8; 4] = b"win ";
const CREATOR_VERSION: u32 = 0x000a_0000;
const CREATOR_HOST_OS_WINDOWS: &[u8; 4] = b"Wi2k";
const DISK_TYPE_FIXED: u32 = 2;
const MIB: u64 = 1 << 20;
/// The largest VHD the format allows: 2040 GiB.
pub const MAX_SIZE: u64 = 2040 << 30;
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the VHD epoch.
const VHD_EPOCH: u64 = 946_684_800;

/// What the caller decides about a VHD footer.
#[derive(Debug, Clone, Copy)]
pub struct VhdOptions {
    /// The footer's unique id (derive it from the manifest seed).
    pub unique_id: Guid,
    /// Seconds since 2000-01-01 UTC; see [`vhd_timestamp`].
    pub timestamp: u32,
}

/// The VHD time stamp for a SOURCE_DATE_EPOCH: seconds since 2000-01-01, 0 for
/// earlier dates and saturating at the 32-bit limit (year 2136).
pub fn vhd_timestamp(source_date_epoch: u64) -> u32 {
    u32::try_from(source_date_epoch.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX)
}

/// Cylinders, heads and sectors per track, as the specification's algorithm computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

/// The CHS geometry for a disk of `total_sectors` 512-byte sectors (VHD
/// specification, appendix "CHS Calculation"); disks past ~127 GiB get the maximum.
pub fn chs_geometry(total_sectors: u64) -> Chs {
    let total = total_sectors.min(65535 * 16 * 255);
    let (sectors_per_track, heads, cylinder_times_heads);
    if total >= 65535 * 16 * 63 {
        sectors_per_track = 255;
        heads = 16;
        cylinder_times_heads = total / 255;
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut h = cth.div_ceil(1024).max(4);
        if cth >= h * 1024 || h > 16 {
            spt = 31;
            h = 16;
            cth = total / spt;
        }
        if cth >= h * 1024 {
            spt = 63;
            h = 16;
            cth = total / spt;
        }
        sectors_per_track = spt;
        heads = h;
        cylinder_times_heads = cth;
    }
    // total is capped so cylinders <= 65535; heads <= 16 and sectors <= 255 by construction.
    Chs {
        cylinders: u16::try_from(cylinder_times_heads / heads).unwrap_or(u16::MAX),
        heads: u8::try_from(heads).unwrap_or(u8::MAX),
        sectors_per_track: u8::try_from(sectors_per_track).unwrap_or(u8::MAX),
    }
}

/// The one's complement of the byte sum, with the checksum field (64..68) taken as zero.
fn footer_checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}

/// The footer of a fixed VHD whose data part is `size` bytes (a multiple of 512).
pub fn fixed_footer(size: u64, options: &VhdOptions) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(COOKIE);
    f[8..12].copy_from_slice(&FEATURES_RESERVED.to_be_bytes());
    f[12..16].copy_from_slice(&FILE_FORMAT_VERSION.to_be_bytes());
    f[16..24].copy_from_slice(&NO_DATA_OFFSET.to_be_bytes());
    f[24..28].copy_from_slice(&options.timestamp.to_be_bytes());
    f[28..32].copy_from_slice(CREATOR_APPLICATION);
    f[32..36].copy_from_slice(&CREATOR_VERSION.to_be_bytes());
    f[36..40].copy_from_slice(CREATOR_HOST_OS_WINDOWS);
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let chs = chs_geometry(size / 512);
    f[56..58].copy_from_slice(&chs.cylinders.to_be_bytes());
    f[58] = chs.heads;
    f[59] = chs.sectors_per_track;
    f[60..64].copy_from_slice(&DISK_TYPE_FIXED.to_be_bytes());
    f[68..84].copy_from_slice(&options.unique_id.to_rfc_bytes());
    // 84: saved state 0; 85..512 reserved, zero.
    let checksum = footer_checksum(&f);
    f[64..68].copy_from_slice(&checksum.to_be_bytes());
    f
}

/// Writes `source` into `out` (an empty file) as a fixed VHD: the data (sparse),
/// zeros up to the next MiB, then the footer.
pub fn write_vhd_fixed(
    source: &dyn DiskSource,
    out: &File,
    options: &VhdOptions,
) -> io::Result<()> {
    // A disk too large is refused before any of it is copied.
    let size = fixed_size(source.size())?;
    super::raw::write_raw(source, out)?;
    footer_at(out, size, options)
}

/// The size of the data part of a fixed VHD holding a disk of `disk_size` bytes:
/// a whole MiB, at most 2040 GiB.
pub fn fixed_size(disk_size: u64) -> io::Result<u64> {
    disk_size.checked_next_multiple_of(MIB).filter(|&s| s <= MAX_SIZE).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {disk_size}-byte disk is larger than a VHD can hold (2040 GiB)"),
        )
    })
}

/// Turns `out`, which holds a raw disk of `disk_size` bytes, into a fixed VHD:
/// the disk padded to a whole MiB, then the footer.
pub fn append_fixed_footer(out: &File, disk_size: u64, options: &VhdOptions) -> io::Result<()> {
    footer_at(out, fixed_size(disk_size)?, options)
}

/// Pads `out` to `size` (from [`fixed_size`]) and writes the footer after it.
fn footer_at(out: &File, size: u64, options: &VhdOptions) -> io::Result<()> {
    out.set_len(size)?;
    out.write_all_at(&fixed_footer(size, options), size)?;
    Ok(())
}

/// A fixed VHD opened for reading: the data part of the file.
#[derive(Debug)]
pub struct VhdReader {
    data: RawFile,
}

impl VhdReader {
    pub fn open(file: File) -> io::Result<VhdReader> {
        let len = file.metadata()?.len();
        if len < FOOTER_SIZE {
            return Err(invalid_data(format!(
                "the file is {len} bytes, shorter than a VHD footer"
            )));
        }
        let mut footer = [0u8; 512];
        file.read_exact_at(&mut footer, len - FOOTER_SIZE)?;
        let size = parse_fixed_footer(&footer, len - FOOTER_SIZE)?;
        Ok(VhdReader { data: RawFile::with_size(file, size) })
    }
}

/// Checks a footer found at `footer_offset` and returns the disk size.
pub fn parse_fixed_footer(footer: &[u8; 512], footer_offset: u64) -> io::Result<u64> {
    let be32 = |at: usize| {
        u32::from_be_bytes([footer[at], footer[at + 1], footer[at + 2], footer[at + 3]])
    };
    if &footer[0..8] != COOKIE {
        return Err(invalid_data("the VHD footer has no \"conectix\" cookie"));
    }
    let stored = be32(64);
    let computed = footer_checksum(footer);
    if stored != computed {
        return Err(invalid_data(format!(
            "the VHD footer checksum is {stored:#010x}, expected {computed:#010x}"
        )));
    }
    match be32(60) {
        DISK_TYPE_FIXED => {}
        3 => return Err(invalid_data("dynamic VHDs are not supported, only fixed ones")),
        4 => return Err(invalid_data("differencing VHDs are not supported, only fixed ones")),
        other => return Err(invalid_data(format!("unknown VHD disk type {other}"))),
    }
    let mut size_bytes = [0u8; 8];
    size_bytes.copy_from_slice(&footer[48..56]);
    let size = u64::from_be_bytes(size_bytes);
    if size > footer_offset {
        return Err(invalid_data(format!(
            "the VHD footer gives a size of {size} bytes but only {footer_offset} bytes of data precede it"
        )));
    }
    Ok(size)
}

impl DiskSource for VhdReader {
    fn size(&self) -> u64 {
        self.data.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.read_at(buf, offset)
    }
    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        self.data.data_ranges(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_follows_the_specification() {
        // 1 GiB: 2097152 sectors -> 17 spt gives 123361 c*h, heads 121 > 16, so 31 spt:
        // 67650 >= 16*1024, so 63 spt: 33288 / 16 = 2080 cylinders.
        assert_eq!(
            chs_geometry(2_097_152),
            Chs { cylinders: 2080, heads: 16, sectors_per_track: 63 }
        );
        // 10 MiB = 20480 sectors: 17 spt, 1204 c*h, heads 2 -> 4, 301 cylinders.
        assert_eq!(chs_geometry(20_480), Chs { cylinders: 301, heads: 4, sectors_per_track: 17 });
        // 127 GiB and above: the maximum geometry.
        let max = Chs { cylinders: 65535, heads: 16, sectors_per_track: 255 };
        assert_eq!(chs_geometry(1 << 40), max);
        assert_eq!(chs_geometry(65535 * 16 * 255), max);
        assert_eq!(chs_geometry(0), Chs { cylinders: 0, heads: 4, sectors_per_track: 17 });
    }

    #[test]
    fn footer_round_trips_and_checksums() {
        let options = VhdOptions {
            unique_id: Guid::from_rfc_bytes([7; 16]),
            timestamp: vhd_timestamp(1_700_000_000),
        };
        let footer = fixed_footer(16 << 20, &options);
        assert_eq!(&footer[0..8], b"conectix");
        assert_eq!(options.timestamp, 1_700_000_000 - 946_684_800);
        assert_eq!(parse_fixed_footer(&footer, 16 << 20).unwrap(), 16 << 20);
        let sum: u32 = footer.iter().map(|&b| u32::from(b)).sum();
        // The checksum's own bytes plus the others sum to a value whose complement bits cancel.
        let stored = u32::from_be_bytes(footer[64..68].try_into().unwrap());
        let others = sum - footer[64..68].iter().map(|&b| u32::from(b)).sum::<u32>();
        assert_eq!(stored, !others);
        let mut broken = footer;
        broken[100] ^= 1;
        assert!(parse_fixed_footer(&broken, 16 << 20).is_err());
        assert!(parse_fixed_footer(&footer, (16 << 20) - 1).is_err());
        assert_eq!(vhd_timestamp(0), 0);
    }
}
