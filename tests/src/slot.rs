//! Helpers for the offline slot-control tests: a small A/B disk with two ESPs holding
//! the GRUB selector and environment block, built with library calls (the same
//! writers `abforge build` uses), and byte access to its files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use abforge_kernels::Slot;
use abforge_kernels::grub::{SelectorConfig, SelectorSlot, SlotState, render_selector};
use abforge_partitions::fat::{FatOptions, write_fat};
use abforge_partitions::gpt::{GptLayout, PartitionEntry, PartitionType};
use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};
use abforge_partitions::{FileRegion, Guid};

use crate::gpt_fat::{MIB, pattern, sparse_file, test_guid};

/// Size of each ESP: 8 MiB, formatted FAT16.
pub const ESP_SIZE: u64 = 8 * MIB;

/// What goes on the ESPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EspContents {
    /// Selector and environment block (default slot a), as a build writes them.
    SelectorAndEnv,
    /// The environment block only (no selector).
    EnvOnly,
    /// Neither: an ESP with only the bootloader.
    Nothing,
}

fn meta() -> Metadata {
    Metadata::new(0o755, 0, 0, Timestamp::from_seconds(1_700_000_000))
}

/// The selector of the test disk: slots a and b.
pub fn selector() -> String {
    let slot = |name: &str, n: u8| SelectorSlot {
        slot: name.parse::<Slot>().unwrap(),
        boot_fs_uuid: Guid::from_rfc_bytes([n; 16]).with_v4_bits(),
    };
    render_selector(&SelectorConfig {
        slots: vec![slot("a", 1), slot("b", 2)],
        timeout_seconds: 0,
        serial_console: true,
    })
    .unwrap()
}

fn esp_tree(contents: EspContents) -> FileTree {
    let mut tree = FileTree::new(meta());
    let file = |bytes: Vec<u8>| Node {
        meta: meta(),
        kind: NodeKind::File(Content::Bytes(Arc::from(bytes))),
    };
    tree.put(b"EFI/BOOT/BOOTX64.EFI", file(pattern(200_000)), &meta()).unwrap();
    if contents != EspContents::Nothing {
        let block = SlotState::new(Slot::a()).render_envblk().unwrap();
        tree.put(b"EFI/abforge/grubenv", file(block.to_vec()), &meta()).unwrap();
    }
    if contents == EspContents::SelectorAndEnv {
        tree.put(b"EFI/abforge/select.cfg", file(selector().into_bytes()), &meta()).unwrap();
    }
    tree
}

/// The test disk's partitions: BootEFIA, BootA, BootEFIB, BootB (1 MiB aligned).
pub fn layout() -> GptLayout {
    let parts = [
        ("BootEFIA", PartitionType::Esp, ESP_SIZE),
        ("BootA", PartitionType::Linux, MIB),
        ("BootEFIB", PartitionType::Esp, ESP_SIZE),
        ("BootB", PartitionType::Linux, MIB),
    ];
    let mut offset = MIB;
    let mut entries = Vec::new();
    for (n, (name, kind, size)) in (1u8..).zip(parts) {
        entries.push(PartitionEntry {
            type_guid: kind.guid(),
            unique_guid: test_guid(n),
            first_lba: offset / 512,
            last_lba: (offset + size) / 512 - 1,
            attributes: 0,
            name: name.to_string(),
        });
        offset += size;
    }
    GptLayout { disk_guid: test_guid(0), disk_size_bytes: offset + MIB, entries }
}

/// Byte offsets of the two ESPs (partitions 1 and 3).
pub fn esp_offsets() -> [u64; 2] {
    let layout = layout();
    [layout.entries[0].offset_bytes(), layout.entries[2].offset_bytes()]
}

/// Writes the test disk as a sparse raw image.
pub fn write_raw_disk(path: &Path, contents: EspContents) {
    let layout = layout();
    let file = sparse_file(path, layout.disk_size_bytes);
    layout.write_to(&file).unwrap();
    for (n, entry) in (1u32..).zip(&layout.entries) {
        if entry.type_guid != PartitionType::Esp.guid() {
            continue;
        }
        let options = FatOptions {
            volume_id: 0x5107_0000 + n,
            label: format!("ESP{n}"),
            timestamp: Timestamp::from_seconds(1_700_000_000),
            hidden_sectors: u32::try_from(entry.first_lba).unwrap(),
        };
        let region = FileRegion::new(&file, entry.offset_bytes(), entry.size_bytes());
        write_fat(&esp_tree(contents), &options, region).unwrap();
    }
    file.sync_all().unwrap();
}

/// `len` bytes at `offset` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Writes `bytes` at `offset` of a file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = File::options().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

/// The byte ranges where two files of the same length differ, as (start, end).
pub fn differing_ranges(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len(), "the files have different lengths");
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (i, (x, y)) in (0u64..).zip(a.iter().zip(&b)) {
        if x != y {
            match ranges.last_mut() {
                Some(last) if last.1 == i => last.1 = i + 1,
                _ => ranges.push((i, i + 1)),
            }
        }
    }
    ranges
}
