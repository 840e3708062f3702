//! `verity: partition` (issue 3): the tree in the paired DPS root-verity
//! partition, both partitions' UUIDs from the root hash, the other slot empty.

use std::fs;
use std::path::{Path, PathBuf};

use abforge_tests::layout::{build_report, extract_sparse, report_partition};
use abforge_tests::{abforge, repo_root, run, run_ok, run_tool, scratch};
use serde_json::Value;

fn manifest(dir: &Path, verity_size: &str, populate: Option<&str>) -> PathBuf {
    let text = fs::read_to_string(repo_root().join("manifests/eflow.yaml")).unwrap();
    let demo = repo_root().join("manifests");
    let populate = populate.map(|p| format!("\n    populate: {p}")).unwrap_or_default();
    let text = text
        .replace("source: demo-rootfs/", &format!("source: {}/demo-rootfs/", demo.display()))
        .replace("contents: demo-esp/", &format!("contents: {}/demo-esp/", demo.display()))
        .replace(
            "    verity: appended          # hash tree after the file system, same partition",
            &format!("    verity: partition{populate}\n  - {{ name: 'RootVerity{{SLOT}}', per_slot: true, type: root-verity, size: {verity_size} }}"),
        )
        .replace("format: vhdx ", "format: raw ");
    assert!(text.contains("verity: partition"), "the manifest edit did not apply");
    let path = dir.join("eflow.yaml");
    fs::write(&path, text).unwrap();
    path
}

fn build(manifest: &Path, out: &Path) -> Value {
    build_report(manifest, out, "eflow", &[])
}

/// The UUID text of 16 bytes of a hex string starting at hex digit `start`.
fn uuid_of(hex: &str, start: usize) -> String {
    let h = &hex[start..start + 32];
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_veritysetup, have_sgdisk, have_e2fsck))),
    ignore = "needs veritysetup (cryptsetup-bin), sgdisk (gdisk) and e2fsck (e2fsprogs)"
)]
fn the_tree_has_its_own_partition_and_slot_b_is_left_empty() {
    let dir = scratch();
    let out = dir.path().join("out");
    let report = build(&manifest(dir.path(), "64MiB", None), &out);
    let image = out.join("eflow.raw");
    let verity = report["verity"].as_array().unwrap();
    assert_eq!(verity.len(), 1, "only slot a is populated: {verity:?}");
    let entry = &verity[0];
    assert_eq!(entry["partition"], "RootFSA");
    assert_eq!(entry["hash_partition"], "RootVerityA");
    assert_eq!(entry["hash_offset"], 0);
    let root_hash = entry["root_hash"].as_str().unwrap();
    // The Discoverable Partitions Specification's identities: the halves of the root hash.
    let root = report_partition(&report, "RootFSA");
    let hash = report_partition(&report, "RootVerityA");
    assert_eq!(root["uuid"].as_str().unwrap(), uuid_of(root_hash, 0));
    assert_eq!(hash["uuid"].as_str().unwrap(), uuid_of(root_hash, 32));
    assert_eq!(hash["read_only"], true);
    assert_eq!(hash["type_name"], "root-verity");
    // Slot b's root and tree partitions wait for the first update.
    let empty: Vec<&Value> =
        report["partitions"].as_array().unwrap().iter().filter(|p| p["name"] == "_empty").collect();
    assert_eq!(empty.len(), 2, "{empty:?}");
    assert!(empty.iter().all(|p| p["slot"] == "b" && p["filesystem"] == "none"));

    let gpt = run_tool("sgdisk", ["-v".as_ref(), image.as_os_str()]);
    assert!(String::from_utf8_lossy(&gpt.stdout).contains("No problems found"));
    let info = run_tool("sgdisk", [format!("-i{}", hash["index"]).as_ref(), image.as_os_str()]);
    let info = String::from_utf8_lossy(&info.stdout).to_lowercase();
    assert!(info.contains(&format!("partition unique guid: {}", uuid_of(root_hash, 32))), "{info}");
    assert!(info.contains("attribute flags: 1000000000000000"), "{info}");

    let data = dir.path().join("root.img");
    let tree = dir.path().join("tree.img");
    extract_sparse(&image, root["offset"].as_u64().unwrap(), root["size"].as_u64().unwrap(), &data);
    extract_sparse(&image, hash["offset"].as_u64().unwrap(), hash["size"].as_u64().unwrap(), &tree);
    run_tool("e2fsck", ["-fn".as_ref(), data.as_os_str()]);
    run_tool(
        "veritysetup",
        ["verify".as_ref(), data.as_os_str(), tree.as_os_str(), root_hash.as_ref()],
    );
    run_ok(&mut abforge(["verify".as_ref(), image.as_os_str()]));

    // A flipped byte in the tree partition fails verification, naming it.
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().read(true).write(true).open(&image).unwrap();
    let at = hash["offset"].as_u64().unwrap() + 4096 + 100;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    let result = run(&mut abforge(["verify".as_ref(), image.as_os_str()]));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("RootFSA")
            && stderr.contains("RootVerityA")
            && stderr.contains("hash block"),
        "{stderr}"
    );
}

#[test]
fn every_slot_can_be_populated_and_a_small_tree_partition_is_refused() {
    let dir = scratch();
    let report = build(&manifest(dir.path(), "64MiB", Some("every-slot")), &dir.path().join("out"));
    assert_eq!(report["verity"].as_array().unwrap().len(), 2);
    let (a, b) = (report_partition(&report, "RootFSA"), report_partition(&report, "RootFSB"));
    assert_ne!(a["uuid"], b["uuid"], "two partitions cannot share a UUID");
    run_ok(&mut abforge(["verify".as_ref(), dir.path().join("out/eflow.raw").as_os_str()]));

    let small = scratch();
    let result =
        run(&mut abforge(["validate".as_ref(), manifest(small.path(), "1MiB", None).as_os_str()]));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("too small for the verity tree of 'RootFSA'"), "{stderr}");
    assert!(stderr.contains("eflow.yaml:"), "{stderr}");
}
