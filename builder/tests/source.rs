//! Sources: a generated tree read as a directory and as tar archives (GNU tar pax,
//! gzip, zstd) gives the same `FileTree`; bad input gives an error naming the path;
//! the source is never modified.
//!
//! Needs only GNU `tar` (always present). Archives with deliberately broken entries
//! are written byte by byte by the helpers below, since no archiver would make them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use abforge::source::{Exclude, OwnerMapping, SourceOptions, dump, load_source};
use abforge_partitions::tree::{FileTree, NodeKind, Timestamp};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

fn euid_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run(command: &mut Command) {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sets the modification time of `path` (not following a link) to the nanosecond.
fn set_mtime(path: &Path, seconds: i64, nanoseconds: u32) {
    let time = Timespec { tv_sec: seconds, tv_nsec: i64::from(nanoseconds) };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps { last_access: time, last_modification: time },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Every path under `root` (itself included), deepest first.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut index = 0;
    while index < out.len() {
        let path = out[index].clone();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            let mut children: Vec<PathBuf> =
                fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            out.extend(children);
        }
        index += 1;
    }
    out.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    out
}

/// What the generated tree holds besides the basics.
struct Generated {
    xattrs: bool,
    devices: bool,
}

/// Makes a tree with every kind of entry a root file system holds.
fn generate_tree(root: &Path) -> Generated {
    fs::create_dir_all(root).unwrap();
    let write = |path: &str, bytes: &[u8]| {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    };
    write("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
    write("etc/empty", b"");
    write("usr/bin/tool", b"\x7fELF pretend");
    write("usr/share/doc/a/b/c/d/deep.txt", b"deep\n");
    write("home/user/notes", b"owned by someone else\n");
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(root.join("srv/shared")).unwrap();
    fs::set_permissions(root.join("srv/shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::set_permissions(root.join("etc/empty"), fs::Permissions::from_mode(0o600)).unwrap();

    // A sparse file: 8 MiB with data at 1 MiB and in the last bytes only.
    let sparse = fs::File::create(root.join("var/sparse.img")).unwrap_or_else(|_| {
        fs::create_dir_all(root.join("var")).unwrap();
        fs::File::create(root.join("var/sparse.img")).unwrap()
    });
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data in the middle", 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", (8 << 20) - 4).unwrap();
    drop(sparse);

    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    let slow_target = format!("../{}", "t".repeat(200));
    std::os::unix::fs::symlink(&slow_target, root.join("etc/slow-link")).unwrap();
    std::os::unix::fs::symlink("missing", root.join("etc/dangling")).unwrap();

    fs::hard_link(root.join("etc/passwd"), root.join("usr/share/passwd.hard")).unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("home/passwd.third")).unwrap();
    fs::hard_link(root.join("etc/empty"), root.join("etc/empty.link")).unwrap();

    fs::create_dir_all(root.join("run")).unwrap();
    run(Command::new("mkfifo").arg(root.join("run/fifo")));
    drop(std::os::unix::net::UnixListener::bind(root.join("run/socket")).unwrap());

    let long_name = "n".repeat(255);
    write(&format!("long/{long_name}"), b"a long name\n");
    fs::create_dir_all(root.join("long").join("d".repeat(255))).unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"etc/caf\xe9")), b"latin-1 name\n").unwrap();
    write("etc/with space", b"spaced\n");

    let xattrs = match rustix::fs::lsetxattr(
        root.join("etc/passwd"),
        "user.abforge.test",
        b"value\n\0binary",
        XattrFlags::empty(),
    ) {
        Ok(()) => {
            for (path, name, value) in [
                ("usr/bin/tool", "user.empty", &b""[..]),
                ("srv/shared", "user.dir", b"on a directory"),
                ("var/sparse.img", "user.big", &[7u8; 3000][..]),
            ] {
                rustix::fs::lsetxattr(root.join(path), name, value, XattrFlags::empty()).unwrap();
            }
            true
        }
        Err(err) => {
            println!(
                "user xattrs are not supported in {} ({err}); not testing them",
                root.display()
            );
            false
        }
    };

    let devices = euid_is_root();
    if devices {
        fs::create_dir_all(root.join("dev")).unwrap();
        run(Command::new("mknod").arg(root.join("dev/null")).args(["c", "1", "3"]));
        run(Command::new("mknod").arg(root.join("dev/big")).args(["b", "4095", "1048575"]));
        // Owners only root can give; as another user every file is ours.
        rustix::fs::chownat(
            CWD,
            root.join("home/user"),
            Some(rustix::process::Uid::from_raw(1000)),
            Some(rustix::process::Gid::from_raw(1000)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        rustix::fs::chownat(
            CWD,
            root.join("home/user/notes"),
            Some(rustix::process::Uid::from_raw(100_000)),
            Some(rustix::process::Gid::from_raw(70_000)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    } else {
        println!("not root: the directory source gets no device nodes (tar sources test them)");
    }

    // Distinct nanosecond times, children before parents (creating a child
    // changes its directory's time); some after the clamp used below.
    for (index, path) in all_paths(root).iter().enumerate() {
        let index = i64::try_from(index).unwrap();
        let seconds = if index % 3 == 0 { 1_700_000_000 + index } else { 1_600_000_000 + index };
        set_mtime(path, seconds, u32::try_from(index * 12_345_679 % 1_000_000_000).unwrap());
    }
    Generated { xattrs, devices }
}

/// Packs `dir` with GNU tar, pax format with xattrs (`compress`: "" or "-z").
fn gnu_tar(dir: &Path, out: &Path, compress: &str) {
    let mut command = Command::new("tar");
    command.args(["--xattrs", "--xattrs-include=*", "--format=pax"]);
    if !compress.is_empty() {
        command.arg(compress);
    }
    command.arg("-C").arg(dir).arg("-cf").arg(out).arg(".");
    let output = command.output().unwrap();
    // GNU tar warns that it leaves sockets out, and exits 0.
    assert!(output.status.success(), "tar failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn zstd_compress(from: &Path, to: &Path) {
    let input = fs::File::open(from).unwrap();
    let output = fs::File::create(to).unwrap();
    zstd::stream::copy_encode(input, output, 3).unwrap();
}

/// The dump without the lines tar cannot carry (sockets).
fn without_sockets(dump: &str) -> String {
    dump.lines().filter(|line| !line.contains(" sock ")).map(|line| format!("{line}\n")).collect()
}

fn load(path: &Path, opts: &SourceOptions) -> FileTree {
    load_source(path, opts).unwrap_or_else(|err| panic!("loading {}: {err:#}", path.display()))
}

#[test]
fn directory_and_archives_give_the_same_tree() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    let generated = generate_tree(&root);
    let plain = temp.path().join("root.tar");
    let gzip = temp.path().join("root.tar.gz");
    let zstd = temp.path().join("root.tar.zst");
    let zstd_odd_name = temp.path().join("rootfs.image");
    gnu_tar(&root, &plain, "");
    gnu_tar(&root, &gzip, "-z");
    zstd_compress(&plain, &zstd);
    fs::copy(&zstd, &zstd_odd_name).unwrap();

    let variants = [
        SourceOptions::default(),
        SourceOptions {
            owner: Some(OwnerMapping::force(0, 0)),
            source_date_epoch: Some(1_650_000_000),
            ..SourceOptions::default()
        },
        SourceOptions {
            owner: Some(OwnerMapping {
                uids: BTreeMap::from([(1000, 0), (100_000, 1)]),
                ..OwnerMapping::default()
            }),
            exclude: vec![
                Exclude::new("/etc/pass*").unwrap(),
                Exclude::new("usr/share/*").unwrap(),
            ],
            ..SourceOptions::default()
        },
    ];
    for opts in &variants {
        let from_dir = dump(&load(&root, opts));
        let expected = without_sockets(&from_dir);
        assert_ne!(expected, from_dir, "the generated tree has a socket");
        for archive in [&plain, &gzip, &zstd, &zstd_odd_name] {
            let from_tar = dump(&load(archive, opts));
            assert_eq!(
                from_tar,
                expected,
                "{} differs from the directory with {opts:?}",
                archive.display()
            );
        }
    }

    // Spot checks of what the dump says about the directory.
    let tree = load(&root, &SourceOptions::default());
    let text = dump(&tree);
    println!("{text}");
    let line = |path: &str| {
        text.lines()
            .find(|line| line.split(' ').next() == Some(path))
            .unwrap_or_else(|| panic!("{path} is not in the dump"))
            .to_string()
    };
    assert!(line("/usr/bin/tool").contains(" file 4755 "));
    assert!(line("/tmp").contains(" dir 1777 "));
    assert!(line("/srv/shared").contains(" dir 2775 "));
    assert!(line("/etc/passwd").contains(" links=3"));
    assert!(line("/usr/share/passwd.hard").contains(" links=3 same-as=/etc/passwd"));
    assert!(line("/etc/empty.link").contains("same-as=/etc/empty"));
    assert!(line("/bin").contains(" sym 0777 ") && line("/bin").contains("target=usr/bin"));
    assert!(line("/etc/slow-link").contains("size=203 "));
    assert!(line("/run/fifo").contains(" fifo "));
    assert!(line("/run/socket").contains(" sock "));
    assert!(line("/etc/caf\\xe9").contains("size=13 "));
    assert!(line("/etc/with\\x20space").contains("size=7 "));
    assert!(text.contains(&format!("/long/{} file", "n".repeat(255))));
    if generated.xattrs {
        assert!(line("/etc/passwd").contains(" xattr=user.abforge.test:13:"));
        assert!(line("/usr/bin/tool").contains(" xattr=user.empty:0:"));
        assert!(line("/srv/shared").contains(" xattr=user.dir:14:"));
        assert!(line("/var/sparse.img").contains(" xattr=user.big:3000:"));
    }
    if generated.devices {
        assert!(line("/dev/null").contains(" chr ") && line("/dev/null").contains("dev=1,3 "));
        assert!(
            line("/dev/big").contains(" blk ") && line("/dev/big").contains("dev=4095,1048575 ")
        );
        assert!(line("/home/user/notes").contains(" 100000:70000 "));
    }

    // Nanoseconds and clamping.
    let passwd = tree.lookup(b"etc/passwd").unwrap();
    let mtime = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert_eq!(
        tree.node(passwd).meta.mtime,
        Timestamp {
            seconds: mtime.mtime(),
            nanoseconds: u32::try_from(mtime.mtime_nsec()).unwrap()
        }
    );
    let clamped = load(&plain, &variants[1]);
    for (_, id) in clamped.walk() {
        assert!(clamped.node(id).meta.mtime <= Timestamp::from_seconds(1_650_000_000));
        assert_eq!((clamped.node(id).meta.uid, clamped.node(id).meta.gid), (0, 0));
    }

    // The host file keeps its holes; the archive member is all data but reads the same.
    let sparse = tree.lookup(b"var/sparse.img").unwrap();
    let NodeKind::File(content) = &tree.node(sparse).kind else { panic!("not a file") };
    let ranges = content.data_ranges().unwrap();
    println!("data ranges of the sparse file: {ranges:?}");
    assert!(ranges.len() >= 2, "the sparse file's holes are not seen: {ranges:?}");
    assert!(ranges.iter().map(|r| r.end - r.start).sum::<u64>() < 8 << 20);
    let mut middle = [0u8; 18];
    content.read_exact_at(&mut middle, 1 << 20).unwrap();
    assert_eq!(&middle, b"data in the middle");
}

/// Checksum of everything a load could change: types, modes, owners, times
/// (modification and change), link counts, contents, link targets, xattrs.
fn fingerprint(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for path in all_paths(root) {
        let meta = fs::symlink_metadata(&path).unwrap();
        let mut line = format!(
            "{} {:o} {}:{} {}.{} {}.{} {} {}",
            path.display(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.nlink(),
            meta.len()
        );
        if meta.is_file() {
            line.push_str(&format!(" {:?}", fs::read(&path).unwrap()));
        } else if meta.file_type().is_symlink() {
            line.push_str(&format!(" {:?}", fs::read_link(&path).unwrap()));
        }
        out.push(line);
    }
    out.sort();
    out
}

#[test]
fn loading_never_modifies_the_source() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    generate_tree(&root);
    let archive = temp.path().join("root.tar");
    gnu_tar(&root, &archive, "");
    let before = fingerprint(&root);
    let archive_before = fs::read(&archive).unwrap();
    let archive_ctime = fs::metadata(&archive).unwrap().ctime_nsec();

    for source in [&root, &archive] {
        let tree = load(source, &SourceOptions::default());
        // Read every content through the tree, as a writer would.
        dump(&tree);
    }
    assert_eq!(fingerprint(&root), before);
    assert_eq!(fs::read(&archive).unwrap(), archive_before);
    assert_eq!(fs::metadata(&archive).unwrap().ctime_nsec(), archive_ctime);
}

// ----- Archives written byte by byte.

/// One ustar header block (POSIX magic) with a valid checksum.
fn ustar_header(name: &[u8], typeflag: u8, size: u64, linkname: &[u8]) -> [u8; 512] {
    let mut block = [0u8; 512];
    block[..name.len()].copy_from_slice(name);
    let octal = |block: &mut [u8; 512], at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}\0", w = width - 1);
        block[at..at + width].copy_from_slice(text.as_bytes());
    };
    octal(&mut block, 100, 8, if typeflag == b'5' { 0o755 } else { 0o644 });
    octal(&mut block, 108, 8, 0);
    octal(&mut block, 116, 8, 0);
    octal(&mut block, 124, 12, size);
    octal(&mut block, 136, 12, 1_700_000_000);
    block[156] = typeflag;
    block[157..157 + linkname.len()].copy_from_slice(linkname);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    block
}

/// An archive writer for tests: entries, pax records, and the end blocks.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(&mut self, name: &[u8], typeflag: u8, data: &[u8], linkname: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&ustar_header(name, typeflag, data.len() as u64, linkname));
        self.data(data)
    }

    fn data(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while format!("{len}").len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        self.entry(b"PaxHeaders/x", b'x', &body, b"")
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), b'0', data, b"")
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = self.0.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// Loads `bytes` as an archive and returns the error message (with its causes).
fn load_error(bytes: &[u8], file_name: &str) -> String {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join(file_name);
    fs::write(&path, bytes).unwrap();
    match load_source(&path, &SourceOptions::default()) {
        Ok(tree) => panic!("{file_name} loaded:\n{}", dump(&tree)),
        Err(err) => {
            let message = format!("{err:#}");
            println!("{file_name}: {message}");
            assert!(
                message.contains(&path.display().to_string()),
                "the archive is not named: {message}"
            );
            message
        }
    }
}

#[test]
fn entries_escaping_the_tree_are_refused() {
    let message = load_error(
        &RawTar::default().file("ok", b"x").file("a/../../etc/x", b"y").finish(),
        "dots.tar",
    );
    assert!(message.contains("'a/../../etc/x'") && message.contains(".."), "{message}");
    let message = load_error(&RawTar::default().file("/etc/passwd", b"x").finish(), "absolute.tar");
    assert!(message.contains("'/etc/passwd'") && message.contains("absolute"), "{message}");
    // The same through a pax path and a hard link target.
    let message = load_error(
        &RawTar::default().pax(&[("path", b"../up")]).file("harmless", b"").finish(),
        "pax-dots.tar",
    );
    assert!(message.contains("'../up'"), "{message}");
    let message = load_error(
        &RawTar::default().file("a", b"").entry(b"b", b'1', b"", b"/etc/shadow").finish(),
        "link-absolute.tar",
    );
    assert!(message.contains("'b'") && message.contains("'/etc/shadow'"), "{message}");
}

#[test]
fn hard_link_to_a_missing_entry_is_refused() {
    let message = load_error(
        &RawTar::default()
            .file("present", b"x")
            .entry(b"etc/link", b'1', b"", b"etc/not-there")
            .finish(),
        "link.tar",
    );
    assert!(message.contains("'etc/link'") && message.contains("'etc/not-there'"), "{message}");
    // A link to an entry that comes later is missing too (tar extraction would fail the same way).
    let message = load_error(
        &RawTar::default().entry(b"early", b'1', b"", b"late").file("late", b"x").finish(),
        "forward-link.tar",
    );
    assert!(message.contains("'early'") && message.contains("'late'"), "{message}");
}

#[test]
fn names_longer_than_255_bytes_are_refused() {
    let long = format!("dir/{}", "x".repeat(256));
    let message = load_error(
        &RawTar::default().pax(&[("path", long.as_bytes())]).file("placeholder", b"").finish(),
        "long.tar",
    );
    assert!(message.contains(&long) && message.contains("255"), "{message}");
    // 255 bytes is fine, through a pax path and through GNU tar's own long names.
    let ok = format!("dir/{}", "x".repeat(255));
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("ok.tar");
    fs::write(
        &path,
        RawTar::default().pax(&[("path", ok.as_bytes())]).file("placeholder", b"1").finish(),
    )
    .unwrap();
    let tree = load(&path, &SourceOptions::default());
    assert!(tree.lookup(ok.as_bytes()).is_some());
}

#[test]
fn corrupt_archives_are_refused() {
    // Not a tar at all.
    let garbage: Vec<u8> =
        (0u32..4096).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect();
    let message = load_error(&garbage, "garbage.tar");
    assert!(message.contains("not a tar archive"), "{message}");
    load_error(b"", "empty.tar");
    load_error(&[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "garbage.tar.gz");

    // A valid first entry, then a damaged header.
    let mut bytes = RawTar::default().file("etc/first", b"one").file("etc/second", b"two").finish();
    bytes[1024 + 3] ^= 0x55;
    let message = load_error(&bytes, "damaged.tar");
    assert!(message.contains("'etc/first'") && message.contains("corrupt"), "{message}");

    // A broken pax header.
    let mut raw = RawTar::default();
    raw.entry(b"PaxHeaders/x", b'x', b"99 path=a\n", b"").file("a", b"");
    let message = load_error(&raw.finish(), "bad-pax.tar");
    assert!(message.contains("pax"), "{message}");
}

#[test]
fn truncated_archives_are_refused() {
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let whole = RawTar::default().file("etc/small", b"small").file("usr/lib/big.so", &big).finish();
    // Cut in the middle of the second member's data.
    let message = load_error(&whole[..512 * 4 + 3000], "cut.tar");
    assert!(message.contains("truncated") && message.contains("'usr/lib/big.so'"), "{message}");
    // Cut right after a member, before the end-of-archive blocks.
    let message = load_error(&whole[..whole.len() - 1024], "no-end.tar");
    assert!(message.contains("truncated") && message.contains("'usr/lib/big.so'"), "{message}");
    // The same cut inside compressed streams.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&whole[..512 * 4 + 3000]).unwrap();
    let message = load_error(&gz.finish().unwrap(), "cut.tar.gz");
    assert!(message.contains("truncated") && message.contains("'usr/lib/big.so'"), "{message}");
    let compressed = zstd::encode_all(&whole[..], 3).unwrap();
    let message = load_error(&compressed[..compressed.len() / 2], "cut.tar.zst");
    assert!(message.contains("zstd-compressed archive is truncated"), "{message}");
}

#[test]
fn archive_semantics_follow_extraction() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("t.tar");
    let mut raw = RawTar::default();
    raw.file("./a/b/c/file", b"first")
        .entry(b"./a/", b'5', b"", b"")
        .file("a/b/c/file", b"second wins")
        .file("x", b"old x")
        .entry(b"x-link", b'1', b"", b"./x")
        .file("x", b"new x")
        .entry(b"dir/", b'5', b"", b"")
        .file("dir/inside", b"kept")
        .entry(b"dir", b'5', b"", b"")
        .pax(&[("mtime", b"1600000000.000000001"), ("SCHILY.xattr.user.k", b"v\n=v")])
        .file("nanos", b"");
    fs::write(&path, raw.finish()).unwrap();
    let opts = SourceOptions { source_date_epoch: Some(1_650_000_000), ..SourceOptions::default() };
    let tree = load(&path, &opts);
    let text = dump(&tree);
    println!("{text}");
    let read = |path: &[u8]| {
        let NodeKind::File(content) = &tree.node(tree.lookup(path).unwrap()).kind else { panic!() };
        let mut buf = vec![0; usize::try_from(content.len()).unwrap()];
        content.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    assert_eq!(read(b"a/b/c/file"), b"second wins");
    // The hard link kept the node it was made to; the later `x` replaced the name only.
    assert_eq!(read(b"x-link"), b"old x");
    assert_eq!(read(b"x"), b"new x");
    assert_eq!(read(b"dir/inside"), b"kept");
    // Implied directories: 0755 root, dated SOURCE_DATE_EPOCH; listed ones keep their own.
    let b = tree.node(tree.lookup(b"a/b").unwrap());
    assert_eq!(
        (b.meta.permissions, b.meta.uid, b.meta.mtime),
        (0o755, 0, Timestamp::from_seconds(1_650_000_000))
    );
    assert_eq!(tree.node(tree.root()).meta.mtime, Timestamp::from_seconds(1_650_000_000));
    let nanos = tree.node(tree.lookup(b"nanos").unwrap());
    assert_eq!(nanos.meta.mtime, Timestamp { seconds: 1_600_000_000, nanoseconds: 1 });
    assert_eq!(nanos.meta.xattrs.get(&b"user.k"[..]).map(Vec::as_slice), Some(&b"v\n=v"[..]));
}

/// Damaged archives (bytes changed, cut, blocks repeated) give errors or trees,
/// never a panic: errors are fine, panics are bugs.
#[test]
fn mutated_archives_never_panic() {
    let mut raw = RawTar::default();
    raw.entry(b"./", b'5', b"", b"")
        .pax(&[("path", b"dir/long-name"), ("mtime", b"1.5"), ("SCHILY.xattr.user.a", b"v")])
        .file("ignored", b"contents of the long name")
        .entry(b"dir/sub/", b'5', b"", b"")
        .file("dir/sub/file", &[0x5a; 700])
        .entry(b"dir/hard", b'1', b"", b"dir/sub/file")
        .entry(b"dir/sym", b'2', b"", b"sub/file")
        .entry(b"dev-null", b'3', b"", b"");
    let base = raw.finish();
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("mutated.tar");
    // xorshift64: a fixed sequence, so a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % u64::try_from(bound).unwrap()).unwrap()
    };
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..1500 {
        let mut bytes = base.clone();
        match round % 4 {
            0 | 1 => {
                for _ in 0..1 + next(4) {
                    let at = next(bytes.len());
                    bytes[at] = u8::try_from(next(256)).unwrap();
                }
            }
            2 => bytes.truncate(next(bytes.len())),
            _ => {
                let block = next(bytes.len() / 512) * 512;
                let copy = bytes[block..block + 512].to_vec();
                let to = next(bytes.len() / 512) * 512;
                bytes.splice(to..to, copy);
            }
        }
        if round % 5 == 0 {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            bytes = gz.finish().unwrap();
            let cut = bytes.len() - next(bytes.len() / 4 + 1);
            bytes.truncate(cut);
        }
        fs::write(&path, &bytes).unwrap();
        match load_source(&path, &SourceOptions::default()) {
            Ok(tree) => {
                dump(&tree);
                loaded += 1;
            }
            Err(err) => {
                assert!(format!("{err:#}").contains(&path.display().to_string()), "{err:#}");
                refused += 1;
            }
        }
    }
    println!("{loaded} damaged archives loaded, {refused} refused");
    assert!(refused > 0);
}

#[test]
fn libarchive_xattrs_and_acls() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("libarchive.tar");
    let mut raw = RawTar::default();
    raw.pax(&[
        ("LIBARCHIVE.xattr.security.capability", b"AQAAAgAgAAAAAAAAAAAAAAAAAAA"),
        ("LIBARCHIVE.xattr.user.odd%3Dname", b"aGVsbG8="),
        ("SCHILY.acl.access", b"user::rw-,group::r--,other::r--"),
    ])
    .file("usr/bin/ping", b"elf");
    fs::write(&path, raw.finish()).unwrap();
    let tree = load(&path, &SourceOptions::default());
    let xattrs = &tree.node(tree.lookup(b"usr/bin/ping").unwrap()).meta.xattrs;
    assert_eq!(xattrs[&b"security.capability"[..]].len(), 20);
    assert_eq!(xattrs[&b"user.odd=name"[..]], b"hello");

    // Named entries cannot be carried as mode bits: refused, not dropped.
    let message = load_error(
        &RawTar::default()
            .pax(&[(
                "SCHILY.acl.access",
                b"user::rw-,user:1000:r--,group::r--,mask::r--,other::r--",
            )])
            .file("srv/data", b"x")
            .finish(),
        "acl.tar",
    );
    assert!(message.contains("'srv/data'") && message.contains("ACL"), "{message}");
}

#[test]
fn archives_made_by_the_tar_crate_with_devices_and_long_names() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str,
                   kind: tar::EntryType,
                   mode: u32,
                   data: &[u8],
                   link: Option<&str>,
                   dev: (u32, u32)| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(1_000_000);
        header.set_gid(5);
        header.set_mtime(1_234_567_890);
        header.set_size(data.len() as u64);
        header.set_device_major(dev.0).unwrap();
        header.set_device_minor(dev.1).unwrap();
        if let Some(link) = link {
            builder.append_link(&mut header, path, link).unwrap();
        } else {
            builder.append_data(&mut header, path, data).unwrap();
        }
    };
    let long_dir = "l".repeat(150);
    add("dev", tar::EntryType::Directory, 0o755, b"", None, (0, 0));
    add("dev/console", tar::EntryType::Char, 0o600, b"", None, (5, 1));
    add("dev/sda", tar::EntryType::Block, 0o660, b"", None, (8, 0));
    add("dev/initctl", tar::EntryType::Fifo, 0o600, b"", None, (0, 0));
    add(
        &format!("{long_dir}/{}", "f".repeat(200)),
        tar::EntryType::Regular,
        0o644,
        b"long",
        None,
        (0, 0),
    );
    add(
        "lib",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some(&format!("usr/{}", "s".repeat(150))),
        (0, 0),
    );
    add(
        "again",
        tar::EntryType::Link,
        0o644,
        b"",
        Some(&format!("{long_dir}/{}", "f".repeat(200))),
        (0, 0),
    );
    let bytes = builder.into_inner().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("crate.tar");
    fs::write(&path, bytes).unwrap();
    let text = dump(&load(&path, &SourceOptions::default()));
    println!("{text}");
    assert!(text.contains("/dev/console chr 0600 1000000:5 dev=5,1 mtime=1234567890.000000000"));
    assert!(text.contains("/dev/sda blk 0660 1000000:5 dev=8,0 "));
    assert!(text.contains("/dev/initctl fifo 0600 "));
    assert!(
        text.contains(&format!("/lib sym 0777 1000000:5 size=154 target=usr/{}", "s".repeat(150)))
    );
    assert!(text.contains("/again file 0644 1000000:5 size=4 "));
    assert!(text.contains(" links=2 same-as=/again"));
}

#[test]
fn unreadable_file_is_an_error() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::write(root.join("etc/ok"), b"fine").unwrap();
    fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), b"secret").unwrap();
    fs::set_permissions(
        root.join("etc/ssh/ssh_host_ed25519_key"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();

    if !euid_is_root() {
        check_unreadable(&root);
        return;
    }
    // Root reads any file, so the check runs in a copy of this test binary with
    // the uid and gid of `nobody` (setpriv is in util-linux, always present).
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unreadable_file_check_as_another_user",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ABFORGE_TEST_UNREADABLE_SOURCE", &root)
        .output()
        .expect("running setpriv");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the check as uid 65534 failed");
    assert!(stdout.contains("unreadable file check done"), "the check as uid 65534 did not run");
}

/// The half of `unreadable_file_is_an_error` that runs as another user; does
/// nothing unless that test started it.
#[test]
fn unreadable_file_check_as_another_user() {
    if let Some(root) = std::env::var_os("ABFORGE_TEST_UNREADABLE_SOURCE") {
        check_unreadable(Path::new(&root));
        println!("unreadable file check done");
    }
}

fn check_unreadable(root: &Path) {
    let key = root.join("etc/ssh/ssh_host_ed25519_key");
    let err = load_source(root, &SourceOptions::default()).expect_err("an unreadable file loaded");
    let message = format!("{err:#}");
    println!("{message}");
    assert!(message.contains(&key.display().to_string()), "{message}");
    assert!(message.to_lowercase().contains("permission denied"), "{message}");
    // Excluded, it is never opened.
    let opts = SourceOptions {
        exclude: vec![Exclude::new("/etc/ssh/ssh_host_*").unwrap()],
        ..SourceOptions::default()
    };
    let tree = load(root, &opts);
    assert!(
        tree.lookup(b"etc/ssh").is_some() && tree.lookup(b"etc/ssh/ssh_host_ed25519_key").is_none()
    );
}

#[test]
fn missing_source_and_odd_files_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let err = load_source(&temp.path().join("nope"), &SourceOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"));
    let xz = temp.path().join("root.tar.xz");
    fs::write(&xz, b"\xfd7zXZ\0rest").unwrap();
    let err = format!("{:#}", load_source(&xz, &SourceOptions::default()).unwrap_err());
    assert!(err.contains("xz") && err.contains(&xz.display().to_string()), "{err}");
}

/// Loads a synthetic tree of 50 000 small files as a directory and as a tar and
/// prints the times (no assertion on them). Run with
/// `cargo test -p abforge --release --test source -- --ignored --nocapture timing`.
/// With `ABFORGE_TIMING_DIR=DIR` it loads `DIR/root` and `DIR/root.tar` (made
/// beforehand) instead of generating them, for profiling.
#[test]
#[ignore = "timing report, run by hand"]
fn timing_of_50000_small_files() {
    let temp = tempfile::tempdir().unwrap();
    let base = match std::env::var_os("ABFORGE_TIMING_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let root = temp.path().join("root");
            for dir in 0..100 {
                let dir_path = root.join(format!("d{dir:03}"));
                fs::create_dir_all(&dir_path).unwrap();
                for file in 0..500 {
                    fs::write(dir_path.join(format!("f{file:04}")), format!("file {dir} {file}\n"))
                        .unwrap();
                }
            }
            gnu_tar(&root, &temp.path().join("root.tar"), "");
            gnu_tar(&root, &temp.path().join("root.tar.gz"), "-z");
            temp.path().to_path_buf()
        }
    };
    for name in ["root", "root.tar", "root.tar.gz"] {
        let source = base.join(name);
        if !source.exists() {
            continue;
        }
        let start = std::time::Instant::now();
        let cpu_start = thread_cpu_time();
        let tree = load(&source, &SourceOptions::default());
        let loaded = start.elapsed();
        let cpu = thread_cpu_time() - cpu_start;
        let text = dump(&tree);
        println!(
            "{}: {} entries loaded in {loaded:?} wall, {cpu:?} CPU (dump with content hashes: {:?} more)",
            source.display(),
            tree.walk().len(),
            start.elapsed() - loaded
        );
        assert_eq!(text.lines().count(), 50_101);
    }
}

/// CPU time this thread has used (user and system), from /proc: on a shared
/// machine it says more than wall time.
fn thread_cpu_time() -> std::time::Duration {
    let text = fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanoseconds = text.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    std::time::Duration::from_nanos(nanoseconds)
}

/// `mkfs ext4 --size` from a directory writes the image while the directory is read
/// (`write_ext4_while_loading`): its bytes are those of the tree loaded first, for a
/// roomy, an exactly sized and a too small file system (same error), with and
/// without owner mapping, clamping and exclusions.
#[test]
fn an_ext4_image_written_while_loading_is_that_of_the_loaded_tree() {
    use abforge::source::dir::{Streamed, write_ext4_while_loading, write_while_loading};
    use abforge_partitions::ext4::{self, Ext4Options};
    use abforge_partitions::{FileRegion, Guid};

    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    generate_tree(&root);
    let ext4_options = Ext4Options {
        uuid: "0b9cbdd6-5d53-4d39-9a49-1fc54e1d0c1f".parse::<Guid>().unwrap(),
        write_behind: true,
        ..Ext4Options::default()
    };
    let variants = [
        SourceOptions::default(),
        SourceOptions {
            owner: Some(OwnerMapping::force(0, 0)),
            source_date_epoch: Some(1_650_000_000),
            exclude: vec![Exclude::new("/etc/pass*").unwrap()],
            ..SourceOptions::default()
        },
    ];
    let image = |name: &str, size: u64, write: &dyn Fn(&fs::File) -> anyhow::Result<()>| {
        let path = temp.path().join(name);
        let file = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(size).unwrap();
        write(&file).map(|()| fs::read(&path).unwrap()).map_err(|err| format!("{err:#}"))
    };
    let mut cases = 0;
    for opts in &variants {
        let tree = load(&root, opts);
        let needed = ext4::min_size(&tree, &ext4_options).unwrap();
        // `needed` is a bound: a little less may fit (holes are found by reading).
        for size in [needed + (8 << 20), needed, needed - 4096, needed / 8192 * 4096] {
            let loaded = image("loaded.img", size, &|file| {
                ext4::write(&tree, &ext4_options, FileRegion::new(file, 0, size))?;
                Ok(())
            });
            let streamed = image("streamed.img", size, &|file| {
                write_ext4_while_loading(&root, opts, &ext4_options, file, size)?;
                Ok(())
            });
            match (&loaded, &streamed) {
                (Ok(a), Ok(b)) => assert!(a == b, "different images for {size} bytes"),
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => {
                    panic!("{size} bytes: loaded {:?}, streamed {:?}", loaded.err(), streamed.err())
                }
            }
            if size >= needed {
                assert!(loaded.is_ok(), "{size} bytes, {needed} needed: {:?}", loaded.err());
            } else if size < needed / 2 + 4096 {
                let error = loaded.as_ref().expect_err("half the size needed fitted");
                assert!(error.contains("needs an ext4 file system of"), "{error}");
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 8);
    // With room to spare, the image is written from the stream, not again afterwards.
    let size = 64 << 20;
    let file = fs::File::create(temp.path().join("roomy.img")).unwrap();
    file.set_len(size).unwrap();
    let streamed = write_while_loading(&root, &variants[1], |skeleton, pending| {
        let region = FileRegion::new(&file, 0, size);
        Ok(ext4::write_streamed(skeleton, pending, &ext4_options, region)?)
    })
    .unwrap();
    assert!(matches!(streamed, Streamed::Written(_)), "the streamed image was not used");
}
