use super::header::{Header, get_u32, header_crc};
use super::*;

const MIB: u64 = 1 << 20;

fn guid(text: &str) -> Guid {
    text.parse().unwrap()
}

fn entry(name: &str, kind: PartitionType, first_mib: u64, size_mib: u64, n: u8) -> PartitionEntry {
    PartitionEntry {
        type_guid: kind.guid(),
        unique_guid: Guid::from_rfc_bytes([n; 16]).with_v4_bits(),
        first_lba: first_mib * MIB / SECTOR_SIZE,
        last_lba: (first_mib + size_mib) * MIB / SECTOR_SIZE - 1,
        attributes: 0,
        name: name.to_string(),
    }
}

fn small_layout() -> GptLayout {
    let mut root = entry("RootFSA", PartitionType::Root, 9, 16, 2);
    root.attributes = attributes::READ_ONLY;
    GptLayout {
        disk_guid: guid("01234567-89ab-4cde-8f01-23456789abcd"),
        disk_size_bytes: 32 * MIB,
        entries: vec![entry("BootEFIA", PartitionType::Esp, 1, 8, 1), root],
    }
}

/// The disk image of a layout, in memory (the layouts here are small).
fn image(layout: &GptLayout) -> Vec<u8> {
    let mut disk = vec![0u8; usize::try_from(layout.disk_size_bytes).unwrap()];
    let primary = layout.primary_bytes().unwrap();
    disk[..primary.len()].copy_from_slice(&primary);
    let backup = layout.backup_bytes().unwrap();
    let at = usize::try_from(layout.backup_offset()).unwrap();
    disk[at..at + backup.len()].copy_from_slice(&backup);
    disk
}

#[test]
fn crc32_is_the_standard_ieee_one() {
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
}

#[test]
fn usable_range_leaves_room_for_both_tables() {
    assert_eq!(first_usable_lba(), 34);
    assert_eq!(last_usable_lba(32 * MIB), Some(32 * MIB / 512 - 34));
    assert_eq!(last_usable_lba(67 * 512), None);
    assert_eq!(last_usable_lba(68 * 512), Some(34));
}

#[test]
fn protective_mbr_bytes() {
    // 1 GiB: 2097152 sectors, the record covers 2097151 from LBA 1.
    let mbr = protective_mbr(2_097_152);
    assert_eq!(&mbr[440..446], &[0; 6]);
    assert_eq!(
        &mbr[446..462],
        &[0x00, 0x00, 0x02, 0x00, 0xEE, 138, 8, 130, 1, 0, 0, 0, 0xFF, 0xFF, 0x1F, 0x00]
    );
    assert_eq!(&mbr[462..510], &[0; 48]);
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    assert!(mbr[..440].iter().all(|&b| b == 0));
    // 4 TiB: the size saturates and the end CHS is the "too large" marker.
    let big = protective_mbr(8 << 30);
    assert_eq!(&big[446 + 5..446 + 8], &[0xFF; 3]);
    assert_eq!(&big[446 + 12..446 + 16], &[0xFF; 4]);
}

#[test]
fn header_fields_and_crcs() {
    let layout = small_layout();
    let primary = layout.primary_bytes().unwrap();
    assert_eq!(primary.len(), 34 * 512);
    let h = &primary[512..1024];
    assert_eq!(&h[..8], b"EFI PART");
    assert_eq!(get_u32(h, 8), 0x0001_0000);
    assert_eq!(get_u32(h, 12), 92);
    assert_eq!(get_u32(h, 16), header_crc(h, 92));
    assert_eq!(get_u32(h, 80), 128);
    assert_eq!(get_u32(h, 84), 128);
    assert_eq!(get_u32(h, 88), crc32fast::hash(&primary[1024..]));
    assert!(h[92..].iter().all(|&b| b == 0));
    let parsed = Header::parse(h.try_into().unwrap()).unwrap();
    assert_eq!(parsed.my_lba, 1);
    assert_eq!(parsed.alternate_lba, 32 * MIB / 512 - 1);
    assert_eq!(parsed.first_usable_lba, 34);
    assert_eq!(parsed.last_usable_lba, 32 * MIB / 512 - 34);
    assert_eq!(parsed.entries_lba, 2);
    // The ESP type GUID is stored mixed-endian.
    assert_eq!(&primary[1024..1028], &[0x28, 0x73, 0x2a, 0xc1]);
    // Name "BootEFIA" in UTF-16LE at entry offset 56.
    assert_eq!(&primary[1024 + 56..1024 + 60], &[b'B', 0, b'o', 0]);

    let backup = layout.backup_bytes().unwrap();
    assert_eq!(backup.len(), 33 * 512);
    assert_eq!(&backup[..16384], &primary[1024..]);
    let b = Header::parse(backup[16384..].try_into().unwrap()).unwrap();
    assert_eq!(b.my_lba, 32 * MIB / 512 - 1);
    assert_eq!(b.alternate_lba, 1);
    assert_eq!(b.entries_lba, 32 * MIB / 512 - 33);
    assert_eq!(layout.backup_offset(), 32 * MIB - 33 * 512);
}

/// Pinned CRCs of `small_layout`: a change here is a deliberate format change.
#[test]
fn pinned_crcs() {
    let primary = small_layout().primary_bytes().unwrap();
    let entries_crc = get_u32(&primary[512..], 88);
    let header_crc = get_u32(&primary[512..], 16);
    assert_eq!((entries_crc, header_crc), PINNED_CRCS, "{entries_crc:#010x} {header_crc:#010x}");
}
const PINNED_CRCS: (u32, u32) = (0xa3d8_e5be, 0x5af7_b6dc);

#[test]
fn round_trip() {
    let layout = small_layout();
    let disk = image(&layout);
    let report = read_gpt_report(&disk, layout.disk_size_bytes).unwrap();
    assert_eq!(report.layout, layout);
    assert_eq!(report.used, GptCopy::Primary);
    assert_eq!(report.slots, [1, 2]);
    assert!(report.primary_problem.is_none() && report.backup_problem.is_none());
    assert_eq!(report.header.entry_count, 128);
}

#[test]
fn falls_back_to_the_backup_when_the_primary_is_damaged() {
    let layout = small_layout();
    // A flipped byte in the primary header, then in the primary entries.
    for offset in [512 + 60, 1024 + 130] {
        let mut disk = image(&layout);
        disk[offset] ^= 0x40;
        let report = read_gpt_report(&disk, layout.disk_size_bytes).unwrap();
        assert_eq!(report.used, GptCopy::Backup, "offset {offset}");
        assert_eq!(report.layout, layout);
        assert!(report.primary_problem.is_some());
    }
    // Both damaged: an error naming both.
    let mut disk = image(&layout);
    disk[512] = b'X';
    let last = disk.len() - 512;
    disk[last] = b'X';
    let err = read_gpt(&disk, layout.disk_size_bytes).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("primary") && text.contains("backup"), "{text}");
}

/// Rewrites the primary header with `edit` applied and a correct CRC.
fn with_primary_header(layout: &GptLayout, edit: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut disk = image(layout);
    // Damage the backup so only the edited primary can be used.
    let last = disk.len() - 512;
    disk[last] = 0;
    let h = &mut disk[512..1024];
    edit(h);
    let crc = header_crc(h, 92);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    disk
}

#[test]
fn hostile_headers_are_errors() {
    let layout = small_layout();
    let size = layout.disk_size_bytes;
    type Edit = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(&str, Edit)> = vec![
        ("huge entry count", Box::new(|h| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()))),
        ("entry size 0", Box::new(|h| h[84..88].copy_from_slice(&0u32.to_le_bytes()))),
        ("entry size 129", Box::new(|h| h[84..88].copy_from_slice(&129u32.to_le_bytes()))),
        (
            "entries past end",
            Box::new(|h| h[72..80].copy_from_slice(&(u64::MAX - 3).to_le_bytes())),
        ),
        ("entries on header", Box::new(|h| h[72..80].copy_from_slice(&1u64.to_le_bytes()))),
        ("wrong my_lba", Box::new(|h| h[24..32].copy_from_slice(&7u64.to_le_bytes()))),
        ("header size 4096", Box::new(|h| h[12..16].copy_from_slice(&4096u32.to_le_bytes()))),
        ("revision 2", Box::new(|h| h[8..12].copy_from_slice(&0x0002_0000u32.to_le_bytes()))),
        ("last usable past end", Box::new(|h| h[48..56].copy_from_slice(&u64::MAX.to_le_bytes()))),
    ];
    for (what, edit) in cases {
        let disk = with_primary_header(&layout, edit);
        assert!(read_gpt(&disk, size).is_err(), "{what} was accepted");
    }
    // A disk shorter than the header says, a reader shorter than the disk, tiny disks.
    let disk = image(&layout);
    assert!(read_gpt(&disk, size - 512 * 100).is_err());
    assert!(read_gpt(&disk[..4096].to_vec(), size).is_err());
    // A disk grown after partitioning: the backup is found where the primary says.
    let report = read_gpt_report(&disk, size + 512 * 100).unwrap();
    assert!(report.backup_problem.is_none());
    assert!(read_gpt(&disk[..1024].to_vec(), 1024).is_err());
    assert!(read_gpt(&Vec::new(), 0).is_err());
}

#[test]
fn validate_names_the_partitions() {
    let mut overlap = small_layout();
    overlap.entries[1].first_lba = overlap.entries[0].last_lba;
    let text = overlap.validate().unwrap_err().to_string();
    assert!(text.contains("BootEFIA") && text.contains("RootFSA"), "{text}");

    let mut outside = small_layout();
    outside.entries[1].last_lba = 32 * MIB / 512 - 33;
    assert!(matches!(outside.validate(), Err(GptError::OutsideUsable { index: 2, .. })));
    outside.entries[1].last_lba = 100;
    outside.entries[1].first_lba = 20;
    assert!(matches!(outside.validate(), Err(GptError::OutsideUsable { .. })));

    let mut long = small_layout();
    long.entries[0].name = "x".repeat(37);
    assert!(matches!(long.validate(), Err(GptError::NameTooLong { units: 37, .. })));
    long.entries[0].name = "\u{1F600}".repeat(18); // 36 units as surrogate pairs
    long.validate().unwrap();

    let mut many = small_layout();
    many.disk_size_bytes = 1 << 40;
    many.entries =
        (0..129u8).map(|i| entry("p", PartitionType::Linux, 1 + u64::from(i), 1, i)).collect();
    assert!(matches!(many.validate(), Err(GptError::TooManyPartitions { count: 129, .. })));

    let mut dup = small_layout();
    dup.entries[1].unique_guid = dup.entries[0].unique_guid;
    assert!(matches!(dup.validate(), Err(GptError::DuplicateGuid { .. })));

    let mut inverted = small_layout();
    inverted.entries[0].last_lba = inverted.entries[0].first_lba - 1;
    assert!(matches!(inverted.validate(), Err(GptError::Inverted { .. })));

    let mut odd = small_layout();
    odd.disk_size_bytes += 1;
    assert!(matches!(odd.validate(), Err(GptError::DiskSizeUnaligned { .. })));
    assert!(odd.primary_bytes().is_err());
}

#[test]
fn type_names_map_both_ways() {
    for t in PartitionType::ALL {
        assert_eq!(PartitionType::from_name(t.name()), Some(t));
        assert_eq!(PartitionType::from_guid(t.guid()), Some(t));
    }
    assert_eq!(PartitionType::Esp.guid(), guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"));
    assert_eq!(PartitionType::Root.guid(), guid("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"));
    assert_eq!(PartitionType::from_name("swap"), None);
    assert_eq!(attribute_names(attributes::READ_ONLY | 2), ["bit 1", "read-only"]);
}

/// A small deterministic fuzz: mutated tables (with CRCs fixed up half of the
/// time, so the mutations reach the checks behind them) never panic, and a
/// layout read back always has its entries inside the claimed array.
#[test]
fn mutated_tables_never_panic() {
    let layout = GptLayout {
        disk_guid: guid("01234567-89ab-4cde-8f01-23456789abcd"),
        disk_size_bytes: 2 * MIB,
        entries: vec![entry("a", PartitionType::Esp, 1, 0, 1)],
    };
    let mut layout = layout;
    layout.entries[0].last_lba = layout.entries[0].first_lba + 100;
    let clean = image(&layout);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pick = |r: u64, n: usize| usize::try_from(r % n as u64).unwrap();
    for _ in 0..3000 {
        let mut disk = clean.clone();
        let flips = 1 + pick(next(), 8);
        for _ in 0..flips {
            // Mostly the primary header, sometimes the entries or the backup header.
            let offset = match pick(next(), 4) {
                0 | 1 => 512 + pick(next(), 92),
                2 => 1024 + pick(next(), 256),
                _ => disk.len() - 512 + pick(next(), 92),
            };
            disk[offset] = u8::try_from(next() & 0xFF).unwrap();
        }
        if next() % 2 == 0 {
            let h = &mut disk[512..1024];
            let crc = header_crc(h, 92);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
        }
        let size = match pick(next(), 3) {
            0 => layout.disk_size_bytes,
            1 => layout.disk_size_bytes / 2,
            _ => layout.disk_size_bytes * 4,
        };
        if let Ok(report) = read_gpt_report(&disk, size) {
            assert!(report.slots.iter().all(|&s| s >= 1 && s <= report.header.entry_count));
            let _ = report.layout.validate();
        }
    }
}
