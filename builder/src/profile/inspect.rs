//! Reading back which profile a root holds, from the root alone.
//!
//! Two sources, reported side by side so a mismatch shows: the record abforge
//! writes (`/usr/lib/abforge/profile.json`, [`ProfileRecord`]) and the files that
//! actually take effect (the iptables rule sets, the sshd drop-in, fstab,
//! machine-id, os-release). The rule parser understands the `iptables-restore`
//! lines abforge writes and simple variants of them (one rule per line, options
//! as separate words); it does not evaluate arbitrary rule sets.
//!
//! Reading works over [`RootReader`], so the same code serves a [`FileTree`] being
//! built and, later, an ext4 root read out of an image.

use std::collections::BTreeMap;

use abforge_partitions::tree::{FileTree, NodeKind};
use serde::{Deserialize, Serialize};

use super::config::{InboundPolicy, SystemConfig};
use super::ssh::{DROP_IN, HOSTKEYS_UNIT, SshOutcome};
use super::{OverlayPlan, ProfileContext, RECORD_PATH, UNIT_DIR, firewall, fstab, identity};

/// Version of the [`ProfileRecord`] format; raised when a field changes meaning.
pub const RECORD_VERSION: u32 = 1;

/// Reads files of a root file system by absolute path.
pub trait RootReader {
    /// The content of the regular file at `path` (following symlinks inside the
    /// root), or `None` when there is none.
    fn read_file(&self, path: &str) -> Option<Vec<u8>>;
}

/// Largest file [`RootReader`] for a [`FileTree`] returns.
const MAX_READ: u64 = 16 << 20;

impl RootReader for FileTree {
    fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        let resolved = super::resolve_in_tree(self, path)?;
        let id = self.lookup(resolved.as_bytes())?;
        if !matches!(self.node(id).kind, NodeKind::File(_)) {
            return None;
        }
        super::read_tree_file(self, &resolved, MAX_READ).ok().flatten()
    }
}

/// The machine-readable record of what abforge baked into a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub record_version: u32,
    pub image_id: String,
    pub image_version: String,
    /// The root's device (the same for either slot) and that it is read-only.
    pub root_device: String,
    pub read_only_root: bool,
    pub mounts: Vec<RecordMount>,
    pub overlays: Vec<RecordOverlay>,
    pub firewall: Option<RecordFirewall>,
    pub ssh: RecordSsh,
    pub empty_machine_id: bool,
    /// Paths from `system.files`, in manifest order.
    pub files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMount {
    pub mount: String,
    pub partuuid: String,
    pub options: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOverlay {
    pub path: String,
    pub upper: String,
    pub work: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFirewall {
    /// `drop` or `reject`.
    pub inbound: String,
    pub allow_tcp: Vec<u64>,
    pub allow_udp: Vec<u64>,
    /// 0 when off.
    pub ssh_rate_limit_per_minute: u64,
    pub allow_ping: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSsh {
    pub password_authentication: bool,
    pub permit_root_login: String,
    pub authorized_keys: usize,
    pub trusted_user_ca_keys: usize,
    /// Always true: the image carries no host keys.
    pub host_keys_generated_on_first_boot: bool,
}

impl ProfileRecord {
    pub(crate) fn new(
        cfg: &SystemConfig,
        ctx: &ProfileContext,
        overlays: &[OverlayPlan],
        ssh: &SshOutcome,
    ) -> ProfileRecord {
        let fw = &cfg.firewall;
        ProfileRecord {
            record_version: RECORD_VERSION,
            image_id: ctx.image_name.clone(),
            image_version: ctx.image_version.clone(),
            root_device: ctx.root_device.clone(),
            read_only_root: true,
            mounts: vec![
                RecordMount {
                    mount: ctx.data_mount.clone(),
                    partuuid: ctx.data_partuuid.to_string(),
                    options: fstab::DATA_OPTIONS.to_string(),
                },
                RecordMount {
                    mount: ctx.log_mount.clone(),
                    partuuid: ctx.log_partuuid.to_string(),
                    options: fstab::LOG_OPTIONS.to_string(),
                },
            ],
            overlays: overlays
                .iter()
                .map(|o| RecordOverlay {
                    path: o.dir.clone(),
                    upper: o.upper.clone(),
                    work: o.work.clone(),
                })
                .collect(),
            firewall: fw.enabled.then(|| RecordFirewall {
                inbound: match fw.inbound {
                    InboundPolicy::Drop => "drop".to_string(),
                    InboundPolicy::Reject => "reject".to_string(),
                },
                allow_tcp: fw.allow_tcp.iter().map(|p| p.value).collect(),
                allow_udp: fw.allow_udp.iter().map(|p| p.value).collect(),
                ssh_rate_limit_per_minute: fw.ssh_rate_limit_per_minute.value,
                allow_ping: fw.allow_ping,
            }),
            ssh: RecordSsh {
                password_authentication: cfg.ssh.password_authentication,
                permit_root_login: cfg.ssh.permit_root_login.as_sshd().to_string(),
                authorized_keys: ssh.authorized_keys,
                trusted_user_ca_keys: ssh.trusted_user_ca_keys,
                host_keys_generated_on_first_boot: true,
            },
            empty_machine_id: cfg.identity.empty_machine_id,
            files: cfg.files.iter().map(|f| f.path.value.clone()).collect(),
        }
    }
}

/// What the rule set of one address family does with inbound traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FirewallReport {
    /// Chain name to policy (`INPUT` → `DROP`).
    pub policies: BTreeMap<String, String>,
    /// Ports any address may open a new TCP connection to, in rule order.
    pub open_tcp: Vec<u64>,
    pub open_udp: Vec<u64>,
    pub rate_limits: Vec<RateLimit>,
    pub accepts_loopback: bool,
    pub accepts_established: bool,
    /// ICMPv6 types accepted (IPv6 only).
    pub icmpv6_types: Vec<u64>,
}

/// A `recent`-match limit: a source opening more than `connections` new
/// connections to `port` within `seconds` is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub port: u64,
    pub connections: u64,
    pub seconds: u64,
}

/// One fstab line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FstabEntry {
    pub device: String,
    pub mount: String,
    pub fs_type: String,
    pub options: String,
    pub pass: String,
}

/// The SSH policy in effect according to the drop-in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SshReport {
    pub drop_in: bool,
    /// `Some(false)` when the drop-in says `PasswordAuthentication no`.
    pub password_authentication: Option<bool>,
    pub kbd_interactive_authentication: Option<bool>,
    pub permit_root_login: Option<String>,
    pub trusted_user_ca_keys: bool,
    /// Host key files found in the root (there should be none).
    pub host_keys_in_image: Vec<String>,
    pub host_keys_unit_enabled: bool,
}

/// The profile found in a root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProfileReport {
    pub record: Option<ProfileRecord>,
    /// Why the record could not be read, when it exists but does not parse.
    pub record_error: Option<String>,
    pub firewall_v4: Option<FirewallReport>,
    pub firewall_v6: Option<FirewallReport>,
    pub firewall_unit_enabled: bool,
    pub ssh: SshReport,
    pub mounts: Vec<FstabEntry>,
    /// Overlaid directories named in fstab's comments.
    pub overlays: Vec<String>,
    /// `Some(true)` when /etc/machine-id exists and is empty.
    pub machine_id_empty: Option<bool>,
    pub image_id: Option<String>,
    pub image_version: Option<String>,
}

/// Reads the profile back from a root.
pub fn describe_profile(root: &dyn RootReader) -> ProfileReport {
    let text = |path: &str| root.read_file(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut report = ProfileReport::default();
    if let Some(json) = text(RECORD_PATH) {
        match serde_json::from_str::<ProfileRecord>(&json) {
            Ok(record) => report.record = Some(record),
            Err(e) => report.record_error = Some(format!("{RECORD_PATH} does not parse: {e}")),
        }
    }
    report.firewall_v4 = text(firewall::RULES_V4).map(|t| parse_rules(&t));
    report.firewall_v6 = text(firewall::RULES_V6).map(|t| parse_rules(&t));
    report.firewall_unit_enabled =
        root.read_file(&format!("{UNIT_DIR}/sysinit.target.wants/{}", firewall::UNIT)).is_some();

    if let Some(drop_in) = text(DROP_IN) {
        report.ssh.drop_in = true;
        for line in drop_in.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let mut words = line.split_ascii_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else { continue };
            let yes = value.eq_ignore_ascii_case("yes");
            // sshd keeps the first value of a keyword.
            match key.to_ascii_lowercase().as_str() {
                "passwordauthentication" => {
                    report.ssh.password_authentication.get_or_insert(yes);
                }
                "kbdinteractiveauthentication" => {
                    report.ssh.kbd_interactive_authentication.get_or_insert(yes);
                }
                "permitrootlogin" => {
                    report.ssh.permit_root_login.get_or_insert_with(|| value.to_string());
                }
                "trustedusercakeys" => report.ssh.trusted_user_ca_keys = true,
                _ => {}
            }
        }
    }
    for kind in ["rsa", "ecdsa", "ed25519", "dsa"] {
        for suffix in ["", ".pub"] {
            let path = format!("/etc/ssh/ssh_host_{kind}_key{suffix}");
            if root.read_file(&path).is_some() {
                report.ssh.host_keys_in_image.push(path);
            }
        }
    }
    report.ssh.host_keys_unit_enabled =
        root.read_file(&format!("{UNIT_DIR}/multi-user.target.wants/{HOSTKEYS_UNIT}")).is_some();

    if let Some(table) = text(fstab::FSTAB) {
        for line in table.lines() {
            if let Some(rest) = line.strip_prefix(fstab::OVERLAY_COMMENT) {
                if let Some(dir) = rest.split_ascii_whitespace().next() {
                    report.overlays.push(dir.to_string());
                }
                continue;
            }
            if line.trim_start().starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            if f.len() >= 4 {
                report.mounts.push(FstabEntry {
                    device: f[0].to_string(),
                    mount: f[1].to_string(),
                    fs_type: f[2].to_string(),
                    options: f[3].to_string(),
                    pass: f.get(5).unwrap_or(&"0").to_string(),
                });
            }
        }
    }
    report.machine_id_empty = root.read_file(identity::MACHINE_ID).map(|b| b.is_empty());
    if let Some(os) = text(identity::OS_RELEASE) {
        for line in os.lines() {
            let value = |v: &str| v.trim().trim_matches('"').to_string();
            if let Some(v) = line.strip_prefix("IMAGE_ID=") {
                report.image_id = Some(value(v));
            } else if let Some(v) = line.strip_prefix("IMAGE_VERSION=") {
                report.image_version = Some(value(v));
            }
        }
    }
    report
}

/// Reads the meaning of an `iptables-restore` filter table's INPUT chain.
pub fn parse_rules(text: &str) -> FirewallReport {
    let mut report = FirewallReport::default();
    let mut in_filter = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_ascii_whitespace();
            if let (Some(chain), Some(policy)) = (words.next(), words.next()) {
                report.policies.insert(chain.to_string(), policy.to_string());
            }
            continue;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if words.first() != Some(&"-A") || words.get(1) != Some(&"INPUT") {
            continue;
        }
        let value = |flag: &str| {
            words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied()
        };
        let number = |flag: &str| value(flag).and_then(|v| v.parse::<u64>().ok());
        let has = |flag: &str| words.contains(&flag);
        let target = value("-j");
        let proto = value("-p");
        let restricted = has("-s") || has("-i");
        match (target, proto) {
            (Some("ACCEPT"), _) if value("-i") == Some("lo") => report.accepts_loopback = true,
            (Some("ACCEPT"), _)
                if value("--ctstate").is_some_and(|s| s.contains("ESTABLISHED"))
                    && proto.is_none() =>
            {
                report.accepts_established = true
            }
            (Some("ACCEPT"), Some("ipv6-icmp" | "icmpv6" | "58")) => {
                if let Some(t) = number("--icmpv6-type") {
                    report.icmpv6_types.push(t);
                }
            }
            (Some("ACCEPT"), Some("tcp")) if !restricted => {
                if let Some(port) = number("--dport") {
                    report.open_tcp.push(port);
                }
            }
            (Some("ACCEPT"), Some("udp")) if !restricted => {
                if let Some(port) = number("--dport") {
                    report.open_udp.push(port);
                }
            }
            (Some("DROP"), Some("tcp")) if has("--update") || has("--rcheck") => {
                if let (Some(port), Some(hits), Some(seconds)) =
                    (number("--dport"), number("--hitcount"), number("--seconds"))
                {
                    report.rate_limits.push(RateLimit {
                        port,
                        connections: hits.saturating_sub(1),
                        seconds,
                    });
                }
            }
            _ => {}
        }
    }
    report
}

fn join_ports(ports: &[u64]) -> String {
    if ports.is_empty() {
        "none".to_string()
    } else {
        ports.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    }
}

impl ProfileReport {
    /// Whether the root holds any trace of an abforge profile.
    pub fn is_present(&self) -> bool {
        self.record.is_some() || self.firewall_v4.is_some() || self.ssh.drop_in
    }

    /// A readable summary, one line per aspect (for `abforge inspect`).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.record {
            Some(r) => out.push(format!(
                "profile: {} {} (abforge record version {})",
                r.image_id, r.image_version, r.record_version
            )),
            None => out.push(match &self.record_error {
                Some(e) => format!("profile: record unreadable ({e})"),
                None => "profile: no abforge record in this root".to_string(),
            }),
        }
        match &self.firewall_v4 {
            Some(fw) => {
                let policy =
                    |c: &str| fw.policies.get(c).map_or("?".to_string(), |p| p.to_lowercase());
                let limits: Vec<String> = fw
                    .rate_limits
                    .iter()
                    .map(|l| {
                        format!(
                            "TCP {} at most {} new connections per {} s per address",
                            l.port, l.connections, l.seconds
                        )
                    })
                    .collect();
                out.push(format!(
                    "firewall: {} (input {}, forward {}, output {}); open TCP {}; open UDP {}{}",
                    if self.firewall_unit_enabled {
                        "on"
                    } else {
                        "rules present, unit not enabled"
                    },
                    policy("INPUT"),
                    policy("FORWARD"),
                    policy("OUTPUT"),
                    join_ports(&fw.open_tcp),
                    join_ports(&fw.open_udp),
                    if limits.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", limits.join("; "))
                    }
                ));
            }
            None => out.push("firewall: off (no /etc/iptables/rules.v4)".to_string()),
        }
        if self.overlays.is_empty() {
            out.push("overlays: none".to_string());
        } else {
            out.push(format!("overlays: {}", self.overlays.join(", ")));
        }
        for m in &self.mounts {
            out.push(format!("mount: {} on {} ({}, {})", m.device, m.mount, m.fs_type, m.options));
        }
        let onoff = |v: Option<bool>| match v {
            Some(true) => "on",
            Some(false) => "off",
            None => "not set",
        };
        out.push(format!(
            "ssh: password authentication {}, keyboard-interactive {}, root login {}{}; host keys in image: {}; generated on first boot: {}",
            onoff(self.ssh.password_authentication),
            onoff(self.ssh.kbd_interactive_authentication),
            self.ssh.permit_root_login.as_deref().unwrap_or("not set"),
            if self.ssh.trusted_user_ca_keys { ", user certificates trusted" } else { "" },
            if self.ssh.host_keys_in_image.is_empty() { "none".to_string() } else { self.ssh.host_keys_in_image.join(", ") },
            if self.ssh.host_keys_unit_enabled { "yes" } else { "no" },
        ));
        out.push(format!(
            "machine-id: {}",
            match self.machine_id_empty {
                Some(true) => "empty (each machine generates its own)",
                Some(false) => "set (every installation shares it)",
                None => "missing",
            }
        ));
        out.push(format!(
            "os-release: IMAGE_ID={} IMAGE_VERSION={}",
            self.image_id.as_deref().unwrap_or("-"),
            self.image_version.as_deref().unwrap_or("-")
        ));
        out
    }
}
