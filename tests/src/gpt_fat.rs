//! Helpers for the GPT and FAT checks against sgdisk, fsck.vfat and mtools:
//! the EFLOW-like layout, an ESP-like file tree, sparse files and `sgdisk -i`
//! parsing.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use abforge_partitions::Guid;
use abforge_partitions::gpt::{GptLayout, PartitionEntry, PartitionType, attributes};
use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A GUID made from a small number, distinct per number (v4 bits set).
pub fn test_guid(n: u8) -> Guid {
    let mut bytes = [0x5Au8; 16];
    bytes[0] = n;
    bytes[15] = n.wrapping_mul(7);
    Guid::from_rfc_bytes(bytes).with_v4_bits()
}

/// The nine EFLOW partitions (boot-and-signing.md §1), 1 MiB aligned from LBA
/// 2048, RootFS read-only; the disk ends 1 MiB after the last partition.
pub fn eflow_layout() -> GptLayout {
    let parts: [(&str, PartitionType, u64, u64); 9] = [
        ("BootEFIA", PartitionType::Esp, 8 * MIB, 0),
        ("BootA", PartitionType::Linux, 192 * MIB, 0),
        ("RootFSA", PartitionType::Root, 4 * GIB, attributes::READ_ONLY),
        ("BootEFIB", PartitionType::Esp, 8 * MIB, 0),
        ("BootB", PartitionType::Linux, 192 * MIB, 0),
        ("RootFSB", PartitionType::Root, 4 * GIB, attributes::READ_ONLY),
        ("Unused", PartitionType::Linux, 4 * GIB, 0),
        ("Log", PartitionType::Linux, GIB, 0),
        ("Data", PartitionType::Linux, 2 * GIB, 0),
    ];
    let mut offset = MIB;
    let mut entries = Vec::new();
    for (i, (name, kind, size, attrs)) in parts.into_iter().enumerate() {
        entries.push(PartitionEntry {
            type_guid: kind.guid(),
            unique_guid: test_guid(u8::try_from(i + 1).unwrap()),
            first_lba: offset / 512,
            last_lba: (offset + size) / 512 - 1,
            attributes: attrs,
            name: name.to_string(),
        });
        offset += size;
    }
    GptLayout { disk_guid: test_guid(0), disk_size_bytes: offset + MIB, entries }
}

fn meta() -> Metadata {
    Metadata::new(0o755, 0, 0, Timestamp::from_seconds(1_700_000_000))
}

/// Deterministic, non-repeating-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The long-file-name file of [`esp_tree`].
pub const LONG_NAME: &str = "A long file name, with Spaces and (more).txt";

/// An ESP-like tree: EFI/BOOT/BOOTX64.EFI (300 KB of pattern bytes), a long
/// file name and nested directories.
pub fn esp_tree() -> FileTree {
    let mut tree = FileTree::new(meta());
    let file = |bytes: Vec<u8>| Node {
        meta: meta(),
        kind: NodeKind::File(Content::Bytes(Arc::from(bytes))),
    };
    tree.put(b"EFI/BOOT/BOOTX64.EFI", file(pattern(300_000)), &meta()).unwrap();
    tree.put(format!("EFI/abforge/{LONG_NAME}").as_bytes(), file(b"hello\n".to_vec()), &meta())
        .unwrap();
    tree.put(b"loader/entries/a/b/c/entry.conf", file(b"title A\n".to_vec()), &meta()).unwrap();
    tree.put(b"loader/loader.conf", file(b"timeout 0\n".to_vec()), &meta()).unwrap();
    tree
}

/// Creates (or truncates) a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) -> File {
    let file =
        File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    file.set_len(size).unwrap();
    file
}

/// The `key: value` lines of `sgdisk -i N` output.
pub fn parse_sgdisk_info(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
