//! The security profile against the real tools: the rule sets load in
//! iptables-restore / ip6tables-restore, the sshd drop-in is accepted by
//! `sshd -t` and in effect in `sshd -T`, and, in private network and mount
//! namespaces, the SSH rate limit lets 3 connections from an address through in a
//! minute and drops the 4th. Nothing of the machine's /etc/ssh or its network is
//! touched: sshd runs with throwaway host keys, and the namespaces vanish with the test.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use abforge::profile::config::{SystemConfig, unspanned};
use abforge::profile::{ProfileContext, compose};
use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};
use abforge_tests::{run, run_ok, scratch, tool};

/// A Debian-like sshd_config (the parts that matter), including its drop-ins first.
const SSHD_CONFIG: &str = "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\nSubsystem sftp /usr/lib/openssh/sftp-server\n";

fn source(sshd_config: &str) -> FileTree {
    let meta = Metadata::new(0o755, 0, 0, Timestamp::from_seconds(1));
    let mut tree = FileTree::new(meta.clone());
    let file = |text: &str| Node {
        meta: Metadata::new(0o644, 0, 0, Timestamp::from_seconds(1)),
        kind: NodeKind::File(Content::Bytes(Arc::from(text.as_bytes()))),
    };
    tree.put(b"/etc/ssh/sshd_config", file(sshd_config), &meta).unwrap();
    tree.put(b"/etc/ssh/ssh_host_ed25519_key", file("secret"), &meta).unwrap();
    tree.put(b"/var/lib/x", file("x"), &meta).unwrap();
    let _ = tree.make_dirs(&[b"root"], &meta).unwrap();
    tree
}

fn config() -> SystemConfig {
    let mut cfg = SystemConfig::default();
    cfg.firewall.allow_tcp = vec![unspanned(22), unspanned(443)];
    cfg.firewall.allow_udp = vec![unspanned(51820)];
    cfg.ssh.trusted_user_ca_keys = vec![unspanned(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMClA326XsylBkiygs6MbX/7WLFhqjoLjlSMsBiBIaL+ user-ca"
            .to_string(),
    )];
    cfg
}

fn composed(sshd_config: &str) -> FileTree {
    let mut root = source(sshd_config);
    let ctx = ProfileContext::new(
        "eflow",
        "1.4.0",
        "2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7".parse().unwrap(),
        "8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a".parse().unwrap(),
        1_700_000_000,
        Path::new("/"),
    );
    compose(&mut root, &config(), &ctx).unwrap();
    root
}

fn text(tree: &FileTree, path: &str) -> String {
    let id = tree.lookup(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
    match &tree.node(id).kind {
        NodeKind::File(content) => {
            let mut buf = vec![0; usize::try_from(content.len()).unwrap()];
            content.read_exact_at(&mut buf, 0).unwrap();
            String::from_utf8(buf).unwrap()
        }
        other => panic!("{path} is a {}", other.type_name()),
    }
}

/// Writes the composed rule sets into `dir`; returns (rules.v4, rules.v6).
fn write_rules(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = composed(SSHD_CONFIG);
    let v4 = dir.join("rules.v4");
    let v6 = dir.join("rules.v6");
    std::fs::write(&v4, text(&root, "/etc/iptables/rules.v4")).unwrap();
    std::fs::write(&v6, text(&root, "/etc/iptables/rules.v6")).unwrap();
    (v4, v6)
}

#[test]
#[cfg_attr(
    not(any(ci, all(is_root, have_iptables_restore))),
    ignore = "needs iptables-restore (package iptables) and root"
)]
fn iptables_restore_accepts_the_ipv4_rules() {
    let dir = scratch();
    let (v4, _) = write_rules(dir.path());
    run_ok(Command::new(tool("iptables-restore")).arg("--test").arg(&v4));
}

#[test]
#[cfg_attr(
    not(any(ci, all(is_root, have_ip6tables_restore))),
    ignore = "needs ip6tables-restore (package iptables) and root"
)]
fn ip6tables_restore_accepts_the_ipv6_rules() {
    let dir = scratch();
    let (_, v6) = write_rules(dir.path());
    run_ok(Command::new(tool("ip6tables-restore")).arg("--test").arg(&v6));
}

#[test]
#[cfg_attr(
    not(any(ci, all(is_root, have_iptables_restore))),
    ignore = "needs iptables-restore (package iptables) and root"
)]
fn a_broken_rule_set_is_refused() {
    // Shows the --test check can fail: a port out of range.
    let dir = scratch();
    let (v4, _) = write_rules(dir.path());
    let broken = std::fs::read_to_string(&v4).unwrap().replace("--dport 443", "--dport 70000");
    std::fs::write(&v4, broken).unwrap();
    let out = run(Command::new(tool("iptables-restore")).arg("--test").arg(&v4));
    assert!(!out.status.success());
}

/// A directory holding a copy of the composed /etc/ssh with its paths pointing
/// into it, throwaway host keys, and the main config named `sshd_config`.
fn sshd_dir(sshd_config: &str, extra: &str) -> tempfile::TempDir {
    let dir = scratch();
    let d = dir.path().display().to_string();
    let root = composed(sshd_config);
    let main = text(&root, "/etc/ssh/sshd_config")
        .replace("/etc/ssh/sshd_config.d", &format!("{d}/sshd_config.d"));
    std::fs::create_dir(dir.path().join("sshd_config.d")).unwrap();
    let drop_in = text(&root, "/etc/ssh/sshd_config.d/10-abforge.conf");
    std::fs::write(dir.path().join("sshd_config.d/10-abforge.conf"), drop_in).unwrap();
    std::fs::write(
        dir.path().join("trusted_user_ca_keys"),
        text(&root, "/etc/ssh/trusted_user_ca_keys"),
    )
    .unwrap();
    run_ok(
        Command::new(tool("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path().join("host_ed25519")),
    );
    std::fs::write(
        dir.path().join("sshd_config"),
        format!("{main}HostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n{extra}"),
    )
    .unwrap();
    dir
}

/// Runs sshd with `args` in a private mount namespace whose /run is a fresh
/// tmpfs holding the privilege separation directory sshd insists on.
fn sshd_in_private_run(args: &str) -> std::process::Output {
    let script = format!(
        "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd && exec {} {args}",
        tool("sshd").display()
    );
    run(Command::new(tool("unshare")).args(["-m", "sh", "-c", &script]))
}

fn check_sshd(sshd_config: &str) -> String {
    let dir = sshd_dir(sshd_config, "UsePAM no\n");
    let cfg = dir.path().join("sshd_config");
    let test = sshd_in_private_run(&format!("-t -f {}", cfg.display()));
    assert!(test.status.success(), "sshd -t failed: {}", String::from_utf8_lossy(&test.stderr));
    let dump = sshd_in_private_run(&format!("-T -f {}", cfg.display()));
    assert!(dump.status.success(), "sshd -T failed: {}", String::from_utf8_lossy(&dump.stderr));
    String::from_utf8(dump.stdout).unwrap()
}

fn assert_policy(effective: &str) {
    let lines: Vec<&str> = effective.lines().collect();
    for want in [
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "pubkeyauthentication yes",
        "permitemptypasswords no",
        "authenticationmethods publickey",
        "permitrootlogin without-password",
    ] {
        assert!(lines.contains(&want), "sshd -T lacks '{want}':\n{effective}");
    }
    assert!(lines.iter().any(|l| l.starts_with("trustedusercakeys ")), "{effective}");
}

#[test]
#[cfg_attr(
    not(any(ci, all(is_root, have_sshd))),
    ignore = "needs sshd (package openssh-server) and root"
)]
fn sshd_accepts_the_drop_in_and_turns_passwords_off() {
    assert_policy(&check_sshd(SSHD_CONFIG));
}

#[test]
#[cfg_attr(
    not(any(ci, all(is_root, have_sshd))),
    ignore = "needs sshd (package openssh-server) and root"
)]
fn the_drop_in_wins_over_a_main_config_allowing_passwords() {
    // A main config without the Include and with passwords on: compose puts an
    // Include of the drop-in first, so the drop-in's values are the ones read first.
    assert_policy(&check_sshd(
        "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nPermitRootLogin yes\nUsePAM yes\n",
    ));
}

/// In fresh network and mount namespaces: a veth pair to a client namespace, the
/// composed rules loaded, sshd listening on port 22; the client then opens five
/// connections in a row and the script prints, for each, whether sshd's banner came.
const RATE_LIMIT_SCRIPT: &str = r#"
set -eu
cfg=$1; v4=$2; v6=$3
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/sshd
ip link set lo up
unshare -n sleep 300 &
client=$!
while [ "$(readlink /proc/$client/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done
ip link add abf0 type veth peer name abf1 netns $client
ip addr add 10.77.0.1/24 dev abf0
ip -6 addr add fd77::1/64 dev abf0 nodad
ip link set abf0 up
nsenter -t $client -n sh -c 'ip link set lo up; ip addr add 10.77.0.2/24 dev abf1; ip -6 addr add fd77::2/64 dev abf1 nodad; ip link set abf1 up'
iptables-restore "$v4"
ip6tables-restore "$v6"
"$SSHD" -D -f "$cfg" &
sshd=$!
trap 'kill $sshd $client 2>/dev/null || true' EXIT
# Wait until sshd listens (over loopback, which the rules accept and do not count).
tries=0
until timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/22'; do
  tries=$((tries + 1)); [ $tries -lt 100 ] || { echo "sshd did not start"; exit 1; }
  sleep 0.1
done
for address in 10.77.0.1 fd77::1; do
  for attempt in 1 2 3 4 5; do
    if nsenter -t $client -n timeout 3 bash -c "exec 3<>/dev/tcp/$address/22; head -c 7 <&3" >/dev/null 2>&1; then
      echo "$address $attempt banner"
    else
      echo "$address $attempt dropped"
    fi
  done
done
"#;

#[test]
#[cfg_attr(
    not(any(
        ci,
        all(
            is_root,
            have_sshd,
            have_iptables_restore,
            have_ip6tables_restore,
            have_ip,
            have_unshare,
            have_nsenter
        )
    )),
    ignore = "needs root, sshd (openssh-server), iptables-restore (iptables), ip (iproute2), unshare and nsenter (util-linux)"
)]
fn the_fourth_ssh_connection_within_a_minute_is_dropped() {
    let dir = sshd_dir(SSHD_CONFIG, "UsePAM no\nListenAddress 0.0.0.0:22\nListenAddress [::]:22\n");
    let (v4, v6) = write_rules(dir.path());
    let script = dir.path().join("rate-limit.sh");
    std::fs::write(&script, RATE_LIMIT_SCRIPT).unwrap();
    let out = run(Command::new(tool("unshare"))
        .args(["-n", "-m", "bash"])
        .arg(&script)
        .arg(dir.path().join("sshd_config"))
        .arg(&v4)
        .arg(&v6)
        .env("SSHD", tool("sshd"))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = "10.77.0.1 1 banner\n10.77.0.1 2 banner\n10.77.0.1 3 banner\n10.77.0.1 4 dropped\n10.77.0.1 5 dropped\n\
                    fd77::1 1 banner\nfd77::1 2 banner\nfd77::1 3 banner\nfd77::1 4 dropped\nfd77::1 5 dropped\n";
    assert_eq!(stdout, expected, "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
}
