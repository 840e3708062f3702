//! The security profile composed over a source tree: every generated file's exact
//! content, mode and owner, what is removed, the Data tree, determinism, bad
//! input, and reading the profile back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use abforge::profile::config::{ConfigProblem, SystemConfig};
use abforge::profile::inspect::{RateLimit, parse_rules};
use abforge::profile::{ProfileContext, compose, describe_profile, split_var};
use abforge_partitions::Guid;
use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};

const EPOCH: i64 = 1_700_000_000;
const SOURCE_TIME: i64 = 1_600_000_000;
const DATA_UUID: &str = "8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a";
const LOG_UUID: &str = "2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7";

const ADMIN_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMvRGgCgF9zWAI32B75RDg78FPu5fj3trkWmUGSELkFi admin@example";
const OPS_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBuV5Ek0rMBk1HGs6BuJYHw8NXY//yHnrsaHBBmP1sFEu54t4nvwZM9ZEUy1OXXzNS+oqTY3IFMeWqM7xNKrT+o= ops@example";
const CA_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMClA326XsylBkiygs6MbX/7WLFhqjoLjlSMsBiBIaL+ user-ca";

const SSHD_CONFIG: &str = "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nSubsystem sftp /usr/lib/openssh/sftp-server\n";
const OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";

fn meta(perms: u16, uid: u32, gid: u32) -> Metadata {
    Metadata::new(perms, uid, gid, Timestamp::from_seconds(SOURCE_TIME))
}

fn dir(perms: u16) -> Node {
    Node { meta: meta(perms, 0, 0), kind: NodeKind::Directory(BTreeMap::new()) }
}

fn file(perms: u16, text: &str) -> Node {
    Node {
        meta: meta(perms, 0, 0),
        kind: NodeKind::File(Content::Bytes(Arc::from(text.as_bytes()))),
    }
}

fn symlink(target: &str) -> Node {
    Node { meta: meta(0o777, 0, 0), kind: NodeKind::Symlink(target.as_bytes().to_vec()) }
}

/// A small Debian-like root: SSH host keys, a machine id, /var state with a hard
/// link inside /var and one across /var and /usr, os-release as a symlink.
fn source_tree() -> FileTree {
    let mut t = FileTree::new(meta(0o755, 0, 0));
    let d = meta(0o755, 0, 0);
    for (path, node) in [
        ("etc", dir(0o755)),
        ("etc/ssh/sshd_config", file(0o644, SSHD_CONFIG)),
        ("etc/ssh/ssh_host_ed25519_key", file(0o600, "PRIVATE ed25519")),
        ("etc/ssh/ssh_host_ed25519_key.pub", file(0o644, "ssh-ed25519 AAAA host")),
        ("etc/ssh/ssh_host_rsa_key", file(0o600, "PRIVATE rsa")),
        ("etc/ssh/ssh_config", file(0o644, "Host *\n")),
        ("etc/machine-id", file(0o444, "0123456789abcdef0123456789abcdef\n")),
        ("etc/os-release", symlink("../usr/lib/os-release")),
        ("usr/lib/os-release", file(0o644, OS_RELEASE)),
        (
            "etc/passwd",
            file(0o644, "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1001::/home/app:/bin/sh\n"),
        ),
        ("etc/group", file(0o644, "root:x:0:\nadm:x:4:\napp:x:1001:\n")),
        ("root", dir(0o700)),
        ("usr/sbin/iptables-restore", file(0o755, "elf")),
        ("usr/sbin/ip6tables-restore", file(0o755, "elf")),
        ("usr/bin/ssh-keygen", file(0o755, "elf")),
        ("var/lib/dbus/machine-id", file(0o444, "0123456789abcdef0123456789abcdef\n")),
        ("var/lib/systemd/random-seed", file(0o600, "seed")),
        ("var/lib/apt/extended_states", file(0o644, "states")),
        ("var/log", dir(0o755)),
        ("var/tmp", dir(0o1777)),
    ] {
        t.put(path.as_bytes(), node, &d).unwrap();
    }
    // Hard links: two names inside /var, and /usr/bin/tool also named /var/lib/tool.
    let lib = t.lookup(b"var/lib").unwrap();
    let a = t.add(lib, b"a", file(0o644, "shared")).unwrap();
    t.link(lib, b"b", a).unwrap();
    let tool = t.put(b"usr/bin/tool", file(0o755, "tool"), &d).unwrap();
    t.link(lib, b"tool", tool).unwrap();
    t
}

fn ctx(base: &Path) -> ProfileContext {
    ProfileContext::new(
        "eflow",
        "1.4.0",
        LOG_UUID.parse().unwrap(),
        DATA_UUID.parse().unwrap(),
        EPOCH,
        base,
    )
}

fn parse(yaml: &str) -> SystemConfig {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        system: SystemConfig,
    }
    serde_saphyr::from_str::<Wrapper>(yaml).unwrap_or_else(|e| panic!("{e}")).system
}

fn full_config() -> SystemConfig {
    parse(&format!(
        "system:\n  firewall: {{ allow_tcp: [22, 443], allow_udp: [51820], ssh_rate_limit_per_minute: 3 }}\n  ssh:\n    authorized_keys:\n      - \"{ADMIN_KEY}\"\n      - 'from=\"10.0.0.0/8\",no-pty {OPS_KEY}'\n    trusted_user_ca_keys: [\"{CA_KEY}\"]\n"
    ))
}

/// Text of a file node, following nothing.
fn text(tree: &FileTree, path: &str) -> String {
    let id = tree.lookup(path.as_bytes()).unwrap_or_else(|| panic!("{path} is missing"));
    match &tree.node(id).kind {
        NodeKind::File(content) => {
            let mut buf = vec![0; usize::try_from(content.len()).unwrap()];
            content.read_exact_at(&mut buf, 0).unwrap();
            String::from_utf8(buf).unwrap()
        }
        other => panic!("{path} is a {}", other.type_name()),
    }
}

/// `mode uid:gid mtime` of an entry.
fn attrs(tree: &FileTree, path: &str) -> String {
    let id = tree.lookup(path.as_bytes()).unwrap_or_else(|| panic!("{path} is missing"));
    let m = &tree.node(id).meta;
    format!(
        "{} {:04o} {}:{} {}",
        tree.node(id).kind.type_name(),
        m.permissions,
        m.uid,
        m.gid,
        m.mtime.seconds
    )
}

/// One line per entry: path, type, mode, owner, time, size or link target.
fn dump(tree: &FileTree) -> String {
    let mut out = String::new();
    for (path, id) in tree.walk() {
        let node = tree.node(id);
        let m = &node.meta;
        let what = match &node.kind {
            NodeKind::File(c) => format!("{} bytes node {}", c.len(), id.index()),
            NodeKind::Symlink(t) => format!("-> {}", String::from_utf8_lossy(t)),
            _ => String::new(),
        };
        out.push_str(&format!(
            "/{} {} {:04o} {}:{} {} {}\n",
            String::from_utf8_lossy(&path),
            node.kind.type_name(),
            m.permissions,
            m.uid,
            m.gid,
            m.mtime.seconds,
            what
        ));
    }
    out
}

/// The dump without node numbers (node numbers differ between trees built
/// differently) but with file contents.
fn dump_with_content(tree: &FileTree) -> String {
    let mut out = String::new();
    for (path, id) in tree.walk() {
        let node = tree.node(id);
        let p = format!("/{}", String::from_utf8_lossy(&path));
        let body = match &node.kind {
            NodeKind::File(_) => format!("{:?}", text(tree, &p)),
            NodeKind::Symlink(t) => format!("-> {}", String::from_utf8_lossy(t)),
            _ => String::new(),
        };
        out.push_str(&format!("{} {}\n", attrs(tree, &p), body));
    }
    out
}

#[test]
fn empty_system_section_gives_the_eflow_defaults() {
    let cfg = parse("system: {}\n");
    assert_eq!(cfg.overlays.under.value, "/var/.eflow/overlays");
    let paths: Vec<&str> = cfg.overlays.paths.iter().map(|p| p.value.as_str()).collect();
    assert_eq!(paths, ["/etc", "/home", "/root"]);
    assert!(cfg.firewall.enabled);
    assert_eq!(cfg.firewall.allow_tcp.iter().map(|p| p.value).collect::<Vec<_>>(), [22]);
    assert!(cfg.firewall.allow_udp.is_empty());
    assert_eq!(cfg.firewall.ssh_rate_limit_per_minute.value, 3);
    assert!(!cfg.ssh.password_authentication);
    assert_eq!(cfg.ssh.permit_root_login.as_sshd(), "prohibit-password");
    assert!(cfg.identity.empty_machine_id && cfg.identity.os_release);
    assert!(cfg.files.is_empty());
    assert!(cfg.validate(Path::new("/nonexistent")).is_empty());
}

#[test]
fn the_design_example_parses() {
    let cfg = parse(
        "system:\n  overlays: { under: /var/.eflow/overlays, paths: [/etc, /home, /root] }\n  firewall: { inbound: drop, allow_tcp: [22], ssh_rate_limit_per_minute: 3 }\n  ssh: { password_authentication: false }\n",
    );
    assert!(cfg.validate(Path::new("/nonexistent")).is_empty());
}

#[test]
fn unknown_keys_are_refused() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Wrapper {
        system: SystemConfig,
    }
    for yaml in [
        "system: { firewal: {} }\n",
        "system: { firewall: { allow_tcpp: [22] } }\n",
        "system: { ssh: { password: no } }\n",
        "system: { files: [ { path: /etc/x, content: a, colour: red } ] }\n",
        "system: { firewall: { inbound: maybe } }\n",
        "system: { ssh: { permit_root_login: yes } }\n",
    ] {
        assert!(serde_saphyr::from_str::<Wrapper>(yaml).is_err(), "accepted {yaml}");
    }
}

#[test]
fn bad_input_gives_clear_errors_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.pub"),
        format!("# admins\n{ADMIN_KEY}\nssh-ed2551 AAAA bad type\nssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIMvRGgCgF9zWAI32B75RDg78FPu5fj3trkWmUGSELkFi mislabelled\nssh-ed25519 not*base64\n"),
    )
    .unwrap();
    let yaml = "system:
  overlays:
    under: var/overlays
    paths: [/etc, home, /etc/ssh]
  firewall:
    allow_tcp: [22, 0, 70000]
    allow_udp: [53, 53]
  ssh:
    authorized_keys_file: keys.pub
    authorized_keys: [\"ssh-ed25519\"]
  files:
    - { path: /etc/../../escape, content: x }
    - { path: /etc/motd, content: hi, mode: \"0999\" }
    - { path: /etc/both, content: hi, source: x }
    - { path: /etc/owned, content: hi, owner: \"1000:\" }
";
    let problems = parse(yaml).validate(dir.path());
    let expected: Vec<(&str, Option<(u64, u64)>)> = vec![
        (
            "system.overlays.under: 'var/overlays' is not an absolute path (it must start with '/')",
            Some((3, 12)),
        ),
        (
            "system.overlays.paths: 'home' is not an absolute path (it must start with '/')",
            Some((4, 19)),
        ),
        (
            "system.overlays.paths: '/etc/ssh' overlaps '/etc', listed before it; overlays cannot be nested or repeated",
            Some((4, 25)),
        ),
        ("system.firewall.allow_tcp: port 0 is out of range (ports are 1 to 65535)", Some((6, 21))),
        (
            "system.firewall.allow_tcp: port 70000 is out of range (ports are 1 to 65535)",
            Some((6, 24)),
        ),
        ("system.firewall.allow_udp: port 53 is listed twice", Some((7, 21))),
        (
            "system.ssh.authorized_keys_file: line 3 of keys.pub (authorized_keys): 'ssh-ed2551' is not a known key type (expected one of ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)",
            Some((9, 27)),
        ),
        (
            "system.ssh.authorized_keys_file: line 4 of keys.pub (authorized_keys): the key data says it is a 'ssh-ed25519' key, but the line says ssh-rsa",
            Some((9, 27)),
        ),
        (
            "system.ssh.authorized_keys_file: line 5 of keys.pub (authorized_keys): the ssh-ed25519 key data is not valid base64",
            Some((9, 27)),
        ),
        (
            "line 1 of system.ssh.authorized_keys entry 1: the ssh-ed25519 key has no base64 key data after its type",
            Some((10, 23)),
        ),
        (
            "system.files: '/etc/../../escape' uses '..', which could reach outside the root",
            Some((12, 15)),
        ),
        (
            "system.files: '/etc/motd': mode '0999' is not an octal permission such as \"0644\"",
            Some((13, 45)),
        ),
        (
            "system.files: '/etc/both' needs exactly one of 'source' (a host file), 'content' (inline text), 'link' (a symlink target) or 'directory: true'",
            Some((14, 15)),
        ),
        ("system.files: '/etc/both': cannot read source", Some((14, 47))),
        (
            "system.files: '/etc/owned': owner '1000:' is not 'root', 'UID:GID' (numbers), 'USER' or 'USER:GROUP'",
            Some((15, 47)),
        ),
    ];
    let got: Vec<(String, Option<(u64, u64)>)> =
        problems.iter().map(|p: &ConfigProblem| (p.message.clone(), p.location)).collect();
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for ((message, location), (want, want_location)) in got.iter().zip(&expected) {
        assert!(message.starts_with(want), "got {message:?}\nwant {want:?}");
        assert_eq!(location, want_location, "location of {message:?}");
    }
    // The Display form leads with the location.
    assert!(
        problems[3].to_string().starts_with("line 6, column 21: system.firewall.allow_tcp: port 0")
    );

    // compose refuses the same configuration and writes nothing.
    let mut root = source_tree();
    let before = dump(&root);
    let err = compose(&mut root, &parse(yaml), &ctx(dir.path())).unwrap_err();
    assert_eq!(abforge::error::exit_code_for(&err), std::process::ExitCode::from(2));
    assert!(format!("{err:#}").contains("port 70000 is out of range"));
    assert_eq!(dump(&root), before);
}

#[test]
fn rate_limit_and_identity_limits() {
    let problems = parse(
        "system: { firewall: { ssh_rate_limit_per_minute: 101 }, identity: { hostname: -bad- } }\n",
    )
    .validate(Path::new("/"));
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "system.firewall.ssh_rate_limit_per_minute: 101 is too high (at most 100; 0 turns the limit off)",
            "system.identity.hostname: hostname '-bad-' is not a valid host name (letters, digits and '-' in dot-separated labels of at most 63 characters)",
        ]
    );
    let mut root = source_tree();
    let mut context = ctx(Path::new("/"));
    context.image_name = "EFLOW".into();
    let err = compose(&mut root, &parse("system: {}\n"), &context).unwrap_err();
    assert!(
        format!("{err}").contains("the image name 'EFLOW' cannot be os-release's IMAGE_ID"),
        "{err}"
    );
    let mut context = ctx(Path::new("/"));
    context.data_mount = "/data".into();
    let err = compose(&mut source_tree(), &parse("system: {}\n"), &context).unwrap_err();
    assert_eq!(
        format!("{err}"),
        "system.overlays.under '/var/.eflow/overlays' must be a directory inside /data, where the Data partition is mounted"
    );
    let err = compose(
        &mut source_tree(),
        &parse("system: { overlays: { paths: [/var/lib] } }\n"),
        &ctx(Path::new("/")),
    )
    .unwrap_err();
    assert!(
        format!("{err}").contains("'/var/lib' overlaps /var, where the Data partition is mounted"),
        "{err}"
    );
}

const EXPECTED_FSTAB: &str = "# /etc/fstab: written by abforge for eflow 1.4.0.
#
# The root file system is read-only: the device the initramfs opened for the
# slot named on the kernel command line. The same root image serves slot A and
# slot B, so no slot-specific device appears here. /var is the Data partition
# (kept across updates) and /logs the Log partition, shared by both slots.
#
/dev/mapper/root                              /     ext4 ro                           0 0
PARTUUID=8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a /var  ext4 defaults,nodev               0 2
PARTUUID=2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7 /logs ext4 defaults,nodev,nosuid,noexec 0 2
#
# Writable overlays on the read-only root, mounted by the initramfs after /var
# and before switching root (so they are not mounted from this file):
#   overlay /etc lowerdir=/etc,upperdir=/var/.eflow/overlays/etc/upper,workdir=/var/.eflow/overlays/etc/work
#   overlay /home lowerdir=/home,upperdir=/var/.eflow/overlays/home/upper,workdir=/var/.eflow/overlays/home/work
#   overlay /root lowerdir=/root,upperdir=/var/.eflow/overlays/root/upper,workdir=/var/.eflow/overlays/root/work
";

const EXPECTED_RULES_V4: &str = "# Written by abforge: the firewall of this image (system.firewall), for iptables-restore.
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 127.0.0.0/8 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name abforge-ssh --rsource
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 60 --hitcount 4 --name abforge-ssh --rsource -j DROP
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p tcp -m tcp --dport 443 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 51820 -j ACCEPT
COMMIT
";

const EXPECTED_RULES_V6: &str = "# Written by abforge: the firewall of this image (system.firewall), for ip6tables-restore.
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s ::1/128 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 1 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 2 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 3 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 4 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT
-A INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 130 -j ACCEPT
-A INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 131 -j ACCEPT
-A INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 132 -j ACCEPT
-A INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j ACCEPT
-A INPUT -s fe80::/10 -p udp -m udp --dport 546 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name abforge-ssh --rsource
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 60 --hitcount 4 --name abforge-ssh --rsource -j DROP
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p tcp -m tcp --dport 443 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 51820 -j ACCEPT
COMMIT
";

const EXPECTED_FIREWALL_UNIT: &str =
    "# Written by abforge: loads the firewall of this image (system.firewall)
# before any network interface is configured.
[Unit]
Description=Firewall of this image (iptables rules)
DefaultDependencies=no
After=systemd-modules-load.service local-fs.target
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/iptables-restore /etc/iptables/rules.v4
ExecStart=/usr/sbin/ip6tables-restore /etc/iptables/rules.v6

[Install]
WantedBy=sysinit.target
";

const EXPECTED_HOSTKEYS_UNIT: &str =
    "# Written by abforge: the image carries no SSH host keys, so each installation
# generates its own on first boot, into the writable /etc overlay.
[Unit]
Description=Generate the SSH host keys of this installation
DefaultDependencies=no
After=local-fs.target
Before=ssh.service ssh.socket sshd.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

const EXPECTED_DROP_IN: &str =
    "# Written by abforge: the SSH policy of this image (system.ssh in the manifest).
# sshd keeps the first value it reads for each keyword and sshd_config includes
# this directory before its own settings, so these values take precedence.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PubkeyAuthentication yes
AuthenticationMethods publickey
PermitRootLogin prohibit-password
TrustedUserCAKeys /etc/ssh/trusted_user_ca_keys
";

const EXPECTED_RECORD: &str = r#"{
  "record_version": 1,
  "image_id": "eflow",
  "image_version": "1.4.0",
  "root_device": "/dev/mapper/root",
  "read_only_root": true,
  "mounts": [
    {
      "mount": "/var",
      "partuuid": "8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a",
      "options": "defaults,nodev"
    },
    {
      "mount": "/logs",
      "partuuid": "2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7",
      "options": "defaults,nodev,nosuid,noexec"
    }
  ],
  "overlays": [
    {
      "path": "/etc",
      "upper": "/var/.eflow/overlays/etc/upper",
      "work": "/var/.eflow/overlays/etc/work"
    },
    {
      "path": "/home",
      "upper": "/var/.eflow/overlays/home/upper",
      "work": "/var/.eflow/overlays/home/work"
    },
    {
      "path": "/root",
      "upper": "/var/.eflow/overlays/root/upper",
      "work": "/var/.eflow/overlays/root/work"
    }
  ],
  "firewall": {
    "inbound": "drop",
    "allow_tcp": [
      22,
      443
    ],
    "allow_udp": [
      51820
    ],
    "ssh_rate_limit_per_minute": 3,
    "allow_ping": false
  },
  "ssh": {
    "password_authentication": false,
    "permit_root_login": "prohibit-password",
    "authorized_keys": 2,
    "trusted_user_ca_keys": 1,
    "host_keys_generated_on_first_boot": true
  },
  "empty_machine_id": true,
  "files": []
}
"#;

#[test]
fn every_generated_file_has_its_exact_content_mode_and_owner() {
    let mut root = source_tree();
    let summary = compose(&mut root, &full_config(), &ctx(Path::new("/"))).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);

    let generated = |path: &str, perms: &str, content: &str| {
        assert_eq!(attrs(&root, path), format!("file {perms} 0:0 {EPOCH}"), "{path}");
        assert_eq!(text(&root, path), content, "{path}");
    };
    generated("/etc/fstab", "0644", EXPECTED_FSTAB);
    generated("/etc/iptables/rules.v4", "0644", EXPECTED_RULES_V4);
    generated("/etc/iptables/rules.v6", "0644", EXPECTED_RULES_V6);
    generated("/usr/lib/systemd/system/abforge-firewall.service", "0644", EXPECTED_FIREWALL_UNIT);
    generated(
        "/usr/lib/systemd/system/abforge-ssh-hostkeys.service",
        "0644",
        EXPECTED_HOSTKEYS_UNIT,
    );
    generated("/etc/ssh/sshd_config.d/10-abforge.conf", "0644", EXPECTED_DROP_IN);
    generated(
        "/root/.ssh/authorized_keys",
        "0600",
        &format!("{ADMIN_KEY}\nfrom=\"10.0.0.0/8\",no-pty {OPS_KEY}\n"),
    );
    generated("/etc/ssh/trusted_user_ca_keys", "0644", &format!("{CA_KEY}\n"));
    generated("/etc/machine-id", "0444", "");
    generated(
        "/usr/lib/os-release",
        "0644",
        &format!("{OS_RELEASE}IMAGE_ID=eflow\nIMAGE_VERSION=1.4.0\n"),
    );
    generated("/usr/lib/abforge/profile.json", "0644", EXPECTED_RECORD);
    assert_eq!(attrs(&root, "/root/.ssh"), format!("directory 0700 0:0 {EPOCH}"));
    assert_eq!(attrs(&root, "/usr/lib/systemd/system"), format!("directory 0755 0:0 {EPOCH}"));

    // Units are enabled from the vendor directory.
    for (link, target) in [
        (
            "/usr/lib/systemd/system/sysinit.target.wants/abforge-firewall.service",
            "../abforge-firewall.service",
        ),
        (
            "/usr/lib/systemd/system/multi-user.target.wants/abforge-ssh-hostkeys.service",
            "../abforge-ssh-hostkeys.service",
        ),
    ] {
        let id = root.lookup(link.as_bytes()).unwrap();
        match &root.node(id).kind {
            NodeKind::Symlink(t) => assert_eq!(t, target.as_bytes()),
            other => panic!("{link} is a {}", other.type_name()),
        }
    }
    // sshd_config already includes the drop-ins first: untouched, source metadata kept.
    assert_eq!(text(&root, "/etc/ssh/sshd_config"), SSHD_CONFIG);
    assert_eq!(attrs(&root, "/etc/ssh/sshd_config"), format!("file 0644 0:0 {SOURCE_TIME}"));
    // os-release stays a symlink to the edited vendor file.
    let os = root.lookup(b"/etc/os-release").unwrap();
    assert!(matches!(&root.node(os).kind, NodeKind::Symlink(t) if t == b"../usr/lib/os-release"));

    // No host keys, the other SSH files kept.
    let ssh = root.lookup(b"/etc/ssh").unwrap();
    let names: Vec<String> =
        root.children(ssh).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect();
    assert_eq!(names, ["ssh_config", "sshd_config", "sshd_config.d", "trusted_user_ca_keys"]);
    assert_eq!(
        summary.removed,
        [
            "/var/lib/systemd/random-seed",
            "/var/lib/dbus/machine-id",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/etc/ssh/ssh_host_rsa_key",
        ]
    );

    // Mount points: empty, /var keeps the source's metadata, /logs generated;
    // overlaid directories exist (/home created).
    assert_eq!(attrs(&root, "/var"), format!("directory 0755 0:0 {SOURCE_TIME}"));
    assert_eq!(root.children(root.lookup(b"/var").unwrap()).count(), 0);
    assert_eq!(attrs(&root, "/logs"), format!("directory 0755 0:0 {EPOCH}"));
    assert_eq!(root.children(root.lookup(b"/logs").unwrap()).count(), 0);
    assert_eq!(attrs(&root, "/home"), format!("directory 0755 0:0 {EPOCH}"));
    assert_eq!(attrs(&root, "/root"), format!("directory 0700 0:0 {SOURCE_TIME}"));
}

#[test]
fn data_tree_holds_var_and_the_overlay_directories() {
    let mut root = source_tree();
    let summary = compose(&mut root, &full_config(), &ctx(Path::new("/"))).unwrap();
    let data = &summary.data;
    let e = EPOCH;
    let s = SOURCE_TIME;
    // Node numbers show the hard link a/b kept, and tool copied (a separate node).
    let expected = format!(
        "/ directory 0755 0:0 {s} \n\
         /.eflow directory 0755 0:0 {e} \n\
         /.eflow/overlays directory 0755 0:0 {e} \n\
         /.eflow/overlays/etc directory 0755 0:0 {e} \n\
         /.eflow/overlays/etc/upper directory 0755 0:0 {e} \n\
         /.eflow/overlays/etc/work directory 0700 0:0 {e} \n\
         /.eflow/overlays/home directory 0755 0:0 {e} \n\
         /.eflow/overlays/home/upper directory 0755 0:0 {e} \n\
         /.eflow/overlays/home/work directory 0700 0:0 {e} \n\
         /.eflow/overlays/root directory 0755 0:0 {e} \n\
         /.eflow/overlays/root/upper directory 0700 0:0 {e} \n\
         /.eflow/overlays/root/work directory 0700 0:0 {e} \n\
         /lib directory 0755 0:0 {s} \n\
         /lib/a file 0644 0:0 {s} 6 bytes node 4\n\
         /lib/apt directory 0755 0:0 {s} \n\
         /lib/apt/extended_states file 0644 0:0 {s} 6 bytes node 11\n\
         /lib/b file 0644 0:0 {s} 6 bytes node 4\n\
         /lib/dbus directory 0755 0:0 {s} \n\
         /lib/dbus/machine-id symlink 0777 0:0 {e} -> /etc/machine-id\n\
         /lib/systemd directory 0755 0:0 {s} \n\
         /lib/tool file 0755 0:0 {s} 4 bytes node 8\n\
         /log directory 0755 0:0 {s} \n\
         /tmp directory 1777 0:0 {s} \n"
    );
    assert_eq!(dump(data), expected);
    assert_eq!(text(data, "/lib/tool"), "tool");
    // The root no longer reaches anything under /var.
    assert!(root.lookup(b"/var/lib").is_none());
    assert_eq!(text(&root, "/usr/bin/tool"), "tool");
}

#[test]
fn split_var_alone_detaches_var() {
    let mut root = source_tree();
    let data = split_var(&mut root, &parse("system: {}\n"), &ctx(Path::new("/"))).unwrap();
    assert!(data.lookup(b"/lib/apt/extended_states").is_some());
    assert!(data.lookup(b"/.eflow/overlays/etc/upper").is_some());
    assert_eq!(root.children(root.lookup(b"/var").unwrap()).count(), 0);
}

#[test]
fn composing_is_deterministic_and_leaves_the_source_alone() {
    let source = source_tree();
    let before = dump_with_content(&source);
    let run = || {
        let mut root = source.clone();
        let summary = compose(&mut root, &full_config(), &ctx(Path::new("/"))).unwrap();
        (dump_with_content(&root), dump_with_content(&summary.data))
    };
    let first = run();
    let second = run();
    assert_eq!(first, second);
    assert_eq!(dump_with_content(&source), before, "the source tree changed");
    assert!(first.0.contains("/etc/fstab"));
}

#[test]
fn sshd_config_without_a_leading_include_gets_one() {
    let mut root = source_tree();
    root.put(
        b"/etc/ssh/sshd_config",
        file(0o644, "Port 22\nPasswordAuthentication yes\n"),
        &meta(0o755, 0, 0),
    )
    .unwrap();
    compose(&mut root, &parse("system: {}\n"), &ctx(Path::new("/"))).unwrap();
    assert_eq!(
        text(&root, "/etc/ssh/sshd_config"),
        "# Added by abforge: read the image's SSH policy before any other setting.\nInclude /etc/ssh/sshd_config.d/10-abforge.conf\n\nPort 22\nPasswordAuthentication yes\n"
    );
    // Without CA keys there is no TrustedUserCAKeys line and no key files.
    let drop_in = text(&root, "/etc/ssh/sshd_config.d/10-abforge.conf");
    assert!(!drop_in.contains("TrustedUserCAKeys"));
    assert!(root.lookup(b"/root/.ssh").is_none());
    assert!(root.lookup(b"/etc/ssh/trusted_user_ca_keys").is_none());
}

#[test]
fn missing_tools_and_os_release_are_reported() {
    let mut root = FileTree::new(meta(0o755, 0, 0));
    let summary = compose(&mut root, &parse("system: {}\n"), &ctx(Path::new("/"))).unwrap();
    assert_eq!(
        summary.warnings,
        [
            "the root has no os-release; /usr/lib/os-release is written with only IMAGE_ID and IMAGE_VERSION",
            "the root has no /usr/sbin/iptables-restore (package iptables): the firewall will not load",
            "the root has no /usr/sbin/ip6tables-restore (package iptables): the firewall will not load",
            "the root has no /etc/ssh/sshd_config: is openssh-server installed? The SSH policy is written but nothing reads it",
            "the root has no /usr/bin/ssh-keygen: SSH host keys cannot be generated on first boot",
        ]
    );
    assert_eq!(text(&root, "/usr/lib/os-release"), "IMAGE_ID=eflow\nIMAGE_VERSION=1.4.0\n");
    let os = root.lookup(b"/etc/os-release").unwrap();
    assert!(matches!(&root.node(os).kind, NodeKind::Symlink(t) if t == b"../usr/lib/os-release"));
    assert!(summary.data.lookup(b"/.eflow/overlays/root/upper").is_some());
}

#[test]
fn regular_os_release_in_etc_is_edited_in_place() {
    let mut root = source_tree();
    root.put(b"/etc/os-release", file(0o644, "ID=custom\nIMAGE_ID=old\n"), &meta(0o755, 0, 0))
        .unwrap();
    compose(
        &mut root,
        &parse("system: { identity: { hostname: edge-01 } }\n"),
        &ctx(Path::new("/")),
    )
    .unwrap();
    assert_eq!(text(&root, "/etc/os-release"), "ID=custom\nIMAGE_ID=eflow\nIMAGE_VERSION=1.4.0\n");
    assert_eq!(text(&root, "/usr/lib/os-release"), OS_RELEASE);
    assert_eq!(text(&root, "/etc/hostname"), "edge-01\n");
}

#[test]
fn files_entries_are_applied_last_with_mode_and_owner() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.service"), "[Service]\nExecStart=/usr/bin/agent\n")
        .unwrap();
    let yaml = "system:
  files:
    - { path: /usr/lib/systemd/system/agent.service, source: agent.service }
    - { path: /etc/motd, content: \"Managed image\\n\", mode: \"0640\", owner: \"app:adm\" }
    - { path: /opt/app, directory: true, mode: \"0750\", owner: app }
    - { path: /etc/ssh/sshd_config.d/10-abforge.conf, content: \"PasswordAuthentication no\\n\" }
    - { path: /var/lib/app/state, content: initial, owner: \"1000:1001\" }
    - { path: /usr/bin/agent-link, link: /opt/app/agent }
    - { path: /root, directory: true, mode: \"0750\" }
";
    let mut root = source_tree();
    let summary = compose(&mut root, &parse(yaml), &ctx(dir.path())).unwrap();
    assert_eq!(
        text(&root, "/usr/lib/systemd/system/agent.service"),
        "[Service]\nExecStart=/usr/bin/agent\n"
    );
    assert_eq!(
        attrs(&root, "/usr/lib/systemd/system/agent.service"),
        format!("file 0644 0:0 {EPOCH}")
    );
    assert_eq!(attrs(&root, "/etc/motd"), format!("file 0640 1000:4 {EPOCH}"));
    assert_eq!(attrs(&root, "/opt/app"), format!("directory 0750 1000:1001 {EPOCH}"));
    assert_eq!(
        text(&root, "/etc/ssh/sshd_config.d/10-abforge.conf"),
        "PasswordAuthentication no\n"
    );
    assert_eq!(attrs(&root, "/usr/bin/agent-link"), format!("symlink 0777 0:0 {EPOCH}"));
    // /root keeps its content, with the new mode.
    assert_eq!(attrs(&root, "/root"), format!("directory 0750 0:0 {EPOCH}"));
    // Under /var: on Data, not in the root.
    assert!(root.lookup(b"/var/lib/app/state").is_none());
    assert_eq!(text(&summary.data, "/lib/app/state"), "initial");
    assert_eq!(attrs(&summary.data, "/lib/app/state"), format!("file 0644 1000:1001 {EPOCH}"));
    assert_eq!(
        summary.record.files,
        [
            "/usr/lib/systemd/system/agent.service",
            "/etc/motd",
            "/opt/app",
            "/etc/ssh/sshd_config.d/10-abforge.conf",
            "/var/lib/app/state",
            "/usr/bin/agent-link",
            "/root",
        ]
    );

    for (yaml, message) in [
        (
            "system: { files: [ { path: /logs/x, content: a } ] }\n",
            "system.files: '/logs/x' is on the Log partition (/logs), which starts empty; nothing can be baked there",
        ),
        (
            "system: { files: [ { path: /etc/x, content: a, owner: nobody } ] }\n",
            "system.files: '/etc/x': user 'nobody' is not in the root's /etc/passwd",
        ),
        (
            "system: { files: [ { path: /etc/x, content: a, owner: \"app:wheel\" } ] }\n",
            "system.files: '/etc/x': group 'wheel' is not in the root's /etc/group",
        ),
    ] {
        let err = compose(&mut source_tree(), &parse(yaml), &ctx(dir.path())).unwrap_err();
        assert_eq!(format!("{err}"), message);
        assert_eq!(abforge::error::exit_code_for(&err), std::process::ExitCode::from(2));
    }
}

#[test]
fn firewall_can_be_turned_off_or_reject() {
    let mut root = source_tree();
    compose(&mut root, &parse("system: { firewall: { enabled: false } }\n"), &ctx(Path::new("/")))
        .unwrap();
    assert!(root.lookup(b"/etc/iptables").is_none());
    assert!(root.lookup(b"/usr/lib/systemd/system/abforge-firewall.service").is_none());
    assert!(describe_profile(&root).firewall_v4.is_none());

    let mut root = source_tree();
    compose(
        &mut root,
        &parse("system: { firewall: { inbound: reject, allow_ping: true, ssh_rate_limit_per_minute: 0 } }\n"),
        &ctx(Path::new("/")),
    )
    .unwrap();
    let v4 = text(&root, "/etc/iptables/rules.v4");
    assert!(v4.contains("-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT\n"));
    assert!(!v4.contains("recent"));
    assert!(v4.ends_with(
        "-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT\n-A INPUT -p tcp -j REJECT --reject-with tcp-reset\n-A INPUT -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n"
    ));
    let v6 = text(&root, "/etc/iptables/rules.v6");
    assert!(v6.contains("--icmpv6-type 128 -j ACCEPT\n"));
    assert!(v6.contains("-A INPUT -j REJECT --reject-with icmp6-port-unreachable\n"));
}

#[test]
fn the_rules_read_back_mean_what_was_asked() {
    let mut root = source_tree();
    compose(&mut root, &full_config(), &ctx(Path::new("/"))).unwrap();
    for path in ["/etc/iptables/rules.v4", "/etc/iptables/rules.v6"] {
        let fw = parse_rules(&text(&root, path));
        assert_eq!(fw.policies["INPUT"], "DROP");
        assert_eq!(fw.policies["FORWARD"], "DROP");
        assert_eq!(fw.policies["OUTPUT"], "ACCEPT");
        assert_eq!(fw.open_tcp, [22, 443]);
        assert_eq!(fw.open_udp, [51820]);
        assert_eq!(fw.rate_limits, [RateLimit { port: 22, connections: 3, seconds: 60 }]);
        assert!(fw.accepts_loopback && fw.accepts_established);
    }
    let v6 = parse_rules(&text(&root, "/etc/iptables/rules.v6"));
    assert_eq!(v6.icmpv6_types, [1, 2, 3, 4, 133, 134, 135, 136, 130, 131, 132, 143]);
}

#[test]
fn describe_profile_reads_the_profile_back() {
    let mut root = source_tree();
    let summary = compose(&mut root, &full_config(), &ctx(Path::new("/"))).unwrap();
    let report = describe_profile(&root);
    assert!(report.is_present());
    assert_eq!(report.record.as_ref(), Some(&summary.record));
    assert_eq!(report.overlays, ["/etc", "/home", "/root"]);
    assert_eq!(report.machine_id_empty, Some(true));
    assert_eq!(report.image_id.as_deref(), Some("eflow"));
    assert_eq!(report.image_version.as_deref(), Some("1.4.0"));
    assert_eq!(report.mounts.len(), 3);
    assert_eq!(report.mounts[1].device, format!("PARTUUID={DATA_UUID}"));
    assert_eq!(report.mounts[2].device, format!("PARTUUID={LOG_UUID}"));
    let lines = report.lines().join("\n");
    let expected = format!(
        "profile: eflow 1.4.0 (abforge record version 1)
firewall: on (input drop, forward drop, output accept); open TCP 22, 443; open UDP 51820; TCP 22 at most 3 new connections per 60 s per address
overlays: /etc, /home, /root
mount: /dev/mapper/root on / (ext4, ro)
mount: PARTUUID={DATA_UUID} on /var (ext4, defaults,nodev)
mount: PARTUUID={LOG_UUID} on /logs (ext4, defaults,nodev,nosuid,noexec)
ssh: password authentication off, keyboard-interactive off, root login prohibit-password, user certificates trusted; host keys in image: none; generated on first boot: yes
machine-id: empty (each machine generates its own)
os-release: IMAGE_ID=eflow IMAGE_VERSION=1.4.0"
    );
    assert_eq!(lines, expected);

    // The untouched source reads as having no profile, with its host keys shown.
    let plain = describe_profile(&source_tree());
    assert!(!plain.is_present());
    assert_eq!(
        plain.ssh.host_keys_in_image,
        [
            "/etc/ssh/ssh_host_rsa_key",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub"
        ]
    );
    assert_eq!(plain.machine_id_empty, Some(false));
}

#[test]
fn partuuids_come_from_the_context() {
    let other_data: Guid = "11111111-2222-4333-8444-555555555555".parse().unwrap();
    let mut context = ctx(Path::new("/"));
    context.data_partuuid = other_data;
    let mut root = source_tree();
    compose(&mut root, &parse("system: {}\n"), &context).unwrap();
    let fstab = text(&root, "/etc/fstab");
    assert!(fstab.contains("PARTUUID=11111111-2222-4333-8444-555555555555 /var "));
    assert!(fstab.contains(&format!("PARTUUID={LOG_UUID} /logs ")));
}

#[test]
fn unquoted_modes_are_read_as_octal_text() {
    // YAML would read 0644 as a number; the manifest keeps the text, so the
    // mode means what it looks like.
    let cfg = parse(
        "system: { files: [ { path: /etc/x, content: a, mode: 0644 }, { path: /etc/y, content: a, mode: 750, owner: 0:0 } ] }\n",
    );
    assert_eq!(cfg.files[0].permissions(), Ok(0o644));
    assert_eq!(cfg.files[1].permissions(), Ok(0o750));
    assert!(cfg.validate(Path::new("/")).is_empty());
}
