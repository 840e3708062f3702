//! Disk containers: the files a whole virtual disk is written into (dynamic VHDX,
//! fixed VHD, sparse raw) and read back from.
//!
//! Every writer takes a [`DiskSource`], an abstract virtual disk that says which
//! ranges may hold data, so `build` can stream partition images straight into a
//! VHDX with no raw intermediate disk, and `convert` is simply a writer fed by a
//! reader ([`open_image`]).

pub mod inplace;
pub mod raw;
pub mod source;
pub mod vhd;
pub mod vhdx;

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;

pub use source::{ComposedDisk, RawFile, Segment, SegmentData};

/// A virtual disk to be written into a container: its size, its bytes, and which
/// ranges may hold non-zero data (everything else reads as zeros).
pub trait DiskSource: Sync {
    /// The virtual size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`; the whole range must lie within
    /// [`size`](DiskSource::size).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The sub-ranges of `range` (sorted, non-overlapping) that may hold non-zero
    /// data; the rest of `range` reads as zeros. Returning more than the data is
    /// allowed (it only costs reading zeros), returning less is not.
    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>>;
}

impl<T: DiskSource + ?Sized> DiskSource for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        (**self).data_ranges(range)
    }
}

impl<T: DiskSource + ?Sized> DiskSource for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn data_ranges(&self, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        (**self).data_ranges(range)
    }
}

/// The container formats abforge writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainerFormat {
    /// Dynamic VHDX (Hyper-V, EFLOW).
    Vhdx,
    /// Fixed VHD (Azure).
    Vhd,
    /// Raw disk image, sparse.
    Raw,
}

impl fmt::Display for ContainerFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerFormat::Vhdx => "vhdx",
            ContainerFormat::Vhd => "vhd",
            ContainerFormat::Raw => "raw",
        })
    }
}

/// Opens a disk image, detecting its format: VHDX by its file identifier
/// (`vhdxfile`), fixed VHD by its footer cookie (`conectix` in the last 512
/// bytes), anything else as a raw disk.
pub fn open_image(path: &Path) -> anyhow::Result<Box<dyn DiskSource>> {
    Ok(open_image_with_format(path)?.1)
}

/// [`open_image`], also saying which format it found.
pub fn open_image_with_format(
    path: &Path,
) -> anyhow::Result<(ContainerFormat, Box<dyn DiskSource>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let format = detect_format(&file).with_context(|| format!("cannot read {}", path.display()))?;
    let disk: Box<dyn DiskSource> = match format {
        ContainerFormat::Vhdx => Box::new(
            vhdx::VhdxReader::open(file)
                .with_context(|| format!("{} is not a usable VHDX file", path.display()))?,
        ),
        ContainerFormat::Vhd => Box::new(
            vhd::VhdReader::open(file)
                .with_context(|| format!("{} is not a usable VHD file", path.display()))?,
        ),
        ContainerFormat::Raw => Box::new(
            RawFile::open(file).with_context(|| format!("cannot read {}", path.display()))?,
        ),
    };
    Ok((format, disk))
}

/// The format of an image file, from its signatures.
pub fn detect_format(file: &File) -> io::Result<ContainerFormat> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut head = [0u8; 8];
    if len >= 8 {
        file.read_exact_at(&mut head, 0)?;
        if &head == vhdx::FILE_SIGNATURE {
            return Ok(ContainerFormat::Vhdx);
        }
    }
    // A VHDX whose identifier is damaged still has its headers and region tables:
    // report it as a damaged VHDX rather than reading it as a raw disk.
    if len >= vhdx::REGION_TABLE_1_OFFSET + 4 {
        let (mut header, mut region) = ([0u8; 4], [0u8; 4]);
        file.read_exact_at(&mut header, vhdx::HEADER_1_OFFSET)?;
        file.read_exact_at(&mut region, vhdx::REGION_TABLE_1_OFFSET)?;
        if &header == b"head" && &region == b"regi" {
            return Ok(ContainerFormat::Vhdx);
        }
    }
    if len >= vhd::FOOTER_SIZE {
        let mut cookie = [0u8; 8];
        file.read_exact_at(&mut cookie, len - vhd::FOOTER_SIZE)?;
        if &cookie == vhd::COOKIE {
            return Ok(ContainerFormat::Vhd);
        }
    }
    Ok(ContainerFormat::Raw)
}

/// Writes `path` through `write`, atomically: the data goes to `.<name>.tmp-<pid>`
/// in the same directory, is flushed to disk, then renamed over `path`. On any
/// error the temporary file is removed and `path` is left as it was.
pub fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&File) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let name =
        path.file_name().with_context(|| format!("{} does not name a file", path.display()))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let result = (|| {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let value = write(&file)?;
        file.sync_all().with_context(|| format!("cannot flush {}", temp.display()))?;
        drop(file);
        std::fs::rename(&temp, path)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
        Ok(value)
    })();
    if result.is_err() {
        // The error being returned matters more than a failed clean-up.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes `source` into `out` (an empty file) in `format`.
pub fn write_container(
    format: ContainerFormat,
    source: &dyn DiskSource,
    out: &File,
    vhdx_options: &vhdx::VhdxOptions,
    vhd_options: &vhd::VhdOptions,
) -> anyhow::Result<()> {
    match format {
        ContainerFormat::Vhdx => {
            vhdx::write_vhdx(source, out, vhdx_options)?;
        }
        ContainerFormat::Vhd => vhd::write_vhd_fixed(source, out, vhd_options)?,
        ContainerFormat::Raw => raw::write_raw(source, out)?,
    }
    Ok(())
}

/// True when every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // Comparing 16-byte chunks lets the compiler vectorise; the tail is checked bytewise.
    let mut chunks = buf.chunks_exact(16);
    for chunk in &mut chunks {
        if u128::from_ne_bytes(chunk.try_into().unwrap_or([1; 16])) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

// Offsets and lengths are u64 on disk and usize in memory; abforge builds only for
// 64-bit targets, where converting one to the other is lossless.
const _: () = assert!(usize::BITS == 64, "abforge supports 64-bit targets only");

/// `value` as a memory index or length: lossless on the 64-bit targets abforge supports.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn idx(value: u64) -> usize {
    value as usize
}

/// An `io::Error` of kind InvalidData with `message`.
pub(crate) fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf));
        buf[4098] = 1;
        assert!(!is_zero(&buf));
        buf[4098] = 0;
        buf[17] = 1;
        assert!(!is_zero(&buf));
    }

    #[test]
    fn atomic_write_leaves_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhdx");
        let err = write_atomically(&path, |_| -> anyhow::Result<()> { anyhow::bail!("boom") });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomically(&path, |f| {
            use std::io::Write;
            (&*f).write_all(b"ok")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ok");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
