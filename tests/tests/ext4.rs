//! The native ext4 writer checked against e2fsck, ext4-view and (as root) the
//! kernel: every kind of entry, large and sparse files, huge directories, full and
//! tiny images, a journal, reproducibility and bad input.

use abforge_partitions::FileRegion;
use abforge_partitions::ext4::{self, Ext4Error};
use abforge_partitions::tree::{Content, FileTree, Node, NodeKind};
use abforge_tests::ext4::*;
use abforge_tests::{run_ok, scratch, tool};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn every_kind_of_entry_is_clean_and_reads_back() {
    let dir = scratch();
    let image = dir.path().join("everything.img");
    let tree = everything_tree();
    let summary = write_image(&tree, &options(), &image, 64 * MIB).unwrap();
    assert_eq!(summary.block_count, 16384);
    assert_e2fsck_clean(&image);
    let checked = assert_reads_back(&tree, &image);
    assert!(checked > 3000, "{checked}");
    let file = std::fs::File::open(&image).unwrap();
    let info = ext4::probe(FileRegion::new(&file, 0, 64 * MIB)).unwrap();
    assert_eq!(info.label, "root");
    assert_eq!(info.free_blocks, summary.free_blocks);
    assert!(info.checksum_ok && !info.has_journal);
}

#[test]
#[cfg_attr(not(any(ci, have_debugfs)), ignore = "needs debugfs (package e2fsprogs)")]
fn xattrs_links_and_devices_as_debugfs_sees_them() {
    let dir = scratch();
    let image = dir.path().join("x.img");
    write_image(&everything_tree(), &options(), &image, 64 * MIB).unwrap();
    let debugfs = |cmd: &str| {
        let out = run_ok(Command::new(tool("debugfs")).arg("-R").arg(cmd).arg(&image));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = debugfs("ea_list /xattrs");
    for needle in
        ["user.small", "user.big", "trusted.t", "security.selinux", "system.posix_acl_access"]
    {
        assert!(list.contains(needle), "{needle} missing from:\n{list}");
    }
    assert!(debugfs("ea_list /bin/ping").contains("security.capability"));
    let stat = debugfs("stat /etc/hosts");
    assert!(stat.contains("Links: 3"), "{stat}");
    let stat = debugfs("stat /dev/big-char");
    assert!(stat.contains("Device major/minor number: 300:70000"), "{stat}");
    let stat = debugfs("stat /tmp/owned");
    assert!(stat.contains("User: 100000") && stat.contains("Group: 200000"), "{stat}");
}

#[test]
#[cfg(is_root)]
fn the_kernel_mounts_it_and_sees_xattrs_acls_and_links() {
    let dir = scratch();
    let image = dir.path().join("k.img");
    let tree = everything_tree();
    write_image(&tree, &options(), &image, 64 * MIB).unwrap();
    let mount = LoopMount::new(&image, &dir.path().join("mnt"), "loop,ro");
    let m = &mount.dir;
    let counts = name_counts(&tree);
    for (path, id) in tree.walk().into_iter().skip(1) {
        let host = m.join(OsStr::from_bytes(&path));
        let md = std::fs::symlink_metadata(&host).unwrap();
        let node = tree.node(id);
        if !node.kind.is_dir() {
            assert_eq!(md.nlink(), counts[&id], "{}", host.display());
        }
        if let NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } =
            node.kind
        {
            let rdev = md.rdev();
            let got_major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
            let got_minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
            assert_eq!((got_major, got_minor), (u64::from(major), u64::from(minor)));
        }
    }
    let getcap = run_ok(Command::new(tool("getcap")).arg(m.join("bin/ping")));
    assert!(String::from_utf8_lossy(&getcap.stdout).contains("cap_net_raw=ep"), "{getcap:?}");
    let attrs = run_ok(
        Command::new(tool("getfattr"))
            .args(["-d", "-m", "-", "--absolute-names"])
            .arg(m.join("xattrs")),
    );
    let text = String::from_utf8_lossy(&attrs.stdout);
    assert!(text.contains("user.small=\"v\""), "{text}");
    assert!(text.contains("security.selinux=\"system_u:object_r:etc_t:s0\""), "{text}");
    assert!(text.contains(&format!("user.big=\"{}\"", "B".repeat(3000))), "{text}");
    let acl = run_ok(
        Command::new(tool("getfattr"))
            .args(["-n", "system.posix_acl_access", "-e", "hex", "--absolute-names"])
            .arg(m.join("xattrs")),
    );
    let expected = vfs_acl(&[
        (1, 6, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert!(String::from_utf8_lossy(&acl.stdout).contains(&hex), "{acl:?}");
}

#[test]
fn same_tree_gives_identical_images() {
    let dir = scratch();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    write_image(&everything_tree(), &options(), &a, 64 * MIB).unwrap();
    write_image(&everything_tree(), &options(), &b, 64 * MIB).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn four_gib_sparse_file_past_4_gib() {
    let dir = scratch();
    let image = dir.path().join("big.img");
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let gib = 1u64 << 30;
    // 4 GiB + 1 MiB: 1 MiB of data at the start and 1 MiB past 4 GiB, a hole between.
    let pattern = Pattern {
        len: 4 * gib + MIB,
        ranges: vec![0..MIB, 4 * gib..4 * gib + MIB],
        seed: 9,
        dense: false,
    };
    tree.add(root, b"sparse-4g", pattern_file(pattern)).unwrap();
    let size = ext4::min_size(&tree, &options()).unwrap();
    assert!(size < 64 * MIB, "{size}");
    write_image(&tree, &options(), &image, 64 * MIB).unwrap();
    assert_e2fsck_clean(&image);
    assert_reads_back(&tree, &image);
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn sixty_thousand_entries_in_one_directory() {
    let dir = scratch();
    let image = dir.path().join("wide.img");
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let wide = tree.add(root, b"wide", abforge_tests::ext4::dir(0o755)).unwrap();
    let shared = tree.add(root, b"shared", file(b"one inode, many names")).unwrap();
    for i in 0..60_000 {
        let name = format!("file-number-{i:06}");
        if i % 1000 == 0 {
            tree.link(wide, name.as_bytes(), shared).unwrap();
        } else if i % 101 == 0 {
            tree.add(wide, name.as_bytes(), abforge_tests::ext4::dir(0o755)).unwrap();
        } else {
            tree.add(wide, name.as_bytes(), file(b"")).unwrap();
        }
    }
    let size = ext4::min_size(&tree, &options()).unwrap();
    write_image(&tree, &options(), &image, size + 16 * MIB).unwrap();
    assert_e2fsck_clean(&image);
    // Every directory (the 594 subdirectories too) in full, every 97th other entry.
    assert_reads_back_every(&tree, &image, 97);
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn nearly_full_and_tiny_images() {
    let dir = scratch();
    // Exactly min_size: the file system is (nearly) full. (Without the file whose
    // advertised data is mostly zero blocks: min_size counts those as used.)
    let mut tree = everything_tree();
    let root = tree.root();
    tree.unlink(root, b"zeros-inside").unwrap();
    let size = ext4::min_size(&tree, &options()).unwrap();
    assert_eq!(size % 4096, 0);
    let image = dir.path().join("full.img");
    let summary = write_image(&tree, &options(), &image, size).unwrap();
    assert!(summary.free_blocks * 4096 < size / 50, "{summary:?}");
    assert_e2fsck_clean(&image);
    assert_reads_back(&tree, &image);
    // One block less is refused before anything is written, naming both sizes.
    let image = dir.path().join("short.img");
    match write_image(&tree, &options(), &image, size - 4096) {
        Err(Ext4Error::TooSmall { needed, available }) => {
            assert_eq!((needed, available), (size, size - 4096));
        }
        other => panic!("expected TooSmall, got {other:?}"),
    }
    assert!(std::fs::read(&image).unwrap().iter().all(|&b| b == 0));
    // An empty tree in the smallest image.
    let empty = FileTree::new(meta(0o755));
    let size = ext4::min_size(&empty, &options()).unwrap();
    assert!(size <= 256 * 1024, "{size}");
    let image = dir.path().join("tiny.img");
    write_image(&empty, &options(), &image, size).unwrap();
    assert_e2fsck_clean(&image);
    assert_reads_back(&empty, &image);
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn zero_blocks_are_counted_exactly_when_the_bound_does_not_fit() {
    let dir = scratch();
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    // 64 MiB advertised as data, but only the first block is not zero.
    let pattern =
        Pattern { len: 64 * MIB, ranges: std::iter::once(0..10).collect(), seed: 4, dense: true };
    tree.add(root, b"mostly-zero", pattern_file(pattern)).unwrap();
    let bound = ext4::min_size(&tree, &options()).unwrap();
    assert!(bound > 64 * MIB);
    let image = dir.path().join("z.img");
    let summary = write_image(&tree, &options(), &image, 8 * MIB).unwrap();
    assert!(summary.free_blocks > 1000);
    assert_e2fsck_clean(&image);
    assert_reads_back(&tree, &image);
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn multi_group_image_with_journal() {
    let dir = scratch();
    let image = dir.path().join("rw.img");
    let mut opts = options();
    opts.journal = true;
    opts.inode_ratio = Some(16384);
    opts.backup_superblock = true;
    let tree = everything_tree();
    // 600 MiB: 5 groups, a superblock copy in group 4 (sparse_super2), a 16 MiB journal.
    let summary = write_image(&tree, &opts, &image, 600 * MIB).unwrap();
    assert_eq!(summary.journal_blocks, 4096);
    assert_eq!(summary.inode_count, 600 * MIB / 16384);
    assert_e2fsck_clean(&image);
    assert_reads_back(&tree, &image);
    let out = run_ok(Command::new(tool("dumpe2fs")).arg("-h").arg(&image));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("has_journal") && text.contains("Total journal size:"), "{text}");
}

#[test]
#[cfg(is_root)]
fn a_journalled_image_mounts_read_write_and_stays_clean() {
    let dir = scratch();
    let image = dir.path().join("rw.img");
    let mut opts = options();
    opts.journal = true;
    opts.inode_ratio = Some(16384);
    write_image(&everything_tree(), &opts, &image, 256 * MIB).unwrap();
    {
        let mount = LoopMount::new(&image, &dir.path().join("mnt"), "loop,rw");
        let m = &mount.dir;
        std::fs::write(m.join("new-file"), vec![7u8; 3 << 20]).unwrap();
        std::fs::create_dir(m.join("new-dir")).unwrap();
        for i in 0..500 {
            std::fs::write(m.join("new-dir").join(format!("f{i}")), b"x").unwrap();
        }
        std::fs::remove_file(m.join("etc/hosts-again")).unwrap();
        std::fs::write(m.join("many/entry-00001-with-a-longer-name"), b"changed").unwrap();
        run_ok(&mut Command::new("sync"));
    }
    assert_e2fsck_clean(&image);
}

#[test]
fn bad_input_is_refused_with_the_path() {
    let dir = scratch();
    let image = dir.path().join("bad.img");
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let d = tree.add(root, b"d", abforge_tests::ext4::dir(0o755)).unwrap();
    let unreadable = NodeKind::File(Content::Source(Arc::new(Unreadable)));
    tree.add(d, b"secret", Node { meta: meta(0o600), kind: unreadable }).unwrap();
    let text = write_image(&tree, &options(), &image, 8 * MIB).unwrap_err().to_string();
    assert!(text.contains("/d/secret") && text.contains("/host/secret"), "{text}");

    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let empty_link = Node { meta: meta(0o777), kind: NodeKind::Symlink(Vec::new()) };
    tree.add(root, b"empty-link", empty_link).unwrap();
    let text = write_image(&tree, &options(), &image, 8 * MIB).unwrap_err().to_string();
    assert!(text.contains("/empty-link"), "{text}");

    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let mut huge = file(b"x");
    huge.meta.xattrs.insert(b"user.a".to_vec(), vec![1; 3000]);
    huge.meta.xattrs.insert(b"user.b".to_vec(), vec![1; 3000]);
    tree.add(root, b"fat-xattrs", huge).unwrap();
    let text = write_image(&tree, &options(), &image, 8 * MIB).unwrap_err().to_string();
    assert!(text.contains("/fat-xattrs"), "{text}");

    let mut opts = options();
    opts.label = "a label longer than sixteen".into();
    let result = write_image(&FileTree::new(meta(0o755)), &opts, &image, 8 * MIB);
    assert!(matches!(result, Err(Ext4Error::LabelTooLong(_))));
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn extent_tree_of_depth_two() {
    let dir = scratch();
    let image = dir.path().join("deep.img");
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    // 1500 one-block fragments: more than 4 × 340 extents, so the root indexes an
    // index block that indexes 5 leaves.
    let fragments = (0..1500u64).map(|i| i * 8192..i * 8192 + 4096).collect();
    let pattern = Pattern { len: 1500 * 8192, ranges: fragments, seed: 5, dense: false };
    tree.add(root, b"fragments", pattern_file(pattern)).unwrap();
    write_image(&tree, &options(), &image, 32 * MIB).unwrap();
    assert_e2fsck_clean(&image);
    assert_reads_back(&tree, &image);
    let out = run_ok(Command::new(tool("debugfs")).args(["-R", "ex /fragments"]).arg(&image));
    let text = String::from_utf8_lossy(&out.stdout);
    // debugfs lists index nodes as "level/max depth": 2/ 2 is a leaf under two index levels.
    assert!(text.contains(" 0/ 2 ") && text.contains(" 2/ 2 "), "{text}");
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn odd_sizes_and_small_last_groups() {
    let dir = scratch();
    let tree = everything_tree();
    // A last group of 10 blocks (dropped), of 50 blocks (kept), and a size that is
    // not a multiple of 4096.
    for (size, blocks) in [
        (128 * MIB + 40 * 1024, 32768),
        (128 * MIB + 200 * 1024, 32768 + 50),
        (100 * MIB + 1000, 25600),
    ] {
        let image = dir.path().join(format!("odd-{size}.img"));
        let summary = write_image(&tree, &options(), &image, size).unwrap();
        assert_eq!(summary.block_count, blocks, "{size}");
        assert_e2fsck_clean(&image);
    }
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn a_lost_and_found_from_the_tree_is_used_as_is() {
    let dir = scratch();
    let image = dir.path().join("lf.img");
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let lost = tree.add(root, b"lost+found", abforge_tests::ext4::dir(0o700)).unwrap();
    tree.add(lost, b"#1234", file(b"recovered")).unwrap();
    tree.add(root, b"after", file(b"x")).unwrap();
    write_image(&tree, &options(), &image, 8 * MIB).unwrap();
    assert_e2fsck_clean(&image);
    assert_reads_back(&tree, &image);
    let out = run_ok(Command::new(tool("debugfs")).args(["-R", "stat /lost+found"]).arg(&image));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Inode: 11 ") && text.contains("Size: 16384"), "{text}");
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn more_than_65000_subdirectories_use_dir_nlink() {
    let dir = scratch();
    let image = dir.path().join("nlink.img");
    let mut tree = FileTree::new(meta(0o755));
    let root = tree.root();
    let parent = tree.add(root, b"parent", abforge_tests::ext4::dir(0o755)).unwrap();
    for i in 0..65_001 {
        tree.add(parent, format!("d{i}").as_bytes(), abforge_tests::ext4::dir(0o755)).unwrap();
    }
    let size = ext4::min_size(&tree, &options()).unwrap();
    write_image(&tree, &options(), &image, size).unwrap();
    assert_e2fsck_clean(&image);
    let out = run_ok(Command::new(tool("debugfs")).args(["-R", "stat /parent"]).arg(&image));
    let text = String::from_utf8_lossy(&out.stdout);
    // 2 + 65001 does not fit ext4's limit: the count is 1, "many" (dir_nlink).
    assert!(text.contains("Links: 1 "), "{text}");
}

/// An empty read-write file system (journal, one inode per 16 KiB, a superblock copy)
/// of `size` bytes in a new sparse file; returns how long the write took.
fn write_empty_rw(image: &std::path::Path, size: u64) -> std::time::Duration {
    let mut opts = options();
    opts.journal = true;
    opts.backup_superblock = true;
    opts.inode_ratio = Some(16384);
    let tree = FileTree::new(meta(0o755));
    let start = std::time::Instant::now();
    write_image(&tree, &opts, image, size).unwrap();
    start.elapsed()
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn every_written_block_is_in_the_first_32_mib_whatever_the_size() {
    const VHDX_BLOCK: u64 = 32 * MIB;
    let dir = scratch();
    for size in [2u64 << 30, 2u64 << 40] {
        // Read-only (no journal), read-write, read-write with a superblock copy.
        for (journal, backup) in [(false, false), (true, false), (true, true)] {
            for (tree_name, tree) in
                [("empty", FileTree::new(meta(0o755))), ("small tree", everything_tree())]
            {
                let image = dir.path().join("regions.img");
                let mut opts = options();
                opts.journal = journal;
                opts.backup_superblock = backup;
                opts.inode_ratio = journal.then_some(16384);
                let start = std::time::Instant::now();
                write_image(&tree, &opts, &image, size).unwrap();
                let took = start.elapsed();
                let what =
                    format!("{} GiB, journal {journal}, copy {backup}, {tree_name}", size >> 30);
                assert_e2fsck_clean(&image);
                let found = nonzero_regions(&image, VHDX_BLOCK);
                eprintln!("{what}: written in {took:?}, non-zero 32 MiB regions {found:?}");
                let header = dumpe2fs(&image, true);
                assert!(header.contains("sparse_super2"), "{what}: {header}");
                // The copy, if any, starts the last group.
                let last_group = size / (128 * MIB) - 1;
                let mut expected = std::collections::BTreeSet::from([0]);
                let backups = header.lines().find_map(|l| l.strip_prefix("Backup block groups:"));
                if backup {
                    assert_eq!(backups.map(str::trim), Some(&*last_group.to_string()), "{what}");
                    expected.insert(last_group * 128 * MIB / VHDX_BLOCK);
                } else {
                    assert_eq!(backups.map(str::trim).unwrap_or(""), "", "{what}");
                }
                assert_eq!(found, expected, "{what}");
                if tree_name == "small tree" {
                    assert_reads_back(&tree, &image);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(any(ci, have_e2fsck)), ignore = "needs e2fsck (package e2fsprogs)")]
fn groups_past_the_content_are_uninitialised_the_last_group_never() {
    let dir = scratch();
    let image = dir.path().join("2tib.img");
    let took = write_empty_rw(&image, 2 << 40);
    eprintln!("2 TiB written in {took:?}");
    let allocated = abforge_tests::layout::allocated_bytes(&image);
    assert!(allocated < 8 * MIB, "{allocated} bytes allocated");
    let groups = dumpe2fs(&image, false);
    assert!(groups.contains("Group 5000: (Blocks 163840000-163872767) csum"), "no group 5000");
    let flags = |group: u32| {
        let at = groups.find(&format!("Group {group}: ")).unwrap();
        groups[at..].lines().next().unwrap().split_once('[').map(|(_, f)| f.to_string())
    };
    assert_eq!(flags(5000).as_deref(), Some("INODE_UNINIT, BLOCK_UNINIT, ITABLE_ZEROED]"));
    assert_eq!(flags(16383).as_deref(), Some("INODE_UNINIT, ITABLE_ZEROED]"));
    assert_eq!(flags(0).as_deref(), Some("ITABLE_ZEROED]"));
}

#[test]
#[cfg(is_root)]
fn an_image_without_journal_or_copy_takes_kernel_writes_across_groups() {
    let dir = scratch();
    let image = dir.path().join("nojournal.img");
    // 1 GiB: 8 groups, all but the first and last with their metadata at home.
    let mut opts = options();
    opts.inode_ratio = Some(16384);
    write_image(&everything_tree(), &opts, &image, 1 << 30).unwrap();
    {
        let mount = LoopMount::new(&image, &dir.path().join("mnt"), "loop,rw");
        let m = &mount.dir;
        // More than a group holds, so the kernel allocates in uninitialised groups.
        for i in 0..3u8 {
            std::fs::write(m.join(format!("big-{i}")), vec![i + 1; 100 << 20]).unwrap();
        }
        std::fs::create_dir(m.join("new-dir")).unwrap();
        for i in 0..300 {
            std::fs::write(m.join("new-dir").join(format!("f{i}")), b"x").unwrap();
        }
        run_ok(&mut Command::new("sync"));
    }
    assert_e2fsck_clean(&image);
    let mount = LoopMount::new(&image, &dir.path().join("ro"), "loop,ro");
    for i in 0..3u8 {
        let data = std::fs::read(mount.dir.join(format!("big-{i}"))).unwrap();
        assert!(data.len() == 100 << 20 && data.iter().all(|&b| b == i + 1), "big-{i}");
    }
    assert_eq!(std::fs::read(mount.dir.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
}

#[test]
#[cfg(is_root)]
fn a_two_tib_empty_image_mounts_read_write_and_stays_clean() {
    let dir = scratch();
    let image = dir.path().join("big.img");
    write_empty_rw(&image, 2 << 40);
    {
        let mount = LoopMount::new(&image, &dir.path().join("ro"), "loop,ro");
        assert!(mount.dir.join("lost+found").is_dir());
    }
    {
        let mount = LoopMount::new(&image, &dir.path().join("mnt"), "loop,rw");
        let m = &mount.dir;
        std::fs::write(m.join("new-file"), vec![7u8; 40 << 20]).unwrap();
        std::fs::create_dir(m.join("new-dir")).unwrap();
        for i in 0..200 {
            std::fs::write(m.join("new-dir").join(format!("f{i}")), b"x").unwrap();
        }
        run_ok(&mut Command::new("sync"));
    }
    assert_e2fsck_clean(&image);
    let allocated = abforge_tests::layout::allocated_bytes(&image);
    eprintln!("after the mount: {allocated} bytes allocated");
    // The kernel found the inode tables zeroed: no lazy-init pass wrote 32 GiB.
    assert!(allocated < 1 << 30, "{allocated} bytes allocated after a rw mount");
}
