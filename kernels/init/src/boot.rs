//! The boot sequence of PID 1: everything here changes the running system, so it is
//! only reached when the process is PID 1 (see `main.rs`). The decisions are made by
//! the pure modules (`abforge_kernels::cmdline`, [`crate::plan`], [`crate::verity`],
//! [`crate::devices`]); this module performs them in order and turns every failure
//! into one sentence for the console.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use abforge_kernels::cmdline::{
    DeviceRef, InitParams, OnCorruption, Param, VerityParams, parse_abforge_params,
    split_booted_args,
};
use rustix::mount::{MountFlags, mount, mount_move};

use crate::devices::{self, BlockDevice, ResolveError};
use crate::dm;
use crate::modules::{self, LOAD_LIST_PATH, Loaded};
use crate::plan::{self, MountPlan, OverlayPlan, parse_mount_options, probe_fstype};
use crate::profile::{RECORD_PATH, parse_profile};
use crate::verity;

/// Where the new root is assembled.
pub const SYSROOT: &str = "/sysroot";
/// The name of the dm-verity device (`/dev/mapper/root`).
pub const VERITY_NAME: &str = "root";
/// How often the devices are looked for while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Where the init's lines go: /dev/console, with a copy in the kernel log.
pub struct Console {
    console: Option<File>,
    kmsg: Option<File>,
}

impl Console {
    /// Opens /dev/console and /dev/kmsg if they exist (before /dev is mounted they
    /// may not; lines then go to the standard error the kernel gave PID 1).
    pub fn open() -> Console {
        let open = |path: &str| OpenOptions::new().write(true).open(path).ok();
        Console { console: open("/dev/console"), kmsg: open("/dev/kmsg") }
    }

    /// Writes `abforge-init: <message>` as one line.
    pub fn line(&mut self, message: &str) {
        let text = format!("abforge-init: {message}\n");
        match &mut self.console {
            Some(console) => {
                let _ = console.write_all(text.as_bytes());
                // Priority 7 (debug): kept in the kernel log (and the journal) without
                // the kernel printing it on the console a second time.
                if let Some(kmsg) = &mut self.kmsg {
                    let _ = kmsg.write_all(format!("<7>{text}").as_bytes());
                }
            }
            None => {
                let _ = io::stderr().write_all(text.as_bytes());
                // Without a console node, let the kernel print it (priority 2, shown on
                // every console even with `quiet`).
                if let Some(kmsg) = &mut self.kmsg {
                    let _ = kmsg.write_all(format!("<2>{text}").as_bytes());
                }
            }
        }
    }
}

/// Runs the boot sequence; returns only on failure, with the sentence to print.
pub fn run(console: &mut Console, init_args: Vec<OsString>) -> String {
    match boot(console, init_args) {
        Ok(never) => match never {},
        Err(message) => message,
    }
}

enum Never {}

fn boot(console: &mut Console, init_args: Vec<OsString>) -> Result<Never, String> {
    mount_api_file_systems()?;
    *console = Console::open();
    redirect_stdio();
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    console.line(&format!(
        "{} {} starting on Linux {release}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    ));

    let cmdline_text = fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let params =
        parse_abforge_params(&cmdline_text).map_err(|e| format!("kernel command line: {e}"))?;
    let cmdline =
        split_booted_args(&cmdline_text).map_err(|e| format!("kernel command line: {e}"))?;

    load_modules(console, &cmdline, &release)?;

    let deadline = Instant::now() + Duration::from_secs(u64::from(params.wait_seconds));
    let mut wanted = vec![(params.root.clone(), "root partition".to_string())];
    if let Some(dev) = params.verity.as_ref().and_then(|v| v.hash_device.clone()) {
        wanted.push((dev, "verity hash partition".to_string()));
    }
    let found = wait_for_devices(&wanted, deadline, params.wait_seconds)?;
    let root_dev = &found[0];

    let root_source = match &params.verity {
        None => root_dev.path("/dev"),
        Some(v) => {
            let hash_dev = found.get(1).unwrap_or(root_dev);
            open_verity(v, params.verity_on_corruption, root_dev, hash_dev, deadline)?
        }
    };
    mkdir(SYSROOT)?;
    mount(root_source.as_str(), SYSROOT, params.root_fstype.as_str(), MountFlags::RDONLY, None)
        .map_err(|e| {
            format!(
                "mounting the root {root_source} ({}) read-only at {SYSROOT} failed: {e}",
                params.root_fstype
            )
        })?;

    let record_path = format!("{SYSROOT}{RECORD_PATH}");
    let profile = match fs::read_to_string(&record_path) {
        Ok(text) => Some(parse_profile(&text)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {RECORD_PATH} in the root: {e}")),
    };
    let mounts = plan::plan_mounts(&params, profile.as_ref())?;
    let overlays = plan::plan_overlays(&params, profile.as_ref())?;
    let wanted: Vec<(DeviceRef, String)> =
        mounts.iter().map(|m| (m.device.clone(), format!("{} partition", m.what))).collect();
    let mount_devices = wait_for_devices(&wanted, deadline, params.wait_seconds)?;
    let mut mounted = Vec::new();
    for (m, dev) in mounts.iter().zip(&mount_devices) {
        mount_below_root(m, dev)?;
        mounted.push(format!("{}:{}", m.target, dev.path("/dev")));
    }

    for api in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{SYSROOT}{api}");
        if !Path::new(&target).is_dir() {
            return Err(format!("the root has no {api} directory to move {api} to"));
        }
        mount_move(api, target.as_str())
            .map_err(|e| format!("moving {api} into the new root failed: {e}"))?;
    }
    switch_root()?;
    for o in &overlays {
        mount_overlay(o)?;
    }

    let init = &params.init;
    if fs::metadata(init).is_err() {
        return Err(format!("the real init {init} does not exist in the root"));
    }
    console.line(&summary_line(&params, &root_source, &mounted, &overlays));
    let error = Command::new(init).arg0(init).args(init_args).exec();
    Err(format!("executing {init} failed: {error}"))
}

/// The machine-readable line printed just before the real init runs.
pub fn summary_line(
    params: &InitParams,
    root: &str,
    mounts: &[String],
    overlays: &[OverlayPlan],
) -> String {
    let list = |items: Vec<&str>| if items.is_empty() { "-".to_string() } else { items.join(",") };
    format!(
        "slot={} root={root} verity={} mounts={} overlays={} init={}",
        params.slot,
        if params.verity.is_some() { "on" } else { "off" },
        list(mounts.iter().map(String::as_str).collect()),
        list(overlays.iter().map(|o| o.path.as_str()).collect()),
        params.init
    )
}

fn mkdir(path: &str) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("cannot create directory {path}: {e}"))
}

/// /proc, /sys, /dev (devtmpfs) and /run (tmpfs); one already mounted is kept.
fn mount_api_file_systems() -> Result<(), String> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let table: [(&str, &str, MountFlags, &str); 4] = [
        ("proc", "/proc", nosuid_nodev_noexec, ""),
        ("sysfs", "/sys", nosuid_nodev_noexec, ""),
        ("devtmpfs", "/dev", MountFlags::NOSUID, "mode=0755"),
        ("tmpfs", "/run", MountFlags::NOSUID | MountFlags::NODEV, "mode=0755"),
    ];
    for (fstype, target, flags, data) in table {
        mkdir(target)?;
        let data = std::ffi::CString::new(data).map_err(|e| e.to_string())?;
        match mount(fstype, target, fstype, flags, Some(data.as_c_str())) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => return Err(format!("mounting {fstype} at {target} failed: {e}")),
        }
    }
    Ok(())
}

/// Makes /dev/console the standard input, output and error, as the kernel does
/// when it starts init, so the real init inherits them.
fn redirect_stdio() {
    if let Ok(console) = OpenOptions::new().read(true).write(true).open("/dev/console") {
        let _ = rustix::stdio::dup2_stdin(&console);
        let _ = rustix::stdio::dup2_stdout(&console);
        let _ = rustix::stdio::dup2_stderr(&console);
    }
}

fn load_modules(console: &mut Console, cmdline: &[Param], release: &str) -> Result<(), String> {
    let list = match fs::read_to_string(LOAD_LIST_PATH) {
        Ok(text) => modules::parse_load_list(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            console.line(&format!("no {LOAD_LIST_PATH}: loading no modules"));
            return Ok(());
        }
        Err(e) => return Err(format!("cannot read {LOAD_LIST_PATH}: {e}")),
    };
    let (mut now, mut already, mut absent) = (0, 0, Vec::new());
    for entry in &list {
        let path = modules::module_path(entry, release);
        match modules::load(&path, cmdline).map_err(|e| e.to_string())? {
            Loaded::Now => now += 1,
            Loaded::Already => already += 1,
            Loaded::NoDevice | Loaded::MissingDependency => {
                absent.push(modules::module_name(&path).map(|(n, _)| n).unwrap_or(path))
            }
        }
    }
    let absent = if absent.is_empty() {
        String::new()
    } else {
        format!("; no device for {}", absent.join(", "))
    };
    console.line(&format!("loaded {now} modules ({already} already present{absent})"));
    Ok(())
}

/// Polls sysfs until every wanted device is present, or fails at `deadline` naming
/// the first one missing. An ambiguous reference fails at once.
fn wait_for_devices(
    wanted: &[(DeviceRef, String)],
    deadline: Instant,
    wait_seconds: u32,
) -> Result<Vec<BlockDevice>, String> {
    loop {
        let devices = devices::scan(Path::new("/sys"), Path::new("/dev"));
        let resolved: Result<Vec<BlockDevice>, ResolveError> = wanted
            .iter()
            .map(|(dev, what)| devices::resolve(&devices, dev, what).cloned())
            .collect();
        match resolved {
            Ok(found) => return Ok(found),
            Err(e @ ResolveError::Ambiguous { .. }) => return Err(e.to_string()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{e} after {wait_seconds} s"));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn read_at(path: &str, offset: u64, buf: &mut [u8]) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|e| format!("cannot read {} bytes at byte {offset} of {path}: {e}", buf.len()))
}

/// Checks the superblock, creates and activates the verity device, and returns the
/// path to mount (`/dev/mapper/root`, a link to the `dm-N` node devtmpfs made).
fn open_verity(
    v: &VerityParams,
    on_corruption: OnCorruption,
    data: &BlockDevice,
    hash: &BlockDevice,
    deadline: Instant,
) -> Result<String, String> {
    let hash_path = hash.path("/dev");
    let mut superblock = [0u8; 512];
    read_at(&hash_path, v.hash_offset, &mut superblock)?;
    verity::check_superblock(&superblock, v, &hash_path).map_err(|e| e.to_string())?;
    let table =
        verity::table(v, on_corruption, &data.dev(), &hash.dev()).map_err(|e| e.to_string())?;
    let control = dm::Control::open().map_err(|e| e.to_string())?;
    let (major, minor) = control
        .create_and_activate(VERITY_NAME, table.sectors, "verity", &table.params)
        .map_err(|e| format!("{e} (table: {table})"))?;
    let devname =
        devices::devname_of(Path::new("/sys"), major, minor).unwrap_or(format!("dm-{minor}"));
    let node = format!("/dev/{devname}");
    while !Path::new(&node).exists() {
        if Instant::now() >= deadline {
            return Err(format!("the verity device node {node} did not appear"));
        }
        std::thread::sleep(POLL);
    }
    mkdir("/dev/mapper")?;
    let link = format!("/dev/mapper/{VERITY_NAME}");
    std::os::unix::fs::symlink(format!("../{devname}"), &link)
        .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
        .map_err(|e| format!("cannot create {link}: {e}"))?;
    Ok(link)
}

fn mount_below_root(m: &MountPlan, dev: &BlockDevice) -> Result<(), String> {
    let source = dev.path("/dev");
    let mut head = [0u8; 4096];
    read_at(&source, 0, &mut head)?;
    let fstype = probe_fstype(&head).ok_or_else(|| {
        format!(
            "the {} partition {source} ({}) holds no ext4, XFS or FAT file system",
            m.what, m.device
        )
    })?;
    let target = format!("{SYSROOT}{}", m.target);
    if !Path::new(&target).is_dir() {
        return Err(format!(
            "the root has no {} directory to mount the {} partition on",
            m.target, m.what
        ));
    }
    let (flags, data) = parse_mount_options(&m.options);
    let data = std::ffi::CString::new(data).map_err(|e| e.to_string())?;
    mount(source.as_str(), target.as_str(), fstype, flags, Some(data.as_c_str())).map_err(|e| {
        format!(
            "mounting the {} partition {source} ({fstype}, {}) at {} failed: {e}",
            m.what, m.options, m.target
        )
    })
}

/// Makes /sysroot the root: moves it over / and enters it (as switch_root(8) does;
/// the initramfs content stays in memory, hidden under the new root).
fn switch_root() -> Result<(), String> {
    let fail = |what: &str, e: rustix::io::Errno| format!("switching root: {what} failed: {e}");
    rustix::process::chdir(SYSROOT).map_err(|e| fail("chdir /sysroot", e))?;
    mount_move(".", "/").map_err(|e| fail("moving /sysroot to /", e))?;
    rustix::process::chroot(".").map_err(|e| fail("chroot", e))?;
    rustix::process::chdir("/").map_err(|e| fail("chdir /", e))
}

/// Mounts one overlay in the switched root, creating its upper and work directories
/// (on the Data partition) when missing.
fn mount_overlay(o: &OverlayPlan) -> Result<(), String> {
    if !Path::new(&o.path).is_dir() {
        return Err(format!("the root has no {} directory to overlay", o.path));
    }
    mkdir(&o.upper)?;
    mkdir(&o.work)?;
    let options = format!("lowerdir={},upperdir={},workdir={}", o.path, o.upper, o.work);
    let data = std::ffi::CString::new(options.clone()).map_err(|e| e.to_string())?;
    mount("overlay", o.path.as_str(), "overlay", MountFlags::empty(), Some(data.as_c_str()))
        .map_err(|e| format!("mounting the overlay on {} ({options}) failed: {e}", o.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_one_parsable_line() {
        let params = parse_abforge_params(
            "abforge.slot=b abforge.root=/dev/vda6 abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             abforge.verity.salt=- abforge.verity.hashoffset=8192 abforge.verity.datablocks=2",
        )
        .unwrap();
        let overlays =
            vec![OverlayPlan { path: "/etc".into(), upper: "/u".into(), work: "/w".into() }];
        assert_eq!(
            summary_line(
                &params,
                "/dev/mapper/root",
                &["/var:/dev/vda9".into(), "/logs:/dev/vda8".into()],
                &overlays
            ),
            "slot=b root=/dev/mapper/root verity=on mounts=/var:/dev/vda9,/logs:/dev/vda8 overlays=/etc init=/sbin/init"
        );
        let plain = parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3").unwrap();
        assert_eq!(
            summary_line(&plain, "/dev/vda3", &[], &[]),
            "slot=a root=/dev/vda3 verity=off mounts=- overlays=- init=/sbin/init"
        );
    }
}
