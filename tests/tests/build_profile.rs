//! The security profile in a built image (issue 6): the composed root and Data
//! partitions read back from the disk with ext4-view.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use abforge_tests::layout::{extract_sparse, report_partition, same_sparse_content};
use abforge_tests::{abforge, repo_root, run_ok, scratch};
use ext4_view::Ext4;
use serde_json::Value;

/// A copy of the demo root with what an image must not carry (host keys, a
/// machine id) and state under /var that must move to Data.
fn make_source(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(repo_root().join("manifests/demo-rootfs"))
            .arg(&root),
    );
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "PRIVATE KEY OF THE BUILD MACHINE\n")
        .unwrap();
    fs::write(root.join("etc/ssh/ssh_host_ed25519_key.pub"), "ssh-ed25519 AAAA build\n").unwrap();
    fs::write(
        root.join("etc/ssh/sshd_config"),
        "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\n",
    )
    .unwrap();
    fs::write(root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::create_dir_all(root.join("var/lib/app")).unwrap();
    fs::write(root.join("var/lib/app/state.db"), "shipped state\n").unwrap();
    root
}

/// Every file under a directory with its bytes and mode (to show the build did
/// not change the source).
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let bytes = if meta.is_file() { fs::read(entry.path()).unwrap() } else { Vec::new() };
            out.insert(entry.path(), (bytes, meta.permissions().mode()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

fn manifest(root: &Path) -> String {
    let text = fs::read_to_string(repo_root().join("manifests/eflow.yaml")).unwrap();
    text.replace("source: demo-rootfs/", &format!("source: {}", root.display()))
        .replace("contents: demo-esp/", &format!("contents: {}", repo_root().join("manifests/demo-esp").display()))
        .replace("format: vhdx", "format: raw")
        .replace("ssh: { password_authentication: false }", "ssh: { password_authentication: false, authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqDlmWEZ5nQ9p3Ni5kzSvmTXsNhfLNeZOQ9K8dmBMTQ ops@example'] }")
}

fn open_partition(image: &Path, report: &Value, name: &str, dir: &Path) -> (Ext4, PathBuf) {
    let partition = report_partition(report, name);
    let path = dir.join(format!("{name}.img"));
    extract_sparse(
        image,
        partition["offset"].as_u64().unwrap(),
        partition["size"].as_u64().unwrap(),
        &path,
    );
    (Ext4::load_from_path(&path).unwrap(), path)
}

#[test]
fn the_profile_is_in_the_root_and_var_is_on_data() {
    let dir = scratch();
    let root = make_source(dir.path());
    let before = fingerprint(&root);
    let manifest_path = dir.path().join("eflow.yaml");
    fs::write(&manifest_path, manifest(&root)).unwrap();
    let out = dir.path().join("out");
    run_ok(&mut abforge([
        "build".as_ref(),
        manifest_path.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ]));
    let report: Value =
        serde_json::from_str(&fs::read_to_string(out.join("eflow.json")).unwrap()).unwrap();
    let image = out.join("eflow.raw");
    assert_eq!(before, fingerprint(&root), "the build changed its source");

    let (rootfs, root_a) = open_partition(&image, &report, "RootFSA", dir.path());
    // Nothing of the build machine's identity.
    assert_eq!(rootfs.read("/etc/machine-id").unwrap(), b"");
    assert!(!rootfs.exists("/etc/ssh/ssh_host_ed25519_key").unwrap());
    assert!(!rootfs.exists("/etc/ssh/ssh_host_ed25519_key.pub").unwrap());
    // /var is an empty mount point in the root; /logs exists.
    assert_eq!(rootfs.read_dir("/var").unwrap().count(), 2, "only . and ..");
    assert!(rootfs.metadata("/logs").unwrap().is_dir());
    // fstab names this disk's Log and Data by PARTUUID.
    let fstab = rootfs.read_to_string("/etc/fstab").unwrap();
    for (name, mount) in [("Data", "/var"), ("Log", "/logs")] {
        let uuid = report_partition(&report, name)["uuid"].as_str().unwrap().to_string();
        let line = fstab
            .lines()
            .find(|l| l.starts_with(&format!("PARTUUID={uuid}")))
            .unwrap_or_else(|| panic!("no {name} line in:\n{fstab}"));
        assert_eq!(line.split_whitespace().nth(1), Some(mount), "{line}");
    }
    // Generated files: exact content, mode and owner.
    let sshd = rootfs.read_to_string("/etc/ssh/sshd_config.d/10-abforge.conf").unwrap();
    assert!(
        sshd.contains("PasswordAuthentication no")
            && sshd.contains("KbdInteractiveAuthentication no"),
        "{sshd}"
    );
    let keys = rootfs.metadata("/root/.ssh/authorized_keys").unwrap();
    assert_eq!((keys.mode() & 0o7777, keys.uid(), keys.gid()), (0o600, 0, 0));
    assert!(rootfs.read_to_string("/root/.ssh/authorized_keys").unwrap().contains("ops@example"));
    let rules = rootfs.read_to_string("/etc/iptables/rules.v4").unwrap();
    assert!(
        rules.contains(":INPUT DROP")
            && rules.contains("--dport 22")
            && rules.contains("--hitcount 4"),
        "{rules}"
    );
    let os_release = rootfs.read_to_string("/etc/os-release").unwrap();
    assert!(
        os_release.contains("IMAGE_ID=eflow") && os_release.contains("IMAGE_VERSION=1.4.0"),
        "{os_release}"
    );
    for path in [
        "/etc/fstab",
        "/etc/iptables/rules.v4",
        "/etc/iptables/rules.v6",
        "/etc/ssh/sshd_config.d/10-abforge.conf",
        "/usr/lib/abforge/profile.json",
    ] {
        let meta = rootfs.metadata(path).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o644, 0, 0), "{path}");
    }

    // Data holds the source's /var and the overlay directories.
    let (data, _) = open_partition(&image, &report, "Data", dir.path());
    assert_eq!(data.read("/lib/app/state.db").unwrap(), b"shipped state\n");
    for name in ["etc", "home", "root"] {
        for part in ["upper", "work"] {
            assert!(
                data.metadata(format!("/.eflow/overlays/{name}/{part}").as_str()).unwrap().is_dir(),
                "{name}/{part}"
            );
        }
    }
    assert_eq!(data.metadata("/.eflow/overlays/root/upper").unwrap().mode() & 0o7777, 0o700);

    // One root image for both slots.
    let (_, root_b) = open_partition(&image, &report, "RootFSB", dir.path());
    assert!(same_sparse_content(&root_a, &root_b), "RootFSA and RootFSB differ");

    // inspect finds the profile from the image alone.
    let inspected =
        run_ok(&mut abforge(["inspect".as_ref(), image.as_os_str(), "--json".as_ref()]));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let profile = &inspected["partitions"][2]["profile"];
    assert!(profile.is_object(), "no profile in {}", inspected["partitions"][2]);
    let table = String::from_utf8_lossy(
        &run_ok(&mut abforge(["inspect".as_ref(), image.as_os_str()])).stdout,
    )
    .to_string();
    assert!(
        table.contains("open TCP 22") && table.contains("password authentication off"),
        "{table}"
    );
}

#[test]
fn bad_profiles_exit_2_and_write_nothing() {
    let cases: &[(&str, &str, &str)] = &[
        ("paths: [/etc, /home, /root]", "paths: [etc, /home]", "absolute"),
        ("allow_tcp: [22]", "allow_tcp: [22, 70000]", "70000"),
        ("  ssh: {", "  files: [{ path: /etc/../../escape, content: x }]\n  ssh: {", ".."),
        (
            "authorized_keys: ['ssh-ed25519",
            "authorized_keys: ['not a key', 'ssh-ed25519",
            "authorized",
        ),
    ];
    for (from, to, expect) in cases {
        let dir = scratch();
        let root = make_source(dir.path());
        let text = manifest(&root).replace(from, to);
        assert!(text.contains(to), "{to}: the edit did not apply");
        let manifest_path = dir.path().join("eflow.yaml");
        fs::write(&manifest_path, text).unwrap();
        let out = dir.path().join("out");
        let result = abforge_tests::run(&mut abforge([
            "build".as_ref(),
            manifest_path.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ]));
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{to}: {stderr}");
        assert!(stderr.contains(expect), "{to}: '{expect}' not in {stderr}");
        assert!(stderr.contains("eflow.yaml:"), "{to}: no location in {stderr}");
        assert!(
            !out.exists() || fs::read_dir(&out).unwrap().next().is_none(),
            "{to}: wrote output"
        );
    }
}
