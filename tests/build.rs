//! Finds the external tools the end-to-end tests check images with, and tells the
//! tests through cfgs (`have_sgdisk`, `have_fsck_vfat`, ...), plus `ci` when the
//! CI variable is set and `is_root` when building as root.
//!
//! A test that needs a tool carries
//! `#[cfg_attr(not(any(ci, have_sgdisk)), ignore = "needs sgdisk (package gdisk)")]`:
//! without the tool it is reported as ignored with that reason, and under CI it
//! runs and fails on the missing tool instead of passing silently.

use std::env;
use std::path::PathBuf;

/// Tools the tests may use. Keep in step with scripts/install-test-deps.sh.
const TOOLS: &[&str] = &[
    "sgdisk",
    "fsck.vfat",
    "mkfs.vfat",
    "mdir",
    "mcopy",
    "veritysetup",
    "e2fsck",
    "mke2fs",
    "debugfs",
    "qemu-img",
    "qemu-system-x86_64",
    "openssl",
    "sbverify",
    "getfattr",
    "getcap",
    "iptables-restore",
    "ip6tables-restore",
    "sshd",
    "cpio",
    "bsdcpio",
    "grub-editenv",
    "grub-mkstandalone",
    "debootstrap",
    "depmod",
    "ip",
    "unshare",
    "nsenter",
    "ssh-keygen",
    "bsdcat",
    "grub-script-check",
];

fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    for extra in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs
}

fn cfg_name(tool: &str) -> String {
    format!("have_{}", tool.replace(['.', '-'], "_"))
}

fn main() {
    let dirs = search_path();
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=CI");
    // A directory's mtime changes when a tool is installed into it.
    for dir in &dirs {
        if dir.is_dir() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    println!("cargo::rustc-check-cfg=cfg(ci)");
    println!("cargo::rustc-check-cfg=cfg(is_root)");
    for tool in TOOLS {
        let name = cfg_name(tool);
        println!("cargo::rustc-check-cfg=cfg({name})");
        if dirs.iter().any(|d| d.join(tool).is_file()) {
            println!("cargo:rustc-cfg={name}");
        }
    }
    if env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=ci");
    }
    let uid_is_zero = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if uid_is_zero {
        println!("cargo:rustc-cfg=is_root");
    }
}
