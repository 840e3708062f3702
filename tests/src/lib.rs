//! Shared helpers for the end-to-end tests: locating the `abforge` binary and the
//! external tools, running them, and scratch directories.
//!
//! Each area keeps its tests in `tests/tests/<area>.rs` and any helpers of its own
//! in `src/<area>.rs`.

pub mod boot;
pub mod gpt_fat;
pub mod kernels;
pub mod vhdx;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `abforge` binary of this build (target/<profile>/abforge).
pub fn abforge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let bin = profile_dir.join("abforge");
    assert!(
        bin.is_file(),
        "{} does not exist: run the tests with `cargo test --workspace` so the binary is built",
        bin.display()
    );
    bin
}

/// A command running `abforge` with `args`, with a fixed locale and no inherited
/// SOURCE_DATE_EPOCH, so tests see the same behaviour everywhere.
pub fn abforge<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(abforge_bin());
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH").env("LC_ALL", "C");
    cmd
}

/// Full path of an external tool; panics with the package to install when it is
/// missing (tests that reach this are not ignored, so a missing tool is a failure).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is required by this test and is not installed (run `make test`, which installs it)"))
}

/// Runs a command, returning its output; panics with its stderr when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and asserts it exits 0, showing stdout and stderr otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs an external tool by name with arguments, asserting success.
pub fn run_tool<I, S>(name: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_ok(Command::new(tool(name)).args(args).env("LC_ALL", "C"))
}

pub mod layout;
pub mod slot;

/// A scratch directory removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("abforge-test-").tempdir().expect("scratch directory")
}

/// Lowercase hex SHA-256 of a file, through the `sha256sum` tool (coreutils).
pub fn sha256_file(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}
pub mod ext4;
