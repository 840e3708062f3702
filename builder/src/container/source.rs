//! Virtual disks to write into a container: a disk composed of in-memory bytes and
//! windows of (sparse) partition image files, and a whole raw image file.
//!
//! Holes of sparse files are found with `SEEK_DATA` / `SEEK_HOLE`, so a 2 TiB
//! partition that holds 10 MiB costs 10 MiB of reading. A file system without
//! hole reporting simply reports everything as data.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::{bail, ensure};
use rustix::fs::SeekFrom;

use super::{DiskSource, idx, is_zero};

/// Where the bytes of a [`Segment`] come from.
#[derive(Debug, Clone)]
pub enum SegmentData {
    /// Bytes held in memory (a GPT header and table); their length is the segment's.
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `file_offset`. Past the end of the file they read as zeros.
    File { file: Arc<File>, file_offset: u64 },
}

/// `len` bytes of the disk starting at `disk_offset`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub disk_offset: u64,
    pub len: u64,
    pub data: SegmentData,
}

impl Segment {
    pub fn bytes(disk_offset: u64, bytes: Vec<u8>) -> Segment {
        // usize always fits in u64 on the 64-bit targets abforge supports.
        let len = bytes.len() as u64;
        Segment { disk_offset, len, data: SegmentData::Bytes(bytes) }
    }

    pub fn file(disk_offset: u64, len: u64, file: Arc<File>, file_offset: u64) -> Segment {
        Segment { disk_offset, len, data: SegmentData::File { file, file_offset } }
    }

    fn end(&self) -> u64 {
        // Checked when the ComposedDisk is built.
        self.disk_offset + self.len
    }
}

/// A disk made of ordered, non-overlapping segments; bytes outside every segment
/// read as zeros.
#[derive(Debug, Clone)]
pub struct ComposedDisk {
    size: u64,
    segments: Vec<Segment>,
}

impl ComposedDisk {
    /// A disk of `size` bytes; `segments` must be sorted by offset, must not
    /// overlap and must lie within the disk.
    pub fn new(size: u64, segments: Vec<Segment>) -> anyhow::Result<ComposedDisk> {
        let mut previous_end = 0u64;
        for (index, segment) in segments.iter().enumerate() {
            if let SegmentData::Bytes(bytes) = &segment.data {
                ensure!(
                    bytes.len() as u64 == segment.len,
                    "segment {index} of the disk holds {} bytes but claims {}",
                    bytes.len(),
                    segment.len
                );
            }
            let Some(end) = segment.disk_offset.checked_add(segment.len) else {
                bail!("segment {index} of the disk ends past 2^64 bytes");
            };
            ensure!(
                segment.disk_offset >= previous_end,
                "segment {index} of the disk (at byte {}) overlaps or precedes the previous one (ending at {previous_end})",
                segment.disk_offset
            );
            ensure!(
                end <= size,
                "segment {index} of the disk ends at byte {end}, past the disk size {size}"
            );
            if let SegmentData::File { file_offset, .. } = &segment.data {
                ensure!(
                    file_offset.checked_add(segment.len).is_some(),
                    "segment {index} of the disk reads past 2^64 bytes of its file"
                );
            }
            previous_end = end;
        }
        Ok(ComposedDisk { size, segments })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segments overlapping `range`, each with the overlapping part.
    fn overlapping(&self, range: Range<u64>) -> impl Iterator<Item = (&Segment, Range<u64>)> {
        let first = self.segments.partition_point(|s| s.end() <= range.start);
        self.segments[first..].iter().take_while(move |s| s.disk_offset < range.end).filter_map(
            move |s| {
                let start = s.disk_offset.max(range.start);
                let end = s.end().min(range.end);
                (start < end).then_some((s, start..end))
            },
        )
    }
}

impl DiskSource for ComposedDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = check_range(self.size, buf.len(), offset)?;
        buf.fill(0);
        for (segment, part) in self.overlapping(offset..end) {
            // Both differences are below buf.len(), a usize.
            let dst = &mut buf[idx(part.start - offset)..idx(part.end - offset)];
            let within = part.start - segment.disk_offset;
            match &segment.data {
                SegmentData::Bytes(bytes) => {
                    // within + dst.len() <= segment.len == bytes.len(), a usize.
                    let start = idx(within);
                    dst.copy_from_slice(&bytes[start..start + dst.len()]);
                }
                SegmentData::File { file, file_offset } => {
                    read_at_or_zeros(file, dst, file_offset + within)?;
                }
            }
        }
        Ok(())
    }

    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        let range = range.start.min(self.size)..range.end.min(self.size);
        let mut out = Vec::new();
        for (segment, part) in self.overlapping(range) {
            match &segment.data {
                SegmentData::Bytes(_) => out.push(part),
                SegmentData::File { file, file_offset } => {
                    let shift = segment.disk_offset;
                    let file_range =
                        file_offset + (part.start - shift)..file_offset + (part.end - shift);
                    for data in file_data_ranges(file, file_range)? {
                        out.push(data.start - file_offset + shift..data.end - file_offset + shift);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A whole raw disk image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
}

impl RawFile {
    pub fn open(file: File) -> io::Result<RawFile> {
        let size = file.metadata()?.len();
        Ok(RawFile { file, size })
    }

    /// The first `size` bytes of `file` (a fixed VHD's data part).
    pub fn with_size(file: File, size: u64) -> RawFile {
        RawFile { file, size }
    }
}

impl DiskSource for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, buf.len(), offset)?;
        read_at_or_zeros(&self.file, buf, offset)
    }

    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        file_data_ranges(&self.file, range.start.min(self.size)..range.end.min(self.size))
    }
}

/// Checks that `len` bytes at `offset` lie within a disk of `size` bytes; returns the end.
pub(crate) fn check_range(size: u64, len: usize, offset: u64) -> io::Result<u64> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(end),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("read of {len} bytes at {offset} is past the end of a {size}-byte disk"),
        )),
    }
}

/// Reads `buf.len()` bytes at `offset`; the part past the end of the file reads as zeros.
pub(crate) fn read_at_or_zeros(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The sub-ranges of `range` in `file` that are not holes (sorted). A file system
/// that cannot report holes reports the whole range.
pub fn file_data_ranges(file: &File, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(data) => data,
            // No data at or after `pos`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                out.push(pos..range.end);
                break;
            }
            Err(err) => return Err(err.into()),
        };
        if data >= range.end {
            break;
        }
        let hole = match rustix::fs::seek(file, SeekFrom::Hole(data)) {
            Ok(hole) => hole,
            Err(rustix::io::Errno::NXIO) => range.end,
            Err(err) => return Err(err.into()),
        };
        let end = hole.min(range.end);
        out.push(data.max(pos)..end);
        pos = end.max(pos + 1);
    }
    Ok(out)
}

/// Fills `buf` with the source's bytes at `offset`, reading only the ranges that
/// may hold data; returns whether any byte is non-zero.
pub fn read_sparse(source: &dyn DiskSource, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    let end = check_range(source.size(), buf.len(), offset)?;
    let ranges = source.data_ranges(offset..end)?;
    read_ranges(source, buf, offset, &ranges)
}

/// Like [`read_sparse`], with the data ranges already known (sorted; they may
/// extend beyond `buf`): callers that walk a disk ask for the ranges of a large
/// window once, as each `SEEK_DATA` costs a walk of the file's extents.
pub fn read_ranges(
    source: &dyn DiskSource,
    buf: &mut [u8],
    offset: u64,
    ranges: &[Range<u64>],
) -> io::Result<bool> {
    let end = check_range(source.size(), buf.len(), offset)?;
    let first = ranges.partition_point(|r| r.end <= offset);
    let mut non_zero = false;
    let mut filled = offset;
    for range in ranges[first..].iter().take_while(|r| r.start < end) {
        let start = range.start.max(offset).max(filled);
        let stop = range.end.min(end);
        if start >= stop {
            continue;
        }
        // All differences below are at most buf.len(), a usize.
        buf[idx(filled - offset)..idx(start - offset)].fill(0);
        let part = &mut buf[idx(start - offset)..idx(stop - offset)];
        source.read_at(part, start)?;
        non_zero = non_zero || !is_zero(part);
        filled = stop;
    }
    buf[idx(filled - offset)..].fill(0);
    Ok(non_zero)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse_file(len: u64, writes: &[(u64, &[u8])]) -> (tempfile::NamedTempFile, File) {
        let temp = tempfile::NamedTempFile::new().unwrap();
        let file = temp.reopen().unwrap();
        file.set_len(len).unwrap();
        for (offset, data) in writes {
            file.write_all_at(data, *offset).unwrap();
        }
        (temp, file)
    }

    #[test]
    fn composed_disk_reads_segments_and_zeros() {
        let (_t, file) = sparse_file(8 << 20, &[(4 << 20, b"file data")]);
        let file = Arc::new(file);
        let disk = ComposedDisk::new(
            32 << 20,
            vec![
                Segment::bytes(0, b"header".to_vec()),
                Segment::file(1 << 20, 8 << 20, file.clone(), 0),
                Segment::file(16 << 20, 1 << 20, file, 4 << 20),
            ],
        )
        .unwrap();
        let mut buf = vec![0u8; 9];
        disk.read_at(&mut buf, (1 << 20) + (4 << 20)).unwrap();
        assert_eq!(&buf, b"file data");
        disk.read_at(&mut buf, 16 << 20).unwrap();
        assert_eq!(&buf, b"file data");
        disk.read_at(&mut buf, 2).unwrap();
        assert_eq!(&buf, b"ader\0\0\0\0\0");
        let ranges = disk.data_ranges(0..32 << 20).unwrap();
        assert_eq!(ranges[0], 0..6);
        // The file's data lies within what is reported, holes mostly outside.
        assert!(ranges.iter().any(|r| r.contains(&((5 << 20) + 3))));
        assert!(ranges.iter().any(|r| r.contains(&((16 << 20) + 3))));
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(total < 9 << 20);
        let mut block = vec![0u8; 1 << 20];
        assert!(read_sparse(&disk, &mut block, 16 << 20).unwrap());
        assert!(!read_sparse(&disk, &mut block, 20 << 20).unwrap());
    }

    #[test]
    fn composed_disk_rejects_overlaps_and_overruns() {
        let two = || vec![Segment::bytes(0, vec![1; 10]), Segment::bytes(5, vec![1; 10])];
        assert!(ComposedDisk::new(100, two()).is_err());
        assert!(ComposedDisk::new(8, vec![Segment::bytes(0, vec![1; 10])]).is_err());
    }

    #[test]
    fn holes_are_skipped() {
        let (_t, file) = sparse_file(64 << 20, &[(10 << 20, &[7; 4096])]);
        let ranges = file_data_ranges(&file, 0..64 << 20).unwrap();
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(ranges.iter().any(|r| r.contains(&(10 << 20))));
        // tmpfs and ext4 both report holes; a file system that cannot would report all.
        assert!(total <= 64 << 20);
    }
}
