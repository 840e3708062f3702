//! `abforge verify`: checks an image against what its build promised. The GPT must
//! be intact (both copies), and every dm-verity tree is recomputed from the data
//! and compared with its root hash (from the build report beside the image, or
//! given on the command line).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use abforge_partitions::gpt::{GptCopy, PartitionEntry, ReadAt, read_gpt_report};
use abforge_verity::VerityParams;
use anyhow::{Context as _, anyhow, bail};

use crate::container::{ContainerFormat, DiskSource, open_image_with_format};
use crate::error::UsageError;
use crate::inspect::DiskReader;

/// What to check an image against.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Root hashes by partition name (lower-case hex).
    pub root_hashes: BTreeMap<String, String>,
    /// Hash offsets by partition name, from the report.
    pub hash_offsets: BTreeMap<String, u64>,
    /// Data blocks and salt (hex) by partition name, from the report.
    pub geometry: BTreeMap<String, (u64, String)>,
    /// The partition holding the tree, by data partition name, when it is not
    /// the data partition itself.
    pub hash_partitions: BTreeMap<String, String>,
}

impl Expectations {
    /// Reads the verity entries of a build report.
    pub fn from_report(path: &Path) -> anyhow::Result<Expectations> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the build report {}", path.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            UsageError::new(format!("{} is not a build report: {e}", path.display()))
        })?;
        let mut expectations = Expectations::default();
        for entry in report["verity"].as_array().into_iter().flatten() {
            let (Some(name), Some(hash), Some(offset)) = (
                entry["partition"].as_str(),
                entry["root_hash"].as_str(),
                entry["hash_offset"].as_u64(),
            ) else {
                return Err(UsageError::new(format!(
                    "{}: a verity entry lacks partition, root_hash or hash_offset",
                    path.display()
                ))
                .into());
            };
            expectations.root_hashes.insert(name.to_string(), hash.to_lowercase());
            expectations.hash_offsets.insert(name.to_string(), offset);
            if let Some(hash_partition) = entry["hash_partition"].as_str() {
                expectations.hash_partitions.insert(name.to_string(), hash_partition.to_string());
            }
            if let (Some(blocks), Some(salt)) =
                (entry["data_blocks"].as_u64(), entry["salt"].as_str())
            {
                expectations.geometry.insert(name.to_string(), (blocks, salt.to_lowercase()));
            }
        }
        Ok(expectations)
    }
}

/// The report written beside an image by `build`: `<dir>/<name>.json`.
pub fn default_report_path(image: &Path) -> PathBuf {
    image.with_extension("json")
}

/// One line per check, for the user.
pub type Findings = Vec<String>;

/// Verifies `image`; every failure is an error naming what failed.
pub fn verify_image(image: &Path, expectations: &Expectations) -> anyhow::Result<Findings> {
    let mut findings = Vec::new();
    let (format, disk) = open_image_with_format(image)?;
    let reader = DiskReader(disk.as_ref());
    let gpt = read_gpt_report(&reader, disk.size())
        .with_context(|| format!("{} has no readable GPT", image.display()))?;
    if gpt.used == GptCopy::Backup || gpt.primary_problem.is_some() {
        bail!(
            "the primary GPT of {} is damaged ({}); the backup is intact",
            image.display(),
            gpt.primary_problem.map(|e| e.to_string()).unwrap_or_default()
        );
    }
    if let Some(problem) = gpt.backup_problem {
        bail!("the backup GPT of {} is damaged: {problem}", image.display());
    }
    findings
        .push(format!("GPT: primary and backup intact, {} partitions", gpt.layout.entries.len()));

    for (name, root_hash) in &expectations.root_hashes {
        let entry = gpt.layout.entries.iter().find(|e| &e.name == name).ok_or_else(|| {
            anyhow!(
                "partition '{name}' named in the root hashes is not in the GPT of {}",
                image.display()
            )
        })?;
        let hash_offset = match expectations.hash_offsets.get(name) {
            Some(offset) => *offset,
            None => ext4_size(&reader, entry)
                .ok_or_else(|| anyhow!("partition '{name}': no hash offset in the report and no ext4 file system to find it from"))?,
        };
        let hash_entry = match expectations.hash_partitions.get(name) {
            Some(hash_name) => gpt.layout.entries.iter().find(|e| &e.name == hash_name).ok_or_else(|| {
                anyhow!("partition '{hash_name}', which holds the verity tree of '{name}', is not in the GPT of {}", image.display())
            })?,
            None => entry,
        };
        let expected =
            Expected { hash_offset, root_hash, geometry: expectations.geometry.get(name) };
        verify_partition(image, format, disk.as_ref(), (entry, hash_entry), &expected)
            .with_context(|| format!("partition '{name}' fails verification"))?;
        findings.push(format!("{name}: verity tree matches root hash {root_hash}"));
    }
    Ok(findings)
}

/// The size of the ext4 file system at the start of a partition: where an
/// appended verity tree starts.
fn ext4_size(reader: &dyn ReadAt, entry: &PartitionEntry) -> Option<u64> {
    match abforge_partitions::probe::probe_filesystem(
        reader,
        entry.offset_bytes(),
        entry.size_bytes(),
    ) {
        abforge_partitions::probe::FsProbe::Ext4 { block_size, blocks, .. } => {
            blocks.checked_mul(u64::from(block_size))
        }
        _ => None,
    }
}

/// What one partition's tree must match.
struct Expected<'a> {
    hash_offset: u64,
    root_hash: &'a str,
    /// Data blocks and salt from the report, when there is one.
    geometry: Option<&'a (u64, String)>,
}

/// The bytes of a partition: the image itself (raw images are read in place) or
/// a sparse copy (other containers), and where the partition starts in it.
fn partition_file(
    image: &Path,
    format: ContainerFormat,
    disk: &dyn DiskSource,
    entry: &PartitionEntry,
) -> anyhow::Result<(File, u64)> {
    Ok(match format {
        ContainerFormat::Raw => (File::open(image)?, entry.offset_bytes()),
        ContainerFormat::Vhdx | ContainerFormat::Vhd => {
            (extract(disk, entry.offset_bytes(), entry.size_bytes())?, 0)
        }
    })
}

fn verify_partition(
    image: &Path,
    format: ContainerFormat,
    disk: &dyn DiskSource,
    (entry, hash_entry): (&PartitionEntry, &PartitionEntry),
    expected_tree: &Expected<'_>,
) -> anyhow::Result<()> {
    let (hash_offset, root_hash) = (expected_tree.hash_offset, expected_tree.root_hash);
    let expected = crate::build::parse_hex(root_hash)
        .ok_or_else(|| UsageError::new(format!("root hash '{root_hash}' is not hex")))?;
    let (file, base) = partition_file(image, format, disk, entry)?;
    let separate = !std::ptr::eq(entry, hash_entry);
    let (hash_file, hash_base) = if separate {
        partition_file(image, format, disk, hash_entry)?
    } else {
        (file.try_clone()?, base)
    };
    let where_ = if separate {
        format!("partition '{}'", hash_entry.name)
    } else {
        "the partition".to_string()
    };
    let superblock = abforge_verity::read_superblock(&hash_file, hash_base + hash_offset)
        .with_context(|| format!("no verity superblock at byte {hash_offset} of {where_}"))?;
    let params = VerityParams::from_superblock(&superblock);
    // The kernel takes the block count and salt from the command line, not from
    // the superblock: a superblock that disagrees with them has been altered.
    let (blocks, salt) = match expected_tree.geometry {
        Some((blocks, salt)) => (*blocks, Some(salt.as_str())),
        // An appended tree starts right after the data it covers.
        None => (hash_offset / u64::from(params.data_block_size), None),
    };
    if superblock.data_blocks != blocks {
        bail!(
            "the verity superblock at byte {hash_offset} of {where_} covers {} data blocks, but the tree must cover {blocks}: it is damaged or altered",
            superblock.data_blocks
        );
    }
    if let Some(salt) = salt
        && crate::build::hex(&params.salt) != salt
    {
        bail!(
            "the verity superblock at byte {hash_offset} of {where_} has a different salt than the build report: it is damaged or altered"
        );
    }
    abforge_verity::verify(&file, base, superblock.data_blocks, &hash_file, hash_base + hash_offset, &params, &expected)
        .map_err(|err| match err {
            // Offsets in the verity error are of the file read; say them relative
            // to the partition, which is what the user can act on.
            abforge_verity::VerityError::DataBlockMismatch { block, .. } => anyhow!(
                "data block {block} (bytes {} to {} of the partition) does not match its hash in the tree",
                block * u64::from(params.data_block_size),
                (block + 1) * u64::from(params.data_block_size) - 1
            ),
            abforge_verity::VerityError::HashBlockMismatch { block, level, offset, parent } => anyhow!(
                "hash block {block} (level {level}, byte {} of {where_}) does not match {parent}",
                offset - hash_base
            ),
            other => other.into(),
        })?;
    Ok(())
}

/// Copies `len` bytes at `offset` of a disk into an unlinked sparse file.
fn extract(disk: &dyn DiskSource, offset: u64, len: u64) -> anyhow::Result<File> {
    use std::os::unix::fs::FileExt;
    let file = tempfile::tempfile().context("cannot create a scratch file")?;
    file.set_len(len)?;
    let mut buf = vec![0u8; 4 << 20];
    for range in disk.data_ranges(offset..offset + len)? {
        let mut at = range.start;
        while at < range.end {
            let n = usize::try_from(range.end - at).unwrap_or(usize::MAX).min(buf.len());
            disk.read_at(&mut buf[..n], at)?;
            file.write_all_at(&buf[..n], at - offset)?;
            at += n as u64;
        }
    }
    Ok(file)
}
