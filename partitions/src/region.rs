//! A bounded window of a file, the sink every partition producer writes into.
//!
//! Producers write with positioned I/O (`pwrite`), so several producers can fill
//! different windows of one file from different threads, and ranges that are never
//! written stay holes in a sparse file: a 2 TiB Data partition costs nothing until
//! a producer writes into it. Producers must skip all-zero blocks themselves.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `len` bytes of `file` starting at `offset`. Offsets given to the methods are
/// relative to the start of the window; a write past its end is an error, never a
/// silent overrun into the next partition.
#[derive(Debug, Clone, Copy)]
pub struct FileRegion<'a> {
    file: &'a File,
    offset: u64,
    len: u64,
}

impl<'a> FileRegion<'a> {
    pub fn new(file: &'a File, offset: u64, len: u64) -> FileRegion<'a> {
        FileRegion { file, offset, len }
    }

    pub fn file(&self) -> &'a File {
        self.file
    }

    /// Where the window starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A narrower window inside this one.
    pub fn sub(&self, offset: u64, len: u64) -> io::Result<FileRegion<'a>> {
        self.check(offset, len)?;
        Ok(FileRegion::new(self.file, self.offset + offset, len))
    }

    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, data.len() as u64)?;
        self.file.write_all_at(data, self.offset + offset)
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, self.offset + offset)
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "access of {len} bytes at {offset} is outside a region of {} bytes",
                    self.len
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_inside_the_window() {
        let dir = std::env::temp_dir().join(format!("abforge-region-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file =
            File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(4096).unwrap();
        let region = FileRegion::new(&file, 1024, 512);
        region.write_all_at(b"abc", 509).unwrap();
        assert!(region.write_all_at(b"abcd", 509).is_err());
        let mut back = [0u8; 3];
        file.read_exact_at(&mut back, 1024 + 509).unwrap();
        assert_eq!(&back, b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
