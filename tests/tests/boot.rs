//! The VM boot test (issue 7 point 5) and the checks of its machinery.
//!
//! `boot_sequence` builds the EFLOW manifest of tests/boot/eflow-boot.yaml from the
//! real inputs of `scripts/boot-inputs.sh` (a debootstrap root with Debian's kernel,
//! the GRUB EFI image, the static abforge-init) as a VHDX, boots it under qemu (TCG)
//! and OVMF several times in a row and checks what the guest's report unit prints. It
//! takes minutes, so it is ignored by `make test` and run by `make boot-test`.
//!
//! `grub_from_a_vhdx_esp_reboots_and_keeps_its_environment` is the machinery's own
//! check and runs in `make test`: a VHDX holding only an ESP with the GRUB image and a
//! selector script that counts its boots in the GRUB environment block, rebooting once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use abforge_kernels::grub::{EMBEDDED_CONFIG, ENVBLK_PATH, SELECTOR_PATH, render_envblk};
use abforge_tests::boot::{
    Boot, INPUTS_ENV, Machine, Report, boot_inputs, corrupt, partition_extent, render_manifest,
};
use abforge_tests::{abforge, repo_root, run_ok, scratch, tool};

/// A boot that never finishes is stopped after this long. It is a watchdog, not a
/// time limit of the test: a boot under TCG takes 5 s (GRUB only) to about a minute.
const WATCHDOG: Duration = Duration::from_secs(600);

fn abforge_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = run_ok(&mut abforge(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds `manifest` into `out` and returns the image and the build report.
fn build(manifest: &Path, out: &Path, image_name: &str) -> (PathBuf, serde_json::Value) {
    abforge_ok(&["build".as_ref(), manifest.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    let report_path = out.join(format!("{image_name}.json"));
    let text = fs::read_to_string(&report_path)
        .unwrap_or_else(|e| panic!("cannot read the build report {}: {e}", report_path.display()));
    let report: serde_json::Value = serde_json::from_str(&text).expect("the build report is JSON");
    let image =
        out.join(report["image"]["path"].as_str().expect("the build report names the image"));
    (image, report)
}

/// The GRUB EFI image: the one `make boot-inputs` made when its directory is given,
/// otherwise one built now by `scripts/boot-inputs.sh DIR grub` (with the embedded
/// config written from the constant, so no nested cargo run).
fn grub_image(scratch: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os(INPUTS_ENV) {
        let image = PathBuf::from(dir).join("BOOTX64.EFI");
        if image.is_file() {
            return image;
        }
    }
    let config = scratch.join("embedded.cfg");
    fs::write(&config, EMBEDDED_CONFIG).expect("writing the embedded config");
    let inputs = scratch.join("inputs");
    run_ok(
        Command::new("bash")
            .arg(repo_root().join("scripts/boot-inputs.sh"))
            .arg(&inputs)
            .arg("grub")
            .env("EMBEDDED_CONFIG_FILE", &config),
    );
    inputs.join("BOOTX64.EFI")
}

/// A selector that counts its runs in the environment block next to it: the first run
/// reboots, the second and later ones power off. The GRUB script language has no
/// arithmetic, so the count is spelled out.
const COUNTING_SELECTOR: &str = "\
serial --unit=0 --speed=115200
terminal_output serial
set env=\"($root)/EFI/abforge/grubenv\"
set runs=0
load_env --file \"$env\" runs
if [ \"$runs\" = 0 ]; then
  set runs=1
  save_env --file \"$env\" runs
  echo \"ABFORGE-GRUB run 1 from $root: rebooting\"
  reboot
fi
if [ \"$runs\" = 1 ]; then
  set runs=2
  save_env --file \"$env\" runs
  echo \"ABFORGE-GRUB run 2: powering off\"
  halt
fi
set runs=3
save_env --file \"$env\" runs
echo \"ABFORGE-GRUB run 3: powering off\"
halt
";

#[test]
#[cfg_attr(
    not(any(ci, all(have_qemu_system_x86_64, have_grub_mkstandalone))),
    ignore = "needs qemu-system-x86_64 and grub-mkstandalone (packages qemu-system-x86, grub-common, grub-efi-amd64-bin, ovmf)"
)]
fn grub_from_a_vhdx_esp_reboots_and_keeps_its_environment() {
    tool("qemu-system-x86_64");
    let dir = scratch();
    let grub = grub_image(dir.path());
    let size = fs::metadata(&grub).expect("GRUB image").len();
    assert!(size < 2 * 1024 * 1024, "the GRUB image is {size} bytes: too big for an 8 MiB ESP");

    let esp = dir.path().join("esp");
    fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    fs::create_dir_all(esp.join("EFI/abforge")).unwrap();
    fs::copy(&grub, esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    fs::write(esp.join(SELECTOR_PATH.trim_start_matches('/')), COUNTING_SELECTOR).unwrap();
    let envblk = render_envblk(&BTreeMap::new()).expect("an empty environment block");
    fs::write(esp.join(ENVBLK_PATH.trim_start_matches('/')), envblk).unwrap();
    let manifest = dir.path().join("grub.yaml");
    fs::write(
        &manifest,
        "name: grubtest\nversion: '1'\nseed: grubtest\nformat: raw\n\
         partitions:\n  - { name: BootEFIA, type: esp, size: 8MiB, filesystem: vfat, contents: esp/ }\n",
    )
    .unwrap();
    let (raw, _) = build(&manifest, &dir.path().join("out"), "grubtest");
    // Built raw and converted, so the test runs whatever formats `build` supports.
    let image = dir.path().join("grubtest.vhdx");
    abforge_ok(&[
        "convert".as_ref(),
        raw.as_os_str(),
        image.as_os_str(),
        "--format".as_ref(),
        "vhdx".as_ref(),
    ]);

    let mut machine = Machine::new(&image, "vhdx");
    let first = machine.boot(WATCHDOG);
    first.assert_powered_off();
    let run1 = first.console.find("ABFORGE-GRUB run 1 from hd0,gpt1");
    let run2 = first.console.find("ABFORGE-GRUB run 2");
    assert!(
        matches!((run1, run2), (Some(a), Some(b)) if a < b),
        "GRUB should run the ESP's selector, reboot, and run it again from the saved state\n{}",
        first.tail(60)
    );
    eprintln!("boot: GRUB reboot cycle under TCG took {:.1?}", first.elapsed);

    // The disk (and so the environment block GRUB wrote) carries over to the next boot.
    let second = machine.boot(WATCHDOG);
    second.assert_powered_off();
    assert!(
        second.saw("ABFORGE-GRUB run 3") && !second.saw("run 1") && !second.saw("run 2"),
        "the second power-on should find the state the first saved\n{}",
        second.tail(60)
    );
    eprintln!("boot: GRUB single boot under TCG took {:.1?}", second.elapsed);
}

/// The fingerprint of the ed25519 host key the debootstrap root carries (which the
/// image must not: the profile removes host keys).
fn source_host_key(inputs: &Path, scratch: &Path) -> Option<String> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(inputs.join("rootfs.tar"))
        .arg("./etc/ssh/ssh_host_ed25519_key.pub")
        .output()
        .expect("running tar");
    if !out.status.success() || out.stdout.is_empty() {
        return None;
    }
    let key = scratch.join("source_host_key.pub");
    fs::write(&key, &out.stdout).unwrap();
    let listed = run_ok(Command::new(tool("ssh-keygen")).arg("-lf").arg(&key));
    String::from_utf8_lossy(&listed.stdout).split_whitespace().nth(1).map(str::to_string)
}

fn slot(image: &Path, args: &[&str]) -> String {
    let mut all: Vec<&std::ffi::OsStr> = vec!["slot".as_ref()];
    all.push(args[0].as_ref());
    all.push(image.as_os_str());
    all.extend(args[1..].iter().map(|a| std::ffi::OsStr::new(*a)));
    abforge_ok(&all)
}

/// Boots once and returns the run with its one report, after checking it powered off.
fn boot_once(machine: &mut Machine, what: &str) -> (Boot, Report) {
    let boot = machine.boot(WATCHDOG);
    boot.assert_powered_off();
    let report = boot.report();
    eprintln!("boot: {what}: {:.1?}\n  {}", boot.elapsed, report.line());
    (boot, report)
}

#[test]
#[ignore = "VM boot test: run with make boot-test"]
fn boot_sequence() {
    let inputs = boot_inputs();
    let dir = scratch();
    let manifest = render_manifest(&inputs, &dir.path().join("eflow-boot.yaml"));
    let (image, build_report) = build(&manifest, &dir.path().join("out"), "eflow-boot");
    assert_eq!(build_report["format"], "vhdx", "the boot test boots the VHDX");
    let source_key = source_host_key(&inputs, dir.path());
    let mut machine = Machine::new(&image, "vhdx");

    // 1. First boot: slot a on the verity root, the profile in place.
    let (first, r) = boot_once(&mut machine, "first boot");
    let ctx = "first boot";
    r.expect("slot", "a", ctx);
    assert!(
        first.console.lines().any(|l| l.contains("abforge-init:") && l.contains("verity=on")),
        "the init should say it opened the verity root\n{}",
        first.tail(80)
    );
    r.expect("root_dm", "root", ctx);
    r.expect("root_ro", "1", ctx);
    r.expect("root_fstype", "ext4", ctx);
    assert!(r.get("var").ends_with(",Data"), "/var should be the Data partition: {}", r.line());
    assert!(r.get("logs").ends_with(",Log"), "/logs should be the Log partition: {}", r.line());
    r.expect("etc_overlay", "1", ctx);
    assert!(
        r.get("etc_upper").starts_with("/var/.eflow/overlays/etc"),
        "the /etc overlay's upper directory should be on Data: {}",
        r.line()
    );
    r.expect("etc_writable", "1", ctx);
    r.expect("iptables_input_policy", "DROP", ctx);
    r.expect("ssh_rule", "1", ctx);
    r.expect("sshd", "active", ctx);
    r.expect("sshd_password_auth", "no", ctx);
    r.expect("hostkeys_fresh", "1", ctx);
    assert_ne!(r.get("hostkey"), "none", "sshd has no ed25519 host key: {}", r.line());
    if let Some(source_key) = &source_key {
        assert_ne!(r.get("hostkey"), source_key, "the image kept the host key of its source root");
    }
    r.expect("marker", "none", ctx);
    let host_key = r.get("hostkey").to_string();

    // 2. A file written to /etc (the report's marker) survives a reboot; the host keys
    //    are this installation's and stay.
    let (_, r) = boot_once(&mut machine, "second boot");
    let ctx = "second boot";
    r.expect("slot", "a", ctx);
    r.expect("marker", "1", ctx);
    r.expect("hostkeys_fresh", "0", ctx);
    r.expect("hostkey", &host_key, ctx);

    // 3. `slot set-next b` boots slot b once; without a commit the next boot is on a.
    slot(machine.disk(), &["set-next", "b"]);
    let (_, r) = boot_once(&mut machine, "try of slot b");
    let ctx = "boot after set-next b";
    r.expect("slot", "b", ctx);
    r.expect("root_dm", "root", ctx);
    r.expect("marker", "2", ctx);
    let (_, r) = boot_once(&mut machine, "boot after the uncommitted try");
    r.expect("slot", "a", "boot after an uncommitted try of b");
    r.expect("marker", "3", "boot after an uncommitted try of b");
    eprintln!("boot: slot status:\n{}", slot(machine.disk(), &["status"]));

    // 4. One corrupted data block in slot b's root: verification fails when the init
    //    mounts it, and the machine falls back to slot a. Data block 1 holds the ext4
    //    group descriptors, which every mount reads (block 0, the superblock, is also
    //    read before the verity device exists, to probe the file system).
    let (root_b, _) = partition_extent(&build_report, "RootFSB");
    corrupt(machine.disk(), "vhdx", root_b + 4096, 4096);
    slot(machine.disk(), &["set-next", "b"]);
    let fallback = machine.boot(WATCHDOG);
    fallback.assert_powered_off();
    eprintln!("boot: corrupted slot b and fallback: {:.1?}", fallback.elapsed);
    let failed = fallback.console.find("abforge-init: FAILED");
    assert!(
        fallback.saw("is corrupted") && failed.is_some(),
        "the corrupted block should fail verification on the console and the init should say it failed\n{}",
        fallback.tail(120)
    );
    let report = fallback.report();
    report.expect("slot", "a", "boot after slot b failed verification");
    let report_at = fallback.console.find(report.line()).expect("the report is in the console");
    assert!(
        failed < Some(report_at),
        "slot a should be booted after slot b failed\n{}",
        fallback.tail(120)
    );
    report.expect("marker", "4", "boot after slot b failed verification");
}
