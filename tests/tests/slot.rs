//! Offline slot control (`abforge slot status|set-next|commit`) on raw and VHDX images:
//! the environment block is read back by grub-editenv and mtools, the ESP passes
//! fsck.vfat, the VHDX passes `qemu-img check`, and only the block's bytes change.

use std::path::Path;
use std::process::{Command, Output};

use abforge::container::open_image;
use abforge::slot::locate_envblk;
use abforge_kernels::Slot;
use abforge_kernels::grub::SlotState;
use abforge_tests::slot::*;
use abforge_tests::vhdx::{assert_check_clean, qemu_img};
use abforge_tests::{abforge, run, run_ok, run_tool, scratch};

fn slot_cmd(args: &[&str], image: &Path) -> Output {
    let (sub, rest) = args.split_first().unwrap();
    run(abforge(["slot", sub]).arg(image).args(rest))
}

fn status_json(image: &Path) -> serde_json::Value {
    let out = run_ok(abforge(["slot", "status", "--json"]).arg(image));
    serde_json::from_slice(&out.stdout).expect("slot status --json prints JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The grubenv of ESP A through mtools (an independent FAT reader), then
/// `grub-editenv list` of it.
fn grub_editenv_list(image: &Path, dir: &Path) -> String {
    let at = format!("{}@@{}", image.display(), esp_offsets()[0]);
    let copy = dir.join("grubenv.copy");
    let _ = std::fs::remove_file(&copy);
    run_tool(
        "mcopy",
        ["-i".as_ref(), at.as_ref(), "::/EFI/abforge/grubenv".as_ref(), copy.as_os_str()],
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 1024);
    let out = run_tool("grub-editenv", [copy.as_os_str(), "list".as_ref()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_esps_clean(image: &Path, dir: &Path) {
    for (n, offset) in esp_offsets().into_iter().enumerate() {
        let esp = dir.join(format!("esp{n}.img"));
        abforge_tests::layout::extract_sparse(image, offset, ESP_SIZE, &esp);
        let out =
            run(Command::new(abforge_tests::tool("fsck.vfat"))
                .args(["-n".as_ref(), esp.as_os_str()]));
        assert!(
            out.status.success(),
            "fsck.vfat -n of ESP {n}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
}

/// The disk ranges of ESP A's grubenv, from the library's locator.
fn grubenv_ranges(image: &Path) -> Vec<(u64, u64)> {
    let disk = open_image(image).unwrap();
    let location = locate_envblk(disk.as_ref(), "disk").unwrap();
    assert_eq!((location.partition, location.partition_name.as_str()), (1, "BootEFIA"));
    location.extents.iter().map(|e| (e.disk_offset, e.disk_offset + e.len)).collect()
}

/// Asserts every byte that differs between `before` and `after` lies in `allowed`.
fn assert_changes_within(before: &Path, after: &Path, allowed: &[(u64, u64)]) {
    let changed = differing_ranges(before, after);
    assert!(!changed.is_empty(), "nothing changed");
    for (start, end) in changed {
        assert!(
            allowed.iter().any(|&(a, b)| a <= start && end <= b),
            "bytes {start}..{end} changed outside the environment block {allowed:?}"
        );
    }
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_grub_editenv, have_fsck_vfat, have_mcopy))),
    ignore = "needs grub-editenv (grub-common), fsck.vfat (dosfstools) and mcopy (mtools)"
)]
fn set_next_boots_once_and_commit_makes_it_default_on_raw() {
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    write_raw_disk(&image, EspContents::SelectorAndEnv);
    let pristine = dir.path().join("pristine.raw");
    std::fs::copy(&image, &pristine).unwrap();
    let envblk = grubenv_ranges(&image);

    let status = status_json(&image);
    assert_eq!(status["version"], 1);
    assert_eq!(status["format"], "raw");
    assert_eq!(status["partition"], 1);
    assert_eq!(status["partition_name"], "BootEFIA");
    assert_eq!(status["envblk_path"], "EFI/abforge/grubenv");
    assert_eq!(status["slots"], serde_json::json!(["a", "b"]));
    assert_eq!(status["default"], "a");
    assert_eq!(status["try"], serde_json::Value::Null);
    assert_eq!(status["tried"], false);
    assert_eq!(status["next_boot"], "a");
    let table = run_ok(abforge(["slot", "status"]).arg(&image));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("default:      a\n"), "{table}");
    assert!(table.contains("try:          none\n"), "{table}");
    assert!(table.contains("next boot:    a\n"), "{table}");

    // set-next b: the block (and nothing else) changes; grub-editenv reads it.
    run_ok(abforge(["slot", "set-next"]).arg(&image).arg("b"));
    assert_changes_within(&pristine, &image, &envblk);
    let listed = grub_editenv_list(&image, dir.path());
    for line in ["abforge_default=a\n", "abforge_try=b\n", "abforge_tried=\n"] {
        assert!(listed.contains(line), "missing {line:?} in grub-editenv list:\n{listed}");
    }
    let status = status_json(&image);
    assert_eq!(
        (&status["default"], &status["try"], &status["tried"]),
        (&"a".into(), &"b".into(), &false.into())
    );
    assert_eq!(status["next_boot"], "b");
    assert_esps_clean(&image, dir.path());

    // The selector's logic, from the state the image holds: b once, then back to a.
    let mut state = SlotState { default: Slot::a(), try_slot: Some(Slot::b()), tried: None };
    assert_eq!(state.boot(), Slot::b());
    assert_eq!(state.boot(), Slot::a());

    // Boot 1 as the selector does it: `save_env abforge_tried` (here grub-editenv on
    // the file, put back over the same sectors, as save_env writes them).
    let copy = dir.path().join("grubenv.boot");
    abforge_tests::layout::extract_sparse(&image, envblk[0].0, 1024, &copy);
    assert_eq!(envblk, vec![(envblk[0].0, envblk[0].0 + 1024)], "one contiguous cluster run");
    run_tool("grub-editenv", [copy.as_os_str(), "set".as_ref(), "abforge_tried=b".as_ref()]);
    write_at(&image, envblk[0].0, &std::fs::read(&copy).unwrap());
    let status = status_json(&image);
    assert_eq!((&status["try"], &status["tried"]), (&"b".into(), &true.into()));
    assert_eq!(status["next_boot"], "a", "an uncommitted try is not booted twice");
    let table = run_ok(abforge(["slot", "status"]).arg(&image));
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("booted once, not committed"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    // Commit: b becomes the default, the try is cleared.
    let before_commit = dir.path().join("before-commit.raw");
    std::fs::copy(&image, &before_commit).unwrap();
    run_ok(abforge(["slot", "commit"]).arg(&image));
    assert_changes_within(&before_commit, &image, &envblk);
    let status = status_json(&image);
    assert_eq!(status["default"], "b");
    assert_eq!(status["try"], serde_json::Value::Null);
    assert_eq!(status["tried"], false);
    assert_eq!(status["next_boot"], "b");
    let listed = grub_editenv_list(&image, dir.path());
    for line in ["abforge_default=b\n", "abforge_try=\n", "abforge_tried=\n"] {
        assert!(listed.contains(line), "missing {line:?} in grub-editenv list:\n{listed}");
    }
    assert_esps_clean(&image, dir.path());
    // Over the whole sequence, only ESP A's block changed (ESP B is untouched).
    assert_changes_within(&pristine, &image, &envblk);

    // Nothing is being tried any more: commit is a usage error, and writes nothing.
    let after = dir.path().join("after.raw");
    std::fs::copy(&image, &after).unwrap();
    let out = slot_cmd(&["commit"], &image);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no slot is being tried"), "{}", stderr(&out));
    assert!(differing_ranges(&after, &image).is_empty());

    // set-next of the same state twice writes nothing the second time.
    run_ok(abforge(["slot", "set-next"]).arg(&image).arg("a"));
    std::fs::copy(&image, &after).unwrap();
    let out = run_ok(abforge(["slot", "set-next"]).arg(&image).arg("a"));
    assert!(stderr(&out).contains("nothing written"), "{}", stderr(&out));
    assert!(differing_ranges(&after, &image).is_empty());
}

/// Asserts qemu-img sees the same disk in `raw` and in `image` (format `format`).
fn assert_same_disk(raw: &Path, image: &Path, format: &str) {
    let out = qemu_img(
        ["compare", "-f", "raw", "-F", format]
            .iter()
            .map(|s| s.as_ref())
            .chain([raw.as_os_str(), image.as_os_str()]),
    );
    assert!(
        out.status.success(),
        "qemu-img compare {format}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_qemu_img, have_grub_editenv, have_fsck_vfat, have_mcopy))),
    ignore = "needs qemu-img (qemu-utils), grub-editenv (grub-common), fsck.vfat (dosfstools) and mcopy (mtools)"
)]
fn vhdx_and_vhd_are_edited_in_place_and_stay_valid() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    write_raw_disk(&raw, EspContents::SelectorAndEnv);
    let vhdx = dir.path().join("disk.vhdx");
    run_ok(abforge(["convert"]).arg(&raw).arg(&vhdx).args([
        "--format",
        "vhdx",
        "--block-size",
        "1MiB",
    ]));
    let vhd = dir.path().join("disk.vhd");
    run_ok(abforge(["convert"]).arg(&raw).arg(&vhd).args(["--format", "vhd"]));
    assert_check_clean(&vhdx);
    let (pristine_vhdx, pristine_vhd) =
        (dir.path().join("pristine.vhdx"), dir.path().join("pristine.vhd"));
    std::fs::copy(&vhdx, &pristine_vhdx).unwrap();
    std::fs::copy(&vhd, &pristine_vhd).unwrap();

    let status = status_json(&vhdx);
    assert_eq!(status["format"], "vhdx");
    assert_eq!(status["default"], "a");
    assert_eq!(status_json(&vhd)["format"], "vhd");

    // The same edit on the raw image, the VHDX and the VHD gives the same disk.
    for image in [&raw, &vhdx, &vhd] {
        run_ok(abforge(["slot", "set-next"]).arg(image).arg("b"));
    }
    assert_check_clean(&vhdx);
    assert_same_disk(&raw, &vhdx, "vhdx");
    assert_same_disk(&raw, &vhd, "vpc");
    for image in [&vhdx, &vhd] {
        let status = status_json(image);
        assert_eq!((&status["try"], &status["next_boot"]), (&"b".into(), &"b".into()));
    }

    // Only payload bytes changed, one 1024-byte run (one cluster run inside one
    // payload block); headers, log, metadata and BAT are untouched, the length too.
    let changed = differing_ranges(&pristine_vhdx, &vhdx);
    assert!(!changed.is_empty());
    let (first, last) = (changed[0].0, changed[changed.len() - 1].1);
    assert!(last - first <= 1024, "changes spread over {first}..{last}: {changed:?}");
    assert!(first >= 4 << 20, "a change at byte {first}, inside the VHDX metadata structures");
    // In the VHD, the same disk bytes changed as in the raw image; the footer did not.
    let envblk = grubenv_ranges(&raw);
    assert_changes_within(&pristine_vhd, &vhd, &envblk);

    for image in [&raw, &vhdx, &vhd] {
        run_ok(abforge(["slot", "commit"]).arg(image));
    }
    assert_check_clean(&vhdx);
    assert_same_disk(&raw, &vhdx, "vhdx");
    assert_same_disk(&raw, &vhd, "vpc");
    assert_eq!(status_json(&vhdx)["default"], "b");
    assert_eq!(status_json(&vhd)["default"], "b");

    // What the VHDX holds, seen by the reference tools: convert back with qemu-img.
    let back = dir.path().join("back.raw");
    run_ok(
        Command::new(abforge_tests::tool("qemu-img"))
            .args(["convert", "-f", "vhdx", "-O", "raw"])
            .arg(&vhdx)
            .arg(&back),
    );
    let listed = grub_editenv_list(&back, dir.path());
    assert!(listed.contains("abforge_default=b\n"), "{listed}");
    assert_esps_clean(&back, dir.path());
}

#[test]
fn bad_input_is_refused_with_the_documented_exit_status() {
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    write_raw_disk(&image, EspContents::SelectorAndEnv);
    let pristine = dir.path().join("pristine.raw");
    std::fs::copy(&image, &pristine).unwrap();

    // A slot the selector does not have, and a name that is not a slot: usage errors.
    let out = slot_cmd(&["set-next", "c"], &image);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no slot c: its selector boots slots a, b"),
        "{}",
        stderr(&out)
    );
    let out = slot_cmd(&["set-next", "B"], &image);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a slot name"), "{}", stderr(&out));
    // Nothing to commit on a fresh image.
    let out = slot_cmd(&["commit"], &image);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(differing_ranges(&pristine, &image).is_empty(), "a refused request wrote");

    // No environment block on any ESP: a failure, naming each ESP.
    let bare = dir.path().join("bare.raw");
    write_raw_disk(&bare, EspContents::Nothing);
    for args in [&["status"][..], &["set-next", "b"], &["commit"]] {
        let out = slot_cmd(args, &bare);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(
            text.contains("no GRUB environment block (EFI/abforge/grubenv) on any ESP"),
            "{text}"
        );
        assert!(text.contains(&bare.display().to_string()), "{text}");
        let esp_b =
            format!("partition 3 'BootEFIB' of {}: no file EFI/abforge/grubenv", bare.display());
        assert!(text.contains(&esp_b), "{text}");
    }

    // An environment block without a selector: status works, set-next cannot check the slot.
    let env_only = dir.path().join("env-only.raw");
    write_raw_disk(&env_only, EspContents::EnvOnly);
    let status = status_json(&env_only);
    assert_eq!(status["slots"], serde_json::Value::Null);
    assert_eq!(status["default"], "a");
    let out = slot_cmd(&["set-next", "b"], &env_only);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("there is no EFI/abforge/select.cfg on partition 1 'BootEFIA'"),
        "{}",
        stderr(&out)
    );

    // Not a partitioned disk at all.
    let zeros = dir.path().join("zeros.raw");
    std::fs::File::create(&zeros).unwrap().set_len(4 << 20).unwrap();
    let out = slot_cmd(&["status"], &zeros);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read the partition table"), "{}", stderr(&out));

    // A damaged environment block: a failure that names it, nothing written.
    let damaged = dir.path().join("damaged.raw");
    std::fs::copy(&pristine, &damaged).unwrap();
    let envblk = abforge_tests::slot::read_at(&damaged, grubenv_start(&damaged), 8);
    assert_eq!(&envblk, b"# GRUB E");
    write_at(&damaged, grubenv_start(&damaged), b"# GRUB X");
    let out = slot_cmd(&["set-next", "b"], &damaged);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let named = format!(
        "EFI/abforge/grubenv on partition 1 'BootEFIA' of {} cannot be used",
        damaged.display()
    );
    assert!(stderr(&out).contains(&named), "{}", stderr(&out));

    // An image that does not exist: an I/O failure.
    let missing = dir.path().join("missing.vhdx");
    for args in [&["status"][..], &["set-next", "b"], &["commit"]] {
        let out = slot_cmd(args, &missing);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot open"), "{}", stderr(&out));
    }
}

fn grubenv_start(image: &Path) -> u64 {
    grubenv_ranges(image)[0].0
}
