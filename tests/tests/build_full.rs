//! The reference manifest (manifests/eflow.yaml) built whole: ext4 partitions,
//! appended dm-verity trees and the three containers, checked with e2fsck,
//! veritysetup and qemu-img (issues 3, 4 and 5).

use std::fs;
use std::path::{Path, PathBuf};

use abforge_tests::layout::{
    build_report, extract_sparse, nonzero_blocks, report_partition, same_sparse_content,
};
use abforge_tests::{abforge, repo_root, run, run_ok, run_tool, scratch};
use serde_json::Value;

fn eflow_manifest() -> PathBuf {
    repo_root().join("manifests/eflow.yaml")
}

/// manifests/eflow.yaml with each (from, to) replaced (each must occur) and its
/// source paths made absolute, to be written anywhere.
fn eflow_manifest_with(replacements: &[(&str, &str)]) -> String {
    let root = repo_root();
    let mut manifest = fs::read_to_string(eflow_manifest()).unwrap();
    let absolute = [
        ("source: demo-rootfs/", format!("source: {}/manifests/demo-rootfs/", root.display())),
        ("contents: demo-esp/", format!("contents: {}/manifests/demo-esp/", root.display())),
    ];
    let all = replacements.iter().map(|&(from, to)| (from, to.to_string())).chain(absolute);
    for (from, to) in all {
        assert!(manifest.contains(from), "manifests/eflow.yaml has no '{from}'");
        manifest = manifest.replace(from, &to);
    }
    manifest
}

fn build(format: &str, out: &Path) -> Value {
    build_report(&eflow_manifest(), out, "eflow", &["--format", format])
}

fn image(out: &Path, ext: &str) -> PathBuf {
    out.join(format!("eflow.{ext}"))
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn every_ext4_partition_passes_e2fsck() {
    let dir = scratch();
    let out = dir.path().join("out");
    let report = build("raw", &out);
    let mut checked = 0;
    for partition in report["partitions"].as_array().unwrap() {
        if partition["filesystem"] != "ext4" {
            continue;
        }
        let name = partition["name"].as_str().unwrap();
        let extracted = dir.path().join(format!("{name}.img"));
        extract_sparse(
            &image(&out, "raw"),
            partition["offset"].as_u64().unwrap(),
            partition["size"].as_u64().unwrap(),
            &extracted,
        );
        let result = run(std::process::Command::new(abforge_tests::tool("e2fsck"))
            .arg("-fn")
            .arg(&extracted));
        assert!(
            result.status.success(),
            "e2fsck -fn {name}:\n{}",
            String::from_utf8_lossy(&result.stdout)
        );
        checked += 1;
    }
    assert_eq!(checked, 6, "BootA, BootB, RootFSA, RootFSB, Log, Data");
}

#[test]
#[cfg_attr(not(any(ci, have_veritysetup)), ignore = "needs veritysetup (package cryptsetup-bin)")]
fn veritysetup_accepts_the_appended_trees_and_both_roots_are_identical() {
    let dir = scratch();
    let out = dir.path().join("out");
    let report = build("raw", &out);
    let verity = report["verity"].as_array().unwrap();
    assert_eq!(verity.len(), 2);
    let mut extracted = Vec::new();
    for entry in verity {
        let name = entry["partition"].as_str().unwrap();
        let partition = report_partition(&report, name);
        let path = dir.path().join(format!("{name}.img"));
        extract_sparse(
            &image(&out, "raw"),
            partition["offset"].as_u64().unwrap(),
            partition["size"].as_u64().unwrap(),
            &path,
        );
        let hash_offset = entry["hash_offset"].as_u64().unwrap();
        assert_eq!(hash_offset % 4096, 0);
        assert_eq!(entry["data_blocks"].as_u64().unwrap() * 4096, hash_offset);
        run_tool(
            "veritysetup",
            [
                "verify".as_ref(),
                path.as_os_str(),
                path.as_os_str(),
                entry["root_hash"].as_str().unwrap().as_ref(),
                format!("--hash-offset={hash_offset}").as_ref(),
            ],
        );
        // veritysetup reads the same salt from the superblock we reported.
        let dump = run_tool(
            "veritysetup",
            ["dump".as_ref(), path.as_os_str(), format!("--hash-offset={hash_offset}").as_ref()],
        );
        assert!(String::from_utf8_lossy(&dump.stdout).contains(entry["salt"].as_str().unwrap()));
        extracted.push(path);
    }
    assert_eq!(verity[0]["root_hash"], verity[1]["root_hash"], "a release has one root hash");
    assert!(same_sparse_content(&extracted[0], &extracted[1]), "RootFSA and RootFSB differ");
}

/// Flips one byte at `offset` of a file.
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset).unwrap();
}

#[test]
fn verify_fails_on_any_flipped_byte_of_a_root_and_names_it() {
    let dir = scratch();
    let out = dir.path().join("out");
    let report = build("raw", &out);
    let raw = image(&out, "raw");
    run_ok(&mut abforge(["verify".as_ref(), raw.as_os_str()]));
    let root = report_partition(&report, "RootFSB");
    let base = root["offset"].as_u64().unwrap();
    let hash_offset = report["verity"][1]["hash_offset"].as_u64().unwrap();
    // Data blocks that hold data (the superblock, inode tables, a file), an
    // all-zero one, and bytes of the verity superblock and of the tree.
    let data: Vec<u64> =
        nonzero_blocks_in(&raw, base, hash_offset).into_iter().step_by(7).take(6).collect();
    let positions: Vec<u64> = data
        .iter()
        .map(|o| o + 17)
        .chain([base + 40 * 4096 + 5, base + hash_offset + 72, base + hash_offset + 4096 + 33])
        .collect();
    for position in positions {
        flip(&raw, position);
        let result = run(&mut abforge(["verify".as_ref(), raw.as_os_str()]));
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "byte {position}: {stderr}");
        assert!(stderr.contains("partition 'RootFSB'"), "byte {position}: {stderr}");
        assert!(
            stderr.contains("block") || stderr.contains("superblock"),
            "byte {position}: {stderr}"
        );
        flip(&raw, position);
    }
    run_ok(&mut abforge(["verify".as_ref(), raw.as_os_str()]));
}

/// Disk offsets of the non-zero blocks of the file-system area of a partition.
fn nonzero_blocks_in(raw: &Path, base: u64, len: u64) -> Vec<u64> {
    nonzero_blocks(raw)
        .into_iter()
        .map(|(o, _)| o)
        .filter(|o| (base..base + len).contains(o))
        .collect()
}

#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn vhdx_and_vhd_builds_match_the_raw_build() {
    let dir = scratch();
    let raw_report = build("raw", &dir.path().join("raw"));
    let with_sha256 = |format: &str, out: &Path| {
        build_report(&eflow_manifest(), out, "eflow", &["--format", format, "--sha256"])
    };
    let vhdx_report = with_sha256("vhdx", &dir.path().join("vhdx"));
    // (A fixed VHD is as large as the disk, 16 GiB: build_raw tests `--sha256` on a small one.)
    let vhd_report = build("vhd", &dir.path().join("vhd"));
    let raw = image(&dir.path().join("raw"), "raw");
    let vhdx = image(&dir.path().join("vhdx"), "vhdx");
    let vhd = image(&dir.path().join("vhd"), "vhd");
    let check =
        run_tool("qemu-img", ["check".as_ref(), "-f".as_ref(), "vhdx".as_ref(), vhdx.as_os_str()]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("No errors were found"));
    let info = run_tool("qemu-img", ["info".as_ref(), "--output=json".as_ref(), vhdx.as_os_str()]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], raw_report["image"]["virtual_size"]);
    run_tool(
        "qemu-img",
        [
            "compare".as_ref(),
            "-f".as_ref(),
            "vhdx".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            vhdx.as_os_str(),
            raw.as_os_str(),
        ],
    );
    run_tool(
        "qemu-img",
        [
            "compare".as_ref(),
            "-f".as_ref(),
            "vpc".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            vhd.as_os_str(),
            raw.as_os_str(),
        ],
    );
    // qemu-img's own conversion back to raw is byte-identical to our raw build.
    let back = dir.path().join("back.raw");
    run_tool(
        "qemu-img",
        [
            "convert".as_ref(),
            "-f".as_ref(),
            "vhdx".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            vhdx.as_os_str(),
            back.as_os_str(),
        ],
    );
    assert!(same_sparse_content(&back, &raw));
    // The same partitions and root hashes whatever the container.
    for report in [&vhdx_report, &vhd_report] {
        assert_eq!(report["partitions"], raw_report["partitions"]);
        assert_eq!(report["verity"], raw_report["verity"]);
    }
    // `--sha256` puts the digest of the whole file in the report.
    assert_eq!(vhdx_report["image"]["sha256"].as_str().unwrap(), abforge_tests::sha256_file(&vhdx));
    assert!(raw_report["image"]["sha256"].is_null(), "no --sha256, no whole-file digest");
    run_ok(&mut abforge(["verify".as_ref(), vhdx.as_os_str()]));
    run_ok(&mut abforge(["verify".as_ref(), vhd.as_os_str()]));
    let inspected = run_ok(&mut abforge(["inspect".as_ref(), vhdx.as_os_str(), "--json".as_ref()]));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["format"], "vhdx");
    assert_eq!(inspected["partitions"][2]["filesystem"]["kind"], "ext4");
    // inspect finds the appended verity superblock where the report says.
    let appended = &inspected["partitions"][2]["appended_verity"];
    assert_eq!(appended["hash_offset"], raw_report["verity"][0]["hash_offset"]);
    assert_eq!(appended["superblock"]["salt"], raw_report["verity"][0]["salt"]);
    assert_eq!(
        inspected["partitions"][2]["filesystem"]["uuid"],
        raw_report["partitions"][2]["fs_id"]
    );
}

#[test]
fn two_vhdx_builds_are_byte_identical() {
    let dir = scratch();
    let first = build("vhdx", &dir.path().join("one"));
    let second = build("vhdx", &dir.path().join("two"));
    assert!(first["image"]["sha256"].is_null(), "no --sha256, no whole-file digest");
    assert_eq!(first["image"]["data_sha256"], second["image"]["data_sha256"]);
    assert_eq!(
        abforge_tests::sha256_file(&image(&dir.path().join("one"), "vhdx")),
        abforge_tests::sha256_file(&image(&dir.path().join("two"), "vhdx"))
    );
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn mkfs_ext4_from_a_directory_and_its_tar_gives_the_same_image() {
    let dir = scratch();
    let source = repo_root().join("manifests/demo-rootfs");
    let tar = dir.path().join("root.tar");
    run_ok(
        std::process::Command::new("tar")
            .args(["--format=pax", "-C"])
            .arg(&source)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    // Sized to fit, or given a size: then a directory is written while it is read.
    for size in [None, Some("64MiB")] {
        let from_dir = dir.path().join("dir.ext4");
        let from_tar = dir.path().join("tar.ext4");
        for (src, img) in [(source.as_path(), &from_dir), (tar.as_path(), &from_tar)] {
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "mkfs".as_ref(),
                "ext4".as_ref(),
                src.as_os_str(),
                img.as_os_str(),
                "--owner".as_ref(),
                "0:0".as_ref(),
                "--source-date-epoch".as_ref(),
                "1700000000".as_ref(),
                "--label".as_ref(),
                "demo".as_ref(),
            ];
            if let Some(size) = size {
                args.push("--size".as_ref());
                args.push(std::ffi::OsStr::new(size));
            }
            run_ok(&mut abforge(args));
            run_tool("e2fsck", ["-fn".as_ref(), img.as_os_str()]);
        }
        assert_eq!(fs::read(&from_dir).unwrap(), fs::read(&from_tar).unwrap(), "size {size:?}");
        if size.is_some() {
            assert_eq!(fs::metadata(&from_dir).unwrap().len(), 64 << 20);
        }
    }
    // A size too small is refused with both sizes, and nothing is left behind.
    let small = dir.path().join("small.ext4");
    let result = run(&mut abforge([
        "mkfs".as_ref(),
        "ext4".as_ref(),
        source.as_os_str(),
        small.as_os_str(),
        "--size".as_ref(),
        "64KiB".as_ref(),
    ]));
    assert_eq!(result.status.code(), Some(1), "{}", String::from_utf8_lossy(&result.stderr));
    assert!(!small.exists());
}

#[test]
fn vhdx_stores_little_more_than_the_content_and_ignores_the_data_size() {
    const BLOCK: u64 = 32 << 20;
    let dir = scratch();
    let raw = build("raw", &dir.path().join("raw"));
    let vhdx = build("vhdx", &dir.path().join("vhdx"));
    // The raw report's stored bytes are the image's non-zero 4 KiB blocks.
    let content = raw["image"]["stored_bytes"].as_u64().unwrap();
    let partitions = vhdx["partitions"].as_array().unwrap().len() as u64;
    let file = fs::metadata(image(&dir.path().join("vhdx"), "vhdx")).unwrap().len();
    let bound = content + (partitions + 1) * BLOCK + (8 << 20);
    eprintln!("VHDX {file} bytes for {content} bytes of content; bound {bound}");
    assert!(
        file <= bound,
        "VHDX {file} bytes > content {content} + {} boundaries x 32 MiB + 8 MiB",
        partitions + 1
    );

    // A 2 TiB Data partition costs the same file as a 2 GiB one.
    let manifest = eflow_manifest_with(&[(
        "{ name: Data, type: linux, size: 2GiB,",
        "{ name: Data, type: linux, size: 2TiB,",
    )]);
    let big = dir.path().join("big.yaml");
    fs::write(&big, manifest).unwrap();
    let out = dir.path().join("big");
    run_ok(&mut abforge([
        "build".as_ref(),
        big.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ]));
    let big_file = fs::metadata(out.join("eflow.vhdx")).unwrap().len();
    assert_eq!(big_file, file, "the 2 TiB Data partition changed the VHDX size");
}

/// A disk larger than the largest file the output's file system holds (ext4: 16
/// TiB) cannot be mapped one to one into the VHDX while it is produced: abforge
/// streams the partitions in from scratch files instead. On a file system with
/// larger files (XFS) the direct path runs; the result is checked the same way.
#[test]
#[cfg_attr(not(any(ci, have_qemu_img)), ignore = "needs qemu-img (package qemu-utils)")]
fn a_disk_larger_than_the_largest_file_still_builds_as_vhdx() {
    let dir = scratch();
    let manifest = eflow_manifest_with(&[
        ("{ name: Data, type: linux, size: 2GiB,", "{ name: Data, type: linux, size: 9TiB,"),
        ("{ name: Unused, type: linux, size: 4GiB", "{ name: Unused, type: linux, size: 9TiB"),
    ]);
    let path = dir.path().join("huge.yaml");
    fs::write(&path, manifest).unwrap();
    let out = dir.path().join("out");
    let report = build_report(&path, &out, "eflow", &[]);
    let vhdx = image(&out, "vhdx");
    let virtual_size = report["image"]["virtual_size"].as_u64().unwrap();
    assert!(virtual_size > 18 << 40, "the disk is {virtual_size} bytes");
    let check =
        run_tool("qemu-img", ["check".as_ref(), "-f".as_ref(), "vhdx".as_ref(), vhdx.as_os_str()]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("No errors were found"));
    let info = run_tool("qemu-img", ["info".as_ref(), "--output=json".as_ref(), vhdx.as_os_str()]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(virtual_size));
    // Little more than the eflow.yaml VHDX: the Data file system's metadata.
    let file = fs::metadata(&vhdx).unwrap().len();
    assert!(file < 1 << 30, "VHDX of {file} bytes");
    run_ok(&mut abforge(["verify".as_ref(), vhdx.as_os_str()]));
}

/// `--sha256` puts the digest `sha256sum` prints in the report, for every format;
/// without it the field is null and `data_sha256` is still there.
#[test]
fn sha256_of_the_whole_file_on_request() {
    let dir = scratch();
    let manifest = dir.path().join("tiny.yaml");
    fs::write(
        &manifest,
        "name: tiny\nversion: \"1\"\nseed: 2d7cb948-4804-44ec-98f4-6ea41cec4625\npartitions:\n  \
         - { name: ESP, type: esp, size: 32MiB, filesystem: vfat }\n  \
         - { name: Data, type: linux, size: 64MiB, filesystem: ext4 }\n",
    )
    .unwrap();
    for format in ["raw", "vhd", "vhdx"] {
        let out = dir.path().join(format);
        let report = build_report(&manifest, &out, "tiny", &["--format", format, "--sha256"]);
        let image = out.join(format!("tiny.{format}"));
        assert_eq!(
            report["image"]["sha256"].as_str(),
            Some(abforge_tests::sha256_file(&image).as_str()),
            "{format}"
        );
        let plain =
            build_report(&manifest, &dir.path().join("plain"), "tiny", &["--format", format]);
        assert!(plain["image"]["sha256"].is_null(), "{format}: no --sha256, no whole-file digest");
        assert_eq!(plain["image"]["data_sha256"], report["image"]["data_sha256"], "{format}");
        assert_eq!(
            abforge_tests::sha256_file(&dir.path().join("plain").join(format!("tiny.{format}"))),
            abforge_tests::sha256_file(&image),
            "{format}: --sha256 changed the image"
        );
    }
}
