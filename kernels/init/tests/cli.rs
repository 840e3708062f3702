//! The binary as a user runs it when it is not PID 1: it must only print.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_abforge-init");

const VERITY_LINE: &str = "console=ttyS0 abforge.slot=b \
    abforge.root=PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 \
    abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
    abforge.verity.salt=abab abforge.verity.hashoffset=8192 abforge.verity.datablocks=2 \
    abforge.verity.oncorruption=restart abforge.wait=10 quiet";

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn without_arguments_it_refuses_to_act() {
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not PID 1: nothing to do"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let o = run(&["--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown argument '--frobnicate'"));
}

#[test]
fn help_and_version() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--check-cmdline CMDLINE"));
    let o = run(&["--version"]);
    assert_eq!(stdout(&o), format!("abforge-init {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_cmdline_prints_the_verity_plan() {
    let o = run(&["--check-cmdline", VERITY_LINE]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    let expected = [
        "plan for slot b:",
        "1. mount /proc, /sys, /dev (devtmpfs) and /run (tmpfs)",
        "2. load the modules listed in /etc/abforge/modules.load",
        "3. wait up to 10 s for root partition PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79",
        "4. check the verity superblock at byte 8192 of PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79",
        "5. create dm-verity device 'root' (read-only, on corruption: restart): 0 16 verity 1 \
         PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 \
         4096 4096 2 3 sha256 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f abab \
         1 restart_on_corruption",
        "6. mount /dev/mapper/root (ext4) read-only at /sysroot",
        "7. read mounts and overlays from /usr/lib/abforge/profile.json in the root",
        "8. move /dev, /proc, /sys and /run into the new root and switch root to it",
        "9. execute /sbin/init",
    ];
    assert_eq!(plan.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn check_cmdline_with_module_list_and_profile() {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules.load");
    std::fs::write(
        &modules,
        "kernel/drivers/md/dm-mod.ko\n# comment\nkernel/fs/overlayfs/overlay.ko\n",
    )
    .unwrap();
    let profile = dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"record_version":1,"image_id":"x",
            "mounts":[{"mount":"/var","partuuid":"8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a","options":"defaults,nodev"},
                      {"mount":"/logs","partuuid":"2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7","options":"defaults,nodev,nosuid,noexec"}],
            "overlays":[{"path":"/etc","upper":"/var/.eflow/overlays/etc/upper","work":"/var/.eflow/overlays/etc/work"}]}"#,
    )
    .unwrap();
    let o = run(&[
        "--check-cmdline",
        "abforge.slot=a abforge.root=/dev/vda3 abforge.init=/lib/systemd/systemd",
        "--modules",
        modules.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    for line in [
        "2. load 2 modules in order: kernel/drivers/md/dm-mod.ko kernel/fs/overlayfs/overlay.ko",
        "3. wait up to 30 s for root partition /dev/vda3",
        "4. mount /dev/vda3 (ext4) read-only at /sysroot",
        "5. mount the Data partition PARTUUID=8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a at /var (defaults,nodev)",
        "6. mount the Log partition PARTUUID=2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7 at /logs (defaults,nodev,nosuid,noexec)",
        "8. mount an overlay on /etc: upper /var/.eflow/overlays/etc/upper, work /var/.eflow/overlays/etc/work",
        "9. execute /lib/systemd/systemd",
    ] {
        assert!(plan.lines().any(|l| l == line), "missing {line:?} in\n{plan}");
    }
    assert!(!plan.contains("verity"), "{plan}");

    std::fs::write(&modules, "kernel/drivers/md/readme.txt\n").unwrap();
    let o = run(&[
        "--check-cmdline",
        "abforge.slot=a abforge.root=/dev/vda3",
        "--modules",
        modules.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("'kernel/drivers/md/readme.txt' is not a kernel module file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_cmdline_reports_bad_parameters() {
    for (line, expected) in [
        ("abforge.slot=a", "kernel parameter abforge.root is missing"),
        (
            "abforge.slot=a abforge.root=/dev/vda3 abforge.verity.hashoffset=1",
            "without abforge.verity.roothash",
        ),
        ("abforge.slot=a abforge.root=UUID=1", "abforge.root=UUID=1 is invalid"),
    ] {
        let o = run(&["--check-cmdline", line]);
        assert_eq!(o.status.code(), Some(1), "{line}");
        assert!(stderr(&o).starts_with("abforge-init: kernel command line: "), "{}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{line}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}
