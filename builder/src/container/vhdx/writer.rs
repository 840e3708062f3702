//! Writes a dynamic VHDX from a [`DiskSource`].
//!
//! One pass over the virtual disk, in order: a reader thread fills pieces of each
//! block (skipping the source's holes) and flags the non-zero ones; the writing
//! thread gives a block the next free offset at its first non-zero piece and writes
//! its non-zero pieces there. Blocks that are entirely zero take no space and get
//! state ZERO. Placement depends only on the data, so the file is reproducible;
//! memory is a few pieces.
//!
//! The zero pieces of a present block (and the padding past the end of the disk)
//! are left as holes by default, as qemu-img does: the bytes read back are the
//! same, and less is written. [`VhdxOptions::dense`] writes them as explicit zeros
//! instead, for a file with no holes at all (Hyper-V refuses a VHDX whose NTFS
//! sparse attribute is set; an ordinary copy from Linux does not set it).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

use abforge_partitions::Guid;

use super::bat::{self, BatGeometry};
use super::header::Header;
use super::metadata::{DiskParameters, METADATA_REGION_LENGTH, metadata_region_bytes};
use super::region::{RegionEntry, region_table_bytes};
use super::{
    BAT_REGION_GUID, DEFAULT_BLOCK_SIZE, FILE_SIGNATURE, HEADER_1_OFFSET, HEADER_2_OFFSET,
    HEADER_SECTION_SIZE, MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, METADATA_REGION_GUID, MIB,
    MIN_BLOCK_SIZE, REGION_TABLE_1_OFFSET, REGION_TABLE_2_OFFSET,
};
use crate::container::source::read_ranges;
use crate::container::{DiskSource, idx, is_zero};

const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u32 = 1 << 20;
const METADATA_OFFSET: u64 = 2 * MIB;
const BAT_OFFSET: u64 = 3 * MIB;
/// The unit a block is read, checked and written in.
pub(super) const PIECE: u64 = 4 * MIB;
/// How much of the disk the reading thread asks data ranges for at a time.
pub(super) const WINDOW: u64 = 1 << 30;
/// Pieces in flight between the reading and the writing thread.
const PIECES_IN_FLIGHT: usize = 4;
const LOGICAL_SECTOR_SIZE: u32 = 512;
const PHYSICAL_SECTOR_SIZE: u32 = 4096;
/// Written after the file identifier, UTF-16LE.
const CREATOR: &str = "abforge";

/// What the caller decides about a VHDX file.
#[derive(Debug, Clone, Copy)]
pub struct VhdxOptions {
    /// A power of two from 1 MiB to 256 MiB.
    pub block_size: u32,
    /// The disk's identity (Page 83 data); derive it from the manifest seed.
    pub page83: Guid,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    /// Write the zero parts of present blocks instead of leaving holes.
    pub dense: bool,
}

impl VhdxOptions {
    /// Options with the default 32 MiB blocks.
    pub fn new(page83: Guid, file_write_guid: Guid, data_write_guid: Guid) -> VhdxOptions {
        VhdxOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            page83,
            file_write_guid,
            data_write_guid,
            dense: false,
        }
    }
}

/// Checks a block size given by a user: a power of two from 1 MiB to 256 MiB.
pub fn check_block_size(block_size: u64) -> Result<u32, String> {
    match u32::try_from(block_size) {
        Ok(size) if size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) => {
            Ok(size)
        }
        _ => {
            Err(format!("VHDX block size {block_size} is not a power of two from 1 MiB to 256 MiB"))
        }
    }
}

/// What was written: for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxSummary {
    pub virtual_size: u64,
    pub block_size: u32,
    pub present_blocks: u64,
    pub file_size: u64,
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Writes `source` into `out` (an empty file) as a dynamic VHDX.
pub fn write_vhdx(
    source: &dyn DiskSource,
    out: &File,
    options: &VhdxOptions,
) -> io::Result<VhdxSummary> {
    let virtual_size = source.size();
    let geometry = checked_geometry(virtual_size, options)?;
    let payload_start = payload_start(&geometry);
    let mut bat_entries = bat_entries(&geometry)?;

    let (present_blocks, payload_end) =
        copy_payload(source, out, &geometry, payload_start, options.dense, &mut bat_entries)?;

    write_tables(out, &geometry, options, virtual_size, &bat_entries)?;
    let file_size = payload_end.max(payload_start);
    out.set_len(file_size)?;
    Ok(VhdxSummary { virtual_size, block_size: options.block_size, present_blocks, file_size })
}

/// Checks the disk size, block size and identities, and gives the BAT's shape.
pub(super) fn checked_geometry(
    virtual_size: u64,
    options: &VhdxOptions,
) -> io::Result<BatGeometry> {
    check_block_size(u64::from(options.block_size)).map_err(invalid_input)?;
    if virtual_size == 0
        || !virtual_size.is_multiple_of(u64::from(LOGICAL_SECTOR_SIZE))
        || virtual_size > MAX_VIRTUAL_SIZE
    {
        return Err(invalid_input(format!(
            "a VHDX disk must be a non-zero multiple of 512 bytes up to 64 TiB, not {virtual_size} bytes"
        )));
    }
    for (name, guid) in [
        ("page 83", options.page83),
        ("file write", options.file_write_guid),
        ("data write", options.data_write_guid),
    ] {
        if guid.is_nil() {
            return Err(invalid_input(format!("the VHDX {name} GUID must not be zero")));
        }
    }
    Ok(BatGeometry::new(virtual_size, options.block_size, LOGICAL_SECTOR_SIZE)?)
}

/// Where the first payload block goes: right after the BAT.
pub(super) fn payload_start(geometry: &BatGeometry) -> u64 {
    BAT_OFFSET + geometry.region_length()
}

/// An all-NOT_PRESENT table for `geometry`.
pub(super) fn bat_entries(geometry: &BatGeometry) -> io::Result<Vec<u64>> {
    // At most 64 TiB / 1 MiB entries, 512 MiB: the BAT the format requires.
    let entries = usize::try_from(geometry.total_entries)
        .map_err(|_| invalid_input("BAT too large".into()))?;
    Ok(vec![0u64; entries])
}

/// Writes everything before the payload: header section, log, metadata and BAT.
pub(super) fn write_tables(
    out: &File,
    geometry: &BatGeometry,
    options: &VhdxOptions,
    virtual_size: u64,
    bat_entries: &[u64],
) -> io::Result<()> {
    let mut bat_bytes = vec![
        0u8;
        usize::try_from(geometry.region_length())
            .map_err(|_| invalid_input("BAT too large".into()))?
    ];
    for (i, entry) in bat_entries.iter().enumerate() {
        bat_bytes[i * 8..i * 8 + 8].copy_from_slice(&entry.to_le_bytes());
    }
    out.write_all_at(&bat_bytes, BAT_OFFSET)?;

    let params = DiskParameters {
        block_size: options.block_size,
        leave_blocks_allocated: false,
        virtual_size,
        page83: options.page83,
        logical_sector_size: LOGICAL_SECTOR_SIZE,
        physical_sector_size: PHYSICAL_SECTOR_SIZE,
    };
    out.write_all_at(&metadata_region_bytes(&params), METADATA_OFFSET)?;
    // The log is declared but empty; written as zeros so the file has no holes.
    out.write_all_at(&vec![0u8; LOG_LENGTH as usize], LOG_OFFSET)?;
    out.write_all_at(&header_section(geometry, options), 0)?;
    Ok(())
}

/// The first MiB: file identifier, both headers, both region tables.
fn header_section(geometry: &BatGeometry, options: &VhdxOptions) -> Vec<u8> {
    // The section is 1 MiB, a usize.
    let mut section = vec![0u8; idx(HEADER_SECTION_SIZE)];
    section[0..8].copy_from_slice(FILE_SIGNATURE);
    for (i, unit) in CREATOR.encode_utf16().enumerate() {
        section[8 + 2 * i..10 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    for (offset, sequence_number) in [(HEADER_1_OFFSET, 1), (HEADER_2_OFFSET, 2)] {
        let header = Header {
            sequence_number,
            file_write_guid: options.file_write_guid,
            data_write_guid: options.data_write_guid,
            log_guid: Guid::NIL,
            log_length: LOG_LENGTH,
            log_offset: LOG_OFFSET,
        };
        put(&mut section, offset, &header.to_bytes());
    }
    // The BAT region length is at most 512 MiB (64 TiB in 1 MiB blocks), so it fits in u32.
    let bat_length = u32::try_from(geometry.region_length()).unwrap_or(u32::MAX);
    let table = region_table_bytes(&[
        RegionEntry {
            guid: BAT_REGION_GUID,
            file_offset: BAT_OFFSET,
            length: bat_length,
            required: true,
        },
        RegionEntry {
            guid: METADATA_REGION_GUID,
            file_offset: METADATA_OFFSET,
            length: METADATA_REGION_LENGTH,
            required: true,
        },
    ]);
    put(&mut section, REGION_TABLE_1_OFFSET, &table);
    put(&mut section, REGION_TABLE_2_OFFSET, &table);
    section
}

fn put(section: &mut [u8], offset: u64, bytes: &[u8]) {
    // Offsets are constants below 1 MiB.
    let at = idx(offset);
    section[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A piece of a payload block read by the reading thread.
struct Piece {
    block: u64,
    /// Offset within the block.
    within: u64,
    /// The piece's bytes when `non_zero`; stale otherwise (zero pieces are not filled).
    buf: Vec<u8>,
    non_zero: bool,
}

/// Copies the non-zero blocks from `payload_start` on, filling `bat_entries`;
/// returns the number of blocks written and the end of the last one.
fn copy_payload(
    source: &dyn DiskSource,
    out: &File,
    geometry: &BatGeometry,
    payload_start: u64,
    dense: bool,
    bat_entries: &mut [u64],
) -> io::Result<(u64, u64)> {
    let block_size = geometry.block_size;
    let piece = PIECE.min(block_size);
    let virtual_size = source.size();
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Piece>>(PIECES_IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..PIECES_IN_FLIGHT + 2 {
        // piece <= 4 MiB.
        let _ = free_tx.send(vec![0u8; idx(piece)]);
    }
    // The closure owns the channel ends, so an early error drops them and the reading
    // thread stops instead of waiting for a buffer forever.
    std::thread::scope(move |scope| {
        scope.spawn(move || {
            // The data ranges of the window of the disk being read.
            let mut window_end = 0u64;
            let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
            for block in 0..geometry.data_blocks {
                // A block with no data at all goes as one message, not one per
                // piece: a 2 TiB disk that is mostly holes costs a message per block.
                let block_start = block * block_size;
                let block_end = block_start.saturating_add(block_size).min(virtual_size);
                if block_start < virtual_size
                    && (block_start >= window_end || block_end > window_end)
                {
                    window_end = block_start.saturating_add(WINDOW).min(virtual_size);
                    match source.data_ranges(block_start..window_end) {
                        Ok(found) => ranges = found,
                        Err(err) => {
                            let _ = full_tx.send(Err(err));
                            return;
                        }
                    }
                }
                let first = ranges.partition_point(|r| r.end <= block_start);
                let block_has_data = block_start < virtual_size
                    && ranges.get(first).is_some_and(|r| r.start < block_end);
                if !block_has_data {
                    let Ok(buf) = free_rx.recv() else { return };
                    // The last piece of the block, empty: the receiver marks it ZERO.
                    let message =
                        Ok(Piece { block, within: block_size - piece, buf, non_zero: false });
                    if full_tx.send(message).is_err() {
                        return;
                    }
                    continue;
                }
                let mut within = 0;
                while within < block_size {
                    let start = block * block_size + within;
                    if start < virtual_size && start >= window_end {
                        // WINDOW is a multiple of the piece and pieces start at multiples of
                        // it, so no piece straddles two windows.
                        window_end = start.saturating_add(WINDOW).min(virtual_size);
                        match source.data_ranges(start..window_end) {
                            Ok(found) => ranges = found,
                            Err(err) => {
                                let _ = full_tx.send(Err(err));
                                return;
                            }
                        }
                    }
                    let end = start.saturating_add(piece).min(virtual_size);
                    let first = ranges.partition_point(|r| r.end <= start);
                    let has_data = ranges.get(first).is_some_and(|r| r.start < end);
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let result = if has_data {
                        // start < end <= virtual_size here; the piece is at most 4 MiB.
                        let len = end - start;
                        let filled =
                            read_ranges(source, &mut buf[..idx(len)], start, &ranges[first..]);
                        buf[idx(len)..].fill(0);
                        filled
                    } else {
                        // A hole, or padding past the end of the disk: the buffer is not used.
                        Ok(false)
                    };
                    let message = result.map(|non_zero| Piece { block, within, buf, non_zero });
                    let failed = message.is_err();
                    if full_tx.send(message).is_err() || failed {
                        return;
                    }
                    within += piece;
                }
            }
        });

        let zeros = vec![0u8; idx(piece)];
        let mut next_offset = payload_start;
        let mut present_blocks = 0u64;
        // The file offset of the block being received, once it has shown data.
        let mut current: Option<(u64, u64)> = None;
        for message in full_rx {
            let Piece { block, within, buf, non_zero } = message?;
            if current.is_some_and(|(b, _)| b != block) {
                current = None;
            }
            if current.is_none() && non_zero {
                let offset = next_offset;
                next_offset = offset
                    .checked_add(block_size)
                    .ok_or_else(|| invalid_input("VHDX file too large".into()))?;
                present_blocks += 1;
                // block < data_blocks, so its index is within the table (a usize).
                bat_entries[idx(geometry.payload_index(block))] =
                    bat::entry(bat::PAYLOAD_BLOCK_FULLY_PRESENT, offset);
                let mut zero_at = 0;
                while dense && zero_at < within {
                    out.write_all_at(&zeros, offset + zero_at)?;
                    zero_at += piece;
                }
                current = Some((block, offset));
            }
            if let Some((_, offset)) = current {
                match (non_zero, dense) {
                    (true, true) => out.write_all_at(&buf, offset + within)?,
                    (true, false) => write_skipping_zeros(out, &buf, offset + within)?,
                    // A zero piece's buffer is stale: write the zero buffer.
                    (false, true) => out.write_all_at(&zeros, offset + within)?,
                    (false, false) => {}
                }
            } else if within + piece >= block_size {
                bat_entries[idx(geometry.payload_index(block))] =
                    bat::entry(bat::PAYLOAD_BLOCK_ZERO, 0);
            }
            let _ = free_tx.send(buf);
        }
        Ok((present_blocks, next_offset))
    })
}

/// The granule at which zero runs inside a present block are left as holes.
const HOLE_GRANULE: usize = 64 * 1024;

/// Writes `buf` at `offset`, leaving its all-zero 64 KiB granules unwritten (the
/// file reads zeros there: it is extended to its full length at the end).
fn write_skipping_zeros(out: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut at = 0;
    while at <= buf.len() {
        let granule_end = (at + HOLE_GRANULE).min(buf.len());
        let data = at < buf.len() && !is_zero(&buf[at..granule_end]);
        match (data, run_start) {
            (true, None) => run_start = Some(at),
            (false, Some(start)) => {
                // usize always fits in u64 on supported targets.
                out.write_all_at(&buf[start..at], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        if at == buf.len() {
            break;
        }
        at = granule_end;
    }
    Ok(())
}
