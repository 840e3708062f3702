//! Disk containers against qemu: VHDX and fixed VHD written by `abforge convert`
//! pass `qemu-img check`, compare identical to their raw source and convert back
//! byte for byte; VHDX made by qemu is read back identically; damaged files fail
//! with a clear message and exit 1, never a panic.

// Test sizes are small constants on 64-bit hosts: casts between u64 and usize are lossless.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use abforge_tests::vhdx::{
    GIB, MIB, assert_check_clean, assert_identical, assert_same_bytes, fix_checksum, info, patch,
    qemu_img, read_bytes, sparse_raw,
};
use abforge_tests::{abforge, run, run_ok, scratch, tool};

fn convert(input: &Path, output: &Path, format: &str, extra: &[&str]) -> Output {
    let mut cmd = abforge([
        "convert".as_ref(),
        input.as_os_str(),
        output.as_os_str(),
        "--format".as_ref(),
        format.as_ref(),
    ]);
    cmd.args(extra);
    run(&mut cmd)
}

fn convert_ok(input: &Path, output: &Path, format: &str, extra: &[&str]) {
    let out = convert(input, output, format, extra);
    assert!(
        out.status.success(),
        "abforge convert {} -> {} ({format}) failed: {}\n{}",
        input.display(),
        output.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where our writer puts the first payload block: 3 MiB of header section, log and
/// metadata, then a BAT region of whole MiB.
fn payload_start(bat_entries: u64) -> u64 {
    3 * MIB + (bat_entries * 8).div_ceil(MIB).max(1) * MIB
}

/// The payload blocks holding any of the written bytes.
fn blocks_touched(writes: &[(u64, usize, u8)], block_size: u64) -> usize {
    let mut blocks: Vec<u64> = writes
        .iter()
        .flat_map(|&(off, len, _)| off / block_size..=(off + len as u64 - 1) / block_size)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks.len()
}

/// Converts a sparse raw disk to VHDX and checks it every way qemu can: check,
/// info, compare, and conversion back to raw by qemu and by abforge.
fn round_trip(
    size: u64,
    writes: &[(u64, usize, u8)],
    block_size: Option<(&str, u64)>,
) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    let vhdx = dir.path().join("disk.vhdx");
    sparse_raw(&raw, size, writes);
    let extra: Vec<&str> =
        block_size.map(|(text, _)| vec!["--block-size", text]).unwrap_or_default();
    convert_ok(&raw, &vhdx, "vhdx", &extra);

    assert_check_clean(&vhdx);
    let info = info(&vhdx, "vhdx");
    assert_eq!(info["format"], "vhdx");
    assert_eq!(info["virtual-size"], size);
    let block_bytes = block_size.map_or(32 * MIB, |(_, b)| b);
    assert_eq!(info["cluster-size"], block_bytes);
    assert_identical(&raw, "raw", &vhdx, "vhdx");

    // The file holds exactly the blocks with data, after the metadata.
    let data_blocks = size.div_ceil(block_bytes);
    let chunk_ratio = (512 << 23) / block_bytes;
    let entries = data_blocks + (data_blocks - 1) / chunk_ratio;
    let expected_len =
        payload_start(entries) + blocks_touched(writes, block_bytes) as u64 * block_bytes;
    assert_eq!(std::fs::metadata(&vhdx).unwrap().len(), expected_len, "VHDX file size");

    let by_qemu = dir.path().join("by-qemu.raw");
    run_ok(
        Command::new(tool("qemu-img"))
            .args(["convert", "-f", "vhdx", "-O", "raw"])
            .arg(&vhdx)
            .arg(&by_qemu),
    );
    assert_same_bytes(&raw, &by_qemu);
    let by_abforge = dir.path().join("by-abforge.raw");
    convert_ok(&vhdx, &by_abforge, "raw", &[]);
    assert_same_bytes(&raw, &by_abforge);
    (dir, vhdx)
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn data_in_a_few_places() {
    round_trip(
        256 * MIB,
        &[
            (0, 4096, 1),
            (MIB + 17, 1000, 2),
            (100 * MIB - 5, 3 * MIB as usize, 3),
            (255 * MIB, MIB as usize, 4),
        ],
        None,
    );
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn size_not_a_multiple_of_the_block_size() {
    round_trip(100 * MIB + 512, &[(50 * MIB, 8192, 5), (100 * MIB, 512, 6)], None);
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn one_mib_blocks() {
    round_trip(
        64 * MIB,
        &[(0, 512, 7), (5 * MIB + 4096, 70_000, 8), (63 * MIB + 1, 1000, 9)],
        Some(("1MiB", MIB)),
    );
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn blocks_of_256_mib() {
    round_trip(
        600 * MIB,
        &[(10 * MIB, 65536, 10), (590 * MIB, 4096, 11)],
        Some(("256MiB", 256 * MIB)),
    );
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn more_than_128_blocks_interleave_sector_bitmap_entries() {
    // 5 GiB in 32 MiB blocks: 160 blocks, 161 BAT entries, entry 128 is a sector bitmap.
    let (_dir, vhdx) = round_trip(
        5 * GIB,
        &[
            (0, 4096, 12),
            (4 * GIB - 4096, 8192, 13),
            (4 * GIB + 32 * MIB, 4096, 14),
            (5 * GIB - 4096, 4096, 15),
        ],
        None,
    );
    let bat = read_bytes(&vhdx, 3 * MIB, 161 * 8);
    let entry = |i: usize| u64::from_le_bytes(bat[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(entry(128), 0, "the sector-bitmap entry stays 0");
    assert_eq!(entry(127) & 7, 6, "block 127 is present");
    assert_eq!(entry(129) & 7, 6, "block 128 lives at index 129");
    assert_eq!(entry(130) & 7, 6, "block 129 lives at index 130");
    assert_eq!(entry(131) & 7, 2, "block 130 is a ZERO block");
    assert_eq!(entry(160) & 7, 6, "block 159 lives at index 160");
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn empty_disk() {
    let (_dir, vhdx) = round_trip(GIB, &[], None);
    assert_eq!(std::fs::metadata(&vhdx).unwrap().len(), 4 * MIB);
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn writes_are_reproducible() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    sparse_raw(&raw, 300 * MIB, &[(0, 4096, 1), (200 * MIB, 100_000, 2)]);
    let (first, second, again) =
        (dir.path().join("1.vhdx"), dir.path().join("2.vhdx"), dir.path().join("3.vhdx"));
    convert_ok(&raw, &first, "vhdx", &[]);
    convert_ok(&raw, &second, "vhdx", &[]);
    assert_same_bytes(&first, &second);
    // The identifiers come from the disk's contents, so VHDX -> VHDX gives the same file.
    convert_ok(&first, &again, "vhdx", &[]);
    assert_same_bytes(&first, &again);
    let (vhd1, vhd2) = (dir.path().join("1.vhd"), dir.path().join("2.vhd"));
    convert_ok(&raw, &vhd1, "vhd", &[]);
    convert_ok(&raw, &vhd2, "vhd", &[]);
    assert_same_bytes(&vhd1, &vhd2);
    // Different contents give different disk identities (Page 83 at 2 MiB + 64 KiB + 16).
    let other_raw = dir.path().join("other.raw");
    sparse_raw(&other_raw, 300 * MIB, &[(0, 4096, 3)]);
    let other = dir.path().join("other.vhdx");
    convert_ok(&other_raw, &other, "vhdx", &[]);
    let page83 = |p: &Path| read_bytes(p, 2 * MIB + 0x10010, 16);
    assert_ne!(page83(&first), page83(&other));
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn fixed_vhd_compares_identical() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    let vhd = dir.path().join("disk.vhd");
    // Not a whole MiB: the VHD is rounded up to 101 MiB.
    sparse_raw(&raw, 100 * MIB + 512, &[(0, 4096, 1), (100 * MIB, 512, 2)]);
    convert_ok(&raw, &vhd, "vhd", &[]);
    let info = info(&vhd, "vpc");
    assert_eq!(info["format"], "vpc");
    assert_eq!(info["virtual-size"], 101 * MIB);
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), 101 * MIB + 512);
    assert_eq!(read_bytes(&vhd, 101 * MIB, 8), b"conectix");
    assert_identical(&raw, "raw", &vhd, "vpc");
    // Read back by abforge: the rounded-up disk.
    let back = dir.path().join("back.raw");
    convert_ok(&vhd, &back, "raw", &[]);
    assert_eq!(std::fs::metadata(&back).unwrap().len(), 101 * MIB);
    assert_identical(&raw, "raw", &back, "raw");
    // And to VHDX.
    let vhdx = dir.path().join("disk.vhdx");
    convert_ok(&vhd, &vhdx, "vhdx", &[]);
    assert_check_clean(&vhdx);
    assert_identical(&vhd, "vpc", &vhdx, "vhdx");
}

/// Converts a qemu-made VHDX to raw with abforge and with qemu-img; both must match.
fn assert_reads_like_qemu(dir: &Path, vhdx: &Path) {
    let by_qemu = dir.join("by-qemu.raw");
    let by_abforge = dir.join("by-abforge.raw");
    let _ = std::fs::remove_file(&by_qemu);
    run_ok(
        Command::new(tool("qemu-img"))
            .args(["convert", "-f", "vhdx", "-O", "raw"])
            .arg(vhdx)
            .arg(&by_qemu),
    );
    convert_ok(vhdx, &by_abforge, "raw", &[]);
    assert_same_bytes(&by_qemu, &by_abforge);
    // And re-encoded by abforge, it is still the same disk.
    let ours = dir.join("ours.vhdx");
    convert_ok(vhdx, &ours, "vhdx", &[]);
    assert_check_clean(&ours);
    assert_identical(vhdx, "vhdx", &ours, "vhdx");
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn reads_qemu_made_vhdx_of_every_block_size() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    sparse_raw(
        &raw,
        600 * MIB + 512,
        &[
            (0, 4096, 1),
            (3 * MIB + 100, 2 * MIB as usize, 2),
            (300 * MIB, 4096, 3),
            (600 * MIB, 512, 4),
        ],
    );
    for block_size in ["1M", "8M", "32M", "256M"] {
        let vhdx = dir.path().join(format!("qemu-{block_size}.vhdx"));
        run_ok(
            Command::new(tool("qemu-img"))
                .args(["convert", "-f", "raw", "-O", "vhdx", "-o"])
                .arg(format!("subformat=dynamic,block_size={block_size}"))
                .arg(&raw)
                .arg(&vhdx),
        );
        assert_reads_like_qemu(dir.path(), &vhdx);
    }
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn reads_a_sparse_5_gib_vhdx_written_by_qemu() {
    let dir = scratch();
    let vhdx = dir.path().join("qemu.vhdx");
    let writes = [
        ("0xab", "0", "64k"),
        ("0xcd", "4G", "1M"),
        ("0x11", "3221225472", "512"),
        ("0x22", "5119M", "1M"),
    ];
    let qemu_io = ["/usr/bin/qemu-io", "/usr/local/bin/qemu-io"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if let Some(qemu_io) = qemu_io {
        let out = qemu_img([
            "create".as_ref(),
            "-f".as_ref(),
            "vhdx".as_ref(),
            vhdx.as_os_str(),
            "5G".as_ref(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut cmd = Command::new(qemu_io);
        cmd.args(["-f", "vhdx"]);
        for (pattern, offset, len) in writes {
            cmd.arg("-c").arg(format!("write -P {pattern} {offset} {len}"));
        }
        run_ok(cmd.arg(&vhdx));
    } else {
        // Without qemu-io, the same disk made by qemu-img convert from a raw.
        let raw = dir.path().join("disk.raw");
        sparse_raw(
            &raw,
            5 * GIB,
            &[(0, 65536, 0xab), (4 * GIB, MIB as usize, 0xcd), (5119 * MIB, MIB as usize, 0x22)],
        );
        run_ok(
            Command::new(tool("qemu-img"))
                .args(["convert", "-f", "raw", "-O", "vhdx"])
                .arg(&raw)
                .arg(&vhdx),
        );
    }
    assert_eq!(info(&vhdx, "vhdx")["virtual-size"], 5 * GIB);
    assert_reads_like_qemu(dir.path(), &vhdx);
}

/// A VHDX of abforge's layout to damage: 64 MiB in 1 MiB blocks, data in blocks 0,
/// 5 and 63. Metadata at 2 MiB, BAT at 3 MiB, payload from 4 MiB.
fn damage_base(dir: &Path) -> PathBuf {
    let raw = dir.join("base.raw");
    let vhdx = dir.join("base.vhdx");
    sparse_raw(&raw, 64 * MIB, &[(0, 4096, 1), (5 * MIB, 4096, 2), (63 * MIB, 4096, 3)]);
    convert_ok(&raw, &vhdx, "vhdx", &["--block-size", "1MiB"]);
    vhdx
}

const H1: u64 = 64 << 10;
const H2: u64 = 128 << 10;
const R1: u64 = 192 << 10;
const R2: u64 = 256 << 10;
const METADATA: u64 = 2 * MIB;
const BAT: u64 = 3 * MIB;

fn both_headers(path: &Path, at: u64, bytes: &[u8]) {
    for header in [H1, H2] {
        patch(path, header + at, bytes);
        fix_checksum(path, header, 4096);
    }
}

fn both_region_tables(path: &Path, at: u64, bytes: &[u8]) {
    for table in [R1, R2] {
        patch(path, table + at, bytes);
        fix_checksum(path, table, 65536);
    }
}

type Damage = fn(&Path);

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn damaged_files_fail_cleanly() {
    let cases: &[(&str, Damage, &str)] = &[
        ("file identifier", |p| patch(p, 0, b"XXXXXXXX"), "does not start with \"vhdxfile\""),
        (
            "both header checksums",
            |p| {
                patch(p, H1 + 100, &[0xff]);
                patch(p, H2 + 100, &[0xff]);
            },
            "no valid VHDX header",
        ),
        (
            "both header signatures",
            |p| {
                patch(p, H1, b"daeh");
                patch(p, H2, b"daeh");
            },
            "no valid VHDX header",
        ),
        ("header version 2", |p| both_headers(p, 66, &2u16.to_le_bytes()), "version 2"),
        ("a log to replay", |p| both_headers(p, 48, &[0x42; 16]), "log to replay"),
        (
            "both region table checksums",
            |p| {
                patch(p, R1 + 1000, &[1]);
                patch(p, R2 + 1000, &[1]);
            },
            "no valid region table",
        ),
        ("absurd region count", |p| both_region_tables(p, 8, &u32::MAX.to_le_bytes()), "2047"),
        // Entry 1 (metadata) moved onto the BAT.
        (
            "overlapping regions",
            |p| both_region_tables(p, 16 + 32 + 16, &BAT.to_le_bytes()),
            "overlaps",
        ),
        // Entry 0 (BAT) moved far past the end.
        (
            "region past the end",
            |p| both_region_tables(p, 16 + 16, &(1u64 << 40).to_le_bytes()),
            "past the end",
        ),
        ("unknown required region", |p| both_region_tables(p, 16, &[0x33; 16]), "unknown region"),
        (
            "BAT entry past the end",
            |p| patch(p, BAT, &((1u64 << 40) | 6).to_le_bytes()),
            "past the end",
        ),
        (
            "BAT entry on the metadata",
            |p| patch(p, BAT, &(METADATA | 6).to_le_bytes()),
            "overlaps the metadata region",
        ),
        (
            "BAT entry on the header section",
            |p| patch(p, BAT, &6u64.to_le_bytes()),
            "overlaps the header section",
        ),
        (
            "two blocks in one place",
            |p| {
                let first = read_bytes(p, BAT, 8);
                patch(p, BAT + 5 * 8, &first);
            },
            "overlap in the file",
        ),
        (
            "BAT entry with a reserved state",
            |p| patch(p, BAT + 8, &4u64.to_le_bytes()),
            "invalid state 4",
        ),
        // Metadata entry 4 (physical sector size) renamed to an unknown, still required item.
        (
            "unknown required metadata",
            |p| patch(p, METADATA + 32 + 4 * 32, &[0x11; 16]),
            "unknown metadata item",
        ),
        (
            "absurd virtual size",
            |p| patch(p, METADATA + 0x10008, &(1u64 << 62).to_le_bytes()),
            "virtual size",
        ),
        (
            "absurd block size",
            |p| patch(p, METADATA + 0x10000, &(3u32 << 20).to_le_bytes()),
            "block size",
        ),
        (
            "metadata value outside its region",
            |p| patch(p, METADATA + 32 + 32 + 16, &0xFFFF_FF00u32.to_le_bytes()),
            "outside",
        ),
        ("metadata signature", |p| patch(p, METADATA, b"METADATA"), "signature"),
        (
            "truncated in the payload",
            |p| {
                std::fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(4 * MIB + 100)
                    .unwrap()
            },
            "past the end",
        ),
        (
            "truncated in the header section",
            |p| std::fs::File::options().write(true).open(p).unwrap().set_len(100 << 10).unwrap(),
            "too short",
        ),
    ];
    let dir = scratch();
    let base = damage_base(dir.path());
    let mut failures = Vec::new();
    for (name, damage, expected) in cases {
        let damaged = dir.path().join("damaged.vhdx");
        std::fs::copy(&base, &damaged).unwrap();
        damage(&damaged);
        let out_path = dir.path().join("out.raw");
        let out = convert(&damaged, &out_path, "raw", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || !stderr.contains(expected) || stderr.contains("panicked")
        {
            failures.push(format!(
                "{name}: exit {:?}, expected a message with {expected:?}, got:\n{stderr}",
                out.status.code()
            ));
        }
        if out_path.exists() {
            failures.push(format!("{name}: left {}", out_path.display()));
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn one_damaged_copy_is_survived() {
    let dir = scratch();
    let base = damage_base(dir.path());
    let reference = dir.path().join("reference.raw");
    convert_ok(&base, &reference, "raw", &[]);
    let damages: &[(&str, Damage)] = &[
        ("header 1", |p| patch(p, H1 + 200, &[0xee])),
        ("header 2", |p| patch(p, H2, b"XXXX")),
        ("region table 1", |p| patch(p, R1 + 5000, &[0xee])),
        ("region table 2", |p| patch(p, R2, b"XXXX")),
    ];
    for (name, damage) in damages {
        let damaged = dir.path().join("damaged.vhdx");
        std::fs::copy(&base, &damaged).unwrap();
        damage(&damaged);
        let out = dir.path().join("out.raw");
        let result = convert(&damaged, &out, "raw", &[]);
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        assert_same_bytes(&reference, &out);
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    sparse_raw(&raw, 4 * MIB, &[]);
    let out = dir.path().join("out.vhdx");
    for extra in
        [&["--block-size", "3MiB"][..], &["--block-size", "512MiB"], &["--block-size", "lots"]]
    {
        let result = convert(&raw, &out, "vhdx", extra);
        assert_eq!(
            result.status.code(),
            Some(2),
            "{extra:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let result = convert(&raw, &out, "raw", &["--block-size", "1MiB"]);
    assert_eq!(result.status.code(), Some(2));
    let result = convert(&raw, &out, "qcow2", &[]);
    assert_eq!(result.status.code(), Some(2));
    let result = convert(&dir.path().join("missing.raw"), &out, "vhdx", &[]);
    assert_eq!(result.status.code(), Some(1));
    assert!(!out.exists());
}
