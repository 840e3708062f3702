//! Which data blocks must be read: the ranges of the data area that hold data,
//! found with SEEK_DATA / SEEK_HOLE (lseek(2)). Blocks lying wholly in a hole
//! read as zeros, so they are not read at all. Where the file system or the
//! file type does not support those seeks, the whole area counts as data.

use std::fs::File;
use std::io;

use rustix::fs::{SeekFrom, seek};

/// Sorted, disjoint ranges of data-block indices `[start, end)` that may hold
/// data; every other block of the area is known to be zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataRuns {
    runs: Vec<(u64, u64)>,
}

/// What a run of blocks is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// Blocks to read.
    Data,
    /// Blocks in a hole: zeros, not read.
    Hole,
}

impl DataRuns {
    pub(crate) fn all(blocks: u64) -> DataRuns {
        DataRuns { runs: vec![(0, blocks)] }
    }

    /// Maps the data of `file` between `offset` and `offset + blocks *
    /// block_size` to block ranges. The file cursor is restored afterwards.
    pub(crate) fn find(
        file: &File,
        offset: u64,
        blocks: u64,
        block_size: u64,
    ) -> io::Result<DataRuns> {
        // The caller checked that offset + blocks * block_size fits.
        let end = offset + blocks * block_size;
        let saved = seek(file, SeekFrom::Current(0))?;
        let result = Self::scan(file, offset, end, block_size, blocks);
        seek(file, SeekFrom::Start(saved))?;
        result
    }

    fn scan(
        file: &File,
        offset: u64,
        end: u64,
        block_size: u64,
        blocks: u64,
    ) -> io::Result<DataRuns> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut position = offset;
        while position < end {
            let data_start = match seek(file, SeekFrom::Data(position)) {
                Ok(at) => at,
                // No data after `position`.
                Err(rustix::io::Errno::NXIO) => break,
                // Not supported here (block device, old file system): read everything.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                    return Ok(DataRuns::all(blocks));
                }
                Err(e) => return Err(e.into()),
            };
            if data_start >= end {
                break;
            }
            let data_end = match seek(file, SeekFrom::Hole(data_start)) {
                Ok(at) => at.min(end),
                Err(rustix::io::Errno::NXIO) => end,
                Err(e) => return Err(e.into()),
            };
            if data_end <= data_start {
                // A file changing under us; be safe and read everything.
                return Ok(DataRuns::all(blocks));
            }
            let first = (data_start.max(offset) - offset) / block_size;
            let last = (data_end - offset).div_ceil(block_size);
            match runs.last_mut() {
                Some(previous) if previous.1 >= first => previous.1 = previous.1.max(last),
                _ => runs.push((first, last)),
            }
            position = data_end;
        }
        Ok(DataRuns { runs })
    }

    /// The kind of block `block` and where its run ends, capped at `limit`.
    pub(crate) fn run_at(&self, block: u64, limit: u64) -> (Run, u64) {
        let index = self.runs.partition_point(|&(_, end)| end <= block);
        match self.runs.get(index) {
            Some(&(start, end)) if start <= block => (Run::Data, end.min(limit)),
            Some(&(start, _)) => (Run::Hole, start.min(limit)),
            None => (Run::Hole, limit),
        }
    }

    #[cfg(test)]
    pub(crate) fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn run_lookup() {
        let runs = DataRuns { runs: vec![(2, 5), (9, 10)] };
        assert_eq!(runs.run_at(0, 100), (Run::Hole, 2));
        assert_eq!(runs.run_at(2, 100), (Run::Data, 5));
        assert_eq!(runs.run_at(4, 3), (Run::Data, 3));
        assert_eq!(runs.run_at(5, 100), (Run::Hole, 9));
        assert_eq!(runs.run_at(9, 100), (Run::Data, 10));
        assert_eq!(runs.run_at(10, 100), (Run::Hole, 100));
    }

    #[test]
    fn finds_data_in_a_sparse_file() {
        let file = tempfile::tempfile().unwrap();
        let mib = 1u64 << 20;
        file.set_len(64 * mib).unwrap();
        file.write_all_at(&[1u8; 10], 8 * mib + 5).unwrap();
        file.write_all_at(&[1u8; 10], 40 * mib).unwrap();
        let runs = DataRuns::find(&file, 0, 16384, 4096).unwrap();
        // The file system may report data in larger units than a block, but the
        // written blocks must be covered and most of the file must be a hole.
        let covered = |block: u64| runs.run_at(block, 16384).0 == Run::Data;
        assert!(covered(2048) && covered(10240));
        let data_blocks: u64 = runs.runs().iter().map(|(s, e)| e - s).sum();
        assert!(data_blocks < 4096, "{runs:?}");
        // An offset window.
        let runs = DataRuns::find(&file, 8 * mib, 2, 4096).unwrap();
        assert_eq!(runs.run_at(0, 2).0, Run::Data);
    }
}
