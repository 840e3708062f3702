//! The firewall: iptables rule sets in `iptables-restore` format (iptables 1.8,
//! filter table only) and a systemd unit loading them before the network is up.
//!
//! Inbound: policy DROP; loopback, established and related traffic accepted;
//! invalid packets dropped; new connections accepted only to the listed ports.
//! Forwarding: DROP. Outbound: ACCEPT.
//!
//! SSH rate limit (TCP 22, with `recent`, the xt_recent match): each new
//! connection is first recorded (`--set`), then dropped when its source has
//! recorded `limit + 1` connections within 60 seconds (`--update --hitcount`). The
//! current packet is part of the count, so with a limit of 3 the 1st to 3rd
//! connection within a minute pass and the 4th is dropped; a dropped attempt is
//! recorded too, so an address that keeps trying stays blocked until it has been
//! quiet for a minute.
//!
//! IPv6 also accepts the ICMPv6 messages it needs (RFC 4890 §4.4): destination
//! unreachable (1), packet too big (2), time exceeded (3), parameter problem (4),
//! router solicitation and advertisement (133, 134) and neighbour solicitation and
//! advertisement (135, 136) with a hop limit of 255 (so they come from the link),
//! multicast listener messages (130, 131, 132, 143) from link-local addresses, and
//! DHCPv6 replies to the client port 546 from link-local addresses. Left out:
//! nftables syntax, other tables (nat, mangle), outbound filtering.

use super::config::{FirewallConfig, InboundPolicy};
use super::{Composer, UNIT_DIR};

pub const RULES_V4: &str = "/etc/iptables/rules.v4";
pub const RULES_V6: &str = "/etc/iptables/rules.v6";
pub const UNIT: &str = "abforge-firewall.service";
/// The port the SSH rate limit applies to.
pub const SSH_PORT: u64 = 22;
/// Seconds the SSH rate limit counts new connections over.
pub const RATE_WINDOW_SECONDS: u64 = 60;
/// Name of the `recent` list of SSH connection attempts.
pub const RECENT_LIST: &str = "abforge-ssh";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The IPv4 rule set.
pub fn rules_v4(cfg: &FirewallConfig) -> String {
    rules(cfg, Family::V4)
}

/// The IPv6 rule set.
pub fn rules_v6(cfg: &FirewallConfig) -> String {
    rules(cfg, Family::V6)
}

fn rules(cfg: &FirewallConfig, family: Family) -> String {
    let (tool, loopback, icmp) = match family {
        Family::V4 => ("iptables-restore", "127.0.0.0/8", "icmp"),
        Family::V6 => ("ip6tables-restore", "::1/128", "ipv6-icmp"),
    };
    let mut r: Vec<String> = vec![
        format!("# Written by abforge: the firewall of this image (system.firewall), for {tool}."),
        "*filter".into(),
        ":INPUT DROP [0:0]".into(),
        ":FORWARD DROP [0:0]".into(),
        ":OUTPUT ACCEPT [0:0]".into(),
        "-A INPUT -i lo -j ACCEPT".into(),
        format!("-A INPUT -s {loopback} -j DROP"),
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
        "-A INPUT -m conntrack --ctstate INVALID -j DROP".into(),
    ];
    match family {
        Family::V4 => {
            if cfg.allow_ping {
                r.push("-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT".into());
            }
        }
        Family::V6 => {
            for t in [1, 2, 3, 4] {
                r.push(format!("-A INPUT -p {icmp} -m icmp6 --icmpv6-type {t} -j ACCEPT"));
            }
            for t in [133, 134, 135, 136] {
                r.push(format!(
                    "-A INPUT -p {icmp} -m icmp6 --icmpv6-type {t} -m hl --hl-eq 255 -j ACCEPT"
                ));
            }
            for t in [130, 131, 132, 143] {
                r.push(format!(
                    "-A INPUT -s fe80::/10 -p {icmp} -m icmp6 --icmpv6-type {t} -j ACCEPT"
                ));
            }
            if cfg.allow_ping {
                r.push(format!("-A INPUT -p {icmp} -m icmp6 --icmpv6-type 128 -j ACCEPT"));
            }
            r.push("-A INPUT -s fe80::/10 -p udp -m udp --dport 546 -j ACCEPT".into());
        }
    }
    let limit = cfg.ssh_rate_limit_per_minute.value;
    for port in &cfg.allow_tcp {
        let port = port.value;
        let new = format!("-A INPUT -p tcp -m tcp --dport {port} -m conntrack --ctstate NEW");
        if port == SSH_PORT && limit > 0 {
            r.push(format!("{new} -m recent --set --name {RECENT_LIST} --rsource"));
            r.push(format!(
                "{new} -m recent --update --seconds {RATE_WINDOW_SECONDS} --hitcount {} --name {RECENT_LIST} --rsource -j DROP",
                limit + 1
            ));
        }
        r.push(format!("{new} -j ACCEPT"));
    }
    for port in &cfg.allow_udp {
        r.push(format!("-A INPUT -p udp -m udp --dport {} -j ACCEPT", port.value));
    }
    if cfg.inbound == InboundPolicy::Reject {
        let unreachable = match family {
            Family::V4 => "icmp-port-unreachable",
            Family::V6 => "icmp6-port-unreachable",
        };
        r.push("-A INPUT -p tcp -j REJECT --reject-with tcp-reset".into());
        r.push(format!("-A INPUT -j REJECT --reject-with {unreachable}"));
    }
    r.push("COMMIT".into());
    r.join("\n") + "\n"
}

/// The unit loading both rule sets before any network configuration starts.
pub fn unit() -> String {
    format!(
        "# Written by abforge: loads the firewall of this image (system.firewall)\n\
         # before any network interface is configured.\n\
         [Unit]\n\
         Description=Firewall of this image (iptables rules)\n\
         DefaultDependencies=no\n\
         After=systemd-modules-load.service local-fs.target\n\
         Wants=network-pre.target\n\
         Before=network-pre.target shutdown.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/sbin/iptables-restore {RULES_V4}\n\
         ExecStart=/usr/sbin/ip6tables-restore {RULES_V6}\n\
         \n\
         [Install]\n\
         WantedBy=sysinit.target\n"
    )
}

/// Writes the rule sets and the unit, enabled from sysinit.target (so the rules
/// are loaded in every boot target, rescue included, and ordered before
/// network-pre.target, which every network manager waits for).
pub(crate) fn compose_firewall(c: &mut Composer<'_>, cfg: &FirewallConfig) -> anyhow::Result<()> {
    c.put_text(RULES_V4, &rules_v4(cfg), 0o644)?;
    c.put_text(RULES_V6, &rules_v6(cfg), 0o644)?;
    c.put_text(&format!("{UNIT_DIR}/{UNIT}"), &unit(), 0o644)?;
    c.enable_unit(UNIT, "sysinit.target")?;
    for tool in ["iptables-restore", "ip6tables-restore"] {
        let present = ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| c.lookup_kind(&format!("{dir}/{tool}")).is_some());
        if !present {
            c.warn(format!(
                "the root has no /usr/sbin/{tool} (package iptables): the firewall will not load"
            ));
        }
    }
    Ok(())
}
