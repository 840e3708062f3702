//! `boot:` in a build without the VM (issue 7): the Boot partitions and ESPs hold
//! what the boot chain needs, two builds are identical, and bad boot inputs are
//! refused before anything is written. The kernel tree here is synthetic (the
//! VM boot test, `make boot-test`, uses Debian's real one).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use abforge_tests::layout::{build_report, extract_sparse, report_partition};
use abforge_tests::{abforge, repo_root, run, run_ok, run_tool, scratch};
use ext4_view::Ext4;
use serde_json::Value;

const VERSION: &str = "6.1.0-test-amd64";

/// A kernel tree (boot/vmlinuz-*, lib/modules/*/modules.dep and module files),
/// a stand-in init and a minimal x86-64 PE "bootloader".
fn make_inputs(dir: &Path) -> PathBuf {
    let kernel = dir.join("kernel");
    fs::create_dir_all(kernel.join("boot")).unwrap();
    fs::write(kernel.join(format!("boot/vmlinuz-{VERSION}")), vec![0x4b; 100_000]).unwrap();
    let modules = kernel.join(format!("lib/modules/{VERSION}"));
    let dep = [
        ("kernel/drivers/md/dm-mod.ko", ""),
        ("kernel/drivers/md/dm-bufio.ko", ""),
        (
            "kernel/drivers/md/dm-verity.ko",
            "kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko",
        ),
        ("kernel/lib/crc16.ko", ""),
        ("kernel/fs/ext4/ext4.ko", "kernel/lib/crc16.ko"),
        ("kernel/fs/overlayfs/overlay.ko", ""),
        ("kernel/drivers/block/virtio_blk.ko", ""),
    ];
    let mut text = String::new();
    for (module, deps) in dep {
        text.push_str(&format!("{module}: {deps}\n"));
        let path = modules.join(module);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, format!("module {module}")).unwrap();
    }
    fs::write(modules.join("modules.dep"), text).unwrap();
    fs::write(dir.join("init"), b"#!/bin/sh\n# stand-in for abforge-init\n").unwrap();
    let mut pe = vec![0u8; 512];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    fs::write(dir.join("BOOTX64.EFI"), pe).unwrap();
    kernel
}

fn manifest(dir: &Path, boot_extra: &str) -> PathBuf {
    let text = format!(
        "name: bootable
version: '1'
seed: bootable-1
source_date_epoch: 1700000000
format: vhdx
rootfs: {{ source: {root}, owner: {{ uid: 0, gid: 0 }} }}
partitions:
  - {{ name: 'BootEFI{{SLOT}}', per_slot: true, type: esp, size: 8MiB, filesystem: vfat }}
  - {{ name: 'Boot{{SLOT}}', per_slot: true, type: linux, size: 64MiB, filesystem: ext4, contents: boot }}
  - {{ name: 'RootFS{{SLOT}}', per_slot: true, type: root, size: 64MiB, filesystem: ext4, contents: rootfs, read_only: true, verity: appended }}
  - {{ name: Log, type: linux, size: 64MiB, filesystem: ext4, mount: /logs }}
  - {{ name: Data, type: linux, size: 64MiB, filesystem: ext4, mount: /var }}
boot:
  kernel: kernel
  init: init
  bootloader: BOOTX64.EFI
  cmdline: console=ttyS0
{boot_extra}",
        root = repo_root().join("manifests/demo-rootfs").display()
    );
    let path = dir.join("bootable.yaml");
    fs::write(&path, text).unwrap();
    path
}

fn build(manifest: &Path, out: &Path) -> Value {
    build_report(manifest, out, "bootable", &[])
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_qemu_img, have_grub_editenv, have_mcopy, have_cpio))),
    ignore = "needs qemu-img, grub-editenv, mtools and cpio"
)]
fn boot_partitions_and_esps_hold_the_boot_chain() {
    let dir = scratch();
    make_inputs(dir.path());
    let manifest = manifest(dir.path(), "  modules: [dm-verity]\n");
    let report = build(&manifest, &dir.path().join("out"));
    let raw = dir.path().join("disk.raw");
    run_tool(
        "qemu-img",
        [
            "convert".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            dir.path().join("out/bootable.vhdx").as_os_str(),
            raw.as_os_str(),
        ],
    );
    let root_hash = report["verity"][0]["root_hash"].as_str().unwrap().to_string();

    for slot in ["A", "B"] {
        let boot = report_partition(&report, &format!("Boot{slot}"));
        let image = dir.path().join(format!("boot{slot}.img"));
        extract_sparse(
            &raw,
            boot["offset"].as_u64().unwrap(),
            boot["size"].as_u64().unwrap(),
            &image,
        );
        run_tool("e2fsck", ["-fn".as_ref(), image.as_os_str()]);
        let fs = Ext4::load_from_path(&image).unwrap();
        assert_eq!(fs.read(format!("/vmlinuz-{VERSION}").as_str()).unwrap(), vec![0x4b; 100_000]);
        let grub = fs.read_to_string("/abforge/grub.cfg").unwrap();
        let root = report_partition(&report, &format!("RootFS{slot}"));
        for expected in [
            format!("abforge.slot={}", slot.to_lowercase()),
            format!("abforge.root=PARTUUID={}", root["uuid"].as_str().unwrap()),
            format!("abforge.verity.roothash={root_hash}"),
            format!(
                "abforge.data=PARTUUID={}",
                report_partition(&report, "Data")["uuid"].as_str().unwrap()
            ),
            "console=ttyS0".to_string(),
        ] {
            assert!(grub.contains(&expected), "slot {slot}: '{expected}' not in\n{grub}");
        }
        // The initramfs: init, console, the module closure in load order.
        let initrd = fs.read(format!("/initrd.img-{VERSION}").as_str()).unwrap();
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&initrd[..]).read_to_end(&mut cpio).unwrap();
        let archive = dir.path().join(format!("initrd{slot}.cpio"));
        fs::write(&archive, &cpio).unwrap();
        let listing = run(std::process::Command::new(abforge_tests::tool("cpio"))
            .arg("-it")
            .stdin(fs::File::open(&archive).unwrap()));
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        for entry in [
            "init",
            "dev/console",
            "etc/abforge/modules.load",
            &format!("lib/modules/{VERSION}/kernel/drivers/md/dm-verity.ko"),
        ] {
            assert!(
                listing.lines().any(|l| l == entry),
                "{entry} not in the initramfs:\n{listing}"
            );
        }
        let load = run(std::process::Command::new(abforge_tests::tool("cpio"))
            .args(["-i", "--to-stdout", "etc/abforge/modules.load"])
            .stdin(fs::File::open(&archive).unwrap()));
        let load = String::from_utf8_lossy(&load.stdout).to_string();
        let order: Vec<&str> = load.lines().collect();
        let position = |m: &str| {
            order
                .iter()
                .position(|l| l.ends_with(m))
                .unwrap_or_else(|| panic!("{m} not loaded: {load}"))
        };
        assert!(
            position("dm-mod.ko") < position("dm-verity.ko")
                && position("crc16.ko") < position("ext4.ko"),
            "{load}"
        );
    }

    // Each ESP: GRUB, the selector naming both Boot file systems, the environment block.
    let esp = report_partition(&report, "BootEFIA")["offset"].as_u64().unwrap();
    let at = format!("{}@@{esp}", raw.display());
    let efi = run_tool("mcopy", ["-i", at.as_str(), "::/EFI/BOOT/BOOTX64.EFI", "-"]);
    assert_eq!(efi.stdout, fs::read(dir.path().join("BOOTX64.EFI")).unwrap());
    let selector = String::from_utf8_lossy(
        &run_tool("mcopy", ["-i", at.as_str(), "::/EFI/abforge/select.cfg", "-"]).stdout,
    )
    .to_string();
    for slot in ["A", "B"] {
        let uuid = report_partition(&report, &format!("Boot{slot}"))["fs_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(selector.contains(&uuid), "selector lacks Boot{slot}'s file system {uuid}");
    }
    let env = dir.path().join("grubenv");
    fs::write(&env, run_tool("mcopy", ["-i", at.as_str(), "::/EFI/abforge/grubenv", "-"]).stdout)
        .unwrap();
    let listing = run_tool("grub-editenv", [env.as_os_str(), "list".as_ref()]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains("abforge_default=a"));
    let status = run_ok(&mut abforge([
        "slot".as_ref(),
        "status".as_ref(),
        dir.path().join("out/bootable.vhdx").as_os_str(),
    ]));
    assert!(String::from_utf8_lossy(&status.stdout).contains("next boot:    a"));
}

#[test]
fn two_builds_of_a_bootable_image_are_identical() {
    let dir = scratch();
    make_inputs(dir.path());
    let manifest = manifest(dir.path(), "");
    let first = build(&manifest, &dir.path().join("one"));
    let second = build(&manifest, &dir.path().join("two"));
    assert_eq!(first, second);
    assert_eq!(
        fs::read(dir.path().join("one/bootable.vhdx")).unwrap(),
        fs::read(dir.path().join("two/bootable.vhdx")).unwrap()
    );
}

#[test]
fn bad_boot_inputs_are_refused_before_writing() {
    let cases: &[(&str, &str)] = &[
        ("kernel-missing", "no /boot/vmlinuz"),
        ("  modules: [no_such_module]\n", "no_such_module"),
        ("  timeout: 0\n", ""),
        ("not-pe", "not an x86-64 PE image"),
        ("long", "over the limit"),
        ("init-missing", "cannot read the init"),
    ];
    for (case, expect) in cases {
        let dir = scratch();
        let kernel = make_inputs(dir.path());
        let mut extra = String::new();
        match *case {
            "kernel-missing" => {
                fs::remove_file(kernel.join(format!("boot/vmlinuz-{VERSION}"))).unwrap()
            }
            "not-pe" => {
                fs::write(dir.path().join("BOOTX64.EFI"), b"#!/bin/sh\necho not a PE\n").unwrap()
            }
            "long" => {}
            "init-missing" => fs::remove_file(dir.path().join("init")).unwrap(),
            other => extra = other.to_string(),
        }
        let mut manifest_path = manifest(dir.path(), &extra);
        if *case == "long" {
            let text = fs::read_to_string(&manifest_path).unwrap().replace(
                "cmdline: console=ttyS0",
                &format!("cmdline: 'console=ttyS0 abforge.test={}'", "y".repeat(2100)),
            );
            manifest_path = dir.path().join("long.yaml");
            fs::write(&manifest_path, text).unwrap();
        }
        let out = dir.path().join("out");
        let result = run(&mut abforge([
            "build".as_ref(),
            manifest_path.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ]));
        let stderr = String::from_utf8_lossy(&result.stderr);
        if expect.is_empty() {
            assert!(result.status.success(), "{case}: {stderr}");
            continue;
        }
        assert_eq!(result.status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains(expect), "{case}: '{expect}' not in {stderr}");
        assert!(stderr.contains(".yaml:"), "{case}: no location in {stderr}");
        assert!(
            !out.exists() || fs::read_dir(&out).unwrap().next().is_none(),
            "{case}: wrote output"
        );
    }
}
