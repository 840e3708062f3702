//! What the init will mount, decided from the command line and the profile record
//! before anything is touched: pure functions, shared by the real boot and the
//! `--check-cmdline` dry run.
//!
//! Precedence: the profile record (`/usr/lib/abforge/profile.json` in the root) lists
//! the mounts (Data at /var, Log at /logs, with their fstab options) and the overlays;
//! `abforge.data` / `abforge.log` on the command line replace the device of the /var
//! / /logs mount (adding it with the builder's default options when the record has
//! none), and `abforge.overlays` + `abforge.overlaydir` replace the record's overlay
//! list. Mount options follow mount(8): the flags below become mount flags, the
//! fstab-only words are dropped, anything else is passed to the file system.

use rustix::mount::MountFlags;

use crate::profile::Profile;
use abforge_kernels::cmdline::{DeviceRef, InitParams};

/// Options of the Data mount when the record does not say (the builder's fstab ones).
pub const DATA_OPTIONS: &str = "defaults,nodev";
/// Options of the Log mount when the record does not say.
pub const LOG_OPTIONS: &str = "defaults,nodev,nosuid,noexec";
pub const DATA_MOUNT: &str = "/var";
pub const LOG_MOUNT: &str = "/logs";

/// One file system to mount below the new root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// For messages: `Data`, `Log`, or the mount point.
    pub what: String,
    pub device: DeviceRef,
    /// As the running system sees it (`/var`).
    pub target: String,
    pub options: String,
}

/// One overlay over a directory of the read-only root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayPlan {
    pub path: String,
    pub upper: String,
    pub work: String,
}

fn check_path(what: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path == "/" || path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "{what} '{path}' must be an absolute directory other than / without '.' or '..'"
        ));
    }
    if path.contains([',', ':', '\\']) || path.chars().any(char::is_control) {
        return Err(format!(
            "{what} '{path}' must not contain ',', ':', '\\' or control characters"
        ));
    }
    Ok(())
}

fn mount_name(target: &str) -> String {
    match target {
        DATA_MOUNT => "Data".to_string(),
        LOG_MOUNT => "Log".to_string(),
        other => other.to_string(),
    }
}

/// The mounts below the new root, parents before children.
pub fn plan_mounts(
    params: &InitParams,
    profile: Option<&Profile>,
) -> Result<Vec<MountPlan>, String> {
    let mut mounts = Vec::new();
    for m in profile.map(|p| p.mounts.as_slice()).unwrap_or_default() {
        let device = DeviceRef::PartUuid(m.partuuid.to_ascii_lowercase().parse().map_err(|e| {
            format!("profile.json: the partuuid of mount {} is invalid: {e}", m.mount)
        })?);
        mounts.push(MountPlan {
            what: mount_name(&m.mount),
            device,
            target: m.mount.clone(),
            options: m.options.clone(),
        });
    }
    for (device, target, options) in
        [(&params.data, DATA_MOUNT, DATA_OPTIONS), (&params.log, LOG_MOUNT, LOG_OPTIONS)]
    {
        let Some(device) = device else { continue };
        match mounts.iter_mut().find(|m| m.target == target) {
            Some(m) => m.device = device.clone(),
            None => mounts.push(MountPlan {
                what: mount_name(target),
                device: device.clone(),
                target: target.to_string(),
                options: options.to_string(),
            }),
        }
    }
    for m in &mounts {
        check_path("mount point", &m.target)?;
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|other| other.target == m.target) {
            return Err(format!("{} is mounted twice", m.target));
        }
    }
    // Parents first: a stable sort by depth keeps the record's order otherwise.
    mounts.sort_by_key(|m| m.target.matches('/').count());
    Ok(mounts)
}

/// The overlays to mount, from the command line or else the record.
pub fn plan_overlays(
    params: &InitParams,
    profile: Option<&Profile>,
) -> Result<Vec<OverlayPlan>, String> {
    let overlays: Vec<OverlayPlan> = match (&params.overlay_dir, params.overlays.is_empty()) {
        (Some(dir), false) => params
            .overlays
            .iter()
            .map(|path| {
                // The directory's components joined by '-' (/usr/local → usr-local), as
                // the builder names them.
                let name = path.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>().join("-");
                OverlayPlan {
                    path: path.clone(),
                    upper: format!("{dir}/{name}/upper"),
                    work: format!("{dir}/{name}/work"),
                }
            })
            .collect(),
        _ => profile
            .map(|p| p.overlays.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|o| OverlayPlan {
                path: o.path.clone(),
                upper: o.upper.clone(),
                work: o.work.clone(),
            })
            .collect(),
    };
    for o in &overlays {
        check_path("overlay directory", &o.path)?;
        check_path("overlay upper directory", &o.upper)?;
        check_path("overlay work directory", &o.work)?;
    }
    Ok(overlays)
}

/// Mount flags and the file-system data string for fstab-style options.
pub fn parse_mount_options(options: &str) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for word in options.split(',').filter(|w| !w.is_empty()) {
        match word {
            "defaults" | "rw" | "auto" | "noauto" | "nofail" | "user" | "nouser" | "_netdev" => {}
            "ro" => flags |= MountFlags::RDONLY,
            "nodev" => flags |= MountFlags::NODEV,
            "nosuid" => flags |= MountFlags::NOSUID,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            w if w.starts_with("x-") || w.starts_with("comment=") => {}
            w => data.push(w),
        }
    }
    (flags, data.join(","))
}

/// The file system in the first 4 KiB of a device, for the types a Data or Log
/// partition may have: ext2/3/4 (magic 0xEF53 at byte 1080, mounted as `ext4`), XFS
/// (`XFSB` at 0) and FAT (boot signature 0x55AA at 510 and `FAT` at 54 or 82).
pub fn probe_fstype(head: &[u8]) -> Option<&'static str> {
    if head.get(1080..1082) == Some(&[0x53, 0xef]) {
        Some("ext4")
    } else if head.get(0..4) == Some(b"XFSB") {
        Some("xfs")
    } else if head.get(510..512) == Some(&[0x55, 0xaa])
        && (head.get(54..57) == Some(b"FAT") || head.get(82..85) == Some(b"FAT"))
    {
        Some("vfat")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::parse_profile;
    use abforge_kernels::cmdline::parse_abforge_params;

    fn profile() -> Profile {
        parse_profile(
            r#"{"record_version":1,
            "mounts":[{"mount":"/logs","partuuid":"2F3E4D5C-6B7A-4891-A0B1-C2D3E4F5A6B7","options":"defaults,nodev,nosuid,noexec"},
                      {"mount":"/var","partuuid":"8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a","options":"defaults,nodev"},
                      {"mount":"/var/lib/x","partuuid":"8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6b","options":"ro"}],
            "overlays":[{"path":"/etc","upper":"/var/.eflow/overlays/etc/upper","work":"/var/.eflow/overlays/etc/work"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn mounts_from_the_record_parents_first() {
        let params = parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3").unwrap();
        let mounts = plan_mounts(&params, Some(&profile())).unwrap();
        let got: Vec<_> = mounts
            .iter()
            .map(|m| (m.what.as_str(), m.target.as_str(), m.device.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("Log", "/logs", "PARTUUID=2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7".to_string()),
                ("Data", "/var", "PARTUUID=8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a".to_string()),
                (
                    "/var/lib/x",
                    "/var/lib/x",
                    "PARTUUID=8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6b".to_string()
                ),
            ]
        );
        assert!(plan_mounts(&params, None).unwrap().is_empty());
    }

    #[test]
    fn command_line_devices_override_or_add() {
        let params = parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3 abforge.data=/dev/vda9 abforge.log=PARTLABEL=Log").unwrap();
        let mounts = plan_mounts(&params, Some(&profile())).unwrap();
        let data = mounts.iter().find(|m| m.target == "/var").unwrap();
        assert_eq!(
            (data.device.to_string(), data.options.as_str()),
            ("/dev/vda9".to_string(), "defaults,nodev")
        );
        let mounts = plan_mounts(&params, None).unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!((mounts[0].target.as_str(), mounts[0].options.as_str()), ("/var", DATA_OPTIONS));
        assert_eq!((mounts[1].what.as_str(), mounts[1].options.as_str()), ("Log", LOG_OPTIONS));
    }

    #[test]
    fn bad_record_mounts_are_named() {
        let params = parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3").unwrap();
        let mut p = profile();
        p.mounts[0].partuuid = "nope".into();
        assert!(
            plan_mounts(&params, Some(&p))
                .unwrap_err()
                .contains("partuuid of mount /logs is invalid")
        );
        let mut p = profile();
        p.mounts[0].mount = "/var/../etc".into();
        assert!(
            plan_mounts(&params, Some(&p))
                .unwrap_err()
                .contains("'/var/../etc' must be an absolute")
        );
        let mut p = profile();
        p.mounts[0].mount = "/var".into();
        assert_eq!(plan_mounts(&params, Some(&p)).unwrap_err(), "/var is mounted twice");
    }

    #[test]
    fn overlays_from_the_command_line_or_the_record() {
        let params = parse_abforge_params(
            "abforge.slot=a abforge.root=/dev/vda3 abforge.overlays=/etc,/usr/local abforge.overlaydir=/var/.eflow/overlays",
        )
        .unwrap();
        let o = plan_overlays(&params, Some(&profile())).unwrap();
        assert_eq!(
            o[1],
            OverlayPlan {
                path: "/usr/local".into(),
                upper: "/var/.eflow/overlays/usr-local/upper".into(),
                work: "/var/.eflow/overlays/usr-local/work".into()
            }
        );
        let plain = parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3").unwrap();
        let o = plan_overlays(&plain, Some(&profile())).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].upper, "/var/.eflow/overlays/etc/upper");
        assert!(plan_overlays(&plain, None).unwrap().is_empty());
        let mut p = profile();
        p.overlays[0].work = "/var/a,b".into();
        assert!(plan_overlays(&plain, Some(&p)).unwrap_err().contains("must not contain ','"));
    }

    #[test]
    fn mount_options() {
        assert_eq!(parse_mount_options("defaults,nodev"), (MountFlags::NODEV, String::new()));
        let (flags, data) = parse_mount_options(
            "defaults,nodev,nosuid,noexec,x-systemd.after=a,nofail,errors=remount-ro,commit=30",
        );
        assert_eq!(flags, MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC);
        assert_eq!(data, "errors=remount-ro,commit=30");
        assert_eq!(parse_mount_options("ro,noatime").0, MountFlags::RDONLY | MountFlags::NOATIME);
    }

    #[test]
    fn file_system_probe() {
        let mut ext = vec![0u8; 4096];
        ext[1080] = 0x53;
        ext[1081] = 0xef;
        assert_eq!(probe_fstype(&ext), Some("ext4"));
        let mut fat = vec![0u8; 4096];
        fat[510] = 0x55;
        fat[511] = 0xaa;
        fat[82..87].copy_from_slice(b"FAT32");
        assert_eq!(probe_fstype(&fat), Some("vfat"));
        assert_eq!(probe_fstype(b"XFSB...."), Some("xfs"));
        assert_eq!(probe_fstype(&[0u8; 4096]), None);
        assert_eq!(probe_fstype(&[]), None);
    }
}
