//! Opens a VHDX file (made by abforge, qemu-img or Hyper-V) as a [`DiskSource`].
//!
//! Everything read from the file is checked before it is trusted: both headers and
//! both region tables are tried, regions must be whole MiB, inside the file and
//! apart from each other, metadata values must be sane, and every present block
//! must lie inside the file without overlapping a region or another block.
//! Allocations are bounded by the file's own size (the BAT) or by constants.

use std::fs::File;
use std::io;
use std::ops::Range;

use super::bat::{self, BatGeometry};
use super::header::{HEADER_SIZE, Header, current_header};
use super::metadata::{DiskParameters, TABLE_SIZE, parse_metadata_table, parse_parameters};
use super::region::{REGION_TABLE_SIZE, RegionEntry, parse_region_table};
use super::{
    BAT_REGION_GUID, FILE_SIGNATURE, HEADER_1_OFFSET, HEADER_2_OFFSET, HEADER_SECTION_SIZE,
    ImageBytes, METADATA_REGION_GUID, MIB, REGION_TABLE_1_OFFSET, REGION_TABLE_2_OFFSET, VhdxError,
};
use crate::container::source::check_range;
use crate::container::{DiskSource, idx};

/// A VHDX file opened for reading.
#[derive(Debug)]
pub struct VhdxReader<F: ImageBytes = File> {
    image: F,
    params: DiskParameters,
    header: Header,
    /// Per payload block: its file offset, or 0 when it reads as zeros (no block
    /// can live at 0, which is the header section).
    blocks: Vec<u64>,
}

/// A named byte range of the file that payload blocks must not overlap.
struct Area {
    name: String,
    range: Range<u64>,
}

impl<F: ImageBytes> VhdxReader<F> {
    /// Opens and checks a VHDX image.
    pub fn open(image: F) -> Result<VhdxReader<F>, VhdxError> {
        let file_len = image.len().map_err(VhdxError::io("cannot get the file size"))?;
        let read = |offset: u64, len: usize, what: &str| -> Result<Vec<u8>, VhdxError> {
            let mut buf = vec![0u8; len];
            image
                .read_exact_at(&mut buf, offset)
                .map_err(VhdxError::io(format!("cannot read the {what}")))?;
            Ok(buf)
        };
        if file_len < REGION_TABLE_2_OFFSET + REGION_TABLE_SIZE as u64 {
            return Err(VhdxError::Corrupt(format!(
                "the file is {file_len} bytes, too short to hold the VHDX header section"
            )));
        }
        if read(0, 8, "file identifier")?.as_slice() != FILE_SIGNATURE {
            return Err(VhdxError::Corrupt("the file does not start with \"vhdxfile\"".into()));
        }
        let header = current_header(
            Header::parse(&read(HEADER_1_OFFSET, HEADER_SIZE, "first header")?, "header 1"),
            Header::parse(&read(HEADER_2_OFFSET, HEADER_SIZE, "second header")?, "header 2"),
        )?;
        if !header.log_guid.is_nil() {
            return Err(VhdxError::Unsupported(
                "the file has a log to replay (it was not closed cleanly); open it once with Hyper-V or qemu-img check -r all"
                    .into(),
            ));
        }
        let regions = match parse_region_table(
            &read(REGION_TABLE_1_OFFSET, REGION_TABLE_SIZE, "first region table")?,
            "region table 1",
        ) {
            Ok(regions) => regions,
            Err(first) => parse_region_table(
                &read(REGION_TABLE_2_OFFSET, REGION_TABLE_SIZE, "second region table")?,
                "region table 2",
            )
            .map_err(|second| {
                VhdxError::Corrupt(format!("no valid region table: {first}; {second}"))
            })?,
        };
        let mut areas =
            vec![Area { name: "the header section".into(), range: 0..HEADER_SECTION_SIZE }];
        if header.log_length != 0 {
            let end = header
                .log_offset
                .checked_add(u64::from(header.log_length))
                .filter(|&end| end <= file_len);
            let Some(end) = end else {
                return Err(VhdxError::Corrupt(format!(
                    "the log at byte {} runs past the end of the file",
                    header.log_offset
                )));
            };
            areas.push(Area { name: "the log".into(), range: header.log_offset..end });
        }
        let mut bat_region = None;
        let mut metadata_region = None;
        for region in &regions {
            let name = if region.guid == BAT_REGION_GUID {
                bat_region = Some(*region);
                "the BAT region".to_string()
            } else if region.guid == METADATA_REGION_GUID {
                metadata_region = Some(*region);
                "the metadata region".to_string()
            } else if region.required {
                return Err(VhdxError::Unsupported(format!(
                    "the file requires unknown region {}",
                    region.guid
                )));
            } else {
                format!("region {}", region.guid)
            };
            let end = region.end().filter(|&end| end <= file_len).ok_or_else(|| {
                VhdxError::Corrupt(format!(
                    "{name} (byte {}, {} bytes) runs past the end of the {file_len}-byte file",
                    region.file_offset, region.length
                ))
            })?;
            let range = region.file_offset..end;
            if let Some(other) = areas.iter().find(|a| overlaps(&a.range, &range)) {
                return Err(VhdxError::Corrupt(format!("{name} overlaps {}", other.name)));
            }
            areas.push(Area { name, range });
        }
        let bat_region = bat_region
            .ok_or_else(|| VhdxError::Corrupt("the region table has no BAT region".into()))?;
        let metadata_region: RegionEntry = metadata_region
            .ok_or_else(|| VhdxError::Corrupt("the region table has no metadata region".into()))?;

        let table = read(metadata_region.file_offset, TABLE_SIZE, "metadata table")?;
        let entries = parse_metadata_table(&table, metadata_region.length)?;
        let params = parse_parameters(&entries, |offset, length| {
            // parse_metadata_table checked offset + length <= the region's length (≤ 4 GiB).
            read(metadata_region.file_offset + u64::from(offset), length as usize, "metadata")
        })?;

        let geometry =
            BatGeometry::new(params.virtual_size, params.block_size, params.logical_sector_size)?;
        if geometry.bytes() > u64::from(bat_region.length) {
            return Err(VhdxError::Corrupt(format!(
                "the BAT region is {} bytes but the disk needs {} entries ({} bytes)",
                bat_region.length,
                geometry.total_entries,
                geometry.bytes()
            )));
        }
        let blocks =
            read_bat(&image, &geometry, &params, bat_region.file_offset, file_len, &areas)?;
        Ok(VhdxReader { image, params, header, blocks })
    }

    pub fn parameters(&self) -> &DiskParameters {
        &self.params
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The number of blocks stored in the file.
    pub fn present_blocks(&self) -> usize {
        self.blocks.iter().filter(|&&b| b != 0).count()
    }

    /// Where the byte at `virtual_offset` of the disk is stored in the file, and how
    /// many bytes from there on stay in the same payload block (up to the disk's end):
    /// `None` when the offset is past the disk or its block is not stored in the file
    /// (NOT_PRESENT, ZERO, UNMAPPED: it reads as zeros). The block's file range was
    /// checked when the file was opened. Used by in-place updates
    /// (`container::inplace`), which write payload bytes only.
    pub fn payload_file_offset(&self, virtual_offset: u64) -> Option<(u64, u64)> {
        if virtual_offset >= self.params.virtual_size {
            return None;
        }
        let block_size = u64::from(self.params.block_size);
        // virtual_offset < virtual_size, so the block index is below data_blocks (a usize).
        let file_offset = match self.blocks[idx(virtual_offset / block_size)] {
            0 => return None,
            offset => offset,
        };
        let within = virtual_offset % block_size;
        let len = (block_size - within).min(self.params.virtual_size - virtual_offset);
        Some((file_offset + within, len))
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Reads and checks the BAT; returns each payload block's file offset (0 = zeros).
fn read_bat<F: ImageBytes>(
    image: &F,
    geometry: &BatGeometry,
    params: &DiskParameters,
    bat_offset: u64,
    file_len: u64,
    areas: &[Area],
) -> Result<Vec<u64>, VhdxError> {
    // data_blocks * 8 <= the BAT region's length <= the file's length, checked by
    // the caller, so this allocation is bounded by the file itself.
    let data_blocks = usize::try_from(geometry.data_blocks)
        .map_err(|_| VhdxError::Corrupt("the BAT has more entries than memory can hold".into()))?;
    let mut blocks = vec![0u64; data_blocks];
    let mut chunk = vec![0u8; idx(MIB)];
    let mut chunk_start = u64::MAX;
    let mut present: Vec<(u64, u64)> = Vec::new();
    for (block, slot) in (0u64..).zip(blocks.iter_mut()) {
        let index = geometry.payload_index(block);
        let byte = index * 8;
        if chunk_start == u64::MAX || byte < chunk_start || byte + 8 > chunk_start + MIB {
            chunk_start = byte - byte % MIB;
            // The BAT lies within the file (checked against the region); the last chunk may be short.
            let len = (geometry.bytes() - chunk_start).min(MIB);
            image
                .read_exact_at(&mut chunk[..idx(len)], bat_offset + chunk_start)
                .map_err(VhdxError::io("cannot read the BAT"))?;
        }
        let at = idx(byte - chunk_start);
        let entry = u64::from_le_bytes(chunk[at..at + 8].try_into().unwrap_or([0; 8]));
        match bat::entry_state(entry) {
            bat::PAYLOAD_BLOCK_NOT_PRESENT
            | bat::PAYLOAD_BLOCK_UNDEFINED
            | bat::PAYLOAD_BLOCK_ZERO
            | bat::PAYLOAD_BLOCK_UNMAPPED
            | bat::PAYLOAD_BLOCK_UNMAPPED_V095 => {}
            bat::PAYLOAD_BLOCK_FULLY_PRESENT => {
                let offset = bat::entry_offset(entry);
                // The bytes of the disk this block holds: the last block may be partial.
                let needed =
                    geometry.block_size.min(params.virtual_size - block * geometry.block_size);
                let end = offset.checked_add(needed).filter(|&end| end <= file_len).ok_or_else(|| {
                    VhdxError::Corrupt(format!(
                        "BAT entry {index} (payload block {block}) points at byte {offset}, past the end of the {file_len}-byte file"
                    ))
                })?;
                // The whole block must stay clear of the regions, even when only part of it is stored.
                let range = offset..offset.saturating_add(geometry.block_size).max(end);
                if let Some(area) = areas.iter().find(|a| overlaps(&a.range, &range)) {
                    return Err(VhdxError::Corrupt(format!(
                        "BAT entry {index} (payload block {block}) at byte {offset} overlaps {}",
                        area.name
                    )));
                }
                *slot = offset;
                present.push((offset, block));
            }
            bat::PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                return Err(VhdxError::Unsupported(format!(
                    "BAT entry {index} (payload block {block}) is partially present, which only differencing disks use"
                )));
            }
            state => {
                return Err(VhdxError::Corrupt(format!(
                    "BAT entry {index} (payload block {block}) has invalid state {state}"
                )));
            }
        }
    }
    present.sort_unstable();
    for pair in present.windows(2) {
        let ((first, first_block), (second, second_block)) = (pair[0], pair[1]);
        if second - first < geometry.block_size {
            return Err(VhdxError::Corrupt(format!(
                "payload blocks {first_block} and {second_block} overlap in the file (at bytes {first} and {second})"
            )));
        }
    }
    Ok(blocks)
}

impl<F: ImageBytes> DiskSource for VhdxReader<F> {
    fn size(&self) -> u64 {
        self.params.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.params.virtual_size, buf.len(), offset)?;
        let block_size = u64::from(self.params.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            // pos < virtual_size, so the block index is below data_blocks (a usize).
            let block = idx(pos / block_size);
            let within = pos % block_size;
            // At most a block (≤ 256 MiB), so it fits in usize.
            let len = idx(block_size - within).min(buf.len() - done);
            let part = &mut buf[done..done + len];
            match self.blocks[block] {
                0 => part.fill(0),
                file_offset => self.image.read_exact_at(part, file_offset + within)?,
            }
            done += len;
        }
        Ok(())
    }

    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        let end = range.end.min(self.params.virtual_size);
        let block_size = u64::from(self.params.block_size);
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut pos = range.start;
        while pos < end {
            let block = pos / block_size;
            let block_end = ((block + 1) * block_size).min(end);
            // block < data_blocks (pos < virtual_size).
            if self.blocks[idx(block)] != 0 {
                match out.last_mut() {
                    Some(last) if last.end == pos => last.end = block_end,
                    _ => out.push(pos..block_end),
                }
            }
            pos = block_end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::source::{ComposedDisk, Segment};
    use crate::container::vhdx::{VhdxOptions, write_vhdx};
    use abforge_partitions::Guid;

    /// A small VHDX in memory: 8 MiB in 1 MiB blocks, data in blocks 0, 3 and 7.
    fn small_vhdx() -> (Vec<u8>, ComposedDisk) {
        small_vhdx_with(false).0
    }

    /// The VHDX, the disk, and the bytes the file allocates.
    fn small_vhdx_with(dense: bool) -> ((Vec<u8>, ComposedDisk), u64) {
        let disk = ComposedDisk::new(
            8 << 20,
            vec![
                Segment::bytes(0, vec![0xa5; 4096]),
                Segment::bytes(3 << 20, (0..=255).collect()),
                Segment::bytes((8 << 20) - 512, vec![0x5a; 512]),
            ],
        )
        .unwrap();
        let ids = |n| Guid::from_rfc_bytes([n; 16]);
        let options =
            VhdxOptions { block_size: 1 << 20, dense, ..VhdxOptions::new(ids(1), ids(2), ids(3)) };
        let temp = tempfile::tempfile().unwrap();
        write_vhdx(&disk, &temp, &options).unwrap();
        let mut bytes = vec![0u8; idx(temp.metadata().unwrap().len())];
        std::os::unix::fs::FileExt::read_exact_at(&temp, &mut bytes, 0).unwrap();
        let allocated = std::os::unix::fs::MetadataExt::blocks(&temp.metadata().unwrap()) * 512;
        ((bytes, disk), allocated)
    }

    #[test]
    fn dense_and_sparse_files_hold_the_same_bytes() {
        let ((sparse, _), sparse_allocated) = small_vhdx_with(false);
        let ((dense, _), dense_allocated) = small_vhdx_with(true);
        assert!(sparse == dense);
        assert!(dense_allocated >= 7 << 20, "dense: {dense_allocated}");
        // The file system may not support holes; where it does, zero runs stay holes.
        assert!(sparse_allocated <= dense_allocated);
    }

    #[test]
    fn reads_back_what_was_written() {
        let (bytes, disk) = small_vhdx();
        assert_eq!(bytes.len(), (4 + 3) << 20);
        let reader = VhdxReader::open(bytes).unwrap();
        assert_eq!(reader.size(), 8 << 20);
        assert_eq!(reader.present_blocks(), 3);
        assert_eq!(reader.parameters().page83, Guid::from_rfc_bytes([1; 16]));
        assert_eq!(reader.header().sequence_number, 2);
        let (mut ours, mut theirs) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
        reader.read_at(&mut ours, 0).unwrap();
        disk.read_at(&mut theirs, 0).unwrap();
        assert!(ours == theirs);
        assert_eq!(
            reader.data_ranges(0..8 << 20).unwrap(),
            vec![0..1 << 20, 3 << 20..4 << 20, 7 << 20..8 << 20]
        );
    }

    /// Flips bytes all over the metadata structures: every result is a value or an
    /// error, never a panic (a cheap, deterministic cousin of the fuzz target).
    #[test]
    fn damaged_structures_never_panic() {
        let (bytes, _) = small_vhdx();
        let mut positions: Vec<usize> = Vec::new();
        for (start, len, stride) in [
            (0usize, 16usize, 1usize),
            (64 << 10, 96, 1),
            (128 << 10, 96, 1),
            (192 << 10, 80, 1),
            (256 << 10, 80, 1),
            (2 << 20, 200, 1),
            ((2 << 20) + 0x10000, 48, 1),
            (3 << 20, 64, 1),
        ] {
            positions.extend((start..start + len).step_by(stride));
        }
        let mut bytes = bytes;
        for position in positions {
            let original = bytes[position];
            for value in [0x00u8, 0xff, 0x01, 0x80] {
                bytes[position] = value;
                if let Ok(reader) = VhdxReader::open(bytes.as_slice()) {
                    let mut buf = vec![0u8; 1 << 20];
                    let size = reader.size();
                    for offset in [0, size.saturating_sub(1 << 20)] {
                        let len = buf.len().min(idx(size - offset));
                        let _ = reader.read_at(&mut buf[..len], offset);
                    }
                    let _ = reader.data_ranges(0..size);
                }
            }
            bytes[position] = original;
        }
        for len in [0, 8, 100_000, 300_000, 1 << 20, 3 << 20, (4 << 20) + 7, bytes.len() - 1] {
            assert!(VhdxReader::open(&bytes[..len]).is_err(), "truncated to {len} bytes");
        }
    }
}
