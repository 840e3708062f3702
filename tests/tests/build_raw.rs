//! `abforge build --format raw`, `validate` and `inspect` on the EFLOW layout,
//! checked with sgdisk, fsck.vfat and mtools (issue 2 acceptance).

use std::fs;
use std::path::Path;
use std::process::Command;

use abforge_tests::layout::{
    EFLOW_RAW, allocated_bytes, bootx64_bytes, build_report, extract_sparse, nonzero_blocks,
    same_sparse_content, write_eflow_project,
};
use abforge_tests::{abforge, run, run_ok, run_tool, scratch, tool};
use serde_json::Value;

fn build(manifest: &Path, out: &Path) -> Value {
    build_report(manifest, out, "eflow", &[])
}

/// Expected (name, type GUID, read-only) in GPT order.
const EXPECTED: &[(&str, &str, bool)] = &[
    ("BootEFIA", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", false),
    ("BootA", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", false),
    ("RootFSA", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", true),
    ("BootEFIB", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", false),
    ("BootB", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", false),
    ("RootFSB", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", true),
    ("Unused", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", false),
    ("Log", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", false),
    ("Data", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", false),
];

const MIB: u64 = 1 << 20;

#[test]
#[cfg_attr(not(any(ci, have_sgdisk)), ignore = "needs sgdisk (package gdisk)")]
fn eflow_gpt_is_exactly_as_planned() {
    let dir = scratch();
    let manifest = write_eflow_project(dir.path(), EFLOW_RAW);
    let out = dir.path().join("out");
    let report = build(&manifest, &out);
    let image = out.join("eflow.raw");

    let verify = run_tool("sgdisk", ["-v".as_ref(), image.as_os_str()]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");

    let sizes = [8, 192, 4096, 8, 192, 4096, 4096, 1024, 2048];
    let mut next = MIB;
    let partitions = report["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 9);
    for (i, ((name, type_guid, read_only), size_mib)) in EXPECTED.iter().zip(sizes).enumerate() {
        let info = run_tool("sgdisk", [format!("-i{}", i + 1).as_ref(), image.as_os_str()]);
        let info = String::from_utf8_lossy(&info.stdout).to_string();
        let field = |label: &str| -> String {
            info.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no '{label}' in sgdisk -i output:\n{info}"))
                .split_once(": ")
                .unwrap()
                .1
                .trim()
                .to_string()
        };
        assert!(field("Partition GUID code").starts_with(type_guid), "{name}: {info}");
        assert_eq!(field("Partition name"), format!("'{name}'"));
        let first = next / 512;
        let last = (next + size_mib * MIB) / 512 - 1;
        assert!(field("First sector").starts_with(&format!("{first} ")), "{name}: {info}");
        assert!(field("Last sector").starts_with(&format!("{last} ")), "{name}: {info}");
        let flags = field("Attribute flags");
        let expected_flags = if *read_only { "1000000000000000" } else { "0000000000000000" };
        assert_eq!(flags, expected_flags, "{name}");
        let unique = field("Partition unique GUID").to_lowercase();
        assert_eq!(partitions[i]["uuid"].as_str().unwrap(), unique, "{name}");
        assert_eq!(partitions[i]["name"], *name);
        assert_eq!(partitions[i]["offset"].as_u64().unwrap(), next);
        assert_eq!(partitions[i]["size"].as_u64().unwrap(), size_mib * MIB);
        next += size_mib * MIB;
    }
    let disk = run_tool("sgdisk", ["-p".as_ref(), image.as_os_str()]);
    let disk = String::from_utf8_lossy(&disk.stdout).to_lowercase();
    assert!(disk.contains(report["disk_guid"].as_str().unwrap()), "{disk}");
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_fsck_vfat, have_mdir, have_mcopy))),
    ignore = "needs fsck.vfat (dosfstools) and mdir/mcopy (mtools)"
)]
fn eflow_esps_pass_fsck_and_list_their_files() {
    let dir = scratch();
    let manifest = write_eflow_project(dir.path(), EFLOW_RAW);
    let out = dir.path().join("out");
    let report = build(&manifest, &out);
    let image = out.join("eflow.raw");
    for index in [0usize, 3] {
        let partition = &report["partitions"][index];
        let offset = partition["offset"].as_u64().unwrap();
        let size = partition["size"].as_u64().unwrap();
        let esp = dir.path().join(format!("esp{index}.img"));
        extract_sparse(&image, offset, size, &esp);
        run_tool("fsck.vfat", ["-n".as_ref(), esp.as_os_str()]);
        let at = format!("{}@@{offset}", image.display());
        let listing = run_tool("mdir", ["-i", at.as_str(), "-b", "::/EFI/BOOT"]);
        assert!(String::from_utf8_lossy(&listing.stdout).contains("BOOTX64.EFI"));
        let long = run_tool("mdir", ["-i", at.as_str(), "::/EFI/abforge"]);
        assert!(String::from_utf8_lossy(&long.stdout).contains("a rather long file name.txt"));
        let copied = run_tool("mcopy", ["-i", at.as_str(), "::/EFI/BOOT/BOOTX64.EFI", "-"]);
        assert_eq!(copied.stdout, bootx64_bytes());
        // An 8 MiB ESP can only be FAT16 (or FAT12): check what the tool sees.
        let info = run_tool("minfo", ["-i", at.as_str(), "::"]);
        assert!(String::from_utf8_lossy(&info.stdout).contains("FAT16"), "not FAT16");
    }
}

#[test]
fn inspect_json_agrees_with_the_build_report() {
    let dir = scratch();
    let manifest = write_eflow_project(dir.path(), EFLOW_RAW);
    let out = dir.path().join("out");
    let report = build(&manifest, &out);
    let inspected = run_ok(&mut abforge([
        "inspect".as_ref(),
        out.join("eflow.raw").as_os_str(),
        "--json".as_ref(),
    ]));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["disk_guid"], report["disk_guid"]);
    assert_eq!(inspected["virtual_size"], report["image"]["virtual_size"]);
    let found = inspected["partitions"].as_array().unwrap();
    let planned = report["partitions"].as_array().unwrap();
    assert_eq!(found.len(), planned.len());
    for (f, p) in found.iter().zip(planned) {
        for key in ["index", "name", "type_guid", "uuid", "offset", "size", "attributes"] {
            assert_eq!(f[key], p[key], "{key} of {}", p["name"]);
        }
        let expected_fs = if p["filesystem"] == "vfat" { "vfat" } else { "empty" };
        assert_eq!(f["filesystem"]["kind"], expected_fs, "{}", p["name"]);
    }
    assert_eq!(found[0]["type_name"], "esp");
    assert_eq!(found[2]["type_name"], "root");
    assert_eq!(found[2]["read_only"], true);
    assert_eq!(found[0]["filesystem"]["volume_id"], report["partitions"][0]["fs_id"]);
    // The human table names every partition too.
    let table = run_ok(&mut abforge(["inspect".as_ref(), out.join("eflow.raw").as_os_str()]));
    let table = String::from_utf8_lossy(&table.stdout);
    for (name, _, _) in EXPECTED {
        assert!(table.contains(name), "{name} missing from:\n{table}");
    }
}

#[test]
fn two_builds_in_different_places_times_and_umasks_are_identical() {
    let first = scratch();
    let second = scratch();
    let m1 = write_eflow_project(first.path(), EFLOW_RAW);
    let m2 = write_eflow_project(second.path(), EFLOW_RAW);
    // Same content, different source mtimes after SOURCE_DATE_EPOCH (clamped away).
    for m in [&m1, &m2] {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "umask {}; cd {} && exec \"$0\" build eflow.yaml -o out --quiet",
                if m == &m1 { "022" } else { "077" },
                m.parent().unwrap().display()
            ))
            .arg(abforge_tests::abforge_bin())
            .env("LC_ALL", if m == &m1 { "C" } else { "en_US.UTF-8" })
            .env("TZ", if m == &m1 { "UTC" } else { "Asia/Kolkata" });
        run_ok(&mut cmd);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let out1 = first.path().join("out");
    let out2 = second.path().join("out");
    let (image1, image2) = (out1.join("eflow.raw"), out2.join("eflow.raw"));
    assert!(!nonzero_blocks(&image1).is_empty());
    assert!(same_sparse_content(&image1, &image2), "the two disks differ");
    assert_eq!(
        fs::read(out1.join("eflow.json")).unwrap(),
        fs::read(out2.join("eflow.json")).unwrap()
    );
}

#[test]
fn a_2tib_data_partition_costs_no_space() {
    let dir = scratch();
    let small = write_eflow_project(&dir.path().join("small"), EFLOW_RAW);
    let big = write_eflow_project(
        &dir.path().join("big"),
        &EFLOW_RAW.replace("size: 2GiB", "size: 2TiB"),
    );
    let started = std::time::Instant::now();
    let small_report = build(&small, &dir.path().join("small/out"));
    let small_time = started.elapsed();
    let started = std::time::Instant::now();
    let big_report = build(&big, &dir.path().join("big/out"));
    let big_time = started.elapsed();
    eprintln!("build time: Data 2GiB {small_time:?}, Data 2TiB {big_time:?}");
    let small_image = dir.path().join("small/out/eflow.raw");
    let big_image = dir.path().join("big/out/eflow.raw");
    assert_eq!(
        fs::metadata(&big_image).unwrap().len(),
        big_report["image"]["virtual_size"].as_u64().unwrap()
    );
    assert!(fs::metadata(&big_image).unwrap().len() > 2 << 40);
    // The same data is stored either way: the size only moves the backup GPT.
    assert_eq!(small_report["image"]["stored_bytes"], big_report["image"]["stored_bytes"]);
    let (small_du, big_du) = (allocated_bytes(&small_image), allocated_bytes(&big_image));
    eprintln!("allocated: Data 2GiB {small_du} bytes, Data 2TiB {big_du} bytes");
    assert!(
        big_du <= small_du + 64 * 1024,
        "2 TiB image takes {big_du} bytes, 2 GiB one {small_du}"
    );
    assert!(big_du < 8 * MIB, "the 2 TiB image takes {big_du} bytes on disk");
}

/// A bad manifest: what to change in the EFLOW manifest, and words the error must contain.
struct Bad {
    what: &'static str,
    from: &'static str,
    to: &'static str,
    expect: &'static [&'static str],
    line: Option<u32>,
}

const BAD: &[Bad] = &[
    Bad {
        what: "unknown key",
        from: "format: raw\n",
        to: "format: raw\ncolour: blue\n",
        expect: &["unknown field 'colour'"],
        line: Some(6),
    },
    Bad {
        what: "unknown partition key",
        from: "    size: 8MiB\n",
        to: "    size: 8MiB\n    sise: 9MiB\n",
        expect: &["unknown field 'sise'"],
        line: Some(11),
    },
    Bad {
        what: "wrong type",
        from: "source_date_epoch: 1700000000",
        to: "source_date_epoch: yesterday",
        expect: &["expected a whole number for 'source_date_epoch'"],
        line: Some(4),
    },
    Bad {
        what: "bad size unit",
        from: "size: 8MiB",
        to: "size: 8 megs",
        expect: &["'8 megs' is not a size"],
        line: Some(10),
    },
    Bad {
        what: "zero size",
        from: "size: 192MiB",
        to: "size: 0",
        expect: &["has size 0"],
        line: Some(13),
    },
    Bad {
        what: "misaligned size",
        from: "size: 192MiB",
        to: "size: 192MB",
        expect: &["not a multiple of 1MiB"],
        line: Some(13),
    },
    Bad {
        what: "duplicate name",
        from: "name: Log,",
        to: "name: Data,",
        expect: &["'Data' is used twice"],
        line: Some(17),
    },
    Bad {
        what: "per-slot name without {SLOT}",
        from: "name: 'Boot{SLOT}',",
        to: "name: 'Boot',",
        expect: &["per_slot", "{SLOT}"],
        line: Some(13),
    },
    Bad {
        what: "unknown type",
        from: "type: root,",
        to: "type: rootfs,",
        expect: &["unknown partition type 'rootfs'"],
        line: Some(14),
    },
    Bad {
        what: "overlap",
        from: "name: Data, type: linux,",
        to: "name: Data, offset: 9GiB, type: linux,",
        expect: &["overlaps partition 'Log'"],
        line: Some(17),
    },
    Bad {
        what: "does not fit",
        from: "format: raw\n",
        to: "format: raw\ndisk_size: 15GiB\n",
        expect: &["does not fit"],
        line: Some(6),
    },
    Bad {
        what: "misaligned offset",
        from: "name: Data, type: linux,",
        to: "name: Data, offset: 12345, type: linux,",
        expect: &["offset 12345 is not a multiple of 1MiB"],
        line: Some(17),
    },
    Bad {
        what: "missing contents",
        from: "contents: esp/",
        to: "contents: no-such-dir/",
        expect: &["no-such-dir", "does not exist"],
        line: Some(12),
    },
    Bad {
        what: "verity on a read-write partition",
        from: "name: Log, type: linux, size: 1GiB }",
        to: "name: Log, type: linux, size: 1GiB, filesystem: ext4, verity: appended }",
        expect: &["verity needs a read_only ext4 file system"],
        line: Some(16),
    },
    Bad {
        what: "contents without a file system",
        from: "name: Unused, type: linux, size: 4GiB }",
        to: "name: Unused, type: linux, size: 4GiB, contents: esp/ }",
        expect: &["no filesystem"],
        line: Some(15),
    },
    Bad {
        what: "unknown format",
        from: "format: raw",
        to: "format: qcow2",
        expect: &["qcow2"],
        line: Some(5),
    },
    Bad {
        what: "bad image name",
        from: "name: eflow",
        to: "name: EFLOW image",
        expect: &["lower-case"],
        line: Some(1),
    },
    Bad {
        what: "file system too small",
        from: "    size: 8MiB\n",
        to: "    size: 1MiB\n",
        expect: &["too small", "BootEFIA"],
        line: Some(10),
    },
    Bad {
        what: "YAML syntax",
        from: "partitions:\n",
        to: "partitions: [\n",
        expect: &[],
        line: Some(7),
    },
];

#[test]
fn bad_manifests_exit_2_name_the_line_and_write_nothing() {
    for bad in BAD {
        let dir = scratch();
        let text = EFLOW_RAW.replacen(bad.from, bad.to, 1);
        assert_ne!(text, EFLOW_RAW, "{}: the edit did not apply", bad.what);
        let manifest = write_eflow_project(dir.path(), &text);
        let out = dir.path().join("out");
        for verb in ["validate", "build"] {
            let mut args = vec![verb.as_ref(), manifest.as_os_str()];
            if verb == "build" {
                args.extend(["-o".as_ref(), out.as_os_str()]);
            }
            let result = run(&mut abforge(args));
            let stderr = String::from_utf8_lossy(&result.stderr);
            assert_eq!(
                result.status.code(),
                Some(2),
                "{} ({verb}): status {:?}, stderr:\n{stderr}",
                bad.what,
                result.status
            );
            for word in bad.expect {
                assert!(stderr.contains(word), "{} ({verb}): '{word}' not in:\n{stderr}", bad.what);
            }
            if let Some(line) = bad.line {
                let at = format!("eflow.yaml:{line}:");
                assert!(stderr.contains(&at), "{} ({verb}): '{at}' not in:\n{stderr}", bad.what);
            }
            assert!(!stderr.contains("panicked"), "{}: {stderr}", bad.what);
            let written: Vec<_> = fs::read_dir(&out)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(written.is_empty(), "{} ({verb}): wrote {written:?}", bad.what);
        }
    }
    assert!(BAD.len() >= 15);
}

#[test]
fn validate_accepts_the_reference_manifest_and_writes_nothing() {
    let manifest = abforge_tests::repo_root().join("manifests/eflow.yaml");
    let out = run_ok(&mut abforge(["validate".as_ref(), manifest.as_os_str()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BootEFIA") && text.contains("Data"), "{text}");
}

#[test]
fn missing_manifest_and_bad_arguments_exit_2() {
    let dir = scratch();
    let result = run(&mut abforge(["validate".as_ref(), dir.path().join("nope.yaml").as_os_str()]));
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("nope.yaml"));
    let result = run(&mut abforge(["build", "--format", "qcow2", "x.yaml"]));
    assert_eq!(result.status.code(), Some(2));
    let _ = tool("sh");
}
