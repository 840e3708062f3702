//! What makes each installation itself, following machine-id(5) and
//! os-release(5) (freedesktop.org / systemd 252).
//!
//! - `/etc/machine-id` is an empty file: on a read-only root systemd mounts a
//!   generated id over it; with /etc overlaid it writes the id it generated on
//!   first boot. Copies of the source's id elsewhere (`/var/lib/dbus/machine-id`
//!   becomes a symlink to /etc/machine-id) and machine-specific state on Data
//!   (`/var/lib/systemd/random-seed`, `/var/lib/systemd/credential.secret`) are
//!   removed, so no two installations share them.
//! - os-release keeps the source's content and gains `IMAGE_ID` and
//!   `IMAGE_VERSION` (any earlier assignments of them are dropped). The file edited
//!   is the one `/etc/os-release` resolves to (usually `/usr/lib/os-release`); a
//!   root without one gets `/usr/lib/os-release` with only those two fields.
//! - `/etc/hostname` is written only when the manifest names a host.

use abforge_partitions::tree::NodeKind;

use super::config::IdentityConfig;
use super::{Composer, ProfileContext, resolve_in_tree};

pub const MACHINE_ID: &str = "/etc/machine-id";
pub const OS_RELEASE: &str = "/etc/os-release";
pub const VENDOR_OS_RELEASE: &str = "/usr/lib/os-release";
pub const HOSTNAME: &str = "/etc/hostname";

/// Files of the Data partition that would be shared by every installation.
const MACHINE_STATE: &[&str] =
    &["/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret"];
const DBUS_MACHINE_ID: &str = "/var/lib/dbus/machine-id";

/// os-release's rule for IMAGE_ID (like ID): lower-case letters, digits, `.`, `_`, `-`.
pub fn check_image_id(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
    {
        return Err(format!(
            "the image name '{name}' cannot be os-release's IMAGE_ID: use only lower-case letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// os-release's rule for IMAGE_VERSION (like VERSION_ID): letters, digits, `.`, `_`, `-`.
pub fn check_image_version(version: &str) -> Result<(), String> {
    if version.is_empty()
        || !version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "the image version '{version}' cannot be os-release's IMAGE_VERSION: use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `text` with any IMAGE_ID and IMAGE_VERSION assignments replaced by the given ones,
/// appended at the end.
pub fn edit_os_release(text: &str, image_id: &str, image_version: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let key = line.trim_start().split('=').next().unwrap_or("");
        if key == "IMAGE_ID" || key == "IMAGE_VERSION" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("IMAGE_ID={image_id}\nIMAGE_VERSION={image_version}\n"));
    out
}

pub(crate) fn compose_identity(
    c: &mut Composer<'_>,
    cfg: &IdentityConfig,
    ctx: &ProfileContext,
) -> anyhow::Result<()> {
    if cfg.empty_machine_id {
        c.put_text(MACHINE_ID, "", 0o444)?;
        for path in MACHINE_STATE {
            c.remove(path);
        }
        let dbus = c.lookup_kind(DBUS_MACHINE_ID);
        if dbus.is_some_and(|kind| !matches!(kind, NodeKind::Symlink(_))) {
            c.remove(DBUS_MACHINE_ID);
            c.put_symlink(DBUS_MACHINE_ID, MACHINE_ID)?;
        }
    }
    if cfg.os_release {
        let target =
            resolve_in_tree(c.root, OS_RELEASE).unwrap_or_else(|| VENDOR_OS_RELEASE.to_string());
        let (path, text) = match c.read_root_file(&target)? {
            Some(bytes) => (target, String::from_utf8_lossy(&bytes).into_owned()),
            None => match c.read_root_file(VENDOR_OS_RELEASE)? {
                Some(bytes) => {
                    (VENDOR_OS_RELEASE.to_string(), String::from_utf8_lossy(&bytes).into_owned())
                }
                None => {
                    c.warn(format!(
                        "the root has no os-release; {VENDOR_OS_RELEASE} is written with only IMAGE_ID and IMAGE_VERSION"
                    ));
                    (VENDOR_OS_RELEASE.to_string(), String::new())
                }
            },
        };
        if super::config::is_within(&path, &ctx.data_mount)
            || super::config::is_within(&path, &ctx.log_mount)
        {
            anyhow::bail!(crate::error::UsageError::new(format!(
                "{OS_RELEASE} resolves to {path}, which is on a writable partition, not in the root"
            )));
        }
        c.put_text(&path, &edit_os_release(&text, &ctx.image_name, &ctx.image_version), 0o644)?;
        // /etc/os-release must lead to it: keep a symlink, add one when missing.
        if c.lookup_kind(OS_RELEASE).is_none() && path == VENDOR_OS_RELEASE {
            c.put_symlink(OS_RELEASE, "../usr/lib/os-release")?;
        }
    }
    if let Some(hostname) = &cfg.hostname {
        c.put_text(HOSTNAME, &format!("{}\n", hostname.value), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_gains_image_fields_once() {
        let text = "PRETTY_NAME=\"Debian\"\nIMAGE_ID=old\nID=debian\n";
        assert_eq!(
            edit_os_release(text, "eflow", "1.4.0"),
            "PRETTY_NAME=\"Debian\"\nID=debian\nIMAGE_ID=eflow\nIMAGE_VERSION=1.4.0\n"
        );
        assert_eq!(edit_os_release("ID=x", "a", "1"), "ID=x\nIMAGE_ID=a\nIMAGE_VERSION=1\n");
    }

    #[test]
    fn image_id_rules() {
        assert!(check_image_id("eflow-1.x_y").is_ok());
        assert!(check_image_id("EFlow").is_err());
        assert!(check_image_id("e flow").is_err());
        assert!(check_image_id("").is_err());
        assert!(check_image_version("1.4.0-rc1").is_ok());
        assert!(check_image_version("1.4 beta").is_err());
    }
}
