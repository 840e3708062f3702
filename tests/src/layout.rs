//! Helpers for tests that build whole disks from manifests.

use std::fs;
use std::path::{Path, PathBuf};

/// The EFLOW layout of boot-and-signing.md §1 with vfat ESPs whose contents come
/// from `esp/` beside the manifest, and every other partition unformatted.
pub const EFLOW_RAW: &str = "\
name: eflow
version: \"1.4.0\"
seed: eflow-1.4.0
source_date_epoch: 1700000000
format: raw
partitions:
  - name: BootEFI{SLOT}
    per_slot: true
    type: esp
    size: 8MiB
    filesystem: vfat
    contents: esp/
  - { name: 'Boot{SLOT}', per_slot: true, type: linux, size: 192MiB }
  - { name: 'RootFS{SLOT}', per_slot: true, type: root, size: 4GiB, read_only: true }
  - { name: Unused, type: linux, size: 4GiB }
  - { name: Log, type: linux, size: 1GiB }
  - { name: Data, type: linux, size: 2GiB }
";

/// Writes a manifest and an ESP tree (a 300 KB `EFI/BOOT/BOOTX64.EFI` of pattern
/// bytes, a long-file-name file and a 1.5 MB payload) into `dir`; returns the manifest path.
pub fn write_eflow_project(dir: &Path, manifest: &str) -> PathBuf {
    let boot = dir.join("esp/EFI/BOOT");
    fs::create_dir_all(&boot).unwrap();
    fs::write(boot.join("BOOTX64.EFI"), bootx64_bytes()).unwrap();
    let abforge = dir.join("esp/EFI/abforge");
    fs::create_dir_all(&abforge).unwrap();
    fs::write(abforge.join("a rather long file name.txt"), b"long names work\n").unwrap();
    // Enough content that a 1 MiB ESP cannot hold it.
    fs::write(abforge.join("payload.bin"), vec![0x5a; 1_500_000]).unwrap();
    let path = dir.join("eflow.yaml");
    fs::write(&path, manifest).unwrap();
    path
}

/// The pattern the test ESP's BOOTX64.EFI holds.
pub fn bootx64_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

/// Bytes allocated on disk for a file (st_blocks × 512), as `du` reports.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// The non-zero 4 KiB blocks of a (sparse) file as (offset, bytes), found by
/// skipping holes with SEEK_DATA/SEEK_HOLE, so comparing two 16 GiB sparse
/// images reads only their data.
pub fn nonzero_blocks(path: &Path) -> Vec<(u64, Vec<u8>)> {
    use rustix::fs::{SeekFrom, seek};
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut blocks = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let start = match seek(&file, SeekFrom::Data(offset)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA on {}: {e}", path.display()),
        };
        let end = seek(&file, SeekFrom::Hole(start)).unwrap_or(len).min(len);
        let mut block_start = start / 4096 * 4096;
        while block_start < end {
            let n = usize::try_from(4096.min(len - block_start)).expect("at most 4096");
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, block_start).unwrap();
            if buf.iter().any(|&b| b != 0) {
                blocks.push((block_start, buf));
            }
            block_start += 4096;
        }
        offset = end.max(start + 1);
    }
    blocks.dedup_by_key(|(o, _)| *o);
    blocks
}

/// Whether two sparse files have the same length and the same bytes.
pub fn same_sparse_content(a: &Path, b: &Path) -> bool {
    fs::metadata(a).unwrap().len() == fs::metadata(b).unwrap().len()
        && nonzero_blocks(a) == nonzero_blocks(b)
}

/// Copies `len` bytes at `offset` of a sparse image into a new sparse file,
/// reading only the data extents (fast for a mostly empty 4 GiB partition).
pub fn extract_sparse(image: &Path, offset: u64, len: u64, to: &Path) {
    use rustix::fs::{SeekFrom, seek};
    use std::os::unix::fs::FileExt;
    let input = fs::File::open(image).unwrap();
    let output = fs::File::create(to).unwrap();
    output.set_len(len).unwrap();
    let end = offset + len;
    let mut at = offset;
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let start = match seek(&input, SeekFrom::Data(at)) {
            Ok(start) if start < end => start,
            _ => break,
        };
        let stop = seek(&input, SeekFrom::Hole(start)).unwrap_or(end).min(end);
        let mut pos = start;
        while pos < stop {
            let n = usize::try_from((stop - pos).min(buf.len() as u64)).expect("at most 1 MiB");
            input.read_exact_at(&mut buf[..n], pos).unwrap();
            output.write_all_at(&buf[..n], pos - offset).unwrap();
            pos += n as u64;
        }
        at = stop;
    }
}

/// The partition entry called `name` in a build report.
pub fn report_partition<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no partition {name} in the report"))
}

/// Runs `abforge build MANIFEST -o OUT --quiet` with `extra` arguments and returns
/// the build report `OUT/<name>.json`.
pub fn build_report(manifest: &Path, out: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "build".as_ref(),
        manifest.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    crate::run_ok(&mut crate::abforge(args));
    let path = out.join(format!("{name}.json"));
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the build report is JSON")
}
