//! The VM boot test's machinery (tests/tests/boot.rs): a qemu machine with UEFI
//! firmware (OVMF) booting a disk image under TCG, its serial console captured in a
//! file, and the parser of the report line the guest prints (tests/boot/).
//!
//! A [`Machine`] owns fresh copies of the disk and of the firmware's variable store in a
//! scratch directory, so nothing carries over from an earlier run, while everything the
//! guest writes (GRUB environment edits, files written to /etc) persists from one
//! [`Machine::boot`] to the next: a test can boot the same disk several times in a row.
//! Reboots happen inside one `boot` (GRUB's fallback needs them); `boot` returns when
//! the machine powers off, or when a watchdog expires.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the directory `scripts/boot-inputs.sh` filled
/// (`make boot-test` sets it).
pub const INPUTS_ENV: &str = "ABFORGE_BOOT_INPUTS";
/// Set to keep each machine's scratch directory (disk, console log) after the test.
pub const KEEP_ENV: &str = "ABFORGE_BOOT_KEEP";
/// What the report line starts with (tests/boot/abforge-boot-report).
pub const REPORT_TAG: &str = "ABFORGE-REPORT";

/// Debian's OVMF build for 4 MiB flash (package ovmf).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The matching variable store template; each machine gets a writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// What OVMF prints on the console each time it starts a boot option.
pub const FIRMWARE_START: &str = "BdsDxe: starting";

/// The directory of the boot test's files in the repository (tests/boot).
pub fn boot_test_dir() -> PathBuf {
    crate::repo_root().join("tests/boot")
}

/// The boot inputs directory from [`INPUTS_ENV`], checked to hold what
/// `scripts/boot-inputs.sh` makes; panics saying how to make it otherwise.
pub fn boot_inputs() -> PathBuf {
    let dir = std::env::var_os(INPUTS_ENV).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{INPUTS_ENV} is not set: run the boot test with `make boot-test`, which prepares the inputs")
    });
    for file in ["rootfs.tar", "BOOTX64.EFI", "abforge-init"] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: run `scripts/boot-inputs.sh {}` (or `make boot-inputs`)",
            dir.join(file).display(),
            dir.display()
        );
    }
    dir
}

/// Writes the boot test's manifest (tests/boot/eflow-boot.yaml with `@INPUTS@` and
/// `@BOOT_TESTS@` replaced) to `out` and returns its path.
pub fn render_manifest(inputs: &Path, out: &Path) -> PathBuf {
    let template_path = boot_test_dir().join("eflow-boot.yaml");
    let template = fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", template_path.display()));
    let text = template
        .replace("@INPUTS@", &inputs.display().to_string())
        .replace("@BOOT_TESTS@", &boot_test_dir().display().to_string());
    fs::write(out, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    out.to_path_buf()
}

/// Copies a disk image without filling its holes (`cp --sparse=always`).
fn copy_sparse(from: &Path, to: &Path) {
    crate::run_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

/// How a [`Machine::boot`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// qemu exited by itself (the guest powered off) with this status.
    PoweredOff { success: bool },
    /// The console showed what the caller waited for; the machine was killed.
    Stopped,
    /// The firmware started more often than [`Machine::max_starts`] allows (a boot
    /// loop): the machine was killed.
    BootLoop,
    /// The watchdog expired: the machine was killed.
    TimedOut,
}

/// One run of the machine, from power on to power off (reboots included).
#[derive(Clone, Debug)]
pub struct Boot {
    /// Everything the serial console printed, with `\r` removed.
    pub console: String,
    pub ending: Ending,
    /// Wall-clock time from start to power off (for the report; never asserted).
    pub elapsed: Duration,
    /// Where the console was captured (inside the machine's scratch directory).
    pub log: PathBuf,
}

impl Boot {
    /// The report lines the guest printed, in order (one per boot that reached
    /// multi-user.target).
    pub fn reports(&self) -> Vec<Report> {
        Report::find_all(&self.console)
    }

    /// The only report line of this run; panics (showing the console's end) when there
    /// is none or more than one.
    pub fn report(&self) -> Report {
        let mut reports = self.reports();
        match reports.len() {
            1 => reports.remove(0),
            n => panic!("expected one {REPORT_TAG} line, found {n}\n{}", self.tail(80)),
        }
    }

    /// Whether the console holds `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.console.contains(needle)
    }

    /// The last `lines` lines of the console with a header, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.console.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- console ({:?} after {:.0?}; full log {}), last {} lines ---\n{}\n--- end of console ---",
            self.ending,
            self.elapsed,
            self.log.display(),
            all.len() - start,
            all[start..].join("\n")
        )
    }

    /// Panics (showing the console) unless the machine powered off by itself.
    pub fn assert_powered_off(&self) {
        assert!(
            matches!(self.ending, Ending::PoweredOff { .. }),
            "the machine did not power off by itself\n{}",
            self.tail(80)
        );
    }
}

/// The virtual machine: qemu (TCG, q35, OVMF) with one virtio disk.
#[derive(Debug)]
pub struct Machine {
    dir: PathBuf,
    /// Kept alive so the scratch directory lives as long as the machine.
    _scratch: Option<tempfile::TempDir>,
    disk: PathBuf,
    disk_format: String,
    vars: PathBuf,
    boots: u32,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Most firmware starts (power on plus reboots) one [`Machine::boot`] may see
    /// before it is stopped as a boot loop.
    pub max_starts: usize,
    /// Extra qemu arguments (e.g. `-kernel` for a direct kernel boot).
    pub extra_args: Vec<String>,
}

impl Machine {
    /// A machine booting a fresh copy of `disk` (`format`: `vhdx`, `raw`, `qcow2`) with a
    /// fresh UEFI variable store, all in a new scratch directory (kept when
    /// [`KEEP_ENV`] is set). Panics when OVMF or qemu is missing.
    pub fn new(disk: &Path, format: &str) -> Machine {
        for firmware in [OVMF_CODE, OVMF_VARS] {
            assert!(
                Path::new(firmware).is_file(),
                "{firmware} is missing: install Debian's ovmf package (make test-deps)"
            );
        }
        let scratch =
            tempfile::Builder::new().prefix("abforge-vm-").tempdir().expect("VM scratch directory");
        let (dir, scratch) = if std::env::var_os(KEEP_ENV).is_some() {
            let dir = scratch.keep();
            eprintln!("boot: keeping the machine's files in {}", dir.display());
            (dir, None)
        } else {
            (scratch.path().to_path_buf(), Some(scratch))
        };
        let name =
            disk.file_name().map_or_else(|| "disk".into(), |n| n.to_string_lossy().into_owned());
        let copy = dir.join(name);
        copy_sparse(disk, &copy);
        let vars = dir.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).unwrap_or_else(|e| panic!("cannot copy {OVMF_VARS}: {e}"));
        Machine {
            dir,
            _scratch: scratch,
            disk: copy,
            disk_format: format.to_string(),
            vars,
            boots: 0,
            memory_mib: 1024,
            cpus: 2,
            max_starts: 4,
            extra_args: Vec::new(),
        }
    }

    /// The machine's own copy of the disk: change it between boots (with `abforge slot`,
    /// `qemu-io`) to change what the next boot sees.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The machine's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, log: &Path) -> Command {
        let mut cmd = Command::new(crate::tool("qemu-system-x86_64"));
        cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"])
            .args(["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", self.vars.display()))
            .arg("-drive")
            .arg(format!("file={},format={},if=virtio", self.disk.display(), self.disk_format))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Powers the machine on and waits until it powers off (through any number of
    /// reboots) or `timeout` passes, then kills it. Returns the console.
    pub fn boot(&mut self, timeout: Duration) -> Boot {
        self.boot_until(timeout, |_| false)
    }

    /// Like [`Machine::boot`], but also stops the machine (killing it) as soon as the
    /// console satisfies `done` ([`Ending::Stopped`]).
    pub fn boot_until(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) -> Boot {
        self.boots += 1;
        let log = self.dir.join(format!("console-{}.log", self.boots));
        let _ = fs::remove_file(&log);
        let start = Instant::now();
        let mut child = self
            .command(&log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let mut console = ConsoleTail::new(&log);
        let ending = loop {
            if let Some(status) = child.try_wait().expect("waiting for qemu") {
                break Ending::PoweredOff { success: status.success() };
            }
            console.poll();
            if console.text.matches(FIRMWARE_START).count() > self.max_starts {
                stop(&mut child);
                break Ending::BootLoop;
            }
            if done(&console.text) {
                stop(&mut child);
                break Ending::Stopped;
            }
            if start.elapsed() >= timeout {
                stop(&mut child);
                break Ending::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        console.poll();
        let mut qemu_errors = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut qemu_errors);
        }
        if let Ending::PoweredOff { success: false } = ending {
            panic!("qemu-system-x86_64 failed: {}", qemu_errors.trim());
        }
        Boot { console: console.text, ending, elapsed: start.elapsed(), log }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads what qemu appended to the console file since the last poll.
struct ConsoleTail {
    path: PathBuf,
    read: u64,
    text: String,
}

impl ConsoleTail {
    fn new(path: &Path) -> ConsoleTail {
        ConsoleTail { path: path.to_path_buf(), read: 0, text: String::new() }
    }

    fn poll(&mut self) {
        let Ok(mut file) = fs::File::open(&self.path) else { return };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if let Ok(n) = file.read_to_end(&mut bytes) {
            // usize to u64 cannot lose bits on the 64-bit hosts qemu runs on here.
            self.read += n as u64;
            // Firmware and GRUB print \r\n and escape sequences; keep the text readable.
            self.text.push_str(&String::from_utf8_lossy(&bytes).replace('\r', ""));
        }
    }
}

/// One `ABFORGE-REPORT key=value ... END` line (tests/boot/abforge-boot-report).
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    fields: BTreeMap<String, String>,
    line: String,
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

impl Report {
    /// Parses the text after the tag; `None` unless it is complete (ends with `END`)
    /// and every word is `key=value`.
    pub fn parse(line: &str) -> Option<Report> {
        let start = line.find(REPORT_TAG)?;
        let body = line[start + REPORT_TAG.len()..].trim();
        let words: Vec<&str> = body.split_ascii_whitespace().collect();
        let (last, fields) = words.split_last()?;
        if *last != "END" {
            return None;
        }
        let mut map = BTreeMap::new();
        for word in fields {
            let (key, value) = word.split_once('=')?;
            map.insert(key.to_string(), value.to_string());
        }
        Some(Report { fields: map, line: line[start..].trim().to_string() })
    }

    /// Every complete report line of a console, in order.
    pub fn find_all(console: &str) -> Vec<Report> {
        console.lines().filter_map(Report::parse).collect()
    }

    /// A field's value; panics naming the field and showing the line when it is absent.
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).unwrap_or_else(|| panic!("the report has no '{key}': {}", self.line))
    }

    /// Asserts that a field has a value, showing the whole line otherwise.
    pub fn expect(&self, key: &str, want: &str, what: &str) {
        assert_eq!(self.get(key), want, "{what}: {key} is '{}' in {}", self.get(key), self.line);
    }

    /// The whole line, for messages.
    pub fn line(&self) -> &str {
        &self.line
    }
}

/// A partition of a build report (`out/<name>.json`): (offset, size) in bytes, by name.
pub fn partition_extent(build_report: &serde_json::Value, name: &str) -> (u64, u64) {
    let partitions =
        build_report["partitions"].as_array().expect("the build report lists partitions");
    let entry = partitions
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("the build report has no partition {name}"));
    let field =
        |f: &str| entry[f].as_u64().unwrap_or_else(|| panic!("partition {name} has no {f}"));
    (field("offset"), field("size"))
}

/// Overwrites `len` bytes at `offset` of a disk image with `0xA5` through qemu's own
/// block layer (`qemu-io`), so it works inside VHDX as in raw images.
pub fn corrupt(disk: &Path, format: &str, offset: u64, len: u64) {
    crate::run_tool(
        "qemu-io",
        [
            "-f".to_string(),
            format.to_string(),
            "-c".to_string(),
            format!("write -P 0xa5 {offset} {len}"),
            disk.display().to_string(),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_found_and_parsed() {
        let console = "systemd[1]: Started ssh.service.\n\
                       ABFORGE-REPORT slot=a root_ro=1 marker=none END\n\
                       [   12.5] ABFORGE-REPORT slot=b root_ro=1 END\n\
                       ABFORGE-REPORT slot=a cut-off\n";
        let reports = Report::find_all(console);
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert_eq!(reports[0].get("slot"), "a");
        assert_eq!(reports[0].get("marker"), "none");
        assert_eq!(reports[1].get("slot"), "b");
        assert_eq!(reports[1].line(), "ABFORGE-REPORT slot=b root_ro=1 END");
    }

    #[test]
    fn incomplete_or_malformed_reports_are_not_reports() {
        assert!(Report::parse("ABFORGE-REPORT slot=a").is_none());
        assert!(Report::parse("ABFORGE-REPORT slot=a garbage END").is_none());
        assert!(Report::parse("nothing here").is_none());
    }
}
