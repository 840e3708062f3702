//! GPT and FAT written by abforge-partitions, checked with sgdisk, fsck.vfat
//! and mtools.

use std::process::Command;

use abforge_partitions::FileRegion;
use abforge_partitions::fat::{FatOptions, FatType, write_fat};
use abforge_partitions::gpt::{self, GptCopy};
use abforge_partitions::probe::{FsProbe, probe_filesystem};
use abforge_partitions::tree::Timestamp;
use abforge_tests::gpt_fat::*;
use abforge_tests::{run, run_tool, scratch, sha256_file, tool};

fn fat_options() -> FatOptions {
    FatOptions {
        volume_id: 0x1234_ABCD,
        label: "ESP".into(),
        timestamp: Timestamp::from_seconds(1_700_000_000),
        hidden_sectors: 2048,
    }
}

#[test]
#[cfg_attr(not(any(ci, have_sgdisk)), ignore = "needs sgdisk (package gdisk)")]
fn eflow_gpt_passes_sgdisk() {
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    let layout = eflow_layout();
    let file = sparse_file(&image, layout.disk_size_bytes);
    layout.write_to(&file).unwrap();
    drop(file);

    let verify = run_tool("sgdisk", ["-v".as_ref(), image.as_os_str()]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");

    let listing = run_tool("sgdisk", ["-p".as_ref(), image.as_os_str()]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    let disk_guid = layout.disk_guid.to_string().to_uppercase();
    assert!(listing.contains(&format!("Disk identifier (GUID): {disk_guid}")), "{listing}");

    for (i, entry) in layout.entries.iter().enumerate() {
        let n = i + 1;
        let out = run_tool("sgdisk", [format!("-i{n}").as_ref(), image.as_os_str()]);
        let info = parse_sgdisk_info(&String::from_utf8_lossy(&out.stdout));
        let code = &info["Partition GUID code"];
        assert!(code.starts_with(&entry.type_guid.to_string().to_uppercase()), "{n}: {code}");
        assert_eq!(info["Partition unique GUID"], entry.unique_guid.to_string().to_uppercase());
        assert!(info["First sector"].starts_with(&format!("{} ", entry.first_lba)), "{info:?}");
        assert!(info["Last sector"].starts_with(&format!("{} ", entry.last_lba)), "{info:?}");
        assert_eq!(info["Attribute flags"], format!("{:016X}", entry.attributes));
        assert_eq!(info["Partition name"], format!("'{}'", entry.name));
    }
    assert_eq!(
        parse_sgdisk_info(&String::from_utf8_lossy(
            &run_tool("sgdisk", ["-i3".as_ref(), image.as_os_str()]).stdout
        ))["Attribute flags"],
        "1000000000000000"
    );

    // Our reader agrees, and with the primary header wiped it reads the
    // same layout from the backup.
    let file = std::fs::File::open(&image).unwrap();
    assert_eq!(gpt::read_gpt(&file, layout.disk_size_bytes).unwrap(), layout);
    drop(file);
    let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 512], 512).unwrap();
    drop(file);
    let file = std::fs::File::open(&image).unwrap();
    let report = gpt::read_gpt_report(&file, layout.disk_size_bytes).unwrap();
    assert_eq!(report.used, GptCopy::Backup);
    assert_eq!(report.layout, layout);
}

/// A GPT written by sgdisk itself is read back the same way sgdisk shows it.
#[test]
#[cfg_attr(not(any(ci, have_sgdisk)), ignore = "needs sgdisk (package gdisk)")]
fn reads_a_gpt_made_by_sgdisk() {
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    let size = 64 * MIB;
    drop(sparse_file(&image, size));
    run_tool(
        "sgdisk",
        [
            "-n1:2048:+8M".as_ref(),
            "-t1:ef00".as_ref(),
            "-c1:EFI system".as_ref(),
            "-n3:0:+16M".as_ref(),
            "-t3:8304".as_ref(),
            "-A3:set:60".as_ref(),
            "-c3:root".as_ref(),
            image.as_os_str(),
        ],
    );
    let file = std::fs::File::open(&image).unwrap();
    let report = gpt::read_gpt_report(&file, size).unwrap();
    assert!(report.primary_problem.is_none() && report.backup_problem.is_none());
    assert_eq!(report.slots, [1, 3]);
    let esp = &report.layout.entries[0];
    assert_eq!((esp.first_lba, esp.last_lba, esp.name.as_str()), (2048, 18431, "EFI system"));
    assert_eq!(gpt::PartitionType::from_guid(esp.type_guid), Some(gpt::PartitionType::Esp));
    let root = &report.layout.entries[1];
    assert_eq!(gpt::PartitionType::from_guid(root.type_guid), Some(gpt::PartitionType::Root));
    assert_eq!(root.attributes, gpt::attributes::READ_ONLY);
}

fn mtools(name: &str) -> Command {
    let mut cmd = Command::new(tool(name));
    cmd.env("LC_ALL", "C").env("MTOOLS_SKIP_CHECK", "1");
    cmd
}

fn check_fat_image(image: &std::path::Path, target: &str) {
    let out = run(mtools("mdir").args(["-i", target, "::/EFI/BOOT"]));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listing.contains("BOOTX64  EFI"), "mdir {target}:\n{listing}");
    let out = run(mtools("mdir").args(["-i", target, "::/EFI/abforge"]));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(LONG_NAME), "mdir {target}:\n{listing}");
    let out = run(mtools("mcopy").args(["-i", target, "::/EFI/BOOT/BOOTX64.EFI", "-"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout == pattern(300_000),
        "BOOTX64.EFI read back differs from {}",
        image.display()
    );
    let out = run(mtools("mtype").args(["-i", target, "::/loader/entries/a/b/c/entry.conf"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "title A\n");
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_fsck_vfat, have_mdir, have_mcopy))),
    ignore = "needs fsck.vfat and mtools (packages dosfstools, mtools)"
)]
fn fat_volumes_pass_fsck_and_mtools() {
    let dir = scratch();
    for (size_mib, expected) in
        [(8, FatType::Fat16), (33, FatType::Fat16), (192, FatType::Fat32), (512, FatType::Fat32)]
    {
        let size = size_mib * MIB;
        let mut digests = Vec::new();
        for copy in ["a", "b"] {
            let image = dir.path().join(format!("esp-{size_mib}-{copy}.img"));
            let file = sparse_file(&image, size);
            let summary =
                write_fat(&esp_tree(), &fat_options(), FileRegion::new(&file, 0, size)).unwrap();
            assert_eq!(summary.fat_type, expected, "{size_mib} MiB: {summary:?}");
            drop(file);
            let out = run(Command::new(tool("fsck.vfat")).arg("-n").arg(&image).env("LC_ALL", "C"));
            assert!(
                out.status.success(),
                "fsck.vfat -n on {size_mib} MiB failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            check_fat_image(&image, image.to_str().unwrap());
            // Clean means silent too: only the version line and the summary.
            let report = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = report.lines().collect();
            assert!(
                lines.len() == 2 && lines[1].contains(" files, "),
                "fsck.vfat -n on {size_mib} MiB reported:\n{report}"
            );
            digests.push(sha256_file(&image));
        }
        assert_eq!(digests[0], digests[1], "two {size_mib} MiB writes differ");
    }
}

/// The ESPs inside the EFLOW disk: mtools reads them at their offsets, the
/// probe finds them, the untouched partitions probe as empty.
#[test]
#[cfg_attr(
    not(any(ci, all(have_sgdisk, have_mdir, have_mcopy))),
    ignore = "needs sgdisk and mtools (packages gdisk, mtools)"
)]
fn esps_inside_the_disk() {
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    let layout = eflow_layout();
    let file = sparse_file(&image, layout.disk_size_bytes);
    layout.write_to(&file).unwrap();
    for index in [0, 3] {
        let entry = &layout.entries[index];
        let region = FileRegion::new(&file, entry.offset_bytes(), entry.size_bytes());
        let opts = FatOptions {
            volume_id: 0x1000 + u32::try_from(index).unwrap(),
            hidden_sectors: u32::try_from(entry.first_lba).unwrap(),
            ..fat_options()
        };
        write_fat(&esp_tree(), &opts, region).unwrap();
    }
    drop(file);
    let verify = run_tool("sgdisk", ["-v".as_ref(), image.as_os_str()]);
    assert!(String::from_utf8_lossy(&verify.stdout).contains("No problems found"));
    for index in [0, 3] {
        let offset = layout.entries[index].offset_bytes();
        check_fat_image(&image, &format!("{}@@{offset}", image.display()));
    }
    let file = std::fs::File::open(&image).unwrap();
    for (i, entry) in layout.entries.iter().enumerate() {
        let found = probe_filesystem(&file, entry.offset_bytes(), entry.size_bytes());
        match (i, found) {
            (0 | 3, FsProbe::Fat { fat_type: FatType::Fat16, volume_id, label, .. }) => {
                assert_eq!(volume_id, 0x1000 + u32::try_from(i).unwrap());
                assert_eq!(label, "ESP");
            }
            (0 | 3, other) => panic!("partition {}: {other:?}", entry.name),
            (_, found) => assert_eq!(found, FsProbe::Empty, "partition {}", entry.name),
        }
    }
    // The whole 15 GiB disk costs a few MiB on the host.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(allocated < 8 * MIB, "{allocated} bytes allocated");
}
