//! Validation of a manifest into a build plan. Pure: no file is opened here, so
//! every layout mistake is caught before any byte is written. Checks that need
//! the disk (a source that does not exist, contents too big) are in `inputs`.
//!
//! Layout rules: partitions start at 1 MiB and are 1 MiB aligned; each starts
//! where the previous ended unless it gives an `offset`; per-slot entries expand
//! first, slot by slot (BootEFIA, BootA, RootFSA, BootEFIB, BootB, RootFSB), then
//! the shared entries in manifest order; the disk size is the end of the last
//! partition rounded up to 1 MiB plus 1 MiB for the backup GPT, unless given.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use abforge_partitions::Guid;
use abforge_partitions::gpt::PartitionType;

use crate::identity::Seed;
use crate::manifest::{
    FilesystemKind, ImageFormat, Manifest, ManifestError, PartitionSpec, Populate, SizeSpec,
    SourceLocation, Spanned, VerityMode, location_of,
};

/// Partition alignment and the granularity of partition sizes.
pub const ALIGNMENT: u64 = 1 << 20;
/// The most partitions a GPT with the standard 128-entry array can hold.
pub const MAX_PARTITIONS: usize = 128;
/// Bytes at the end of the disk kept for the backup GPT (entries + header).
pub const GPT_BACKUP_BYTES: u64 = 33 * 512;
/// GPT attribute bit 60: read-only.
pub const ATTR_READ_ONLY: u64 = abforge_partitions::gpt::attributes::READ_ONLY;
/// Longest GPT partition name, in UTF-16 code units.
pub const MAX_GPT_NAME: usize = 36;

/// Options that override the manifest (command line and environment).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub source_date_epoch: Option<i64>,
    pub format: Option<ImageFormat>,
}

/// What goes into a partition's file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// The root file-system source (`rootfs.source`).
    Rootfs,
    /// The boot payload (kernel, initrd, bootloader configuration).
    Boot,
    /// A directory, resolved against the manifest's directory.
    Directory(PathBuf),
}

/// One partition as it will be written.
#[derive(Clone, Debug)]
pub struct PlannedPartition {
    /// 1-based GPT index.
    pub index: u32,
    /// GPT name, with `{SLOT}` expanded.
    pub name: String,
    /// The name as written in the manifest: identities that must not depend on the
    /// slot (file-system UUIDs, verity salts) derive from it.
    pub template: String,
    pub slot: Option<String>,
    pub type_guid: Guid,
    pub uuid: Guid,
    pub offset: u64,
    pub size: u64,
    /// Bytes of the file system: the partition size, less the verity hash area
    /// when the tree is appended.
    pub fs_size: u64,
    pub filesystem: FilesystemKind,
    pub contents: Option<Contents>,
    pub label: String,
    pub read_only: bool,
    pub attributes: u64,
    pub verity: VerityMode,
    pub mount: Option<String>,
    /// ext4: whether the file system gets a journal.
    pub journal: bool,
    /// `verity: partition` roots: the GPT index of the partition holding the tree.
    pub hash_partition: Option<u32>,
    /// Root-verity partitions: the GPT index of the root whose tree they hold.
    pub hash_of: Option<u32>,
    /// Where the entry is in the manifest (its name), its size and its contents.
    pub location: SourceLocation,
    pub size_location: SourceLocation,
    pub contents_location: Option<SourceLocation>,
}

impl PlannedPartition {
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// A validated build plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub manifest_path: PathBuf,
    pub name: String,
    pub version: String,
    pub seed: Seed,
    pub source_date_epoch: i64,
    pub format: ImageFormat,
    pub slots: Vec<String>,
    pub disk_size: u64,
    pub disk_guid: Guid,
    /// VHDX payload block size in bytes.
    pub vhdx_block_size: u32,
    /// The root source, resolved against the manifest's directory.
    pub rootfs: Option<(PathBuf, SourceLocation)>,
    pub partitions: Vec<PlannedPartition>,
}

/// The GUID for a type name (`esp`, `root`, ...), or a GUID written out.
pub fn partition_type(text: &str) -> Option<Guid> {
    PartitionType::from_name(text).map(PartitionType::guid).or_else(|| text.parse().ok())
}

/// The name of a well-known type GUID.
pub fn partition_type_name(guid: Guid) -> Option<&'static str> {
    PartitionType::from_guid(guid).map(PartitionType::name)
}

/// GPT name of a partition left empty for a later update (systemd-sysupdate's).
pub const EMPTY_NAME: &str = "_empty";

/// Pairs every `verity: partition` root with the root-verity partition of its
/// slot, checks the tree fits, marks the hash partition read-only, and empties
/// the slots that are not populated at the first build.
fn pair_verity_partitions(
    check: &mut Checker<'_>,
    manifest: &Manifest,
    slots: &[String],
    partitions: &mut [PlannedPartition],
) {
    let root_verity = PartitionType::RootVerity.guid();
    let mut empty_slots: Vec<Option<String>> = Vec::new();
    for spec in manifest
        .partitions
        .value
        .iter()
        .filter(|s| s.verity.as_ref().is_some_and(|v| v.value == VerityMode::Partition))
    {
        let verity = spec.verity.as_ref().expect("filtered on verity");
        let populate = spec.populate.as_ref().map_or(Populate::FirstSlot, |p| p.value);
        let roots: Vec<usize> = partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.template == spec.name.value)
            .map(|(i, _)| i)
            .collect();
        for root in roots {
            let slot = partitions[root].slot.clone();
            let hashes: Vec<usize> = partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.type_guid == root_verity && p.slot == slot)
                .map(|(i, _)| i)
                .collect();
            let [hash] = hashes[..] else {
                check.at(
                    verity,
                    format!(
                        "partition '{}': verity: partition needs exactly one partition of type root-verity in {}, found {}",
                        partitions[root].name,
                        slot.as_deref().map_or("the disk".to_string(), |s| format!("slot {s}")),
                        hashes.len()
                    ),
                );
                continue;
            };
            let area =
                abforge_verity::hash_area_size(partitions[root].fs_size / 4096, &verity_geometry())
                    .unwrap_or(u64::MAX);
            let hash_partition = &partitions[hash];
            if hash_partition.filesystem != FilesystemKind::None
                || hash_partition.contents.is_some()
            {
                check.at(verity, format!("partition '{}' holds the verity tree of '{}': it takes no file system or contents", hash_partition.name, partitions[root].name));
            } else if hash_partition.size < area {
                check.at(
                    verity,
                    format!(
                        "partition '{}' ({}) is too small for the verity tree of '{}', which needs {}",
                        hash_partition.name,
                        crate::manifest::Size(hash_partition.size),
                        partitions[root].name,
                        crate::manifest::Size(area.div_ceil(ALIGNMENT) * ALIGNMENT)
                    ),
                );
            }
            partitions[root].hash_partition = Some(partitions[hash].index);
            partitions[hash].hash_of = Some(partitions[root].index);
            partitions[hash].read_only = true;
            partitions[hash].attributes |= ATTR_READ_ONLY;
            if populate == Populate::FirstSlot
                && slot.is_some()
                && slot.as_deref() != slots.first().map(String::as_str)
            {
                empty_slots.push(slot);
            }
        }
    }
    // An unpopulated slot: its root, hash and Boot partitions stay empty.
    for partition in partitions.iter_mut() {
        let in_empty_slot = partition.slot.is_some() && empty_slots.contains(&partition.slot);
        let emptied = partition.contents == Some(Contents::Rootfs)
            || partition.contents == Some(Contents::Boot)
            || partition.hash_of.is_some();
        if in_empty_slot && emptied {
            partition.name = EMPTY_NAME.to_string();
            partition.filesystem = FilesystemKind::None;
            partition.contents = None;
            partition.verity = VerityMode::None;
            partition.hash_partition = None;
            partition.hash_of = None;
        }
    }
}

/// The verity parameters abforge uses for every tree: veritysetup's defaults
/// (format 1, sha256, 4 KiB blocks, superblock). Salt and UUID are set per image.
pub fn verity_geometry() -> abforge_verity::VerityParams {
    abforge_verity::VerityParams::default()
}

/// The largest file system (whole 4 KiB blocks) whose appended verity tree
/// (superblock at the end of the file system, then the tree) fits in `size`.
pub fn fs_size_with_appended_tree(size: u64) -> u64 {
    let params = verity_geometry();
    let fits = |blocks: u64| {
        abforge_verity::hash_area_size(blocks, &params)
            .is_ok_and(|area| blocks.saturating_mul(4096).saturating_add(area) <= size)
    };
    let (mut low, mut high) = (0u64, size / 4096);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if fits(mid) { low = mid } else { high = mid - 1 }
    }
    low * 4096
}

/// The partition size that holds `fs_size` bytes of file system and its appended tree.
pub fn size_with_appended_tree(fs_size: u64) -> u64 {
    let blocks = fs_size.div_ceil(4096);
    let area = abforge_verity::hash_area_size(blocks, &verity_geometry()).unwrap_or(0);
    blocks * 4096 + area
}

/// Collects errors with their locations while a plan is checked.
struct Checker<'a> {
    path: &'a Path,
    errors: Vec<ManifestError>,
}

impl Checker<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(ManifestError {
            location: Some(location_of(self.path, spanned)),
            message: message.into(),
        });
    }

    fn loc<T>(&self, spanned: &Spanned<T>) -> SourceLocation {
        location_of(self.path, spanned)
    }
}

/// Turns a parsed manifest into a plan, or every error found.
///
/// `auto_size` gives the size chosen for a `size: auto` partition (computed from
/// its contents by the caller); it is only called for such partitions.
pub fn plan(
    manifest_path: &Path,
    manifest: &Manifest,
    overrides: &Overrides,
    auto_size: &dyn Fn(&PartitionSpec) -> Option<u64>,
) -> Result<Plan, Vec<ManifestError>> {
    let mut check = Checker { path: manifest_path, errors: Vec::new() };
    let base_dir = manifest_path.parent().unwrap_or(Path::new("."));

    check_identity_fields(&mut check, manifest);
    let slots = check_slots(&mut check, manifest);
    let seed = Seed::new(&manifest.seed.value);

    let source_date_epoch = overrides
        .source_date_epoch
        .or(manifest.source_date_epoch.as_ref().map(|s| s.value))
        .unwrap_or(0);
    if let Some(sde) = &manifest.source_date_epoch
        && sde.value < 0
    {
        check.at(sde, "source_date_epoch cannot be negative");
    }
    let format =
        overrides.format.or(manifest.format.as_ref().map(|f| f.value)).unwrap_or(ImageFormat::Vhdx);

    let vhdx_block_size = match manifest.vhdx.as_ref().and_then(|v| v.block_size.as_ref()) {
        None => crate::container::vhdx::DEFAULT_BLOCK_SIZE,
        Some(size) => crate::container::vhdx::writer::check_block_size(size.value.0)
            .unwrap_or_else(|reason| {
                check.at(size, format!("vhdx block_size: {reason}"));
                crate::container::vhdx::DEFAULT_BLOCK_SIZE
            }),
    };
    let rootfs =
        manifest.rootfs.as_ref().map(|r| (base_dir.join(&r.source.value), check.loc(&r.source)));

    // Expand per-slot entries slot by slot, then the shared ones.
    let mut expanded: Vec<(&PartitionSpec, Option<&str>)> = Vec::new();
    for slot in &slots {
        for spec in manifest.partitions.value.iter().filter(|s| s.per_slot) {
            expanded.push((spec, Some(slot.as_str())));
        }
    }
    for spec in manifest.partitions.value.iter().filter(|s| !s.per_slot) {
        expanded.push((spec, None));
    }
    if manifest.partitions.value.is_empty() {
        check.at(&manifest.partitions, "the manifest has no partitions");
    }
    if expanded.len() > MAX_PARTITIONS {
        check.at(
            &manifest.partitions,
            format!(
                "{} partitions after expanding the slots, but a GPT holds at most {MAX_PARTITIONS}",
                expanded.len()
            ),
        );
    }

    let mut partitions = Vec::new();
    let mut names: HashMap<String, SourceLocation> = HashMap::new();
    let mut type_counts: BTreeMap<Guid, u64> = BTreeMap::new();
    let mut next_offset = ALIGNMENT;
    let mut previous: Option<(String, u64)> = None;

    for (position, (spec, slot)) in expanded.iter().enumerate() {
        let template = spec.name.value.clone();
        let has_placeholder = template.contains("{SLOT}");
        if spec.per_slot && !has_placeholder {
            check.at(
                &spec.name,
                format!("partition '{template}' is per_slot but its name has no {{SLOT}}, so both slots would get the same name"),
            );
        }
        if !spec.per_slot && has_placeholder {
            check.at(
                &spec.name,
                format!("partition '{template}' has {{SLOT}} in its name but is not per_slot: add 'per_slot: true'"),
            );
        }
        let name = match slot {
            Some(slot) => template.replace("{SLOT}", &slot.to_uppercase()),
            None => template.clone(),
        };
        if name.is_empty() {
            check.at(&spec.name, "a partition name cannot be empty");
        }
        if name.encode_utf16().count() > MAX_GPT_NAME {
            check.at(
                &spec.name,
                format!("partition name '{name}' is longer than the {MAX_GPT_NAME} characters a GPT entry holds"),
            );
        }
        if let Some(first) = names.get(&name) {
            check.at(
                &spec.name,
                format!("partition name '{name}' is used twice (first at line {})", first.line),
            );
        } else {
            names.insert(name.clone(), check.loc(&spec.name));
        }

        let type_guid = match partition_type(&spec.type_.value) {
            Some(guid) => guid,
            None => {
                check.at(
                    &spec.type_,
                    format!(
                        "unknown partition type '{}': use one of {} or a GUID",
                        spec.type_.value,
                        PartitionType::ALL.map(PartitionType::name).join(", ")
                    ),
                );
                Guid::NIL
            }
        };

        let filesystem = spec.filesystem.as_ref().map(|f| f.value).unwrap_or(FilesystemKind::None);
        let contents = spec.contents.as_ref().map(|c| match c.value.as_str() {
            "rootfs" => Contents::Rootfs,
            "boot" => Contents::Boot,
            path => Contents::Directory(base_dir.join(path)),
        });
        check_filesystem(&mut check, spec, filesystem, contents.as_ref(), manifest);

        let size = match spec.size.value {
            SizeSpec::Fixed(size) => size.0,
            SizeSpec::Auto => match auto_size(spec) {
                Some(bytes) => bytes.div_ceil(ALIGNMENT) * ALIGNMENT,
                None => {
                    check.at(&spec.size, format!("partition '{name}': size auto needs a file system with contents to measure"));
                    ALIGNMENT
                }
            },
        };
        if size == 0 {
            check.at(&spec.size, format!("partition '{name}' has size 0"));
        } else if size % ALIGNMENT != 0 {
            check.at(
                &spec.size,
                format!("partition '{name}' size {size} bytes is not a multiple of 1MiB (partitions are 1MiB aligned)"),
            );
        }

        let offset = match &spec.offset {
            Some(offset) => {
                let start = offset.value.0;
                if start % ALIGNMENT != 0 || start < ALIGNMENT {
                    check.at(
                        offset,
                        format!("partition '{name}' offset {start} is not a multiple of 1MiB at or after 1MiB"),
                    );
                }
                if let Some((prev_name, prev_end)) = &previous
                    && start < *prev_end
                {
                    check.at(
                        offset,
                        format!(
                            "partition '{name}' starts at {} but overlaps partition '{prev_name}', which ends at {}",
                            crate::manifest::Size(start),
                            crate::manifest::Size(*prev_end)
                        ),
                    );
                }
                start
            }
            None => next_offset,
        };
        let end = offset.saturating_add(size);
        next_offset = end.div_ceil(ALIGNMENT).saturating_mul(ALIGNMENT);
        previous = Some((name.clone(), end));

        let k = type_counts.entry(type_guid).or_insert(0);
        let uuid = seed.partition_uuid(type_guid, *k);
        *k += 1;

        let read_only = spec.read_only;
        let verity = spec.verity.as_ref().map(|v| v.value).unwrap_or(VerityMode::None);
        let fs_size = match verity {
            VerityMode::Appended => fs_size_with_appended_tree(size),
            VerityMode::Partition | VerityMode::None => size,
        };
        // The default label leaves the slot out: a slot's file system is the same
        // bytes whichever slot it is written to.
        let label = spec
            .label
            .as_ref()
            .map(|l| l.value.clone())
            .unwrap_or_else(|| template.replace("{SLOT}", ""));
        partitions.push(PlannedPartition {
            index: u32::try_from(position + 1).unwrap_or(u32::MAX),
            name,
            template,
            slot: slot.map(str::to_string),
            type_guid,
            uuid,
            offset,
            size,
            fs_size,
            filesystem,
            contents,
            label,
            read_only,
            attributes: if read_only { ATTR_READ_ONLY } else { 0 },
            verity,
            mount: spec.mount.as_ref().map(|m| m.value.clone()),
            journal: spec.journal.unwrap_or(!read_only),
            hash_partition: None,
            hash_of: None,
            location: check.loc(&spec.name),
            size_location: check.loc(&spec.size),
            contents_location: spec.contents.as_ref().map(|c| check.loc(c)),
        });
    }

    pair_verity_partitions(&mut check, manifest, &slots, &mut partitions);

    let content_end = partitions.iter().map(PlannedPartition::end).max().unwrap_or(ALIGNMENT);
    let disk_size = match &manifest.disk_size {
        Some(size) => {
            let bytes = size.value.0;
            if bytes % ALIGNMENT != 0 {
                check.at(size, format!("disk_size {bytes} is not a multiple of 1MiB"));
            }
            if let Some(last) = partitions.iter().max_by_key(|p| p.end())
                && last.end() > bytes.saturating_sub(GPT_BACKUP_BYTES)
            {
                check.at(
                    size,
                    format!(
                        "partition '{}' ends at {} but the disk is {} (less {} bytes for the backup GPT): it does not fit",
                        last.name,
                        crate::manifest::Size(last.end()),
                        crate::manifest::Size(bytes),
                        GPT_BACKUP_BYTES
                    ),
                );
            }
            bytes
        }
        None => content_end.div_ceil(ALIGNMENT).saturating_mul(ALIGNMENT).saturating_add(ALIGNMENT),
    };

    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    Ok(Plan {
        manifest_path: manifest_path.to_path_buf(),
        name: manifest.name.value.clone(),
        version: manifest.version.value.clone(),
        disk_guid: seed.disk_guid(),
        seed,
        source_date_epoch,
        format,
        slots,
        disk_size,
        vhdx_block_size,
        rootfs,
        partitions,
    })
}

fn check_identity_fields(check: &mut Checker<'_>, manifest: &Manifest) {
    let name = &manifest.name.value;
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    {
        check.at(
            &manifest.name,
            format!("image name '{name}' must be lower-case letters, digits, '.', '_' or '-' (it names files and becomes IMAGE_ID)"),
        );
    }
    if manifest.version.value.is_empty() {
        check.at(&manifest.version, "version cannot be empty");
    }
    if manifest.seed.value.is_empty() {
        check.at(
            &manifest.seed,
            "seed cannot be empty: every identity in the image derives from it",
        );
    }
}

fn check_slots(check: &mut Checker<'_>, manifest: &Manifest) -> Vec<String> {
    let Some(slots) = &manifest.slots else {
        return vec!["a".to_string(), "b".to_string()];
    };
    let mut seen = Vec::new();
    if slots.value.is_empty() {
        check.at(slots, "slots cannot be empty (an A/B image has slots [a, b])");
    }
    for slot in &slots.value {
        let s = &slot.value;
        if s.is_empty()
            || s.len() > 8
            || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            check.at(slot, format!("slot name '{s}' must be 1 to 8 lower-case letters or digits"));
        } else if seen.contains(s) {
            check.at(slot, format!("slot '{s}' is listed twice"));
        }
        seen.push(s.clone());
    }
    seen
}

fn check_filesystem(
    check: &mut Checker<'_>,
    spec: &PartitionSpec,
    filesystem: FilesystemKind,
    contents: Option<&Contents>,
    manifest: &Manifest,
) {
    let name = &spec.name.value;
    if let (Some(c), FilesystemKind::None) = (&spec.contents, filesystem) {
        check.at(c, format!("partition '{name}' has contents but no filesystem to hold them"));
    }
    if let (Some(c), Some(Contents::Rootfs)) = (&spec.contents, contents)
        && manifest.rootfs.is_none()
    {
        check.at(
            c,
            format!(
                "partition '{name}' takes the root contents but the manifest has no rootfs.source"
            ),
        );
    }
    if let Some(label) = &spec.label {
        let max = match filesystem {
            FilesystemKind::Vfat => 11,
            _ => 16,
        };
        if label.value.len() > max {
            check.at(
                label,
                format!(
                    "label '{}' is longer than the {max} bytes {} allows",
                    label.value,
                    filesystem.name()
                ),
            );
        }
    }
    if let Some(verity) = &spec.verity {
        match verity.value {
            VerityMode::None => {}
            VerityMode::Appended | VerityMode::Partition
                if filesystem != FilesystemKind::Ext4 || !spec.read_only =>
            {
                check.at(
                    verity,
                    format!("partition '{name}': verity needs a read_only ext4 file system"),
                )
            }
            VerityMode::Appended | VerityMode::Partition => {}
        }
    }
    if spec.journal == Some(true) && filesystem != FilesystemKind::Ext4 {
        check.at(&spec.name, format!("partition '{name}': journal applies to ext4 only"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn plan_text(text: &str) -> Result<Plan, Vec<ManifestError>> {
        let path = Path::new("/m/eflow.yaml");
        let manifest = parse(path, text).map_err(|e| vec![e])?;
        plan(path, &manifest, &Overrides::default(), &|_| None)
    }

    const EFLOW: &str = "\
name: eflow
version: '1.4.0'
seed: eflow-1.4.0
partitions:
  - { name: 'BootEFI{SLOT}', per_slot: true, type: esp, size: 8MiB, filesystem: vfat }
  - { name: 'Boot{SLOT}', per_slot: true, type: linux, size: 192MiB }
  - { name: 'RootFS{SLOT}', per_slot: true, type: root, size: 4GiB, read_only: true }
  - { name: Unused, type: linux, size: 4GiB }
  - { name: Log, type: linux, size: 1GiB }
  - { name: Data, type: linux, size: 2GiB }
";

    #[test]
    fn expands_slots_in_order_and_lays_out_aligned() {
        let plan = plan_text(EFLOW).unwrap();
        let names: Vec<&str> = plan.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "BootEFIA", "BootA", "RootFSA", "BootEFIB", "BootB", "RootFSB", "Unused", "Log",
                "Data"
            ]
        );
        assert_eq!(plan.partitions[0].offset, 1 << 20);
        assert_eq!(plan.partitions[1].offset, 9 << 20);
        for pair in plan.partitions.windows(2) {
            assert_eq!(pair[0].end(), pair[1].offset);
        }
        let last = plan.partitions.last().unwrap();
        assert_eq!(plan.disk_size, last.end() + (1 << 20));
        assert_eq!(plan.partitions[2].attributes, ATTR_READ_ONLY);
        assert_eq!(plan.partitions[2].template, "RootFS{SLOT}");
        assert_eq!(plan.partitions[5].slot.as_deref(), Some("b"));
        // Two ESPs get different seeded UUIDs.
        assert_ne!(plan.partitions[0].uuid, plan.partitions[3].uuid);
    }

    fn first_error(text: &str) -> String {
        match plan_text(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(errors) => errors[0].to_string(),
        }
    }

    #[test]
    fn layout_errors_name_the_line() {
        let cases: &[(&str, &str, &str)] = &[
            ("size: 8MiB, filesystem: vfat", "size: 0, filesystem: vfat", "has size 0"),
            (
                "size: 8MiB, filesystem: vfat",
                "size: 8000000, filesystem: vfat",
                "not a multiple of 1MiB",
            ),
            ("name: Log,", "name: Data,", "is used twice"),
            ("name: 'Boot{SLOT}'", "name: 'Boot'", "has no {SLOT}"),
            ("name: Unused,", "name: 'Unused{SLOT}',", "is not per_slot"),
            ("type: root,", "type: rooot,", "unknown partition type 'rooot'"),
            (
                "name: Data, type: linux, size: 2GiB",
                "name: Data, type: linux, size: 2GiB, offset: 1GiB",
                "overlaps partition 'Log'",
            ),
            (
                "name: Data, type: linux, size: 2GiB",
                "name: Data, type: linux, size: 2GiB, verity: appended",
                "verity needs a read_only ext4",
            ),
            (
                "name: Unused, type: linux, size: 4GiB",
                "name: Unused, type: linux, size: 4GiB, contents: x",
                "no filesystem",
            ),
        ];
        for (from, to, expected) in cases {
            let text = EFLOW.replacen(from, to, 1);
            assert_ne!(text, EFLOW, "case {to} did not apply");
            let err = first_error(&text);
            assert!(err.contains(expected), "{to}: got {err}");
            assert!(err.starts_with("/m/eflow.yaml:"), "{to}: no location in {err}");
        }
    }

    #[test]
    fn disk_size_too_small_is_caught() {
        let text = EFLOW.replace("seed: eflow-1.4.0\n", "seed: eflow-1.4.0\ndisk_size: 8GiB\n");
        assert!(first_error(&text).contains("does not fit"));
    }

    #[test]
    fn too_many_partitions_are_caught() {
        let mut text = String::from("name: x\nversion: '1'\nseed: s\npartitions:\n");
        for i in 0..65 {
            text.push_str(&format!(
                "  - {{ name: 'P{i}{{SLOT}}', per_slot: true, type: linux, size: 1MiB }}\n"
            ));
        }
        assert!(first_error(&text).contains("at most 128"));
    }

    #[test]
    fn appended_tree_sizes_are_tight() {
        for size in [1u64 << 20, 64 << 20, 4 << 30] {
            let fs = fs_size_with_appended_tree(size);
            assert_eq!(fs % 4096, 0);
            assert!(size_with_appended_tree(fs) <= size);
            assert!(size_with_appended_tree(fs + 4096) > size, "{size}: {fs} is not the largest");
        }
    }

    #[test]
    fn type_names_and_guids() {
        assert_eq!(
            partition_type("esp").unwrap().to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        let raw = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        assert_eq!(partition_type(raw).unwrap().to_string(), raw);
        assert_eq!(partition_type_name(partition_type("var").unwrap()), Some("var"));
        assert!(partition_type("swap").is_none());
    }
}
