//! `/etc/fstab` of the read-only root (fstab(5): six white-space separated fields).
//!
//! - The root is named by the device the initramfs opens for whichever slot the
//!   kernel command line selects (`/dev/mapper/root` for a verity root), mounted
//!   `ro`, never checked (pass 0): a verity device cannot be written.
//! - Data (`/var`) and Log (`/logs`) are named by PARTUUID: they are shared by both
//!   slots, so the root stays slot-independent. Data is `nodev`; Log, which holds
//!   only logs, is also `nosuid,noexec`. Both are checked at boot (pass 2).
//! - The overlays are listed as comments only: they must be mounted before the
//!   real init reads /etc, so the initramfs mounts them (after mounting Data,
//!   where their upper and work directories live). systemd then finds /var and
//!   the overlays already mounted. No systemd mount units are generated for them
//!   for the same reason.

use super::{OverlayPlan, ProfileContext};

pub const FSTAB: &str = "/etc/fstab";

/// Mount options of the Data partition.
pub const DATA_OPTIONS: &str = "defaults,nodev";
/// Mount options of the Log partition.
pub const LOG_OPTIONS: &str = "defaults,nodev,nosuid,noexec";

/// The prefix of the comment lines naming the overlays (read back by `inspect`).
pub const OVERLAY_COMMENT: &str = "#   overlay ";

/// The fstab text for this image.
pub fn fstab(ctx: &ProfileContext, overlays: &[OverlayPlan]) -> String {
    let rows = [
        [ctx.root_device.clone(), "/".into(), "ext4".into(), "ro".into(), "0".into(), "0".into()],
        [
            format!("PARTUUID={}", ctx.data_partuuid),
            ctx.data_mount.clone(),
            "ext4".into(),
            DATA_OPTIONS.into(),
            "0".into(),
            "2".into(),
        ],
        [
            format!("PARTUUID={}", ctx.log_partuuid),
            ctx.log_mount.clone(),
            "ext4".into(),
            LOG_OPTIONS.into(),
            "0".into(),
            "2".into(),
        ],
    ];
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, field) in widths.iter_mut().zip(row) {
            *w = (*w).max(field.len());
        }
    }
    let mut text = format!(
        "# /etc/fstab: written by abforge for {} {}.\n\
         #\n\
         # The root file system is read-only: the device the initramfs opened for the\n\
         # slot named on the kernel command line. The same root image serves slot A and\n\
         # slot B, so no slot-specific device appears here. {} is the Data partition\n\
         # (kept across updates) and {} the Log partition, shared by both slots.\n\
         #\n",
        ctx.image_name, ctx.image_version, ctx.data_mount, ctx.log_mount
    );
    for row in &rows {
        let line: Vec<String> =
            row.iter().zip(widths).map(|(field, w)| format!("{field:<w$}")).collect();
        text.push_str(line.join(" ").trim_end());
        text.push('\n');
    }
    if !overlays.is_empty() {
        text.push_str(&format!(
            "#\n\
             # Writable overlays on the read-only root, mounted by the initramfs after {}\n\
             # and before switching root (so they are not mounted from this file):\n",
            ctx.data_mount
        ));
        for o in overlays {
            text.push_str(&format!(
                "{OVERLAY_COMMENT}{} lowerdir={},upperdir={},workdir={}\n",
                o.dir, o.dir, o.upper, o.work
            ));
        }
    }
    text
}
