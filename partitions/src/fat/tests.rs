use super::*;
use crate::tree::{Content, Metadata, Node};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

const T0: Timestamp = Timestamp::from_seconds(1_700_000_000);

fn meta() -> Metadata {
    Metadata::new(0o755, 0, 0, T0)
}

fn file(bytes: Vec<u8>) -> Node {
    Node { meta: meta(), kind: NodeKind::File(Content::Bytes(Arc::from(bytes))) }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap() ^ seed).collect()
}

fn esp_tree() -> FileTree {
    let mut tree = FileTree::new(meta());
    tree.put(b"EFI/BOOT/BOOTX64.EFI", file(pattern(300_000, 7)), &meta()).unwrap();
    tree.put(b"EFI/abforge/a rather long file name.conf", file(b"timeout 3\n".to_vec()), &meta())
        .unwrap();
    tree.put(b"loader/entries/deep/er/empty", file(Vec::new()), &meta()).unwrap();
    tree
}

fn options() -> FatOptions {
    FatOptions { volume_id: 0xA1B2_C3D4, label: "esp".into(), timestamp: T0, hidden_sectors: 2048 }
}

fn sparse(dir: &tempfile::TempDir, name: &str, size: u64) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join(name))
        .unwrap();
    f.set_len(size).unwrap();
    f
}

fn read_back(f: &File, size: u64, path: &str) -> Vec<u8> {
    let fs = fatfs::FileSystem::new(
        RegionStream::new(FileRegion::new(f, 0, size)),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let mut out = Vec::new();
    fs.root_dir().open_file(path).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn fat_times_are_utc_and_clamped() {
    let show = |s: i64| {
        let dt = fat_date_time(Timestamp::from_seconds(s));
        let (d, t) = (dt.date, dt.time);
        format!("{}-{:02}-{:02} {:02}:{:02}:{:02}", d.year, d.month, d.day, t.hour, t.min, t.sec)
    };
    assert_eq!(show(1_700_000_000), "2023-11-14 22:13:20");
    assert_eq!(show(1_709_164_800), "2024-02-29 00:00:00");
    assert_eq!(show(315_532_800), "1980-01-01 00:00:00");
    assert_eq!(show(0), "1980-01-01 00:00:00");
    assert_eq!(show(-5), "1980-01-01 00:00:00");
    assert_eq!(show(4_354_819_199), "2107-12-31 23:59:59");
    assert_eq!(show(4_354_819_200), "2107-12-31 23:59:58");
    assert_eq!(show(i64::MAX), "2107-12-31 23:59:58");
}

/// The geometry predicted before writing is the one fatfs produces.
#[test]
fn predicted_geometry_matches_fatfs() {
    let dir = tempfile::tempdir().unwrap();
    let sizes_mib = [1, 2, 3, 4, 5, 8, 16, 17, 33, 63, 64, 100, 128, 129, 192, 260, 261, 512, 600];
    let empty = FileTree::new(meta());
    for size in sizes_mib.iter().map(|m| m * MIB).chain([8 * MIB + 512, 70 * MIB - 1536]) {
        let f = sparse(&dir, "g", size);
        let summary = write_fat(&empty, &options(), FileRegion::new(&f, 0, size)).unwrap();
        let geometry = fat_geometry(size).unwrap();
        assert_eq!(
            (summary.fat_type, summary.cluster_size, summary.clusters),
            (geometry.fat_type, geometry.cluster_size, geometry.clusters),
            "size {size}"
        );
        if size >= FAT32_FROM_BYTES {
            assert_eq!(summary.fat_type, FatType::Fat32, "size {size}");
        }
    }
    assert_eq!(fat_geometry(8 * MIB).unwrap().fat_type, FatType::Fat16);
}

#[test]
fn writes_files_label_volume_id_and_hidden_sectors() {
    let dir = tempfile::tempdir().unwrap();
    for size in [8 * MIB, 192 * MIB] {
        let f = sparse(&dir, "esp", size);
        let summary = write_fat(&esp_tree(), &options(), FileRegion::new(&f, 0, size)).unwrap();
        assert_eq!(read_back(&f, size, "EFI/BOOT/BOOTX64.EFI"), pattern(300_000, 7));
        assert_eq!(read_back(&f, size, "efi/abforge/A RATHER LONG FILE NAME.conf"), b"timeout 3\n");
        assert_eq!(read_back(&f, size, "loader/entries/deep/er/empty"), b"");
        let fs = fatfs::FileSystem::new(
            RegionStream::new(FileRegion::new(&f, 0, size)),
            fatfs::FsOptions::new(),
        )
        .unwrap();
        assert_eq!(fs.volume_id(), 0xA1B2_C3D4);
        assert_eq!(fs.volume_label(), "ESP");
        // "." and ".." come first in every directory (fsck.fat insists).
        for dir in ["EFI", "EFI/BOOT", "loader/entries/deep/er"] {
            let names: Vec<String> = fs
                .root_dir()
                .open_dir(dir)
                .unwrap()
                .iter()
                .take(2)
                .map(|e| e.unwrap().short_file_name())
                .collect();
            assert_eq!(names, [".", ".."], "{dir} in {size}");
        }
        let stats = fs.stats().unwrap();
        assert_eq!(stats.free_clusters(), summary.free_clusters);
        // The prediction counts at least what was used.
        let predicted = check_fat_fits(&esp_tree(), size).unwrap();
        assert!(predicted.free_clusters <= summary.free_clusters, "{predicted:?} {summary:?}");
        drop(fs);
        let mut hidden = [0u8; 4];
        f.read_exact_at(&mut hidden, 0x1C).unwrap();
        assert_eq!(u32::from_le_bytes(hidden), 2048);
        if summary.fat_type == FatType::Fat32 {
            f.read_exact_at(&mut hidden, 6 * 512 + 0x1C).unwrap();
            assert_eq!(u32::from_le_bytes(hidden), 2048);
        }
    }
}

use std::os::unix::fs::FileExt;

#[test]
fn two_writes_are_identical_and_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let size = 512 * MIB;
    let a = sparse(&dir, "a", size);
    let b = sparse(&dir, "b", size);
    write_fat(&esp_tree(), &options(), FileRegion::new(&a, 0, size)).unwrap();
    write_fat(&esp_tree(), &options(), FileRegion::new(&b, 0, size)).unwrap();
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for offset in (0..size).step_by(1 << 20) {
        a.read_exact_at(&mut x, offset).unwrap();
        b.read_exact_at(&mut y, offset).unwrap();
        assert!(x == y, "images differ in the MiB at {offset}");
    }
    // Two 1 MiB FATs, the boot sectors, the directories and 300 KB of data.
    let allocated = a.metadata().unwrap().blocks() * 512;
    assert!(allocated < 4 * MIB, "{allocated} bytes allocated");
}

#[test]
fn refuses_what_fat_cannot_hold() {
    let mut tree = esp_tree();
    let root = tree.root();
    tree.add(root, b"link", Node { meta: meta(), kind: NodeKind::Symlink(b"EFI".to_vec()) })
        .unwrap();
    let err = check_fat_fits(&tree, 8 * MIB).unwrap_err();
    assert_eq!(err.to_string(), "'/link' is a symlink, which a FAT file system cannot hold");

    let mut tree = esp_tree();
    tree.put(b"EFI/boot", file(vec![1]), &meta()).unwrap();
    let err = check_fat_fits(&tree, 8 * MIB).unwrap_err().to_string();
    assert!(err.contains("'/EFI/BOOT'") && err.contains("'/EFI/boot'"), "{err}");

    let mut tree = esp_tree();
    tree.put(b"EFI/a:b", file(vec![1]), &meta()).unwrap();
    assert!(matches!(check_fat_fits(&tree, 8 * MIB), Err(FatError::BadName { .. })));

    let mut tree = esp_tree();
    tree.put(b"big", file(vec![1; 9 << 20]), &meta()).unwrap();
    let err = check_fat_fits(&tree, 8 * MIB).unwrap_err();
    assert!(matches!(err, FatError::TooSmall { .. }), "{err}");
    // write_fat refuses it before writing anything.
    let dir = tempfile::tempdir().unwrap();
    let f = sparse(&dir, "small", 8 * MIB);
    assert!(write_fat(&tree, &options(), FileRegion::new(&f, 0, 8 * MIB)).is_err());
    assert_eq!(f.metadata().unwrap().blocks(), 0);

    let mut crowded = FileTree::new(meta());
    for i in 0..300 {
        crowded
            .put(format!("file-with-a-longish-name-{i}").as_bytes(), file(vec![]), &meta())
            .unwrap();
    }
    assert!(matches!(check_fat_fits(&crowded, 8 * MIB), Err(FatError::RootDirectoryFull { .. })));
    assert!(check_fat_fits(&crowded, 64 * MIB).is_ok());

    let bad_label = FatOptions { label: "esp.part".into(), ..options() };
    assert!(write_fat(&esp_tree(), &bad_label, FileRegion::new(&f, 0, 8 * MIB)).is_err());
}

#[test]
fn min_size_is_tight() {
    let mut tree = esp_tree();
    tree.put(b"big", file(vec![1; 20 << 20]), &meta()).unwrap();
    let min = min_fat_size(&tree).unwrap();
    assert!(check_fat_fits(&tree, min).is_ok());
    assert!(check_fat_fits(&tree, min - MIB).is_err());
    assert_eq!(min_fat_size(&FileTree::new(meta())).unwrap(), MIB);
}
