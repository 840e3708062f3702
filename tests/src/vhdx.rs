//! Helpers for the disk-container tests: sparse raw disks with patterns at chosen
//! offsets, `qemu-img` queries, and patching bytes of a VHDX to damage it.

// Test sizes are small constants on 64-bit hosts: casts between u64 and usize are lossless.
#![allow(clippy::cast_possible_truncation)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::{run, run_ok, tool};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Creates a sparse raw disk of `size` bytes with, for each `(offset, len, byte)`,
/// `len` bytes of a pattern derived from `byte` and the position (so misplaced
/// data is caught, not just missing data).
pub fn sparse_raw(path: &Path, size: u64, writes: &[(u64, usize, u8)]) {
    let file = File::create(path).expect("create raw disk");
    file.set_len(size).expect("size raw disk");
    for &(offset, len, byte) in writes {
        let data: Vec<u8> = (0..len).map(|i| byte ^ (i % 251) as u8 ^ 0x5a).collect();
        file.write_all_at(&data, offset).expect("write pattern");
    }
}

/// `qemu-img` with `args`, in the C locale.
pub fn qemu_img<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(Command::new(tool("qemu-img")).args(args).env("LC_ALL", "C"))
}

/// `qemu-img info` as JSON, for format `format`.
pub fn info(path: &Path, format: &str) -> serde_json::Value {
    let out = run_ok(
        Command::new(tool("qemu-img"))
            .args(["info", "--output=json", "-f", format])
            .arg(path)
            .env("LC_ALL", "C"),
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img info prints JSON")
}

/// Asserts `qemu-img check` finds nothing wrong with a VHDX.
pub fn assert_check_clean(path: &Path) {
    let out = qemu_img(["check".as_ref(), "-f".as_ref(), "vhdx".as_ref(), path.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No errors were found"),
        "qemu-img check {}: {}\n{}{}",
        path.display(),
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts `qemu-img compare` finds two images identical.
pub fn assert_identical(a: &Path, a_format: &str, b: &Path, b_format: &str) {
    let out = qemu_img([
        "compare".as_ref(),
        "-f".as_ref(),
        a_format.as_ref(),
        "-F".as_ref(),
        b_format.as_ref(),
        a.as_os_str(),
        b.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}\n{}{}",
        a.display(),
        b.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts two files have the same bytes. Large (sparse) files are compared by
/// `qemu-img compare` as raw images, which skips holes instead of reading zeros;
/// small ones a MiB at a time.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).expect("open a"), File::open(b).expect("open b"));
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    assert_eq!(la, lb, "{} and {} differ in length", a.display(), b.display());
    if la > 256 * MIB {
        assert_identical(a, "raw", b, "raw");
        return;
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0;
    while offset < la {
        let n = (la - offset).min(MIB) as usize;
        fa.read_exact_at(&mut ba[..n], offset).unwrap();
        fb.read_exact_at(&mut bb[..n], offset).unwrap();
        if ba[..n] != bb[..n] {
            let at = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!("{} and {} differ at byte {}", a.display(), b.display(), offset + at as u64);
        }
        offset += n as u64;
    }
}

/// Reads `len` bytes of a file at `offset`.
pub fn read_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Overwrites bytes of a file at `offset`.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    File::options().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

/// CRC-32C (Castagnoli, reflected, init and final XOR 0xFFFFFFFF), bit by bit:
/// slow but independent of the implementation under test.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Recomputes the CRC-32C of a `len`-byte VHDX structure at `offset` (checksum at +4).
pub fn fix_checksum(path: &Path, offset: u64, len: usize) {
    let mut bytes = read_bytes(path, offset, len);
    bytes[4..8].fill(0);
    let crc = crc32c(&bytes);
    patch(path, offset + 4, &crc.to_le_bytes());
}
