//! FAT file systems for EFI system partitions, written with `fatfs` 0.3.6.
//!
//! Follows the Microsoft FAT specification (FAT type decided by the cluster
//! count alone: < 4085 FAT12, < 65525 FAT16, else FAT32) as implemented by
//! fatfs, with its traps handled here:
//! - the FAT type fatfs picks is checked after formatting: a region of 64 MiB or
//!   more must come out FAT32, and an 8 MiB ESP comes out FAT16;
//! - timestamps come from a fixed provider built from SOURCE_DATE_EPOCH (FAT
//!   times are local, 2-second resolution, 1980..=2107: the epoch is converted
//!   as UTC and clamped to that range), never from the clock;
//! - the volume id is given by the caller (fatfs would write 0x12345678);
//! - `hidden_sectors` (BPB offset 0x1C, and in the FAT32 backup boot sector) is
//!   patched to the partition's start LBA, since fatfs always writes 0;
//! - fatfs writes a long-name entry before "." and ".." in every new
//!   directory, which `fsck.fat` rejects: the `dots` module rewrites each directory with
//!   "." and ".." in slots 0 and 1 after fatfs is done;
//! - the FAT32 FSInfo free-cluster count is computed before unmounting, so
//!   `fsck.fat` finds it initialised.
//!
//! Supported: directories and regular files from a [`FileTree`], long file
//! names (UTF-16, at most 255 units), 512-byte sectors. Left out: symlinks,
//! devices, FIFOs and sockets (FAT cannot hold them: an error names the path),
//! ownership and permission bits (FAT has none), a volume label entry in the
//! root directory (the label is in the boot sector only), per-file timestamps
//! (every entry gets the fixed time).
//!
//! The region should be zero, as a fresh sparse file is: formatting writes only
//! the metadata fatfs writes, and a write of zeros over bytes that already read
//! as zero is skipped so holes stay holes.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Mutex, OnceLock};

use crate::region::FileRegion;

mod dots;
use crate::tree::{FileTree, NodeId, NodeKind, Timestamp, child_path};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// From this size on a volume is formatted FAT32 (smaller ones get FAT16 or FAT12).
pub const FAT32_FROM_BYTES: u64 = 64 * MIB;
/// Directory entries in a FAT12/16 root directory (fatfs's default).
const ROOT_ENTRIES: u32 = 512;
const DIR_ENTRY: u64 = 32;
/// UTF-16 units of a name held by one long-name entry.
const LFN_UNITS_PER_ENTRY: usize = 13;
const COPY_CHUNK: usize = 64 * 1024;

// Boot sector and FSInfo offsets patched after fatfs is done.
const BPB_HIDDEN_SECTORS: u64 = 0x1C;
const BPB_BACKUP_BOOT_SECTOR: u64 = 0x32;
const FSINFO_SECTOR: u64 = 1;

/// The FAT variant of a volume.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }

    /// The type the FAT specification gives a volume of `clusters` clusters.
    pub fn from_clusters(clusters: u32) -> FatType {
        if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        }
    }

    fn bits_per_entry(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    fn from_fatfs(t: fatfs::FatType) -> FatType {
        match t {
            fatfs::FatType::Fat12 => FatType::Fat12,
            fatfs::FatType::Fat16 => FatType::Fat16,
            fatfs::FatType::Fat32 => FatType::Fat32,
        }
    }
}

/// How to format a volume.
#[derive(Clone, Debug)]
pub struct FatOptions {
    /// The serial number shown by `blkid` as the UUID (XXXX-XXXX).
    pub volume_id: u32,
    /// At most 11 characters of A-Z, 0-9, space and `!#$%&'()-@^_{}~`; lower
    /// case is upper-cased. Empty means "NO NAME".
    pub label: String,
    /// Every created, modified and accessed time (SOURCE_DATE_EPOCH).
    pub timestamp: Timestamp,
    /// Sectors before the volume on its disk: the partition's start LBA.
    pub hidden_sectors: u32,
}

/// What was written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FatSummary {
    pub fat_type: FatType,
    pub cluster_size: u32,
    /// Data clusters of the volume.
    pub clusters: u32,
    /// Clusters still free after the contents were copied (for a prediction:
    /// the free clusters expected).
    pub free_clusters: u32,
}

/// Why a FAT volume cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("'/{path}' is a {kind}, which a FAT file system cannot hold")]
    UnsupportedType { path: String, kind: &'static str },
    #[error("'/{path}' cannot be a FAT file name: {reason}")]
    BadName { path: String, reason: &'static str },
    #[error("'/{path}' and '/{other}' are the same name on FAT, which ignores case")]
    NameClash { path: String, other: String },
    #[error("'{label}' cannot be a FAT volume label: {reason}")]
    BadLabel { label: String, reason: &'static str },
    #[error(
        "the contents need {needed_clusters} clusters of {cluster_size} bytes ({needed_bytes} bytes) but the {size}-byte FAT volume has {available_clusters} ({available_bytes} bytes)"
    )]
    TooSmall {
        size: u64,
        cluster_size: u32,
        needed_clusters: u64,
        available_clusters: u64,
        needed_bytes: u64,
        available_bytes: u64,
    },
    #[error(
        "the root directory of the {size}-byte {fat_type} volume holds {max} entries and the contents need {needed}"
    )]
    RootDirectoryFull { size: u64, fat_type: &'static str, needed: u64, max: u32 },
    #[error("a FAT volume cannot be {size} bytes: {reason}")]
    BadSize { size: u64, reason: &'static str },
    #[error("formatting a {size}-byte volume gave {got}, and {expected} was required")]
    WrongType { size: u64, got: &'static str, expected: &'static str },
    #[error("formatting the FAT volume: {0}")]
    Format(#[source] io::Error),
    #[error("writing '/{path}' into the FAT volume: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// Time

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (the "civil from days" conversion on 400-year eras).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12 by construction.
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// A FAT date and time: the UTC calendar time of `ts`, clamped to
/// 1980-01-01 00:00:00 ..= 2107-12-31 23:59:58.
pub fn fat_date_time(ts: Timestamp) -> fatfs::DateTime {
    let (year, month, day) = civil_from_days(ts.seconds.div_euclid(86_400));
    let second_of_day = ts.seconds.rem_euclid(86_400);
    let (date, time) = if year < 1980 {
        ((1980, 1, 1), (0, 0, 0))
    } else if year > 2107 {
        ((2107, 12, 31), (23, 59, 58))
    } else {
        // second_of_day < 86400: hours, minutes and seconds fit in u16.
        let hms = (second_of_day / 3600, (second_of_day / 60) % 60, second_of_day % 60);
        let hms = (
            u16::try_from(hms.0).unwrap_or(0),
            u16::try_from(hms.1).unwrap_or(0),
            u16::try_from(hms.2).unwrap_or(0),
        );
        ((u16::try_from(year).unwrap_or(1980), month, day), hms)
    };
    fatfs::DateTime {
        date: fatfs::Date {
            year: date.0,
            month: u16::try_from(date.1).unwrap_or(1),
            day: u16::try_from(date.2).unwrap_or(1),
        },
        time: fatfs::Time { hour: time.0, min: time.1, sec: time.2, millis: 0 },
    }
}

/// A time provider that always answers the same time.
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// fatfs 0.3.6 wants a `&'static` provider: one is made per distinct time and
/// kept, so memory grows only with the number of different timestamps used.
fn fixed_time(dt: fatfs::DateTime) -> &'static FixedTime {
    static PROVIDERS: OnceLock<Mutex<HashMap<[u16; 6], &'static FixedTime>>> = OnceLock::new();
    let key = [dt.date.year, dt.date.month, dt.date.day, dt.time.hour, dt.time.min, dt.time.sec];
    let mut map = PROVIDERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key).or_insert_with(|| Box::leak(Box::new(FixedTime(dt))))
}

// ---------------------------------------------------------------------------
// Names and labels

fn path_text(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Checks one name against the long-file-name rules fatfs and Windows accept.
fn check_name(name: &[u8]) -> Result<&str, &'static str> {
    let name = std::str::from_utf8(name).map_err(|_| "it is not UTF-8")?;
    for c in name.chars() {
        if u32::from(c) > 0xFFFF {
            return Err("it has a character outside the Basic Multilingual Plane");
        }
        if c < ' ' || c == '\u{7f}' || "\"*/:<>?\\|".contains(c) {
            return Err("it has one of the characters \" * / : < > ? \\ | or a control character");
        }
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err("it ends with a dot or a space");
    }
    if name.encode_utf16().count() > 255 {
        return Err("it is longer than 255 UTF-16 units");
    }
    Ok(name)
}

/// The 11-byte boot-sector label.
fn label_bytes(label: &str) -> Result<[u8; 11], FatError> {
    let bad = |reason| FatError::BadLabel { label: label.to_string(), reason };
    if label.is_empty() {
        return Ok(*b"NO NAME    ");
    }
    if label.len() > 11 {
        return Err(bad("it is longer than 11 characters"));
    }
    let mut out = [b' '; 11];
    for (slot, c) in out.iter_mut().zip(label.bytes()) {
        let c = c.to_ascii_uppercase();
        if !(c.is_ascii_uppercase() || c.is_ascii_digit() || b" !#$%&'()-@^_{}~".contains(&c)) {
            return Err(bad("it may hold only A-Z, 0-9, space and !#$%&'()-@^_{}~"));
        }
        *slot = c;
    }
    Ok(out)
}

/// Checks every entry of the tree can be written, and counts what it needs.
struct Census {
    /// (path, node, is_dir) in canonical order, root excluded.
    entries: Vec<(Vec<u8>, NodeId, bool)>,
}

fn census(tree: &FileTree) -> Result<Census, FatError> {
    let mut entries = Vec::new();
    for (path, id) in tree.walk() {
        let node = tree.node(id);
        match &node.kind {
            NodeKind::Directory(children) => {
                // Names that differ only in case are one name on FAT.
                let mut folded: BTreeMap<String, &[u8]> = BTreeMap::new();
                for name in children.keys() {
                    let entry_path = child_path(&path, name);
                    let text = check_name(name).map_err(|reason| FatError::BadName {
                        path: path_text(&entry_path),
                        reason,
                    })?;
                    if let Some(other) = folded.insert(text.to_uppercase(), name) {
                        return Err(FatError::NameClash {
                            path: path_text(&entry_path),
                            other: path_text(&child_path(&path, other)),
                        });
                    }
                }
                if !path.is_empty() {
                    entries.push((path, id, true));
                }
            }
            NodeKind::File(_) => entries.push((path, id, false)),
            other => {
                return Err(FatError::UnsupportedType {
                    path: path_text(&path),
                    kind: other.type_name(),
                });
            }
        }
    }
    Ok(Census { entries })
}

/// Directory entries a name takes: long-name entries plus the short entry
/// (fatfs writes long-name entries for every name).
fn entries_for_name(name: &[u8]) -> u64 {
    let units = String::from_utf8_lossy(name).encode_utf16().count();
    // units <= 255 after check_name: the cast cannot truncate.
    1 + units.div_ceil(LFN_UNITS_PER_ENTRY) as u64
}

// ---------------------------------------------------------------------------
// Geometry

/// The layout fatfs gives a volume of a given size under our FAT32 policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FatGeometry {
    pub fat_type: FatType,
    pub cluster_size: u32,
    pub clusters: u32,
}

/// Cluster size fatfs chooses for a volume of `bytes`, given an optional type
/// hint (its rule: FAT12 0.5 KiB per MiB rounded up to a power of two; FAT16
/// 1 KiB to 16 MiB, 2 KiB to 128 MiB, then 1 KiB per 64 MiB; FAT32 512 B to
/// 260 MiB, 4 KiB to 8 GiB, then 1 KiB per 2 GiB; clamped to 512 B..=32 KiB).
fn fatfs_cluster_size(bytes: u64, hint: Option<FatType>) -> u64 {
    let guess = hint.unwrap_or(if bytes < 4 * MIB {
        FatType::Fat12
    } else if bytes < 512 * MIB {
        FatType::Fat16
    } else {
        FatType::Fat32
    });
    let pow2 = bytes.checked_next_power_of_two().unwrap_or(1 << 63);
    let size = match guess {
        FatType::Fat12 => pow2 / MIB * 512,
        FatType::Fat16 if bytes <= 16 * MIB => 1024,
        FatType::Fat16 if bytes <= 128 * MIB => 2048,
        FatType::Fat16 => pow2 / (64 * MIB) * 1024,
        FatType::Fat32 if bytes <= 260 * MIB => 512,
        FatType::Fat32 if bytes <= 8 * 1024 * MIB => 4096,
        FatType::Fat32 => pow2 / (2 * 1024 * MIB) * 1024,
    };
    size.clamp(512, 32 * 1024)
}

/// Tries FAT32, then FAT16, then FAT12 with this cluster size, as fatfs does:
/// the first whose cluster count matches its type wins.
fn fatfs_layout(sectors: u64, cluster_size: u64) -> Option<FatGeometry> {
    let per_cluster = cluster_size / SECTOR;
    for fat_type in [FatType::Fat32, FatType::Fat16, FatType::Fat12] {
        let (reserved, root_sectors) = match fat_type {
            FatType::Fat32 => (8, 0),
            _ => (1, u64::from(ROOT_ENTRIES) * DIR_ENTRY / SECTOR),
        };
        if sectors <= reserved + root_sectors + 8 {
            continue;
        }
        // FAT size from: fat_sectors * bits_per_sector >= (clusters + 2) * bits_per_entry,
        // rounded towards a bigger FAT, with two FATs.
        let t0 = sectors - reserved - root_sectors;
        let numerator = t0 + 2 * per_cluster;
        let denominator = per_cluster * SECTOR * 8 / fat_type.bits_per_entry() + 2;
        let fat_sectors = numerator.div_ceil(denominator);
        let Some(data) = t0.checked_sub(2 * fat_sectors) else { continue };
        let clusters = u32::try_from(data / per_cluster).ok()?;
        let max = match fat_type {
            FatType::Fat32 => 0x0FFF_FFF4,
            _ => u32::MAX,
        };
        if FatType::from_clusters(clusters) == fat_type && clusters <= max {
            // cluster_size <= 32 KiB.
            let cluster_size = u32::try_from(cluster_size).ok()?;
            return Some(FatGeometry { fat_type, cluster_size, clusters });
        }
    }
    None
}

fn check_size(size: u64) -> Result<u32, FatError> {
    if !size.is_multiple_of(SECTOR) {
        return Err(FatError::BadSize { size, reason: "it is not a multiple of 512 bytes" });
    }
    u32::try_from(size / SECTOR)
        .map_err(|_| FatError::BadSize { size, reason: "FAT holds at most 2^32-1 sectors" })
}

/// The type hint given to fatfs for a volume of `size` bytes.
fn type_hint(size: u64) -> Option<FatType> {
    (size >= FAT32_FROM_BYTES).then_some(FatType::Fat32)
}

/// The geometry [`write_fat`] will give a volume of `size` bytes.
pub fn fat_geometry(size: u64) -> Result<FatGeometry, FatError> {
    let sectors = u64::from(check_size(size)?);
    let hinted = type_hint(size)
        .and_then(|hint| fatfs_layout(sectors, fatfs_cluster_size(size, Some(hint))));
    hinted
        .or_else(|| fatfs_layout(sectors, fatfs_cluster_size(size, None)))
        .ok_or(FatError::BadSize { size, reason: "no FAT type fits it (too small?)" })
}

/// Clusters the tree takes with this geometry, and root-directory entries
/// (which FAT12/16 keep outside the clusters).
fn usage(tree: &FileTree, census: &Census, geometry: &FatGeometry) -> (u64, u64) {
    let cluster = u64::from(geometry.cluster_size);
    let dir_clusters = |entry_count: u64| (entry_count * DIR_ENTRY).div_ceil(cluster).max(1);
    let children_entries =
        |id: NodeId| -> u64 { tree.children(id).map(|(name, _)| entries_for_name(name)).sum() };
    let mut clusters = 0u64;
    for (_, id, is_dir) in &census.entries {
        if *is_dir {
            // "." and ".." take a long-name entry each as well in fatfs.
            clusters += dir_clusters(4 + children_entries(*id));
        } else if let NodeKind::File(content) = &tree.node(*id).kind {
            clusters += content.len().div_ceil(cluster);
        }
    }
    let root_entries = children_entries(tree.root());
    if geometry.fat_type == FatType::Fat32 {
        clusters += dir_clusters(root_entries);
    }
    (clusters, root_entries)
}

fn fits(tree: &FileTree, census: &Census, size: u64) -> Result<FatSummary, FatError> {
    let geometry = fat_geometry(size)?;
    let (needed, root_entries) = usage(tree, census, &geometry);
    if geometry.fat_type != FatType::Fat32 && root_entries > u64::from(ROOT_ENTRIES) {
        return Err(FatError::RootDirectoryFull {
            size,
            fat_type: geometry.fat_type.name(),
            needed: root_entries,
            max: ROOT_ENTRIES,
        });
    }
    let available = u64::from(geometry.clusters);
    let cluster = u64::from(geometry.cluster_size);
    if needed > available {
        return Err(FatError::TooSmall {
            size,
            cluster_size: geometry.cluster_size,
            needed_clusters: needed,
            available_clusters: available,
            needed_bytes: needed * cluster,
            available_bytes: available * cluster,
        });
    }
    Ok(FatSummary {
        fat_type: geometry.fat_type,
        cluster_size: geometry.cluster_size,
        clusters: geometry.clusters,
        // needed <= available, a u32.
        free_clusters: u32::try_from(available - needed).unwrap_or(0),
    })
}

/// Checks, before anything is written, that `tree` can be written to a FAT
/// volume of `size` bytes: names, node types, and space. Returns the predicted
/// summary.
pub fn check_fat_fits(tree: &FileTree, size: u64) -> Result<FatSummary, FatError> {
    fits(tree, &census(tree)?, size)
}

/// The smallest size, in whole MiB, of a FAT volume that holds `tree`.
pub fn min_fat_size(tree: &FileTree) -> Result<u64, FatError> {
    let census = census(tree)?;
    let content: u64 = census
        .entries
        .iter()
        .filter_map(|(_, id, _)| match &tree.node(*id).kind {
            NodeKind::File(content) => Some(content.len()),
            _ => None,
        })
        .sum();
    let mut size = content.div_ceil(MIB).max(1) * MIB;
    let limit = u64::from(u32::MAX) * SECTOR;
    let mut last_error = None;
    while size <= limit {
        match fits(tree, &census, size) {
            Ok(_) => return Ok(size),
            Err(e) => last_error = Some(e),
        }
        // MiB steps while small, then 1/64 of the size: the answer is at most
        // that much larger than the exact minimum.
        size += (size / 64 / MIB).max(1) * MIB;
    }
    Err(last_error.unwrap_or(FatError::BadSize { size, reason: "the contents are too large" }))
}

// ---------------------------------------------------------------------------
// The stream fatfs works on

/// A region of a file as a seekable stream. A write of zeros over bytes that
/// already read as zero is skipped, so holes of a sparse file stay holes.
///
/// Small reads go through a one-page cache: fatfs reads the FAT one entry (2 or
/// 4 bytes) at a time, and counting free clusters alone would otherwise cost a
/// system call per cluster. Writes go straight to the file and update the page.
struct RegionStream<'a> {
    region: FileRegion<'a>,
    position: u64,
    /// The cached page: its offset in the region and its bytes (shorter at the end of the region).
    page: Option<(u64, Vec<u8>)>,
}

/// The size of the read cache's page.
const STREAM_PAGE: u64 = 4096;

/// An offset or length within the cached page (below [`STREAM_PAGE`]) as an index.
#[allow(clippy::cast_possible_truncation)]
fn within_page(value: u64) -> usize {
    debug_assert!(value <= STREAM_PAGE);
    value as usize
}

impl<'a> RegionStream<'a> {
    fn new(region: FileRegion<'a>) -> RegionStream<'a> {
        RegionStream { region, position: 0, page: None }
    }

    /// Serves a read of `buf.len()` bytes at the position from the cached page,
    /// loading the page first if needed; `false` if the read is not small or
    /// crosses a page boundary.
    fn read_cached(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let len = buf.len() as u64;
        let page_start = self.position / STREAM_PAGE * STREAM_PAGE;
        if len >= STREAM_PAGE || self.position + len > page_start + STREAM_PAGE {
            return Ok(false);
        }
        if self.page.as_ref().is_none_or(|(start, _)| *start != page_start) {
            let page_len = self.region.len().saturating_sub(page_start).min(STREAM_PAGE);
            // page_len <= 4096.
            let mut bytes = vec![0u8; within_page(page_len)];
            self.region.read_exact_at(&mut bytes, page_start)?;
            self.page = Some((page_start, bytes));
        }
        let Some((_, bytes)) = &self.page else { return Ok(false) };
        // position - page_start < 4096 and the read was checked against the region's end.
        let at = within_page(self.position - page_start);
        buf.copy_from_slice(&bytes[at..at + buf.len()]);
        Ok(true)
    }

    /// Keeps the cached page equal to the file after a write of `data` at the position.
    fn update_page(&mut self, data: &[u8]) {
        if let Some((start, bytes)) = &mut self.page {
            let (page_start, page_end) = (*start, *start + bytes.len() as u64);
            let (write_start, write_end) = (self.position, self.position + data.len() as u64);
            let (from, to) = (write_start.max(page_start), write_end.min(page_end));
            if from < to {
                // Both differences are below the page or write length, usizes.
                let (page_at, data_at, n) = (
                    within_page(from - page_start),
                    usize::try_from(from - write_start).unwrap_or(usize::MAX),
                    within_page(to - from),
                );
                bytes[page_at..page_at + n].copy_from_slice(&data[data_at..data_at + n]);
            }
        }
    }

    fn already_zero(&self, len: usize) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(buf.len());
            // done < len, a usize: the widening cannot fail.
            self.region.read_exact_at(&mut buf[..n], self.position + done as u64)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            done += n;
        }
        Ok(true)
    }

    fn remaining(&self) -> u64 {
        self.region.len().saturating_sub(self.position)
    }
}

impl Read for RegionStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.remaining()).unwrap_or(usize::MAX).min(buf.len());
        if !self.read_cached(&mut buf[..n])? {
            self.region.read_exact_at(&mut buf[..n], self.position)?;
        }
        self.position += n as u64;
        Ok(n)
    }
}

impl Write for RegionStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.remaining() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("write of {} bytes at {} is past the volume end", buf.len(), self.position),
            ));
        }
        let zeros = buf.iter().all(|&b| b == 0);
        if !(zeros && self.already_zero(buf.len())?) {
            self.region.write_all_at(buf, self.position)?;
            self.update_page(buf);
        }
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for RegionStream<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.region.len().checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the volume")
        })?;
        self.position = target;
        Ok(target)
    }
}

// ---------------------------------------------------------------------------
// Writing

/// Formats `region` and copies `tree` into it. Checks names, types and space
/// first, so a tree that cannot fit fails before anything is written.
pub fn write_fat(
    tree: &FileTree,
    opts: &FatOptions,
    region: FileRegion,
) -> Result<FatSummary, FatError> {
    let size = region.len();
    let census = census(tree)?;
    let predicted = fits(tree, &census, size)?;
    let label = label_bytes(&opts.label)?;
    let sectors = check_size(size)?;

    let base = fatfs::FormatVolumeOptions::new()
        .total_sectors(sectors)
        .volume_id(opts.volume_id)
        .volume_label(label);
    let stream = || RegionStream::new(region);
    let hinted = match type_hint(size) {
        Some(FatType::Fat32) => {
            fatfs::format_volume(stream(), base.clone().fat_type(fatfs::FatType::Fat32)).is_ok()
        }
        _ => false,
    };
    if !hinted {
        fatfs::format_volume(stream(), base).map_err(FatError::Format)?;
    }

    let options = fatfs::FsOptions::new()
        .update_accessed_date(false)
        .time_provider(fixed_time(fat_date_time(opts.timestamp)));
    let fs = fatfs::FileSystem::new(stream(), options).map_err(FatError::Format)?;
    let fat_type = FatType::from_fatfs(fs.fat_type());
    if size >= FAT32_FROM_BYTES && fat_type != FatType::Fat32 {
        return Err(FatError::WrongType { size, got: fat_type.name(), expected: "FAT32" });
    }
    // The prediction decided "fits": a different layout might not.
    if fat_type != predicted.fat_type {
        return Err(FatError::WrongType {
            size,
            got: fat_type.name(),
            expected: predicted.fat_type.name(),
        });
    }
    if fs.cluster_size() != predicted.cluster_size {
        return Err(FatError::Format(io::Error::other(format!(
            "fatfs chose {}-byte clusters where {} were predicted",
            fs.cluster_size(),
            predicted.cluster_size
        ))));
    }

    copy_tree(tree, &census, &fs)?;
    // Counting the free clusters also records them for the FAT32 FSInfo sector.
    let stats = fs.stats().map_err(FatError::Format)?;
    let summary = FatSummary {
        fat_type,
        cluster_size: stats.cluster_size(),
        clusters: stats.total_clusters(),
        free_clusters: stats.free_clusters(),
    };
    fs.unmount().map_err(FatError::Format)?;
    dots::fix_dot_entries(region, fat_type, summary.clusters)?;
    patch_hidden_sectors(region, fat_type, opts.hidden_sectors)?;
    Ok(summary)
}

/// Creates the directories and files of the census, parents first.
fn copy_tree(
    tree: &FileTree,
    census: &Census,
    fs: &fatfs::FileSystem<RegionStream<'_>>,
) -> Result<(), FatError> {
    let mut dirs: HashMap<&[u8], fatfs::Dir<'_, RegionStream<'_>>> = HashMap::new();
    let root = fs.root_dir();
    let mut buf = vec![0u8; COPY_CHUNK];
    for (path, id, is_dir) in &census.entries {
        let write_err = |source| FatError::Write { path: path_text(path), source };
        let (parent_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&path[..slash], &path[slash + 1..]),
            None => (&path[..0], &path[..]),
        };
        let parent = if parent_path.is_empty() { &root } else { &dirs[parent_path] };
        // The census checked every name is UTF-8.
        let name = std::str::from_utf8(name)
            .map_err(|_| FatError::BadName { path: path_text(path), reason: "it is not UTF-8" })?;
        if *is_dir {
            let dir = parent.create_dir(name).map_err(write_err)?;
            dirs.insert(path.as_slice(), dir);
        } else if let NodeKind::File(content) = &tree.node(*id).kind {
            let mut file = parent.create_file(name).map_err(write_err)?;
            let mut offset = 0u64;
            let len = content.len();
            while offset < len {
                // The chunk is at most COPY_CHUNK bytes.
                let n = usize::try_from(len - offset).unwrap_or(COPY_CHUNK).min(COPY_CHUNK);
                content
                    .read_exact_at(&mut buf[..n], offset)
                    .map_err(|source| FatError::Read { what: content.describe(), source })?;
                file.write_all(&buf[..n]).map_err(write_err)?;
                offset += n as u64;
            }
            file.flush().map_err(write_err)?;
        }
    }
    Ok(())
}

/// Writes `hidden_sectors` into the boot sector and, for FAT32, into the
/// backup boot sector too (fatfs writes 0 in both).
fn patch_hidden_sectors(
    region: FileRegion,
    fat_type: FatType,
    hidden: u32,
) -> Result<(), FatError> {
    let err = FatError::Format;
    region.write_all_at(&hidden.to_le_bytes(), BPB_HIDDEN_SECTORS).map_err(err)?;
    if fat_type == FatType::Fat32 {
        let mut backup = [0u8; 2];
        region.read_exact_at(&mut backup, BPB_BACKUP_BOOT_SECTOR).map_err(err)?;
        let backup = u64::from(u16::from_le_bytes(backup));
        if backup != 0 && backup != FSINFO_SECTOR {
            region
                .write_all_at(&hidden.to_le_bytes(), backup * SECTOR + BPB_HIDDEN_SECTORS)
                .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
