//! A dynamic VHDX built in place: the partition producers write the virtual disk
//! straight into the VHDX file, and the file is then compacted into the layout
//! [`super::writer`] gives (MS-VHDX v1.0, layout in `super`), with no intermediate
//! copy of the disk.
//!
//! While the disk is produced, the payload area maps it one to one: virtual byte
//! `x` lives at file offset `payload_start + x`, so every producer writes at its
//! final place, in parallel, as it would into a raw image, and what it does not
//! write stays a hole. [`DirectVhdx::finish`] then decides which blocks are present
//! (those holding a non-zero byte: the same rule as the streaming writer, so the
//! two give byte-identical files), fills the BAT, shows the final file's bytes to
//! an observer (the build report's digests) and closes the gaps left by absent
//! blocks:
//!
//! - with `fallocate(FALLOC_FL_COLLAPSE_RANGE)` where the file system has it (ext4,
//!   XFS): the later extents are shifted, no data is copied;
//! - otherwise (tmpfs, btrfs, NFS...) each present block is copied down to its
//!   final offset, which is never after its place in the map, in disk order.
//!
//! The file is `payload_start` plus the virtual size while the disk is produced;
//! a file system that cannot hold a file that large makes [`DirectVhdx::create`]
//! fail, and the caller falls back to the streaming writer.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use rustix::fs::FallocateFlags;

use super::bat::{self, BatGeometry};
// The streaming writer's piece and window: the same rule for which blocks are
// present keeps the two writers' files byte-identical.
use super::writer::{
    PIECE, VhdxOptions, VhdxSummary, WINDOW, bat_entries, checked_geometry, payload_start,
    write_tables,
};
use crate::container::source::{RawFile, file_data_ranges, read_ranges};
use crate::container::{idx, is_zero};

/// How [`DirectVhdx::finish`] closes the gaps of absent blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// Collapse ranges where the file system can, else copy.
    Auto,
    /// Always copy (tests of the fallback).
    Copy,
}

/// Sees the bytes of the finished file, in order, once: `data` for bytes read
/// back, `zeros` for runs known to be zero (holes of present blocks).
pub trait FileObserver {
    fn data(&mut self, offset: u64, bytes: &[u8]);
    fn zeros(&mut self, offset: u64, len: u64);
}

/// A VHDX file whose payload is being produced in place.
pub struct DirectVhdx<'f> {
    file: &'f File,
    options: VhdxOptions,
    virtual_size: u64,
    geometry: BatGeometry,
    payload_start: u64,
}

impl<'f> DirectVhdx<'f> {
    /// Prepares `file` (empty) for a disk of `virtual_size` bytes. Fails when the
    /// options are invalid or the file system cannot hold a file of the disk's size.
    pub fn create(
        file: &'f File,
        virtual_size: u64,
        options: &VhdxOptions,
    ) -> io::Result<DirectVhdx<'f>> {
        let geometry = checked_geometry(virtual_size, options)?;
        let payload_start = payload_start(&geometry);
        let map_end = geometry
            .data_blocks
            .checked_mul(geometry.block_size)
            .and_then(|len| len.checked_add(payload_start))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "VHDX too large"))?;
        file.set_len(map_end)?;
        Ok(DirectVhdx { file, options: *options, virtual_size, geometry, payload_start })
    }

    /// The file offset of virtual disk byte 0 until [`finish`](DirectVhdx::finish).
    pub fn disk_offset(&self) -> u64 {
        self.payload_start
    }

    /// The file offset of payload block `block` in the one-to-one map.
    fn mapped(&self, block: u64) -> u64 {
        // block < data_blocks: create checked the end of the map.
        self.payload_start + block * self.geometry.block_size
    }

    /// Finishes the file: BAT, headers, metadata, compaction. `observer` sees the
    /// final file's bytes in order.
    pub fn finish(
        self,
        observer: &mut dyn FileObserver,
        compaction: Compaction,
    ) -> io::Result<VhdxSummary> {
        let present = self.present_blocks()?;
        let mut bat_entries = bat_entries(&self.geometry)?;
        for block in 0..self.geometry.data_blocks {
            bat_entries[idx(self.geometry.payload_index(block))] =
                bat::entry(bat::PAYLOAD_BLOCK_ZERO, 0);
        }
        for (rank, &block) in present.iter().enumerate() {
            // rank < block count, which fits in u64.
            let offset = self.mapped(rank as u64);
            bat_entries[idx(self.geometry.payload_index(block))] =
                bat::entry(bat::PAYLOAD_BLOCK_FULLY_PRESENT, offset);
        }
        write_tables(self.file, &self.geometry, &self.options, self.virtual_size, &bat_entries)?;
        self.observe(&present, observer)?;
        self.compact(&present, compaction)?;
        // The number of present blocks fits in u64.
        let file_size = self.mapped(present.len() as u64);
        self.file.set_len(file_size)?;
        Ok(VhdxSummary {
            virtual_size: self.virtual_size,
            block_size: self.options.block_size,
            present_blocks: present.len() as u64,
            file_size,
        })
    }

    /// The blocks holding a non-zero byte, in disk order. Only data ranges are
    /// read, and a block's reading stops at its first non-zero byte.
    fn present_blocks(&self) -> io::Result<Vec<u64>> {
        let map = self.payload_start..self.mapped(self.geometry.data_blocks);
        let mut present = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut window_start = map.start;
        while window_start < map.end {
            let window_end = window_start.saturating_add(WINDOW).min(map.end);
            for range in file_data_ranges(self.file, window_start..window_end)? {
                let mut at = range.start;
                while at < range.end {
                    let block = (at - self.payload_start) / self.geometry.block_size;
                    let block_end = self.mapped(block + 1).min(range.end);
                    if present.last() == Some(&block) {
                        at = block_end;
                        continue;
                    }
                    while at < block_end {
                        // At most 64 KiB.
                        let len = idx((block_end - at).min(buf.len() as u64));
                        self.file.read_exact_at(&mut buf[..len], at)?;
                        if !is_zero(&buf[..len]) {
                            present.push(block);
                            at = block_end;
                            break;
                        }
                        at += len as u64;
                    }
                }
            }
            window_start = window_end;
        }
        Ok(present)
    }

    /// Shows the final file to `observer`: the tables, then each present block.
    fn observe(&self, present: &[u64], observer: &mut dyn FileObserver) -> io::Result<()> {
        let mut buf = vec![0u8; idx(PIECE)];
        let mut at = 0;
        while at < self.payload_start {
            let len = idx((self.payload_start - at).min(buf.len() as u64));
            self.file.read_exact_at(&mut buf[..len], at)?;
            observer.data(at, &buf[..len]);
            at += len as u64;
        }
        for (rank, &block) in present.iter().enumerate() {
            let from = self.mapped(block);
            let to = self.mapped(rank as u64);
            let block_size = self.geometry.block_size;
            let mut done = 0;
            for range in file_data_ranges(self.file, from..from + block_size)? {
                if range.start > from + done {
                    observer.zeros(to + done, range.start - from - done);
                }
                let mut at = range.start;
                while at < range.end {
                    let len = idx((range.end - at).min(PIECE));
                    self.file.read_exact_at(&mut buf[..len], at)?;
                    observer.data(to + (at - from), &buf[..len]);
                    at += len as u64;
                }
                done = range.end - from;
            }
            if done < block_size {
                observer.zeros(to + done, block_size - done);
            }
        }
        Ok(())
    }

    /// Moves each present block to its final offset.
    fn compact(&self, present: &[u64], compaction: Compaction) -> io::Result<()> {
        if compaction == Compaction::Auto {
            match self.collapse_gaps(present) {
                Ok(()) => return Ok(()),
                // Nothing was moved: the file system has no collapse.
                Err(CollapseError::Unsupported) => {}
                Err(CollapseError::Io(err)) => return Err(err),
            }
        }
        self.copy_down(present)
    }

    /// The runs of absent blocks before the last present one, as block ranges.
    fn gaps(present: &[u64]) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        let mut next = 0;
        for &block in present {
            if block > next {
                gaps.push(next..block);
            }
            next = block + 1;
        }
        gaps
    }

    /// Collapses the gaps, last first, so each offset is still that of the map.
    fn collapse_gaps(&self, present: &[u64]) -> Result<(), CollapseError> {
        for (attempt, gap) in Self::gaps(present).iter().rev().enumerate() {
            let offset = self.mapped(gap.start);
            let len = (gap.end - gap.start) * self.geometry.block_size;
            match rustix::fs::fallocate(self.file, FallocateFlags::COLLAPSE_RANGE, offset, len) {
                Ok(()) => {}
                // Refused at the first gap, nothing has moved: the file system has no collapse.
                Err(
                    rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS,
                ) if attempt == 0 => return Err(CollapseError::Unsupported),
                Err(err) => return Err(CollapseError::Io(err.into())),
            }
        }
        Ok(())
    }

    /// Copies each present block down to its final offset, in disk order: a block
    /// never moves up, so no block is overwritten before it has moved. Zero
    /// pieces become holes (or written zeros where holes cannot be punched), as
    /// the destination may hold an earlier block's stale bytes.
    fn copy_down(&self, present: &[u64]) -> io::Result<()> {
        let mut buf = vec![0u8; idx(PIECE.min(self.geometry.block_size))];
        let piece = buf.len() as u64;
        let map = RawFile::with_size(self.file.try_clone()?, self.file.metadata()?.len());
        for (rank, &block) in present.iter().enumerate() {
            let from = self.mapped(block);
            let to = self.mapped(rank as u64);
            if from == to {
                continue;
            }
            let ranges = file_data_ranges(self.file, from..from + self.geometry.block_size)?;
            let mut within = 0;
            while within < self.geometry.block_size {
                let start = from + within;
                let non_zero = read_ranges(&map, &mut buf, start, &ranges)?;
                if non_zero {
                    self.file.write_all_at(&buf, to + within)?;
                } else {
                    self.zero_range(to + within, piece, &buf)?;
                }
                within += piece;
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros; `zeros` is at least `len` zero bytes.
    fn zero_range(&self, offset: u64, len: u64, zeros: &[u8]) -> io::Result<()> {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if rustix::fs::fallocate(self.file, flags, offset, len).is_err() {
            self.file.write_all_at(&zeros[..idx(len)], offset)?;
        }
        Ok(())
    }
}

enum CollapseError {
    Unsupported,
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::source::{ComposedDisk, Segment};
    use crate::container::vhdx::write_vhdx;
    use abforge_partitions::Guid;

    struct Nothing;
    impl FileObserver for Nothing {
        fn data(&mut self, _: u64, _: &[u8]) {}
        fn zeros(&mut self, _: u64, _: u64) {}
    }

    /// Collects the observed bytes, to compare with the file.
    struct Collect(Vec<u8>);
    impl FileObserver for Collect {
        fn data(&mut self, offset: u64, bytes: &[u8]) {
            assert_eq!(offset, self.0.len() as u64, "bytes shown out of order");
            self.0.extend_from_slice(bytes);
        }
        fn zeros(&mut self, offset: u64, len: u64) {
            assert_eq!(offset, self.0.len() as u64, "zeros shown out of order");
            self.0.resize(self.0.len() + idx(len), 0);
        }
    }

    fn options() -> VhdxOptions {
        let id = |n: u8| Guid::from_rfc_bytes([n; 16]);
        VhdxOptions { block_size: 1 << 20, ..VhdxOptions::new(id(1), id(2), id(3)) }
    }

    /// Writes: (disk offset, bytes), including an all-zero write that must not
    /// make its block present.
    fn writes() -> Vec<(u64, Vec<u8>)> {
        vec![
            (0, vec![0xAA; 4096]),
            (3 << 20, vec![0; 8192]),
            ((5 << 20) + 12345, b"middle of block five".to_vec()),
            ((9 << 20) - 10, vec![0x55; 20]),
            ((40 << 20) - 512, vec![0x77; 512]),
        ]
    }

    const DISK: u64 = 40 << 20;

    fn direct(compaction: Compaction, dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, VhdxSummary) {
        let path = dir.join(format!("{compaction:?}.vhdx"));
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let vhdx = DirectVhdx::create(&file, DISK, &options()).unwrap();
        for (offset, bytes) in writes() {
            file.write_all_at(&bytes, vhdx.disk_offset() + offset).unwrap();
        }
        let mut seen = Collect(Vec::new());
        let summary = vhdx.finish(&mut seen, compaction).unwrap();
        (std::fs::read(&path).unwrap(), seen.0, summary)
    }

    #[test]
    fn both_compactions_match_the_streaming_writer() {
        let dir = tempfile::tempdir().unwrap();
        let disk = ComposedDisk::new(
            DISK,
            writes().into_iter().map(|(offset, bytes)| Segment::bytes(offset, bytes)).collect(),
        )
        .unwrap();
        let streamed = tempfile::tempfile().unwrap();
        let expected_summary = write_vhdx(&disk, &streamed, &options()).unwrap();
        let mut expected = Vec::new();
        std::io::Read::read_to_end(&mut &streamed, &mut expected).unwrap();
        // Blocks 0, 5, 8, 9 (a write across their boundary) and 39 hold data;
        // block 3 was written with zeros only.
        assert_eq!(expected_summary.present_blocks, 5);
        for compaction in [Compaction::Auto, Compaction::Copy] {
            let (file, seen, summary) = direct(compaction, dir.path());
            assert_eq!(summary, expected_summary, "{compaction:?}");
            assert!(
                file == expected,
                "{compaction:?}: the file differs from the streaming writer's"
            );
            assert!(
                seen == expected,
                "{compaction:?}: the observer saw other bytes than the file's"
            );
        }
    }

    #[test]
    fn an_empty_disk_has_no_blocks() {
        let file = tempfile::tempfile().unwrap();
        let vhdx = DirectVhdx::create(&file, DISK, &options()).unwrap();
        let summary = vhdx.finish(&mut Nothing, Compaction::Auto).unwrap();
        assert_eq!(summary.present_blocks, 0);
        assert_eq!(file.metadata().unwrap().len(), summary.file_size);
    }
}
