//! The kernel modules the initramfs loads, in the order the builder listed them.
//!
//! The list is `/etc/abforge/modules.load` in the initramfs, written by
//! `abforge_kernels::modules::render_load_list`: one module path per line, relative
//! to `/lib/modules/<kernel release>/` (as in `modules.dep`), dependencies first;
//! blank lines and `#` comments are skipped; an absolute path is used as it is.
//! Each module is loaded with `finit_module(2)`; one already loaded (EEXIST) is
//! fine, and so is a driver whose hardware is absent (ENODEV: `hv_vmbus` outside
//! Hyper-V, `crc32c-intel` without SSE 4.2), so one initramfs serves several
//! hypervisors; a module whose dependency was skipped that way fails with ENOENT
//! (unknown symbols) and is skipped too. If something needed is missing, a later
//! step says what. Compressed modules (`.ko.gz`, `.ko.xz`, `.ko.zst`) are handed to the
//! kernel with MODULE_INIT_COMPRESSED_FILE, which needs a kernel built with
//! CONFIG_MODULE_DECOMPRESS. Module parameters given on the kernel command line as
//! `<module>.<param>=<value>` are passed along, as modprobe does.

use std::ffi::CString;
use std::fs::File;
use std::io;

use abforge_kernels::cmdline::Param;

/// Where the load list lives in the initramfs (`abforge_kernels::modules::LOAD_LIST_PATH`).
pub const LOAD_LIST_PATH: &str = "/etc/abforge/modules.load";

/// `MODULE_INIT_COMPRESSED_FILE` from `linux/module.h`.
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

const SUFFIXES: &[(&str, bool)] =
    &[(".ko", false), (".ko.gz", true), (".ko.xz", true), (".ko.zst", true)];

/// The non-empty, non-comment lines of a load list.
pub fn parse_load_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The file to load for a list entry.
pub fn module_path(entry: &str, kernel_release: &str) -> String {
    if entry.starts_with('/') {
        entry.to_string()
    } else {
        format!("/lib/modules/{kernel_release}/{entry}")
    }
}

/// The module's name (`dm_verity` for `.../dm-verity.ko`) and whether it is compressed;
/// `None` when the file name has no module suffix.
pub fn module_name(path: &str) -> Option<(String, bool)> {
    let file = path.rsplit('/').next()?;
    let (stem, compressed) =
        SUFFIXES.iter().find_map(|(suffix, c)| file.strip_suffix(suffix).map(|s| (s, *c)))?;
    (!stem.is_empty()).then(|| (stem.replace('-', "_"), compressed))
}

/// The parameter string for module `name` from `<name>.<param>=<value>` words of the
/// command line (module names compare with `-` and `_` equal).
pub fn module_params(cmdline: &[Param], name: &str) -> String {
    let mut out = Vec::new();
    for param in cmdline {
        let Some((module, key)) = param.key().split_once('.') else { continue };
        if module.replace('-', "_") != name || key.is_empty() {
            continue;
        }
        out.push(match param.value() {
            None => key.to_string(),
            Some(v) if v.contains(' ') => format!("{key}=\"{v}\""),
            Some(v) => format!("{key}={v}"),
        });
    }
    out.join(" ")
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {path} is not in the initramfs: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path} is not a kernel module file (.ko, .ko.gz, .ko.xz or .ko.zst)")]
    NotAModule { path: String },
    #[error("loading module {path} failed: {source}")]
    Load { path: String, source: io::Error },
}

/// Whether a module was loaded now or was there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Now,
    Already,
    /// The module refused to load because its hardware is absent (ENODEV).
    NoDevice,
    /// A symbol it needs is missing (ENOENT from finit_module): a module it
    /// depends on was skipped for absent hardware (`hv_storvsc` after `hv_vmbus`
    /// outside Hyper-V).
    MissingDependency,
}

/// Loads one module file with its command-line parameters.
pub fn load(path: &str, cmdline: &[Param]) -> Result<Loaded, ModuleError> {
    let (name, compressed) =
        module_name(path).ok_or_else(|| ModuleError::NotAModule { path: path.to_string() })?;
    let file =
        File::open(path).map_err(|source| ModuleError::Open { path: path.to_string(), source })?;
    // Command-line words cannot contain NUL, so this cannot fail; map it anyway.
    let params = CString::new(module_params(cmdline, &name)).map_err(|_| ModuleError::Load {
        path: path.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "parameter contains NUL"),
    })?;
    let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    match rustix::system::finit_module(&file, &params, flags) {
        Ok(()) => Ok(Loaded::Now),
        Err(rustix::io::Errno::EXIST) => Ok(Loaded::Already),
        Err(rustix::io::Errno::NODEV) => Ok(Loaded::NoDevice),
        // The file is open, so ENOENT can only mean an unresolved symbol.
        Err(rustix::io::Errno::NOENT) => Ok(Loaded::MissingDependency),
        Err(e) => Err(ModuleError::Load { path: path.to_string(), source: e.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abforge_kernels::cmdline::split_booted_args;

    #[test]
    fn load_list_and_paths() {
        let list = parse_load_list(
            "# from modules.dep\nkernel/drivers/md/dm-mod.ko\n\n  kernel/drivers/md/dm-verity.ko  \n/opt/x.ko\n",
        );
        assert_eq!(
            list,
            ["kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-verity.ko", "/opt/x.ko"]
        );
        assert_eq!(
            module_path(&list[1], "6.1.0-18-amd64"),
            "/lib/modules/6.1.0-18-amd64/kernel/drivers/md/dm-verity.ko"
        );
        assert_eq!(module_path("/opt/x.ko", "6.1"), "/opt/x.ko");
    }

    #[test]
    fn names_and_compression() {
        assert_eq!(
            module_name("kernel/drivers/md/dm-verity.ko"),
            Some(("dm_verity".into(), false))
        );
        assert_eq!(module_name("a/crc32c-intel.ko.zst"), Some(("crc32c_intel".into(), true)));
        assert_eq!(module_name("a/ext4.ko.xz"), Some(("ext4".into(), true)));
        assert_eq!(module_name("a/readme.txt"), None);
        assert_eq!(module_name("a/.ko"), None);
    }

    #[test]
    fn parameters_from_the_command_line() {
        let line = split_booted_args(
            "quiet dm_verity.prefetch_cluster=0 dm-verity.use_tasklets msg.x=1 dm_verity.s=\"a b\" dm_verity.=y \
             -- dm_verity.after_dashes=1",
        )
        .unwrap();
        assert_eq!(module_params(&line, "dm_verity"), "prefetch_cluster=0 use_tasklets s=\"a b\"");
        assert_eq!(module_params(&line, "ext4"), "");
    }

    #[test]
    fn missing_module_is_named() {
        let err = load("/nonexistent/dm-verity.ko", &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("module /nonexistent/dm-verity.ko is not in the initramfs"),
            "{err}"
        );
        let err = load("/etc/hostname", &[]).unwrap_err().to_string();
        assert!(err.contains("is not a kernel module file"), "{err}");
    }
}
