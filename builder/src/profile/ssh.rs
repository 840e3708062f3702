//! SSH: the sshd drop-in, root's authorized keys, trusted user CA keys, and host
//! keys generated on first boot instead of being baked into the image.
//!
//! Key lines follow the sshd(8) AUTHORIZED_KEYS FILE FORMAT: optional options
//! (comma-separated, double quotes protect spaces), a key type, the base64 key
//! blob (whose first SSH string is the same key type, RFC 4253 §6.6) and an
//! optional comment. Accepted key types: Ed25519, RSA, ECDSA (NIST P-256/384/521)
//! and their FIDO (`sk-`) forms. DSA keys (disabled by OpenSSH 9.8) and certificate
//! lines are refused. The trusted CA file takes the same lines without options.

use abforge_partitions::tree::FileTree;

use super::config::{SshConfig, read_host_text};
use super::{Composer, UNIT_DIR};

/// The drop-in holding the SSH policy. sshd keeps the first value it reads for a
/// keyword and reads included files in name order, so a low number makes this
/// policy win over other drop-ins (such as cloud-init's `50-cloud-init.conf`).
pub const DROP_IN: &str = "/etc/ssh/sshd_config.d/10-abforge.conf";
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
pub const TRUSTED_CA_KEYS: &str = "/etc/ssh/trusted_user_ca_keys";
pub const HOSTKEYS_UNIT: &str = "abforge-ssh-hostkeys.service";

/// Key types accepted in authorized_keys and CA key lists.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Which list a key text is: authorized_keys lines may carry options, CA lines not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyListKind {
    AuthorizedKeys,
    CaKeys,
}

/// Checks every non-blank, non-comment line of a key list. Returns the lines to
/// write (trailing white space removed, blank lines dropped), or one message per
/// bad line naming `what` and the line number.
pub fn parse_key_list(
    text: &str,
    kind: KeyListKind,
    what: &str,
) -> Result<Vec<String>, Vec<String>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#')
            && let Err(e) = check_key_line(line, kind)
        {
            errors.push(format!("line {} of {what}: {e}", index + 1));
            continue;
        }
        lines.push(line.to_string());
    }
    if errors.is_empty() { Ok(lines) } else { Err(errors) }
}

/// Checks one key line (already trimmed, not a comment).
fn check_key_line(line: &str, kind: KeyListKind) -> Result<(), String> {
    let mut rest = line;
    let first = rest.split_ascii_whitespace().next().unwrap_or("");
    if !KEY_TYPES.contains(&first) {
        if kind == KeyListKind::CaKeys || !looks_like_options(first) {
            return Err(format!(
                "'{}' is not a known key type (expected one of {})",
                shorten(first),
                KEY_TYPES.join(", ")
            ));
        }
        let end = options_end(rest)?;
        rest = rest[end..].trim_start();
    }
    let mut fields = rest.split_ascii_whitespace();
    let key_type = fields.next().unwrap_or("");
    if !KEY_TYPES.contains(&key_type) {
        return Err(format!(
            "'{}' is not a known key type (expected one of {})",
            shorten(key_type),
            KEY_TYPES.join(", ")
        ));
    }
    let Some(encoded) = fields.next() else {
        return Err(format!("the {key_type} key has no base64 key data after its type"));
    };
    let blob = decode_base64(encoded)
        .ok_or_else(|| format!("the {key_type} key data is not valid base64"))?;
    let inner = ssh_string(&blob)
        .ok_or_else(|| format!("the {key_type} key data is too short to hold a key"))?;
    if inner != key_type.as_bytes() {
        return Err(format!(
            "the key data says it is a '{}' key, but the line says {key_type}",
            shorten(&String::from_utf8_lossy(inner))
        ));
    }
    Ok(())
}

/// The options sshd(8) knows in authorized_keys (AUTHORIZED_KEYS FILE FORMAT).
const KEY_OPTIONS: &[&str] = &[
    "agent-forwarding",
    "cert-authority",
    "command",
    "environment",
    "expiry-time",
    "from",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "permitlisten",
    "permitopen",
    "port-forwarding",
    "principals",
    "pty",
    "restrict",
    "tunnel",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// Options start with a known option word followed by `,`, `=` or the end.
fn looks_like_options(token: &str) -> bool {
    let word_end = token.find([',', '=']).unwrap_or(token.len());
    KEY_OPTIONS.contains(&token[..word_end].to_ascii_lowercase().as_str())
}

/// Byte index where the options field ends (the first white space outside quotes).
fn options_end(line: &str) -> Result<usize, String> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c.is_ascii_whitespace() && !quoted {
            return Ok(i);
        }
    }
    if quoted {
        Err("the options have an unclosed double quote".to_string())
    } else {
        Err("there is no key after the options".to_string())
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

/// The first SSH `string` (u32 big-endian length, then bytes) of a key blob.
fn ssh_string(blob: &[u8]) -> Option<&[u8]> {
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    blob.get(4..4usize.checked_add(len)?)
}

/// Decodes standard base64 (RFC 4648 §4) with padding; `None` when malformed.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.chunks_exact(4);
    let last = quads.len() - 1;
    for (i, quad) in quads.enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i != last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &quad[..4 - pad] {
            acc = (acc << 6) | value(c)?;
        }
        acc <<= 6 * pad;
        // `acc` holds 24 bits; its low three big-endian bytes are the output.
        let [_, b0, b1, b2] = acc.to_be_bytes();
        out.extend_from_slice(&[b0, b1, b2][..3 - pad]);
    }
    Some(out)
}

/// The sshd drop-in for this configuration.
pub fn drop_in(cfg: &SshConfig, has_ca_keys: bool) -> String {
    let mut text = String::from(
        "# Written by abforge: the SSH policy of this image (system.ssh in the manifest).\n\
         # sshd keeps the first value it reads for each keyword and sshd_config includes\n\
         # this directory before its own settings, so these values take precedence.\n",
    );
    if cfg.password_authentication {
        text.push_str("PasswordAuthentication yes\n");
    } else {
        text.push_str("PasswordAuthentication no\n");
    }
    text.push_str("KbdInteractiveAuthentication no\n");
    text.push_str("PermitEmptyPasswords no\n");
    text.push_str("PubkeyAuthentication yes\n");
    if !cfg.password_authentication {
        text.push_str("AuthenticationMethods publickey\n");
    }
    text.push_str(&format!("PermitRootLogin {}\n", cfg.permit_root_login.as_sshd()));
    if has_ca_keys {
        text.push_str(&format!("TrustedUserCAKeys {TRUSTED_CA_KEYS}\n"));
    }
    text
}

/// The unit generating host keys on first boot.
pub fn hostkeys_unit() -> String {
    "# Written by abforge: the image carries no SSH host keys, so each installation\n\
     # generates its own on first boot, into the writable /etc overlay.\n\
     [Unit]\n\
     Description=Generate the SSH host keys of this installation\n\
     DefaultDependencies=no\n\
     After=local-fs.target\n\
     Before=ssh.service ssh.socket sshd.service\n\
     ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\
     \n\
     [Service]\n\
     Type=oneshot\n\
     RemainAfterExit=yes\n\
     ExecStart=/usr/bin/ssh-keygen -A\n\
     \n\
     [Install]\n\
     WantedBy=multi-user.target\n"
        .to_string()
}

/// Whether the first directive of an sshd_config includes our drop-in.
fn first_directive_includes_drop_in(config: &str) -> bool {
    let Some(first) = config.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    let mut words = first.split_ascii_whitespace();
    let keyword = words.next().unwrap_or("");
    keyword.eq_ignore_ascii_case("include")
        && words.any(|w| {
            w == "/etc/ssh/sshd_config.d/*.conf" || w == "sshd_config.d/*.conf" || w == DROP_IN
        })
}

/// What [`compose_ssh`] did.
#[derive(Clone, Debug, Default)]
pub struct SshOutcome {
    pub removed_host_keys: Vec<String>,
    pub authorized_keys: usize,
    pub trusted_user_ca_keys: usize,
}

/// Reads and checks a key list from the manifest (host file first, then inline lines).
fn collect_keys(
    base_dir: &std::path::Path,
    file: &Option<serde_saphyr::Spanned<std::path::PathBuf>>,
    inline: &[serde_saphyr::Spanned<String>],
    kind: KeyListKind,
    field: &str,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if let Some(file) = file {
        let text = read_host_text(base_dir, &file.value)
            .map_err(|e| crate::error::UsageError::new(format!("system.ssh.{field}_file: {e}")))?;
        let what = format!("{}", file.value.display());
        lines.extend(parse_key_list(&text, kind, &what).map_err(|e| {
            crate::error::UsageError::new(format!("system.ssh.{field}_file: {}", e.join("; ")))
        })?);
    }
    for (index, line) in inline.iter().enumerate() {
        let what = format!("system.ssh.{field} entry {}", index + 1);
        lines.extend(
            parse_key_list(&line.value, kind, &what)
                .map_err(|e| crate::error::UsageError::new(e.join("; ")))?,
        );
    }
    Ok(lines)
}

/// Writes the SSH part of the profile into the root.
pub(crate) fn compose_ssh(c: &mut Composer<'_>, cfg: &SshConfig) -> anyhow::Result<SshOutcome> {
    let removed_host_keys = remove_host_keys(c.root);

    let authorized = collect_keys(
        c.base_dir,
        &cfg.authorized_keys_file,
        &cfg.authorized_keys,
        KeyListKind::AuthorizedKeys,
        "authorized_keys",
    )?;
    let ca = collect_keys(
        c.base_dir,
        &cfg.trusted_user_ca_keys_file,
        &cfg.trusted_user_ca_keys,
        KeyListKind::CaKeys,
        "trusted_user_ca_keys",
    )?;
    let outcome = SshOutcome {
        removed_host_keys,
        authorized_keys: authorized.iter().filter(|l| !l.starts_with('#')).count(),
        trusted_user_ca_keys: ca.iter().filter(|l| !l.starts_with('#')).count(),
    };

    c.put_text(DROP_IN, &drop_in(cfg, !ca.is_empty()), 0o644)?;

    // The drop-in only counts when sshd_config includes it before its own settings.
    if let Some(config) = c.read_root_file(SSHD_CONFIG)? {
        let config = String::from_utf8_lossy(&config).into_owned();
        if !first_directive_includes_drop_in(&config) {
            let edited = format!(
                "# Added by abforge: read the image's SSH policy before any other setting.\nInclude {DROP_IN}\n\n{config}"
            );
            c.put_text(SSHD_CONFIG, &edited, 0o644)?;
        }
    } else {
        c.warn(format!("the root has no {SSHD_CONFIG}: is openssh-server installed? The SSH policy is written but nothing reads it"));
    }

    if !authorized.is_empty() {
        c.make_dir("/root/.ssh", 0o700)?;
        c.put_text(AUTHORIZED_KEYS, &(authorized.join("\n") + "\n"), 0o600)?;
    }
    if !ca.is_empty() {
        c.put_text(TRUSTED_CA_KEYS, &(ca.join("\n") + "\n"), 0o644)?;
    }

    c.put_text(&format!("{UNIT_DIR}/{HOSTKEYS_UNIT}"), &hostkeys_unit(), 0o644)?;
    c.enable_unit(HOSTKEYS_UNIT, "multi-user.target")?;
    if c.lookup_kind("/usr/bin/ssh-keygen").is_none() {
        c.warn(
            "the root has no /usr/bin/ssh-keygen: SSH host keys cannot be generated on first boot"
                .into(),
        );
    }
    Ok(outcome)
}

/// Removes `/etc/ssh/ssh_host_*` (private and public host keys, certificates)
/// from the root; returns their paths in name order.
fn remove_host_keys(root: &mut FileTree) -> Vec<String> {
    let Some(dir) = root.lookup(b"/etc/ssh") else {
        return Vec::new();
    };
    let names: Vec<Vec<u8>> = root
        .children(dir)
        .filter(|(name, _)| name.starts_with(b"ssh_host_"))
        .map(|(name, _)| name.to_vec())
        .collect();
    names
        .into_iter()
        .map(|name| {
            root.unlink(dir, &name);
            format!("/etc/ssh/{}", String::from_utf8_lossy(&name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(decode_base64("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(decode_base64("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(decode_base64("Zm9vYmE=").unwrap(), b"fooba");
        assert!(decode_base64("Zm9v=mFy").is_none());
        assert!(decode_base64("Zm9").is_none());
        assert!(decode_base64("Zm9v!!!!").is_none());
    }

    #[test]
    fn first_include_is_detected() {
        assert!(first_directive_includes_drop_in(
            "# comment\n\nInclude /etc/ssh/sshd_config.d/*.conf\nPort 22\n"
        ));
        assert!(!first_directive_includes_drop_in(
            "Port 22\nInclude /etc/ssh/sshd_config.d/*.conf\n"
        ));
        assert!(!first_directive_includes_drop_in(""));
    }
}
