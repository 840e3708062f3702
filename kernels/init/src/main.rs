//! abforge-init: PID 1 of abforge's initramfs.
//!
//! As PID 1 it mounts /proc, /sys, /dev and /run, loads the modules listed in
//! `/etc/abforge/modules.load`, waits (bounded by `abforge.wait`) for the slot's
//! partitions, opens the root through dm-verity when `abforge.verity.roothash` is
//! given (read-only either way), mounts the Data and Log partitions and the overlays
//! listed in the root's `/usr/lib/abforge/profile.json` (or on the command line),
//! switches root and executes the real init. Any failure prints one line,
//! `abforge-init: FAILED: <what>; rebooting in 5 s`, then reboots so the bootloader
//! can fall back to the other slot. Just before executing the real init it prints
//! `abforge-init: slot=<s> root=<dev> verity=on|off mounts=... overlays=... init=...`.
//!
//! When it is not PID 1 it never touches the system: `--check-cmdline "<cmdline>"`
//! prints the plan it would follow for that command line, `--help` the usage.
//!
//! Expected initramfs layout: `/init` (this binary, static), `/dev/console` (character
//! device 5:1, so the kernel can give PID 1 a console before /dev is mounted),
//! `/etc/abforge/modules.load`, `/lib/modules/<release>/<paths listed there>`, and
//! empty `/proc`, `/sys`, `/dev`, `/run`, `/sysroot` (created when missing).
//!
//! The `abforge.*` parameters are read with `abforge_kernels::cmdline`
//! (`parse_abforge_params`), the same crate the builder renders them with, so the two
//! ends of the command line share one definition.
//!
//! Module map: [`plan`], [`verity`], [`devices`], [`modules`], [`profile`] are pure or
//! read-only; [`boot`] performs the sequence; [`dm`] holds the device-mapper ioctls,
//! the only unsafe code of the workspace.

mod boot;
mod devices;
mod dm;
mod modules;
mod plan;
mod profile;
mod verity;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use abforge_kernels::cmdline::{InitParams, parse_abforge_params};

const USAGE: &str = "\
usage: abforge-init                          (as PID 1 only: boot the slot named on the kernel command line)
       abforge-init --check-cmdline CMDLINE [--modules LOAD_LIST] [--profile PROFILE_JSON]
                                             print the plan for CMDLINE and exit (changes nothing)
       abforge-init --help | --version
";

/// Seconds between a failure message and the reboot, so the line can be read.
const REBOOT_DELAY: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if rustix::process::getpid().is_init() {
        pid1(args);
    }
    let args: Vec<String> = match args.into_iter().map(OsString::into_string).collect() {
        Ok(args) => args,
        Err(_) => return usage_error("arguments must be UTF-8"),
    };
    match args.first().map(String::as_str) {
        Some("--help" | "-h") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version") => {
            println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--check-cmdline") => check_cmdline(&args[1..]),
        None => usage_error("not PID 1: nothing to do without --check-cmdline"),
        Some(other) => usage_error(&format!("unknown argument '{other}'")),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("abforge-init: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// PID 1: boot, or print the failure and reboot. Never returns (PID 1 exiting would
/// panic the kernel).
fn pid1(args: Vec<OsString>) -> ! {
    std::panic::set_hook(Box::new(|info| {
        let mut console = boot::Console::open();
        console.line(&format!("FAILED: internal error: {info}; rebooting in 5 s"));
        reboot();
    }));
    let mut console = boot::Console::open();
    let failure = boot::run(&mut console, args);
    console.line(&format!("FAILED: {failure}; rebooting in 5 s"));
    reboot()
}

fn reboot() -> ! {
    std::thread::sleep(REBOOT_DELAY);
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    // Only reached if the reboot was refused: stay alive, as PID 1 must.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `--check-cmdline CMDLINE [--modules FILE] [--profile FILE]`.
fn check_cmdline(args: &[String]) -> ExitCode {
    let Some(cmdline) = args.first() else {
        return usage_error("--check-cmdline needs a command line");
    };
    let mut modules_file = None;
    let mut profile_file = None;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let slot = match flag.as_str() {
            "--modules" => &mut modules_file,
            "--profile" => &mut profile_file,
            other => return usage_error(&format!("unknown argument '{other}'")),
        };
        let Some(value) = rest.next() else { return usage_error(&format!("{flag} needs a file")) };
        *slot = Some(value.clone());
    }
    match describe(cmdline, modules_file.as_deref(), profile_file.as_deref()) {
        Ok(lines) => {
            let mut out = std::io::stdout().lock();
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("abforge-init: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The plan for a command line, one step per line.
fn describe(
    cmdline: &str,
    modules_file: Option<&str>,
    profile_file: Option<&str>,
) -> Result<Vec<String>, String> {
    let params: InitParams =
        parse_abforge_params(cmdline).map_err(|e| format!("kernel command line: {e}"))?;
    let mut out = vec![format!("plan for slot {}:", params.slot)];
    let mut step = |text: String| {
        let n = out.len();
        out.push(format!("{n}. {text}"));
    };
    step("mount /proc, /sys, /dev (devtmpfs) and /run (tmpfs)".into());
    match modules_file {
        None => step(format!("load the modules listed in {}", modules::LOAD_LIST_PATH)),
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
            let list = modules::parse_load_list(&text);
            for entry in &list {
                if modules::module_name(entry).is_none() {
                    return Err(format!("{file}: '{entry}' is not a kernel module file"));
                }
            }
            step(format!("load {} modules in order: {}", list.len(), list.join(" ")));
        }
    }
    let mut waited = vec![format!("root partition {}", params.root)];
    if let Some(dev) = params.verity.as_ref().and_then(|v| v.hash_device.as_ref()) {
        waited.push(format!("verity hash partition {dev}"));
    }
    step(format!("wait up to {} s for {}", params.wait_seconds, waited.join(" and ")));
    let root_source = match &params.verity {
        None => params.root.to_string(),
        Some(v) => {
            let hash_dev = v.hash_device.as_ref().unwrap_or(&params.root).to_string();
            let on_corruption = params.verity_on_corruption;
            let table = verity::table(v, on_corruption, &params.root.to_string(), &hash_dev)
                .map_err(|e| e.to_string())?;
            step(format!("check the verity superblock at byte {} of {hash_dev}", v.hash_offset));
            step(format!(
                "create dm-verity device '{}' (read-only, on corruption: {}): {table}",
                boot::VERITY_NAME,
                on_corruption.name()
            ));
            format!("/dev/mapper/{}", boot::VERITY_NAME)
        }
    };
    step(format!("mount {root_source} ({}) read-only at {}", params.root_fstype, boot::SYSROOT));
    let profile = match profile_file {
        None => {
            step(format!("read mounts and overlays from {} in the root", profile::RECORD_PATH));
            None
        }
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
            Some(profile::parse_profile(&text)?)
        }
    };
    let mounts = plan::plan_mounts(&params, profile.as_ref())?;
    let overlays = plan::plan_overlays(&params, profile.as_ref())?;
    for m in &mounts {
        step(format!(
            "mount the {} partition {} at {} ({})",
            m.what, m.device, m.target, m.options
        ));
    }
    step("move /dev, /proc, /sys and /run into the new root and switch root to it".into());
    for o in &overlays {
        step(format!("mount an overlay on {}: upper {}, work {}", o.path, o.upper, o.work));
    }
    step(format!("execute {}", params.init));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_every_step() {
        let lines = describe(
            "console=ttyS0 abforge.slot=a abforge.root=PARTLABEL=RootFSA abforge.data=/dev/vda9 \
             abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             abforge.verity.salt=- abforge.verity.hashoffset=8192 abforge.verity.datablocks=2",
            None,
            None,
        )
        .unwrap();
        let text = lines.join("\n");
        assert!(text.starts_with("plan for slot a:\n1. mount /proc"), "{text}");
        assert!(text.contains(
            "create dm-verity device 'root' (read-only, on corruption: eio): 0 16 verity 1 PARTLABEL=RootFSA PARTLABEL=RootFSA 4096 4096 2 3 sha256"
        ), "{text}");
        assert!(text.contains("mount /dev/mapper/root (ext4) read-only at /sysroot"), "{text}");
        assert!(
            text.contains("mount the Data partition /dev/vda9 at /var (defaults,nodev)"),
            "{text}"
        );
        assert!(text.ends_with("execute /sbin/init"), "{text}");
        let err = describe("abforge.slot=a", None, None).unwrap_err();
        assert_eq!(err, "kernel command line: kernel parameter abforge.root is missing");
    }
}
