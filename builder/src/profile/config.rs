//! The manifest's `system:` section: what the security profile bakes into the root.
//!
//! Every struct rejects unknown keys and has defaults, so `system: {}` gives the
//! EFLOW-style profile: /etc, /home and /root overlaid on Data, inbound traffic
//! dropped except SSH (rate limited to 3 new connections a minute per address),
//! key-only SSH, an empty machine id.
//!
//! Values a release engineer may get wrong are wrapped in [`Spanned`] so that
//! [`SystemConfig::validate`] can say on which line and column of the manifest
//! the mistake is. Values built in code (defaults, tests) carry no location.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::ssh::{KeyListKind, parse_key_list};

/// A value with no manifest location (defaults and values built in code).
pub fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

/// The `(line, column)` of a spanned value, when it came from a manifest.
pub fn location_of<T>(value: &Spanned<T>) -> Option<(u64, u64)> {
    let loc = value.referenced;
    (loc.line() != 0).then(|| (loc.line(), loc.column()))
}

/// `system:`: the security profile baked into the read-only root.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct SystemConfig {
    pub overlays: OverlayConfig,
    pub firewall: FirewallConfig,
    pub ssh: SshConfig,
    pub identity: IdentityConfig,
    /// Files, directories and symlinks added to (or replacing entries of) the
    /// root, applied after everything else.
    pub files: Vec<FileEntry>,
}

/// `system.overlays`: directories of the read-only root made writable by an
/// overlayfs whose upper and work directories live on the Data partition.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct OverlayConfig {
    /// Where the upper and work directories live, as seen from the running
    /// system (inside the Data partition's mount point).
    pub under: Spanned<String>,
    /// Absolute paths of the root made writable.
    pub paths: Vec<Spanned<String>>,
}

impl Default for OverlayConfig {
    fn default() -> OverlayConfig {
        OverlayConfig {
            under: unspanned("/var/.eflow/overlays".to_string()),
            paths: ["/etc", "/home", "/root"].map(|p| unspanned(p.to_string())).to_vec(),
        }
    }
}

/// What happens to inbound packets no rule accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundPolicy {
    /// Silently dropped (the sender sees a time-out).
    #[default]
    Drop,
    /// Dropped by policy, but answered with a TCP reset or an ICMP port
    /// unreachable first, so the sender fails fast.
    Reject,
}

/// `system.firewall`: iptables rules loaded before the network comes up.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct FirewallConfig {
    /// `false` writes no rules and no unit.
    pub enabled: bool,
    pub inbound: InboundPolicy,
    /// TCP ports open to new connections. Port 22 (SSH) is rate limited.
    pub allow_tcp: Vec<Spanned<u64>>,
    pub allow_udp: Vec<Spanned<u64>>,
    /// New SSH connections one address may open within 60 seconds; the next is
    /// dropped. 0 turns the limit off.
    pub ssh_rate_limit_per_minute: Spanned<u64>,
    /// Answer ICMP echo requests (ping) on IPv4 and IPv6.
    pub allow_ping: bool,
}

impl Default for FirewallConfig {
    fn default() -> FirewallConfig {
        FirewallConfig {
            enabled: true,
            inbound: InboundPolicy::Drop,
            allow_tcp: vec![unspanned(22)],
            allow_udp: Vec::new(),
            ssh_rate_limit_per_minute: unspanned(3),
            allow_ping: false,
        }
    }
}

/// Most new SSH connections a minute the rate limit can be set to: the kernel's
/// `recent` match keeps at most 255 time stamps per address.
pub const MAX_SSH_RATE_LIMIT: u64 = 100;

/// sshd's `PermitRootLogin` values that keep root login key-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PermitRootLogin {
    #[default]
    ProhibitPassword,
    ForcedCommandsOnly,
    No,
}

impl PermitRootLogin {
    /// The value as sshd spells it.
    pub fn as_sshd(self) -> &'static str {
        match self {
            PermitRootLogin::ProhibitPassword => "prohibit-password",
            PermitRootLogin::ForcedCommandsOnly => "forced-commands-only",
            PermitRootLogin::No => "no",
        }
    }
}

/// `system.ssh`: the sshd drop-in and the keys baked into the root.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct SshConfig {
    /// `true` allows password logins (not recommended; off in the EFLOW profile).
    pub password_authentication: bool,
    pub permit_root_login: PermitRootLogin,
    /// Lines of root's `authorized_keys`, inline.
    pub authorized_keys: Vec<Spanned<String>>,
    /// A host file in `authorized_keys` format (relative to the manifest),
    /// placed before the inline lines.
    pub authorized_keys_file: Option<Spanned<PathBuf>>,
    /// Certificate-authority public keys trusted to sign user certificates, inline.
    pub trusted_user_ca_keys: Vec<Spanned<String>>,
    /// A host file of CA public keys, placed before the inline lines.
    pub trusted_user_ca_keys_file: Option<Spanned<PathBuf>>,
}

/// `system.identity`: what makes each installation itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct IdentityConfig {
    /// Leave `/etc/machine-id` empty so every machine generates its own on first boot.
    pub empty_machine_id: bool,
    /// Add `IMAGE_ID` and `IMAGE_VERSION` (the manifest's name and version) to os-release.
    pub os_release: bool,
    /// Written to `/etc/hostname` when given; otherwise the source's is kept.
    pub hostname: Option<Spanned<String>>,
}

impl Default for IdentityConfig {
    fn default() -> IdentityConfig {
        IdentityConfig { empty_machine_id: true, os_release: true, hostname: None }
    }
}

/// One `system.files` entry: exactly one of `source`, `content`, `link` or
/// `directory: true`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileEntry {
    /// Absolute path in the running system. Paths under the Data mount point
    /// (/var) land on the Data partition.
    pub path: Spanned<String>,
    /// Octal permission bits, e.g. "0644" (default 0644 for files, 0755 for
    /// directories, 0777 for symlinks).
    pub mode: Option<Spanned<String>>,
    /// `root`, `UID:GID`, `USER` or `USER:GROUP` (names looked up in the root's
    /// /etc/passwd and /etc/group). Default root.
    pub owner: Option<Spanned<String>>,
    /// A host file (relative to the manifest) copied in.
    pub source: Option<Spanned<PathBuf>>,
    /// Inline text written as the file's content.
    pub content: Option<String>,
    /// A symlink to this target.
    pub link: Option<String>,
    /// A directory (created, or its mode and owner changed when it exists).
    #[serde(default)]
    pub directory: bool,
}

/// What a files entry creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
}

impl FileEntry {
    pub fn kind(&self) -> EntryKind {
        if self.directory {
            EntryKind::Directory
        } else if self.link.is_some() {
            EntryKind::Symlink
        } else {
            EntryKind::File
        }
    }

    /// The permission bits to give the entry (validated mode or the default).
    pub fn permissions(&self) -> Result<u16, String> {
        match &self.mode {
            Some(mode) => parse_mode(&mode.value),
            None => Ok(match self.kind() {
                EntryKind::File => 0o644,
                EntryKind::Directory => 0o755,
                EntryKind::Symlink => 0o777,
            }),
        }
    }
}

/// Parses an octal mode such as `0644`, `644` or `0o4755` (at most `7777`).
pub fn parse_mode(text: &str) -> Result<u16, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("mode '{text}' is not an octal permission such as \"0644\""));
    }
    match u16::from_str_radix(digits, 8) {
        Ok(bits) if bits <= 0o7777 => Ok(bits),
        _ => Err(format!("mode '{text}' is larger than 07777")),
    }
}

/// How an owner was written, before names are looked up in the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerSpec {
    Ids(u32, u32),
    /// A user name (group: the user's primary group unless given).
    Names {
        user: String,
        group: Option<String>,
    },
}

/// Parses `root`, `UID:GID`, `USER` or `USER:GROUP`.
pub fn parse_owner(text: &str) -> Result<OwnerSpec, String> {
    let bad =
        || format!("owner '{text}' is not 'root', 'UID:GID' (numbers), 'USER' or 'USER:GROUP'");
    let is_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !s.starts_with('-')
    };
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if numeric(user) {
        let group = group.ok_or_else(bad)?;
        if !numeric(group) {
            return Err(bad());
        }
        let uid = user.parse::<u32>().map_err(|_| bad())?;
        let gid = group.parse::<u32>().map_err(|_| bad())?;
        return Ok(OwnerSpec::Ids(uid, gid));
    }
    if !is_name(user) || group.is_some_and(|g| !is_name(g)) {
        return Err(bad());
    }
    Ok(OwnerSpec::Names { user: user.to_string(), group: group.map(str::to_string) })
}

/// One thing wrong with a `system:` section, with where it is in the manifest
/// when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub message: String,
    /// 1-based line and column in the manifest.
    pub location: Option<(u64, u64)>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Checks an absolute path in the running system: starts with `/`, has no `.`
/// or `..` component, no empty name and no NUL. Returns the path in its
/// normal form (no trailing or doubled slashes).
pub fn normal_absolute_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("'{path}' is not an absolute path (it must start with '/')"));
    }
    if path.contains('\0') {
        return Err(format!("'{}' contains a NUL byte", path.escape_debug()));
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == ".." {
            return Err(format!("'{path}' uses '..', which could reach outside the root"));
        }
        if part == "." {
            return Err(format!("'{path}' contains a '.' component; write the path in full"));
        }
        if part.len() > 255 {
            return Err(format!("'{path}' has a name longer than 255 bytes"));
        }
        parts.push(part);
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Whether `path` is `dir` or inside it (both in normal form).
pub fn is_within(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// The name of an overlay's directory under `overlays.under`: the path's
/// components joined by `-` (`/etc` → `etc`, `/usr/local` → `usr-local`).
pub fn overlay_name(path: &str) -> String {
    path.split('/').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

/// Checks a host name (RFC 1123: dot-separated labels of letters, digits and
/// inner hyphens, 63 bytes each, 253 in all).
pub fn check_hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "hostname '{name}' is not a valid host name (letters, digits and '-' in dot-separated labels of at most 63 characters)"
        ));
    }
    Ok(())
}

/// Reads a small host file named in the manifest (keys), relative to `base_dir`.
pub(crate) fn read_host_text(base_dir: &Path, path: &Path) -> Result<String, String> {
    let full = base_dir.join(path);
    let bytes = std::fs::read(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", full.display()))
}

impl SystemConfig {
    /// Every mistake in this section, in manifest order. `base_dir` is the
    /// manifest's directory: host files named here (keys, `files` sources) are
    /// resolved against it, and key files are read and parsed.
    pub fn validate(&self, base_dir: &Path) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut push = |message: String, location: Option<(u64, u64)>| {
            problems.push(ConfigProblem { message, location });
        };

        // Overlays.
        let under = &self.overlays.under;
        match normal_absolute_path(&under.value) {
            Ok(p) if p == "/" => push(
                "system.overlays.under must be a directory on the Data partition, not '/'".into(),
                location_of(under),
            ),
            Ok(_) => {}
            Err(e) => push(format!("system.overlays.under: {e}"), location_of(under)),
        }
        let mut seen_paths: Vec<String> = Vec::new();
        let mut seen_names = BTreeSet::new();
        for path in &self.overlays.paths {
            let normal = match normal_absolute_path(&path.value) {
                Ok(p) if p == "/" => {
                    push(
                        "system.overlays.paths: '/' cannot be overlaid; name directories such as /etc".into(),
                        location_of(path),
                    );
                    continue;
                }
                Ok(p) => p,
                Err(e) => {
                    push(format!("system.overlays.paths: {e}"), location_of(path));
                    continue;
                }
            };
            if let Some(other) =
                seen_paths.iter().find(|o| is_within(&normal, o) || is_within(o, &normal))
            {
                push(
                    format!(
                        "system.overlays.paths: '{normal}' overlaps '{other}', listed before it; overlays cannot be nested or repeated"
                    ),
                    location_of(path),
                );
                continue;
            }
            if !seen_names.insert(overlay_name(&normal)) {
                push(
                    format!(
                        "system.overlays.paths: '{normal}' would use the same overlay directory name '{}' as another path",
                        overlay_name(&normal)
                    ),
                    location_of(path),
                );
            }
            seen_paths.push(normal);
        }

        // Firewall.
        for (list, ports) in
            [("allow_tcp", &self.firewall.allow_tcp), ("allow_udp", &self.firewall.allow_udp)]
        {
            let mut seen = BTreeSet::new();
            for port in ports {
                if port.value == 0 || port.value > 65535 {
                    push(
                        format!(
                            "system.firewall.{list}: port {} is out of range (ports are 1 to 65535)",
                            port.value
                        ),
                        location_of(port),
                    );
                } else if !seen.insert(port.value) {
                    push(
                        format!("system.firewall.{list}: port {} is listed twice", port.value),
                        location_of(port),
                    );
                }
            }
        }
        let rate = &self.firewall.ssh_rate_limit_per_minute;
        if rate.value > MAX_SSH_RATE_LIMIT {
            push(
                format!(
                    "system.firewall.ssh_rate_limit_per_minute: {} is too high (at most {MAX_SSH_RATE_LIMIT}; 0 turns the limit off)",
                    rate.value
                ),
                location_of(rate),
            );
        }

        // SSH keys.
        for (field, kind, inline, file) in [
            (
                "authorized_keys",
                KeyListKind::AuthorizedKeys,
                &self.ssh.authorized_keys,
                &self.ssh.authorized_keys_file,
            ),
            (
                "trusted_user_ca_keys",
                KeyListKind::CaKeys,
                &self.ssh.trusted_user_ca_keys,
                &self.ssh.trusted_user_ca_keys_file,
            ),
        ] {
            if let Some(file) = file {
                match read_host_text(base_dir, &file.value) {
                    Ok(text) => {
                        let what = format!("{} ({})", file.value.display(), field);
                        for e in parse_key_list(&text, kind, &what).err().unwrap_or_default() {
                            push(format!("system.ssh.{field}_file: {e}"), location_of(file));
                        }
                    }
                    Err(e) => push(format!("system.ssh.{field}_file: {e}"), location_of(file)),
                }
            }
            for (index, line) in inline.iter().enumerate() {
                let what = format!("system.ssh.{field} entry {}", index + 1);
                for e in parse_key_list(&line.value, kind, &what).err().unwrap_or_default() {
                    push(e, location_of(line));
                }
            }
        }

        // Identity.
        if let Some(hostname) = &self.identity.hostname
            && let Err(e) = check_hostname(&hostname.value)
        {
            push(format!("system.identity.hostname: {e}"), location_of(hostname));
        }

        // Files.
        let mut seen_files = BTreeSet::new();
        for entry in &self.files {
            let at = location_of(&entry.path);
            let path = match normal_absolute_path(&entry.path.value) {
                Ok(p) if p == "/" => {
                    push("system.files: the path '/' cannot be replaced".into(), at);
                    continue;
                }
                Ok(p) => p,
                Err(e) => {
                    push(format!("system.files: {e}"), at);
                    continue;
                }
            };
            if !seen_files.insert(path.clone()) {
                push(format!("system.files: '{path}' is listed twice"), at);
            }
            let given = [
                entry.source.is_some(),
                entry.content.is_some(),
                entry.link.is_some(),
                entry.directory,
            ]
            .into_iter()
            .filter(|g| *g)
            .count();
            if given != 1 {
                push(
                    format!(
                        "system.files: '{path}' needs exactly one of 'source' (a host file), 'content' (inline text), 'link' (a symlink target) or 'directory: true'"
                    ),
                    at,
                );
            }
            if let Some(mode) = &entry.mode
                && let Err(e) = parse_mode(&mode.value)
            {
                push(format!("system.files: '{path}': {e}"), location_of(mode));
            }
            if let Some(owner) = &entry.owner
                && let Err(e) = parse_owner(&owner.value)
            {
                push(format!("system.files: '{path}': {e}"), location_of(owner));
            }
            if let Some(link) = &entry.link
                && (link.is_empty() || link.contains('\0'))
            {
                push(
                    format!("system.files: '{path}': the link target must be a non-empty path"),
                    at,
                );
            }
            if let Some(source) = &entry.source {
                let full = base_dir.join(&source.value);
                match std::fs::metadata(&full) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => push(
                        format!(
                            "system.files: '{path}': source {} is not a regular file",
                            full.display()
                        ),
                        location_of(source),
                    ),
                    Err(e) => push(
                        format!(
                            "system.files: '{path}': cannot read source {}: {e}",
                            full.display()
                        ),
                        location_of(source),
                    ),
                }
            }
        }
        problems
    }
}
