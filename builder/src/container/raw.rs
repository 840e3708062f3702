//! Raw disk images: the virtual disk byte for byte, written sparsely.
//!
//! The file is sized with `set_len` and only the ranges the source reports as data
//! are written; zero runs inside them are skipped too, so they stay holes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{DiskSource, idx, is_zero};

/// How much of the disk is examined at a time for data ranges.
const WINDOW: u64 = 1 << 30;
/// The copy buffer, and the granularity at which zero runs are left as holes.
const CHUNK: usize = 1 << 20;

/// Writes `source` into `out` (an empty file) as a sparse raw image.
pub fn write_raw(source: &dyn DiskSource, out: &File) -> io::Result<()> {
    let size = source.size();
    out.set_len(size)?;
    let mut buf = vec![0u8; CHUNK];
    let mut window_start = 0u64;
    while window_start < size {
        let window_end = window_start.saturating_add(WINDOW).min(size);
        for range in source.data_ranges(window_start..window_end)? {
            let mut pos = range.start.max(window_start);
            let end = range.end.min(window_end);
            while pos < end {
                // At most CHUNK, a usize.
                let len = idx((end - pos).min(CHUNK as u64));
                let part = &mut buf[..len];
                source.read_at(part, pos)?;
                if !is_zero(part) {
                    out.write_all_at(part, pos)?;
                }
                pos += len as u64;
            }
        }
        window_start = window_end;
    }
    Ok(())
}
