//! Helpers for the boot-chain tests (tests/tests/kernels.rs).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use abforge_partitions::tree::ContentSource;

/// The committed excerpt of Debian's kernel module index (see
/// kernels/testdata/make-debian-modules-fixture.sh).
pub fn debian_modules_fixture() -> PathBuf {
    crate::repo_root().join("kernels/testdata/debian-amd64")
}

/// A host file read on demand, as the builder hands files to the cpio writer.
#[derive(Debug)]
pub struct HostFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl HostFile {
    pub fn open(path: &Path) -> io::Result<HostFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(HostFile { path: path.to_path_buf(), file, len })
    }
}

impl ContentSource for HostFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
