//! Boot chain against real data and tools: module closure against Debian's kernel
//! index, the initramfs cpio read back by GNU cpio and bsdcpio, and the GRUB
//! environment block read and written by grub-editenv.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use abforge_kernels::Slot;
use abforge_kernels::cpio::{Compression, Initramfs};
use abforge_kernels::grub::{self, EnvEdit, SlotState};
use abforge_kernels::modules::{ModuleIndex, ModulesError};
use abforge_partitions::tree::Content;
use abforge_tests::kernels::{HostFile, debian_modules_fixture};
use abforge_tests::{run_ok, scratch, tool};

const MTIME: u32 = 1_700_000_000;

fn paths(modules: &[abforge_kernels::modules::Module]) -> Vec<String> {
    modules.iter().map(|m| m.path.clone()).collect()
}

/// `name: path path ...` lines recorded from `modprobe --show-depends` by the fixture script.
fn expected_closures() -> Vec<(String, Vec<String>)> {
    let text = fs::read_to_string(debian_modules_fixture().join("expected-closure.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, list) = l.split_once(':').unwrap();
            (name.to_string(), list.split_whitespace().map(str::to_string).collect())
        })
        .collect()
}

#[test]
fn module_closure_matches_modprobe_on_debians_kernel() {
    let index = ModuleIndex::load(&debian_modules_fixture()).unwrap();
    let expected = expected_closures();
    assert!(expected.len() >= 4, "the fixture lists the closures modprobe computed");
    for (name, modprobe_order) in expected {
        let got = index.closure(&[name.as_str()]).unwrap();
        assert_eq!(paths(&got), modprobe_order, "load order of {name}");
    }
}

#[test]
fn module_closure_of_the_boot_set_is_deduplicated_in_request_order() {
    let index = ModuleIndex::load(&debian_modules_fixture()).unwrap();
    let wanted = ["dm-verity", "ext4", "virtio_blk", "overlay", "virtio_pci"];
    let mut expected: Vec<String> = Vec::new();
    let closures = expected_closures();
    for name in wanted {
        let (_, list) = closures.iter().find(|(n, _)| n == name).unwrap();
        for path in list {
            if !expected.contains(path) {
                expected.push(path.clone());
            }
        }
    }
    let got = index.closure(&wanted).unwrap();
    assert_eq!(paths(&got), expected);
    // What the reference boot needed (boot-and-signing.md §5) is all there, dependencies first.
    let position = |file: &str| got.iter().position(|m| m.path.ends_with(file)).unwrap();
    assert!(position("/crc32c_generic.ko") < position("/ext4.ko"));
    assert!(position("/dm-mod.ko") < position("/dm-verity.ko"));
    assert!(position("/virtio_ring.ko") < position("/virtio_blk.ko"));
}

#[test]
fn module_missing_from_modules_dep_is_named() {
    let index = ModuleIndex::load(&debian_modules_fixture()).unwrap();
    let err = index.closure(&["ext4", "nvidia-drm"]).unwrap_err();
    assert!(matches!(err, ModulesError::UnknownModule { ref name, .. } if name == "nvidia_drm"));
    assert_eq!(err.to_string(), "module 'nvidia_drm' is not in modules.dep");
    // A built-in module is not an error.
    assert_eq!(index.closure(&["unix"]).unwrap(), []);
}

/// An initramfs with a streamed host file, a generated file, symlinks, a device node
/// and directories at several depths.
fn sample_initramfs(dir: &Path, with_device: bool) -> Initramfs {
    let big = dir.join("big.bin");
    // 1 MiB + 3 bytes: larger than one copy chunk, and not a multiple of 4.
    let data: Vec<u8> =
        (0..(1u32 << 20) + 3).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    fs::write(&big, data).unwrap();
    let mut initramfs = Initramfs::new(MTIME);
    initramfs
        .add_file("init", 0o755, Content::Bytes(Arc::from(&b"#!/bin/sh\nexec /sbin/init\n"[..])))
        .unwrap();
    initramfs
        .add_file(
            "lib/modules/6.1.0-26-amd64/kernel/fs/ext4/ext4.ko",
            0o644,
            Content::Source(Arc::new(HostFile::open(&big).unwrap())),
        )
        .unwrap();
    initramfs
        .add_file("etc/abforge/modules.load", 0o644, Content::Bytes(Arc::from(&b"x.ko\n"[..])))
        .unwrap();
    initramfs.add_symlink("sbin/init", "../init").unwrap();
    initramfs.add_symlink("lib64", "lib").unwrap();
    initramfs.add_dir("proc", 0o555).unwrap();
    initramfs.add_dir("tmp", 0o1777).unwrap();
    if with_device {
        initramfs.add_char_device("dev/console", 0o600, 5, 1).unwrap();
    } else {
        initramfs.add_dir("dev", 0o755).unwrap();
    }
    initramfs
}

const SAMPLE_NAMES: &[&str] = &[
    ".",
    "dev",
    "dev/console",
    "etc",
    "etc/abforge",
    "etc/abforge/modules.load",
    "init",
    "lib",
    "lib/modules",
    "lib/modules/6.1.0-26-amd64",
    "lib/modules/6.1.0-26-amd64/kernel",
    "lib/modules/6.1.0-26-amd64/kernel/fs",
    "lib/modules/6.1.0-26-amd64/kernel/fs/ext4",
    "lib/modules/6.1.0-26-amd64/kernel/fs/ext4/ext4.ko",
    "lib64",
    "proc",
    "sbin",
    "sbin/init",
    "tmp",
];

fn write_archive(
    dir: &Path,
    compression: Compression,
    with_device: bool,
    name: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    let file = fs::File::create(&path).unwrap();
    sample_initramfs(dir, with_device).write(compression, file).unwrap();
    path
}

fn list_with(tool_name: &str, args: &[&str], archive: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new(tool(tool_name))
            .args(args)
            .stdin(Stdio::from(fs::File::open(archive).unwrap()))
            .env("LC_ALL", "C"),
    );
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn initramfs_writes_are_byte_identical() {
    let dir = scratch();
    for (compression, name) in
        [(Compression::None, "a"), (Compression::Gzip, "b"), (Compression::Zstd, "c")]
    {
        let first =
            fs::read(write_archive(dir.path(), compression, true, &format!("{name}1"))).unwrap();
        let second =
            fs::read(write_archive(dir.path(), compression, true, &format!("{name}2"))).unwrap();
        assert_eq!(first, second, "{compression:?}");
    }
}

#[test]
#[cfg_attr(not(any(ci, have_cpio)), ignore = "needs cpio (package cpio)")]
fn gnu_cpio_lists_the_initramfs() {
    let dir = scratch();
    let archive = write_archive(dir.path(), Compression::None, true, "initrd.cpio");
    assert_eq!(list_with("cpio", &["-it", "--quiet"], &archive), SAMPLE_NAMES);
    let verbose = list_with("cpio", &["-itv", "--quiet"], &archive);
    let console = verbose.iter().find(|l| l.ends_with(" dev/console")).unwrap();
    assert!(console.starts_with("crw-------"), "{console}");
    assert!(
        console.contains(" root ") && console.contains("5,") && console.contains(" 1 "),
        "{console}"
    );
    let link = verbose.iter().find(|l| l.contains(" sbin/init")).unwrap();
    assert!(link.starts_with("lrwxrwxrwx") && link.ends_with("sbin/init -> ../init"), "{link}");
    let tmp = verbose.iter().find(|l| l.ends_with(" tmp")).unwrap();
    assert!(tmp.starts_with("drwxrwxrwt"), "{tmp}");
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_bsdcpio, have_bsdcat))),
    ignore = "needs bsdcpio and bsdcat (package libarchive-tools)"
)]
fn bsdcpio_lists_plain_and_compressed_initramfs() {
    let dir = scratch();
    let plain = write_archive(dir.path(), Compression::None, true, "initrd.cpio");
    let plain_bytes = fs::read(&plain).unwrap();
    for (compression, name) in
        [(Compression::None, "p"), (Compression::Gzip, "g"), (Compression::Zstd, "z")]
    {
        let archive = write_archive(dir.path(), compression, true, name);
        // libarchive detects the compression itself.
        assert_eq!(
            list_with("bsdcpio", &["-it", "--quiet"], &archive),
            SAMPLE_NAMES,
            "{compression:?}"
        );
        let out = run_ok(Command::new(tool("bsdcat")).arg(&archive));
        assert!(
            out.stdout == plain_bytes,
            "{compression:?} does not decompress to the plain archive"
        );
    }
}

#[test]
fn gzip_initramfs_decompresses_with_gzip() {
    let dir = scratch();
    let plain = fs::read(write_archive(dir.path(), Compression::None, true, "plain")).unwrap();
    let gz = write_archive(dir.path(), Compression::Gzip, true, "initrd.gz");
    let out = run_ok(Command::new("gzip").arg("-dc").arg(&gz));
    assert!(out.stdout == plain);
}

#[test]
#[cfg_attr(not(any(ci, have_cpio)), ignore = "needs cpio (package cpio)")]
fn gnu_cpio_extracts_the_same_tree() {
    let dir = scratch();
    // Without the device node: creating one needs root.
    let archive = write_archive(dir.path(), Compression::None, false, "initrd.cpio");
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    run_ok(
        Command::new(tool("cpio"))
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&out_dir)
            .stdin(Stdio::from(fs::File::open(&archive).unwrap())),
    );
    let source = fs::read(dir.path().join("big.bin")).unwrap();
    let module = out_dir.join("lib/modules/6.1.0-26-amd64/kernel/fs/ext4/ext4.ko");
    assert!(fs::read(&module).unwrap() == source, "streamed file content differs");
    assert_eq!(fs::read(out_dir.join("init")).unwrap(), b"#!/bin/sh\nexec /sbin/init\n");
    assert_eq!(fs::read_link(out_dir.join("sbin/init")).unwrap(), Path::new("../init"));
    assert_eq!(fs::read_link(out_dir.join("lib64")).unwrap(), Path::new("lib"));
    let mode =
        |p: &str| fs::symlink_metadata(out_dir.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("init"), 0o755);
    assert_eq!(mode("etc/abforge/modules.load"), 0o644);
    assert_eq!(mode("proc"), 0o555);
    assert_eq!(mode("tmp"), 0o1777);
    let mtime = fs::metadata(out_dir.join("init")).unwrap().mtime();
    assert_eq!(mtime, i64::from(MTIME));
}

fn editenv(file: &Path, args: &[&str]) -> String {
    let out = run_ok(Command::new(tool("grub-editenv")).arg(file).args(args).env("LC_ALL", "C"));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[cfg_attr(not(any(ci, have_grub_editenv)), ignore = "needs grub-editenv (package grub-common)")]
fn grub_editenv_reads_our_environment_block() {
    let dir = scratch();
    let file = dir.path().join("grubenv");
    let mut state = SlotState::new(Slot::a());
    state.set_next(Slot::b());
    let mut vars = BTreeMap::new();
    state.to_env(&mut vars);
    vars.insert("spaced".to_string(), "a value with spaces".to_string());
    fs::write(&file, grub::render_envblk(&vars).unwrap()).unwrap();
    assert_eq!(
        editenv(&file, &["list"]),
        "abforge_default=a\nabforge_tried=\nabforge_try=b\nspaced=a value with spaces\n"
    );
    // An in-place edit keeps the size and stays readable.
    let edited =
        grub::edit_envblk(&fs::read(&file).unwrap(), &[EnvEdit::Unset("spaced".into())]).unwrap();
    fs::write(&file, &edited).unwrap();
    assert_eq!(editenv(&file, &["list"]), "abforge_default=a\nabforge_tried=\nabforge_try=b\n");
}

#[test]
#[cfg_attr(not(any(ci, have_grub_editenv)), ignore = "needs grub-editenv (package grub-common)")]
fn we_read_what_grub_editenv_writes() {
    let dir = scratch();
    let file = dir.path().join("grubenv");
    editenv(&file, &["create"]);
    let created = fs::read(&file).unwrap();
    assert_eq!(created.len(), grub::ENVBLK_SIZE);
    assert!(grub::parse_envblk(&created).unwrap().is_empty());
    // Our empty block is the same bytes as grub-editenv's.
    assert!(created == grub::render_envblk(&BTreeMap::new()).unwrap());

    editenv(
        &file,
        &["set", "abforge_default=b", "abforge_try=a", "abforge_tried=a", "path=C:\\x", "nl=a\nb"],
    );
    let vars = grub::parse_envblk(&fs::read(&file).unwrap()).unwrap();
    // grub-editenv escapes the backslash and the newline; the parser undoes that.
    assert_eq!(vars.get("path").map(String::as_str), Some("C:\\x"));
    assert_eq!(vars.get("nl").map(String::as_str), Some("a\nb"));
    let mut state = SlotState::from_env(&vars, &Slot::a()).unwrap();
    assert_eq!(
        state,
        SlotState { default: Slot::b(), try_slot: Some(Slot::a()), tried: Some(Slot::a()) }
    );
    // The try was used and not committed: the next boot is back on the default.
    assert_eq!(state.boot(), Slot::b());

    editenv(&file, &["unset", "abforge_tried"]);
    let vars = grub::parse_envblk(&fs::read(&file).unwrap()).unwrap();
    assert!(!vars.contains_key("abforge_tried"));
    assert_eq!(vars.len(), 4);
    // And our rendering of those values reads back the same through grub-editenv.
    fs::write(&file, grub::render_envblk(&vars).unwrap()).unwrap();
    assert_eq!(
        editenv(&file, &["list"]),
        "abforge_default=b\nabforge_try=a\nnl=a\nb\npath=C:\\x\n"
    );
}

#[test]
#[cfg_attr(
    not(any(ci, have_grub_script_check)),
    ignore = "needs grub-script-check (package grub-common)"
)]
fn grub_script_check_accepts_the_generated_configs() {
    use abforge_kernels::cmdline::{DeviceRef, InitParams, RootStyle};
    use abforge_kernels::grub::{SelectorConfig, SelectorSlot, SlotConfig};
    let dir = scratch();
    let mut params = InitParams::new(Slot::a(), DeviceRef::PartLabel("RootFSA".into()));
    params.overlays = vec!["/etc".into()];
    params.overlay_dir = Some("/var/.eflow/overlays".into());
    let mut kernel_params = params.to_params(RootStyle::Abforge).unwrap();
    kernel_params.push(abforge_kernels::cmdline::Param::new("msg", "two words").unwrap());
    let slot_cfg = grub::render_slot_config(&SlotConfig {
        slot: Slot::a(),
        kernel: "/vmlinuz".into(),
        initrd: "/initrd.img".into(),
        params: kernel_params,
    })
    .unwrap();
    let selector = grub::render_selector(&SelectorConfig {
        slots: vec![
            SelectorSlot {
                slot: Slot::a(),
                boot_fs_uuid: "0a0a0a0a-0000-4000-8000-000000000001".parse().unwrap(),
            },
            SelectorSlot {
                slot: Slot::b(),
                boot_fs_uuid: "0b0b0b0b-0000-4000-8000-000000000002".parse().unwrap(),
            },
        ],
        timeout_seconds: 0,
        serial_console: true,
    })
    .unwrap();
    for (name, text) in [
        ("grub.cfg", slot_cfg.as_str()),
        ("select.cfg", selector.as_str()),
        ("embedded.cfg", grub::EMBEDDED_CONFIG),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        run_ok(Command::new(tool("grub-script-check")).arg(&path));
    }
    // grub-script-check must be able to fail: an unterminated if is refused.
    let broken = dir.path().join("broken.cfg");
    fs::write(&broken, "if [ -n x ]; then\necho\n").unwrap();
    assert!(!Command::new(tool("grub-script-check")).arg(&broken).status().unwrap().success());
}
