//! Writing bytes in place into an existing disk image (raw, fixed VHD, dynamic VHDX),
//! for small edits such as the GRUB environment block (`abforge slot`).
//!
//! Only bytes of the virtual disk that are already stored in the file are written,
//! and nothing else: no header, footer, block table or metadata changes.
//! - raw: positioned writes (`pwrite`) into the file, within its length;
//! - fixed VHD (Virtual Hard Disk Image Format Specification 1.0): the same, limited
//!   to the data part, so the 512-byte footer is never touched;
//! - VHDX ([MS-VHDX] v1.0, §2.5 BAT): the virtual offset is translated through the
//!   BAT to a FULLY_PRESENT payload block and the bytes are written there. A range
//!   that falls in a block not stored in the file (NOT_PRESENT, ZERO, UNMAPPED) is
//!   refused before anything is written, since storing it would mean allocating a
//!   block and changing the BAT.
//!
//! Left out, deliberately: the VHDX log (an in-place payload write does not need it:
//! payload writes are not logged by the specification either) and the header's
//! DataWriteGuid, which [MS-VHDX] §2.2.2 asks a writer to change before it first
//! modifies user-visible data. Changing it means rewriting both headers; abforge
//! keeps the file's structures byte for byte, and nothing that abforge or qemu reads
//! depends on it (it matters to differencing children, which abforge does not write).
//! A VHDX with a log to replay is refused when opened, as for reading.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context as _;

use super::source::RawFile;
use super::vhdx::VhdxReader;
use super::{ContainerFormat, DiskSource, detect_format, vhd};

/// Why bytes cannot be written in place.
#[derive(Debug, thiserror::Error)]
pub enum InPlaceError {
    #[error("bytes {offset}..{end} are outside the {size}-byte disk")]
    OutOfRange { offset: u64, end: u64, size: u64 },
    #[error(
        "byte {offset} of the disk is in VHDX payload block {block}, which the file does not store (it reads as zeros); writing it in place would need a new block"
    )]
    Unallocated { offset: u64, block: u64 },
    #[error("cannot write {len} bytes at byte {file_offset} of the file: {source}")]
    Write {
        len: usize,
        file_offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot flush the image to disk: {0}")]
    Sync(#[source] io::Error),
}

/// A disk image opened for reading and writing in place.
pub trait ImageUpdate: DiskSource {
    /// The container format of the file.
    fn format(&self) -> ContainerFormat;

    /// Checks that `len` bytes at `offset` of the virtual disk can be written in place,
    /// without writing anything (so a multi-part edit can be checked as a whole first).
    fn check_writable(&self, offset: u64, len: u64) -> Result<(), InPlaceError>;

    /// Writes `buf` at `offset` of the virtual disk; checks the whole range first, so
    /// on [`InPlaceError::OutOfRange`] or [`InPlaceError::Unallocated`] nothing is written.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), InPlaceError>;

    /// Flushes what was written to stable storage (`fsync`).
    fn sync(&self) -> Result<(), InPlaceError>;
}

/// Opens an image for in-place updates, detecting its format as
/// [`open_image`](super::open_image) does. The file is opened read-write.
pub fn open_for_update(path: &Path) -> anyhow::Result<Box<dyn ImageUpdate>> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    let cannot_read = || format!("cannot read {}", path.display());
    let format = detect_format(&file).with_context(cannot_read)?;
    let reader_file = file.try_clone().with_context(cannot_read)?;
    Ok(match format {
        ContainerFormat::Vhdx => Box::new(VhdxUpdate {
            reader: VhdxReader::open(reader_file)
                .with_context(|| format!("{} is not a usable VHDX file", path.display()))?,
            file,
        }),
        ContainerFormat::Vhd => {
            let size = vhd::VhdReader::open(reader_file)
                .with_context(|| format!("{} is not a usable VHD file", path.display()))?
                .size();
            let reader = RawFile::with_size(file.try_clone().with_context(cannot_read)?, size);
            Box::new(PlainUpdate { format, reader, file, size })
        }
        ContainerFormat::Raw => {
            let size = file.metadata().with_context(cannot_read)?.len();
            Box::new(PlainUpdate {
                format,
                reader: RawFile::with_size(reader_file, size),
                file,
                size,
            })
        }
    })
}

/// The end of `len` bytes at `offset` in a disk of `size` bytes.
fn checked_end(offset: u64, len: u64, size: u64) -> Result<u64, InPlaceError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(end),
        end => Err(InPlaceError::OutOfRange { offset, end: end.unwrap_or(u64::MAX), size }),
    }
}

fn write_file(file: &File, buf: &[u8], file_offset: u64) -> Result<(), InPlaceError> {
    file.write_all_at(buf, file_offset).map_err(|source| InPlaceError::Write {
        len: buf.len(),
        file_offset,
        source,
    })
}

/// A raw image, or the data part of a fixed VHD: disk offset = file offset.
struct PlainUpdate {
    format: ContainerFormat,
    reader: RawFile,
    file: File,
    /// The virtual disk's size: the file's length for raw, the footer's size for VHD.
    size: u64,
}

impl DiskSource for PlainUpdate {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reader.read_at(buf, offset)
    }
    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        self.reader.data_ranges(range)
    }
}

impl ImageUpdate for PlainUpdate {
    fn format(&self) -> ContainerFormat {
        self.format
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), InPlaceError> {
        checked_end(offset, len, self.size).map(|_| ())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), InPlaceError> {
        // usize always fits in u64 on the 64-bit targets abforge supports.
        self.check_writable(offset, buf.len() as u64)?;
        write_file(&self.file, buf, offset)
    }

    fn sync(&self) -> Result<(), InPlaceError> {
        self.file.sync_all().map_err(InPlaceError::Sync)
    }
}

/// A dynamic (or fixed) VHDX: writes go to the payload blocks the BAT maps.
struct VhdxUpdate {
    reader: VhdxReader<File>,
    /// The same open file as the reader's, for writing.
    file: File,
}

impl VhdxUpdate {
    /// The file ranges holding `len` bytes at `offset`: (file offset, length) per
    /// payload block crossed, or the first byte whose block is not stored.
    fn file_ranges(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>, InPlaceError> {
        let end = checked_end(offset, len, self.reader.size())?;
        let mut ranges = Vec::new();
        let mut pos = offset;
        while pos < end {
            let Some((file_offset, run)) = self.reader.payload_file_offset(pos) else {
                let block = pos / u64::from(self.reader.parameters().block_size);
                return Err(InPlaceError::Unallocated { offset: pos, block });
            };
            // run ≥ 1: pos is inside the disk.
            let take = run.min(end - pos);
            ranges.push((file_offset, take));
            pos += take;
        }
        Ok(ranges)
    }
}

impl DiskSource for VhdxUpdate {
    fn size(&self) -> u64 {
        self.reader.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reader.read_at(buf, offset)
    }
    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        self.reader.data_ranges(range)
    }
}

impl ImageUpdate for VhdxUpdate {
    fn format(&self) -> ContainerFormat {
        ContainerFormat::Vhdx
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), InPlaceError> {
        self.file_ranges(offset, len).map(|_| ())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), InPlaceError> {
        // usize always fits in u64 on the 64-bit targets abforge supports.
        let ranges = self.file_ranges(offset, buf.len() as u64)?;
        let mut done = 0usize;
        for (file_offset, len) in ranges {
            // Each range is a part of buf, so its length fits in usize.
            let len = super::idx(len);
            write_file(&self.file, &buf[done..done + len], file_offset)?;
            done += len;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), InPlaceError> {
        self.file.sync_all().map_err(InPlaceError::Sync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::source::{ComposedDisk, Segment};
    use crate::container::vhd::VhdOptions;
    use crate::container::vhdx::VhdxOptions;
    use crate::container::{write_atomically, write_container};
    use abforge_partitions::Guid;

    /// 8 MiB with data in the first and fourth MiB (VHDX blocks 0 and 3 of 1 MiB).
    fn disk() -> ComposedDisk {
        ComposedDisk::new(
            8 << 20,
            vec![Segment::bytes(0, vec![0x11; 4096]), Segment::bytes(3 << 20, vec![0x22; 4096])],
        )
        .unwrap()
    }

    fn write(format: ContainerFormat, path: &Path) {
        let ids = |n| Guid::from_rfc_bytes([n; 16]);
        let vhdx = VhdxOptions { block_size: 1 << 20, ..VhdxOptions::new(ids(1), ids(2), ids(3)) };
        let vhd = VhdOptions { unique_id: ids(4), timestamp: 0 };
        write_atomically(path, |out| write_container(format, &disk(), out, &vhdx, &vhd)).unwrap();
    }

    fn read(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let image = crate::container::open_image(path).unwrap();
        let mut buf = vec![0u8; len];
        image.read_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn writes_land_where_reads_find_them_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ContainerFormat::Raw, ContainerFormat::Vhd, ContainerFormat::Vhdx] {
            let path = dir.path().join(format!("disk.{format}"));
            write(format, &path);
            let len_before = std::fs::metadata(&path).unwrap().len();
            let update = open_for_update(&path).unwrap();
            assert_eq!(update.format(), format);
            // Crossing from block 0's data into a later sector of the same block, and
            // a write inside block 3.
            update.write_at(&[0xab; 1024], 3584).unwrap();
            update.write_at(&[0xcd; 512], (3 << 20) + 512).unwrap();
            update.sync().unwrap();
            drop(update);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before, "{format}");
            let head = read(&path, 0, 8192);
            assert!(head[..3584].iter().all(|&b| b == 0x11), "{format}");
            assert!(head[3584..4608].iter().all(|&b| b == 0xab), "{format}");
            assert!(head[4608..].iter().all(|&b| b == 0), "{format}");
            let block3 = read(&path, 3 << 20, 4096);
            assert!(block3[..512].iter().all(|&b| b == 0x22), "{format}");
            assert!(block3[512..1024].iter().all(|&b| b == 0xcd), "{format}");
            assert!(block3[1024..].iter().all(|&b| b == 0x22), "{format}");
        }
    }

    #[test]
    fn vhdx_refuses_blocks_it_does_not_store_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhdx");
        write(ContainerFormat::Vhdx, &path);
        let before = std::fs::read(&path).unwrap();
        let update = open_for_update(&path).unwrap();
        let err = update.write_at(&[1; 512], 2 << 20).unwrap_err();
        assert!(matches!(err, InPlaceError::Unallocated { offset, block: 2 } if offset == 2 << 20));
        // A write that starts in a stored block and runs into an unstored one.
        let err = update.write_at(&[1; 1024], (1 << 20) - 512).unwrap_err();
        assert!(matches!(err, InPlaceError::Unallocated { block: 1, .. }), "{err}");
        assert!(matches!(
            update.write_at(&[1; 512], (8 << 20) - 256),
            Err(InPlaceError::OutOfRange { .. })
        ));
        drop(update);
        assert!(std::fs::read(&path).unwrap() == before);
    }

    #[test]
    fn vhd_footer_is_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhd");
        write(ContainerFormat::Vhd, &path);
        let update = open_for_update(&path).unwrap();
        assert_eq!(update.size(), 8 << 20);
        assert!(matches!(
            update.write_at(&[0; 512], 8 << 20),
            Err(InPlaceError::OutOfRange { offset, end, size })
                if offset == 8 << 20 && end == (8 << 20) + 512 && size == 8 << 20
        ));
    }
}
