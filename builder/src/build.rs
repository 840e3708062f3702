//! `abforge build`: runs the partition producers in parallel into their windows
//! of the output, writes the GPT, then the report. Every output is written under a
//! temporary name and renamed when complete, so a failed build leaves nothing
//! under a final name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abforge_partitions::FileRegion;
use abforge_partitions::ext4::{self, Ext4Options};
use abforge_partitions::fat::{self, FatOptions};
use abforge_partitions::gpt::{GptLayout, PartitionEntry, SECTOR_SIZE};
use abforge_partitions::tree::Timestamp;
use abforge_partitions::tree::{FileTree, Metadata};
use anyhow::Context as _;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::container::source::file_data_ranges;
use crate::container::vhd::{VhdOptions, append_fixed_footer, vhd_timestamp};
use crate::container::vhdx::direct::{Compaction, DirectVhdx, FileObserver};
use crate::container::vhdx::{VhdxOptions, write_vhdx};
use crate::container::{ComposedDisk, Segment, is_zero, write_atomically};
use crate::inputs::Inputs;
use crate::manifest::{FilesystemKind, ImageFormat, VerityMode};
use crate::plan::{Contents, Plan, PlannedPartition, verity_geometry};
use crate::report::{ImageReport, Report, VerityReport};
use abforge_partitions::gpt::PartitionType;
use abforge_verity::VerityParams;

/// What building one partition produced, for the report.
#[derive(Debug, Default, Clone)]
struct Produced {
    label: Option<String>,
    fs_id: Option<String>,
    verity: Option<VerityReport>,
}

/// Paths of a finished build.
#[derive(Debug)]
pub struct BuildOutput {
    pub image: PathBuf,
    pub report_path: PathBuf,
    pub report: Report,
}

/// What a build does beyond the manifest.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Hash every byte of the image file into the report's `image.sha256` (one
    /// more pass over the file, its zeros included).
    pub image_sha256: bool,
}

/// Builds the image of `plan` into `out_dir`.
pub fn build(
    plan: &Plan,
    inputs: &Inputs,
    out_dir: &Path,
    options: BuildOptions,
) -> anyhow::Result<BuildOutput> {
    fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let image_name = format!("{}.{}", plan.name, plan.format.extension());
    let image = out_dir.join(&image_name);
    let report_path = out_dir.join(format!("{}.json", plan.name));

    let (produced, image_report, plan) = match plan.format {
        ImageFormat::Raw | ImageFormat::Vhd => write_atomically(&image, |file| {
            file.set_len(plan.disk_size).with_context(|| {
                format!("cannot size {} to {} bytes", image.display(), plan.disk_size)
            })?;
            let (produced, plan) = produce_in_place(plan, inputs, file, 0)?;
            if plan.format == ImageFormat::Vhd {
                append_fixed_footer(file, plan.disk_size, &vhd_options(&plan))
                    .with_context(|| format!("writing the VHD footer of {}", image.display()))?;
            }
            let image_report =
                describe_image(file, &image_name, plan.disk_size, options.image_sha256)?;
            Ok((produced, image_report, plan))
        })?,
        ImageFormat::Vhdx => write_atomically(&image, |file| {
            let vhdx = match DirectVhdx::create(file, plan.disk_size, &vhdx_options(plan)) {
                Ok(vhdx) => vhdx,
                // The file system cannot hold the one-to-one map of the disk (ext4
                // stops at 16 TiB): stream the partitions in from scratch files.
                Err(err) if err.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error()) => {
                    file.set_len(0).with_context(|| format!("truncating {}", image.display()))?;
                    return build_vhdx_staged(plan, inputs, out_dir, file, &image_name, options);
                }
                Err(err) => {
                    return Err(
                        anyhow::Error::new(err).context(format!("preparing {}", image.display()))
                    );
                }
            };
            let (produced, plan) = produce_in_place(plan, inputs, file, vhdx.disk_offset())?;
            let mut digests = ImageDigests::new(options.image_sha256);
            let summary = vhdx
                .finish(&mut digests, Compaction::Auto)
                .with_context(|| format!("finishing {}", image.display()))?;
            let image_report = digests.report(&image_name, plan.disk_size, Some(summary.file_size));
            Ok((produced, image_report, plan))
        })?,
    };

    let mut report = Report::from_plan(&plan, image_report);
    for (entry, produced) in report.partitions.iter_mut().zip(produced) {
        entry.label = produced.label;
        entry.fs_id = produced.fs_id;
        report.verity.extend(produced.verity);
    }
    let written = write_atomically(&report_path, |file| {
        use std::io::Write;
        let mut writer = file;
        writer.write_all(report.to_json().as_bytes()).context("cannot write the build report")
    });
    if let Err(err) = written {
        // The image is only complete with its report: take it back.
        let _ = fs::remove_file(&image);
        return Err(err);
    }
    Ok(BuildOutput { image, report_path, report })
}

/// A partition's window of the output, by partition.
type RegionOf<'a> = dyn Fn(&PlannedPartition) -> FileRegion<'a> + Sync + 'a;

/// Runs the partition producers in parallel; `region` gives the window each one
/// writes into. Boot partitions run second: their command lines carry the root
/// hash of their slot, known once the roots are written. Returns the results in
/// GPT order and the plan with its final partition UUIDs (a root whose tree has
/// its own partition, and that partition, take the halves of the root hash).
fn produce_partitions<'a>(
    plan: &Plan,
    inputs: &Inputs,
    region: &RegionOf<'a>,
) -> anyhow::Result<(Vec<Produced>, Plan)> {
    let run = |plan: &Plan, second_phase: bool, roots: &BTreeMap<Option<String>, VerityReport>| {
        plan.partitions
            .par_iter()
            .filter(|p| (p.contents == Some(Contents::Boot)) == second_phase)
            .map(|partition| {
                let verity = roots.get(&partition.slot);
                let result = partition_tree(plan, inputs, partition, verity)
                    .and_then(|tree| produce(plan, &tree, partition, region));
                result
                    .map(|produced| (partition.index, produced))
                    .with_context(|| format!("writing partition '{}'", partition.name))
            })
            .collect::<anyhow::Result<BTreeMap<u32, Produced>>>()
    };
    let mut produced = run(plan, false, &BTreeMap::new())?;
    let mut plan = plan.clone();
    // Only one pair on a disk can carry the UUIDs a root hash gives: the first
    // slot's. Other populated slots keep their seeded UUIDs.
    let first_slot = plan.slots.first().cloned();
    for partition in plan.partitions.iter_mut().filter(|p| p.slot.is_none() || p.slot == first_slot)
    {
        let root_hash = |index: u32| {
            produced.get(&index).and_then(|p| p.verity.as_ref()).map(|v| v.root_hash.clone())
        };
        let half = match (partition.hash_partition, partition.hash_of) {
            (Some(_), _) => root_hash(partition.index).map(|h| (h, 0)),
            (_, Some(root)) => root_hash(root).map(|h| (h, 16)),
            _ => None,
        };
        if let Some((hash, start)) = half {
            partition.uuid = guid_from_hex_half(&hash, start)?;
        }
    }
    let roots: BTreeMap<Option<String>, VerityReport> = plan
        .partitions
        .iter()
        .filter(|p| p.contents == Some(Contents::Rootfs))
        .filter_map(|p| Some((p.slot.clone(), produced.get(&p.index)?.verity.clone()?)))
        .collect();
    produced.append(&mut run(&plan, true, &roots)?);
    // Partitions without a producer of their own (a tree's partition) report nothing.
    let results =
        plan.partitions.iter().map(|p| produced.remove(&p.index).unwrap_or_default()).collect();
    Ok((results, plan))
}

/// The UUID made of 16 bytes of a hex root hash, from byte `start` (the
/// Discoverable Partitions Specification: data partition = first half, hash
/// partition = second half, as written, with no version bits forced).
fn guid_from_hex_half(hash: &str, start: usize) -> anyhow::Result<abforge_partitions::Guid> {
    let array: [u8; 16] = parse_hex(hash)
        .and_then(|bytes| bytes.get(start..start + 16)?.try_into().ok())
        .with_context(|| format!("root hash {hash} is too short for a partition UUID"))?;
    Ok(abforge_partitions::Guid::from_rfc_bytes(array))
}

/// The tree a partition's file system is written from: its contents, with the
/// boot chain's files on the ESPs and Boot partitions. `verity` is the tree of
/// the slot's root (a Boot partition's command line names its root hash).
pub fn partition_tree<'a>(
    plan: &Plan,
    inputs: &'a Inputs,
    partition: &PlannedPartition,
    verity: Option<&VerityReport>,
) -> anyhow::Result<Cow<'a, FileTree>> {
    if let Some(boot) = &inputs.boot {
        if partition.contents == Some(Contents::Boot) {
            return Ok(Cow::Owned(boot.boot_tree(plan, partition, verity)?));
        }
        if partition.type_guid == PartitionType::Esp.guid()
            && partition.filesystem == FilesystemKind::Vfat
        {
            return Ok(Cow::Owned(boot.esp_tree(
                plan,
                inputs.tree_for(partition),
                &boot_fs_uuids(plan),
            )?));
        }
    }
    Ok(match inputs.tree_for(partition) {
        Some(tree) => Cow::Borrowed(tree),
        None => Cow::Owned(FileTree::new(Metadata::new(
            0o755,
            0,
            0,
            Timestamp::from_seconds(plan.source_date_epoch),
        ))),
    })
}

/// The ext4 UUID of each slot's Boot partition, which GRUB's selector searches for.
fn boot_fs_uuids(plan: &Plan) -> BTreeMap<String, abforge_partitions::Guid> {
    plan.partitions
        .iter()
        .filter(|p| p.contents == Some(Contents::Boot))
        .filter_map(|p| Some((p.slot.clone()?, ext4_options(plan, p).uuid)))
        .collect()
}

fn produce(
    plan: &Plan,
    tree: &FileTree,
    partition: &PlannedPartition,
    regions: &RegionOf<'_>,
) -> anyhow::Result<Produced> {
    let region = regions(partition);
    let mut produced = match partition.filesystem {
        FilesystemKind::None => Produced::default(),
        FilesystemKind::Vfat => {
            let volume_id = plan.seed.fat_volume_id(fs_identity(partition));
            let label = fat_label(&partition.label);
            let options = FatOptions {
                volume_id,
                label: label.clone(),
                timestamp: Timestamp::from_seconds(plan.source_date_epoch),
                hidden_sectors: u32::try_from(partition.offset / SECTOR_SIZE).unwrap_or(u32::MAX),
            };
            fat::write_fat(tree, &options, region.sub(0, partition.fs_size)?)?;
            Produced { label: Some(label), fs_id: Some(format!("{volume_id:08x}")), verity: None }
        }
        FilesystemKind::Ext4 => {
            let options = ext4_options(plan, partition);
            ext4::write(tree, &options, region.sub(0, partition.fs_size)?)?;
            Produced {
                label: Some(options.label),
                fs_id: Some(options.uuid.to_string()),
                verity: None,
            }
        }
    };
    match (partition.verity, partition.hash_partition) {
        (VerityMode::Appended, _) => {
            produced.verity = Some(format_verity(plan, partition, region, None)?)
        }
        (VerityMode::Partition, Some(index)) => {
            let hash = plan
                .partitions
                .iter()
                .find(|p| p.index == index)
                .with_context(|| format!("no partition {index} for the verity tree"))?;
            produced.verity =
                Some(format_verity(plan, partition, region, Some((hash, regions(hash))))?);
        }
        _ => {}
    }
    Ok(produced)
}

/// The dm-verity parameters of a partition's tree: salt and superblock UUID from
/// the seed and the manifest name (not the slot), so a root partition is the same
/// bytes in either slot and its root hash describes the release.
pub fn verity_params(plan: &Plan, partition: &PlannedPartition) -> VerityParams {
    let mut params = verity_geometry();
    params.salt = plan.seed.derive("verity-salt", &partition.template).to_vec();
    params.uuid = plan.seed.derive_guid("verity-uuid", &partition.template).to_rfc_bytes();
    params
}

/// Hashes the file system of `partition` and writes the tree after it in the same
/// partition (the superblock at `fs_size`, as veritysetup `--hash-offset`), or at
/// the start of its own partition.
fn format_verity(
    plan: &Plan,
    partition: &PlannedPartition,
    region: FileRegion<'_>,
    hash: Option<(&PlannedPartition, FileRegion<'_>)>,
) -> anyhow::Result<VerityReport> {
    let params = verity_params(plan, partition);
    let data_blocks = partition.fs_size / u64::from(params.data_block_size);
    let (hash_region, hash_offset, hash_partition) = match hash {
        Some((hash_partition, hash_region)) => (hash_region, 0, Some(hash_partition.name.clone())),
        None => (region, partition.fs_size, None),
    };
    let output = abforge_verity::format(
        region.file(),
        region.offset(),
        data_blocks,
        hash_region.file(),
        hash_region.offset() + hash_offset,
        &params,
    )
    .with_context(|| format!("computing the verity tree of partition '{}'", partition.name))?;
    Ok(VerityReport {
        partition: partition.name.clone(),
        slot: partition.slot.clone(),
        root_hash: hex(&output.root_hash),
        salt: hex(&params.salt),
        hash_algorithm: params.algorithm.name().to_string(),
        data_block_size: params.data_block_size,
        hash_block_size: params.hash_block_size,
        data_blocks,
        hash_offset,
        hash_partition,
    })
}

/// The name a file system's identities (UUID, hash seed, volume id) derive from.
/// The root's comes from the manifest name, not the slot, so a root partition is
/// the same bytes in either slot; every other file system is the slot's own (the
/// selector finds each slot's Boot partition by its UUID).
fn fs_identity(partition: &PlannedPartition) -> &str {
    if partition.contents == Some(Contents::Rootfs) { &partition.template } else { &partition.name }
}

/// The ext4 options of a partition.
pub fn ext4_options(plan: &Plan, partition: &PlannedPartition) -> Ext4Options {
    Ext4Options {
        label: ext4_label(&partition.label),
        uuid: plan.seed.derive_guid("ext4-uuid", fs_identity(partition)),
        hash_seed: plan.seed.derive_guid("ext4-hash-seed", fs_identity(partition)),
        timestamp: Timestamp::from_seconds(plan.source_date_epoch),
        journal: partition.journal,
        // Read-write partitions get mke2fs's inode density; read-only ones just
        // what their tree needs.
        inode_ratio: if partition.read_only { None } else { Some(16384) },
        ..Ext4Options::default()
    }
}

/// An ext4 label: at most 16 bytes, cut at a character boundary.
fn ext4_label(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if out.len() + c.len_utf8() > 16 {
            break;
        }
        out.push(c);
    }
    out
}

/// Produces every partition and the GPT into `file` (already sized), the disk
/// starting at `disk_offset` (a raw or VHD image: 0; a VHDX built in place: its
/// payload map).
fn produce_in_place(
    plan: &Plan,
    inputs: &Inputs,
    file: &File,
    disk_offset: u64,
) -> anyhow::Result<(Vec<Produced>, Plan)> {
    let (produced, plan) = produce_partitions(plan, inputs, &|p| {
        FileRegion::new(file, disk_offset + p.offset, p.size)
    })?;
    gpt_layout(&plan).write_to_at(file, disk_offset).context("writing the partition table")?;
    Ok((produced, plan))
}

/// The VHDX build for disks the file system cannot map one to one: partitions
/// are produced into sparse scratch files and streamed into `file`.
fn build_vhdx_staged(
    plan: &Plan,
    inputs: &Inputs,
    out_dir: &Path,
    file: &File,
    image_name: &str,
    options: BuildOptions,
) -> anyhow::Result<(Vec<Produced>, ImageReport, Plan)> {
    let staged = stage_partitions(plan, out_dir)?;
    let (produced, plan) = produce_partitions(plan, inputs, &|p| {
        let file = &staged[&p.index];
        FileRegion::new(file.as_ref(), 0, p.size)
    })?;
    let disk = compose_disk(&plan, &staged)?;
    let summary = write_vhdx(&disk, file, &vhdx_options(&plan))
        .with_context(|| format!("writing {image_name}"))?;
    let mut report = describe_image(file, image_name, plan.disk_size, options.image_sha256)?;
    report.stored_bytes = summary.file_size;
    Ok((produced, report, plan))
}

/// One unlinked, sparse scratch file per partition, in the output directory (so
/// no data crosses file systems and nothing is left behind if the build dies).
/// Holes cost nothing: a 2 TiB partition file holds only what is written to it.
fn stage_partitions(plan: &Plan, out_dir: &Path) -> anyhow::Result<BTreeMap<u32, Arc<File>>> {
    let mut staged = BTreeMap::new();
    for partition in &plan.partitions {
        let file = tempfile::tempfile_in(out_dir)
            .with_context(|| format!("cannot create a scratch file in {}", out_dir.display()))?;
        file.set_len(partition.size).with_context(|| {
            format!("cannot size the scratch file of partition '{}'", partition.name)
        })?;
        staged.insert(partition.index, Arc::new(file));
    }
    Ok(staged)
}

/// The whole disk as the container writers see it: the GPT from memory, the
/// partitions from their scratch files, zeros everywhere else.
fn compose_disk(plan: &Plan, staged: &BTreeMap<u32, Arc<File>>) -> anyhow::Result<ComposedDisk> {
    let layout = gpt_layout(plan);
    let mut segments =
        vec![Segment::bytes(0, layout.primary_bytes().context("building the partition table")?)];
    for partition in &plan.partitions {
        if partition.filesystem != FilesystemKind::None || partition.hash_of.is_some() {
            segments.push(Segment::file(
                partition.offset,
                partition.size,
                Arc::clone(&staged[&partition.index]),
                0,
            ));
        }
    }
    segments.push(Segment::bytes(
        layout.backup_offset(),
        layout.backup_bytes().context("building the backup partition table")?,
    ));
    ComposedDisk::new(plan.disk_size, segments)
}

/// VHDX identities from the seed: the same manifest gives the same file.
fn vhdx_options(plan: &Plan) -> VhdxOptions {
    let mut options = VhdxOptions::new(
        plan.seed.derive_guid("vhdx-page83", &plan.name),
        plan.seed.derive_guid("vhdx-file-write", &plan.name),
        plan.seed.derive_guid("vhdx-data-write", &plan.name),
    );
    options.block_size = plan.vhdx_block_size;
    options
}

fn vhd_options(plan: &Plan) -> VhdOptions {
    VhdOptions {
        unique_id: plan.seed.derive_guid("vhd-unique-id", &plan.name),
        timestamp: vhd_timestamp(u64::try_from(plan.source_date_epoch).unwrap_or(0)),
    }
}

/// A FAT label from a partition label: upper case, at most 11 bytes.
fn fat_label(label: &str) -> String {
    label
        .to_ascii_uppercase()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(11)
        .collect()
}

/// The GPT of the plan.
pub fn gpt_layout(plan: &Plan) -> GptLayout {
    GptLayout {
        disk_guid: plan.disk_guid,
        disk_size_bytes: plan.disk_size,
        entries: plan
            .partitions
            .iter()
            .map(|p| PartitionEntry {
                type_guid: p.type_guid,
                unique_guid: p.uuid,
                first_lba: p.offset / SECTOR_SIZE,
                last_lba: p.end() / SECTOR_SIZE - 1,
                attributes: p.attributes,
                name: p.name.clone(),
            })
            .collect(),
    }
}

/// The digests of a finished image file, fed its bytes in order: `sha256` of
/// every byte when asked for, and `data_sha256` (see [`ImageReport`]): the
/// SHA-256 of the list of (offset, SHA-256) of its non-zero 4 KiB blocks, so the
/// blocks are hashed in parallel.
struct ImageDigests {
    whole: Option<Sha256>,
    data: DataDigest,
}

/// `data_sha256` being computed.
struct DataDigest {
    list: Sha256,
    /// The 4 KiB block being filled and the file offset it starts at.
    block: Vec<u8>,
    block_offset: u64,
    /// Bytes in the non-zero blocks seen: what a sparse file stores.
    non_zero_bytes: u64,
}

const DIGEST_BLOCK: usize = 4096;

impl DataDigest {
    /// Adds whole blocks starting at `block_offset` (the partial block is empty).
    fn add_blocks(&mut self, blocks: &[u8]) {
        debug_assert!(self.block.is_empty() && blocks.len().is_multiple_of(DIGEST_BLOCK));
        // Groups of 64 blocks (256 KiB) per task; within one, the non-zero blocks
        // go through the multi-buffer SHA-256 kernel together.
        const GROUP: usize = 64 * DIGEST_BLOCK;
        let groups: Vec<Vec<(usize, [u8; 32])>> = blocks
            .par_chunks(GROUP)
            .map(|group| {
                let non_zero: Vec<(usize, &[u8])> = group
                    .chunks(DIGEST_BLOCK)
                    .enumerate()
                    .filter(|(_, block)| !is_zero(block))
                    .collect();
                let parts: Vec<&[u8]> = non_zero.iter().map(|&(_, block)| block).collect();
                let mut digests = vec![[0u8; 32]; parts.len()];
                abforge_verity::sha256_blocks(&parts, &mut digests);
                non_zero.iter().map(|&(i, _)| i).zip(digests).collect()
            })
            .collect();
        let start = self.block_offset;
        for (g, group) in groups.iter().enumerate() {
            self.non_zero_bytes += (group.len() * DIGEST_BLOCK) as u64;
            for (i, digest) in group {
                // Block indexes within `blocks`, a slice: they fit in u64.
                let index = (g * GROUP / DIGEST_BLOCK + i) as u64;
                self.list.update((start + index * DIGEST_BLOCK as u64).to_le_bytes());
                self.list.update(digest);
            }
        }
        self.block_offset = start + blocks.len() as u64;
    }

    /// Adds the partial block, zero-padded to a whole block when the file ends in one.
    fn flush_block(&mut self) {
        if !is_zero(&self.block) {
            self.list.update(self.block_offset.to_le_bytes());
            self.list.update(Sha256::digest(&self.block));
            self.non_zero_bytes += self.block.len() as u64;
        }
        self.block_offset += self.block.len() as u64;
        self.block.clear();
    }

    fn add(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.block.is_empty() && bytes.len() >= DIGEST_BLOCK {
                // Whole blocks straight from the caller's buffer.
                let (blocks, rest) = bytes.split_at(bytes.len() / DIGEST_BLOCK * DIGEST_BLOCK);
                self.add_blocks(blocks);
                bytes = rest;
                continue;
            }
            let take = (DIGEST_BLOCK - self.block.len()).min(bytes.len());
            self.block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.block.len() == DIGEST_BLOCK {
                self.flush_block();
            }
        }
    }

    fn add_zeros(&mut self, mut len: u64) {
        if !self.block.is_empty() {
            let take =
                (DIGEST_BLOCK - self.block.len()).min(usize::try_from(len).unwrap_or(usize::MAX));
            self.block.resize(self.block.len() + take, 0);
            len -= take as u64;
            if self.block.len() < DIGEST_BLOCK {
                return;
            }
            self.flush_block();
        }
        // Whole zero blocks are not in the list.
        let whole_blocks = len / DIGEST_BLOCK as u64 * DIGEST_BLOCK as u64;
        self.block_offset += whole_blocks;
        self.block.resize(crate::container::idx(len - whole_blocks), 0);
    }

    fn next_offset(&self) -> u64 {
        self.block_offset + self.block.len() as u64
    }
}

impl ImageDigests {
    fn new(whole_file: bool) -> ImageDigests {
        ImageDigests {
            whole: whole_file.then(Sha256::new),
            data: DataDigest {
                list: Sha256::new(),
                block: Vec::with_capacity(DIGEST_BLOCK),
                block_offset: 0,
                non_zero_bytes: 0,
            },
        }
    }

    /// The report; `stored_bytes` defaults to the bytes of the non-zero blocks seen.
    fn report(mut self, name: &str, virtual_size: u64, stored_bytes: Option<u64>) -> ImageReport {
        if !self.data.block.is_empty() {
            self.data.flush_block();
        }
        let stored_bytes = stored_bytes.unwrap_or(self.data.non_zero_bytes);
        ImageReport {
            path: name.to_string(),
            sha256: self.whole.map(|h| hex(&h.finalize())),
            data_sha256: hex(&self.data.list.finalize()),
            virtual_size,
            stored_bytes,
        }
    }
}

impl FileObserver for ImageDigests {
    fn data(&mut self, offset: u64, bytes: &[u8]) {
        debug_assert_eq!(offset, self.data.next_offset());
        // The whole-file digest is one sequential stream: it runs beside the blocks'.
        let ImageDigests { whole, data } = self;
        rayon::join(
            || {
                if let Some(whole) = whole {
                    whole.update(bytes);
                }
            },
            || data.add(bytes),
        );
    }

    fn zeros(&mut self, offset: u64, len: u64) {
        debug_assert_eq!(offset, self.data.next_offset());
        if let Some(whole) = self.whole.as_mut() {
            let zeros = [0u8; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64);
                whole.update(&zeros[..crate::container::idx(n)]);
                left -= n;
            }
        }
        self.data.add_zeros(len);
    }
}

/// Size and digests of an image file read back (see [`ImageReport`]). Only its
/// data extents are read unless `whole_file` asks for `sha256`: a raw image's
/// holes would take hours to hash.
fn describe_image(
    file: &File,
    name: &str,
    virtual_size: u64,
    whole_file: bool,
) -> anyhow::Result<ImageReport> {
    let len = file.metadata()?.len();
    let mut digests = ImageDigests::new(whole_file);
    let mut buf = vec![0u8; 1 << 20];
    let block = DIGEST_BLOCK as u64;
    let ranges = if whole_file {
        std::iter::once(0..len).collect()
    } else {
        file_data_ranges(file, 0..len)?
    };
    let mut hashed_to = 0u64;
    for range in ranges {
        // Whole 4 KiB blocks around the extent, not hashed twice.
        let start = (range.start / block * block).max(hashed_to);
        let end = range.end.div_ceil(block).saturating_mul(block).min(len);
        if start >= end {
            continue;
        }
        if start > hashed_to {
            digests.zeros(hashed_to, start - hashed_to);
        }
        let mut offset = start;
        while offset < end {
            let n = usize::try_from(end - offset).unwrap_or(usize::MAX).min(buf.len());
            let chunk = &mut buf[..n];
            file.read_exact_at(chunk, offset).map_err(|e| read_error(e, offset))?;
            digests.data(offset, chunk);
            offset += n as u64;
        }
        hashed_to = end;
    }
    if hashed_to < len {
        digests.zeros(hashed_to, len - hashed_to);
    }
    Ok(digests.report(name, virtual_size, None))
}

fn read_error(err: io::Error, offset: u64) -> anyhow::Error {
    anyhow::Error::new(err).context(format!("reading back the image at byte {offset}"))
}

/// The bytes of a hex string; `None` if it is not whole pairs of hex digits.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests of `file` computed the plain way, from all its bytes at once.
    fn plain_digests(file: &[u8]) -> (String, String) {
        let mut data = Sha256::new();
        for (i, block) in file.chunks(DIGEST_BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                data.update((i as u64 * DIGEST_BLOCK as u64).to_le_bytes());
                data.update(Sha256::digest(block));
            }
        }
        (hex(&Sha256::digest(file)), hex(&data.finalize()))
    }

    #[test]
    fn digests_do_not_depend_on_how_the_bytes_are_fed() {
        // More than two 256 KiB groups of blocks hashed together.
        let mut file = vec![0u8; (1 << 20) + 3 * 4096];
        file[5] = 1;
        file[4096 * 3 + 4095] = 2;
        file[4096 * 7..4096 * 9].fill(3);
        file[(600 << 10)..(700 << 10)].fill(5);
        let last = file.len() - 1;
        file[last] = 4;
        let (sha256, data_sha256) = plain_digests(&file);
        // Pieces of awkward sizes, some passed as known zeros.
        for cut in [100usize, 4095, 4096, 5000, 20000, 300 << 10, 2 << 20] {
            let mut digests = ImageDigests::new(true);
            let mut at = 0;
            while at < file.len() {
                let end = (at + cut).min(file.len());
                let piece = &file[at..end];
                if is_zero(piece) {
                    digests.zeros(at as u64, piece.len() as u64);
                } else {
                    digests.data(at as u64, piece);
                }
                at = end;
            }
            let report = digests.report("x", 0, Some(0));
            assert_eq!(report.sha256.as_deref(), Some(sha256.as_str()), "pieces of {cut}");
            assert_eq!(report.data_sha256, data_sha256, "pieces of {cut}");
        }
    }
}
