//! Reading an image back: the GPT and, in each partition, the file system found
//! there. Works on anything [`open_image`] opens (raw, VHDX, VHD).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use abforge_partitions::gpt::{self, PartitionType, ReadAt, attribute_names};
use abforge_partitions::probe::{FsProbe, probe_filesystem, probe_verity};
use anyhow::Context as _;
use ext4_view::{Ext4, Ext4Read};
use std::sync::Arc;

use crate::profile::inspect::{ProfileReport, RootReader, describe_profile};
use serde::Serialize;

use crate::container::{DiskSource, open_image_with_format};
use crate::manifest::Size;

/// Lets the partition readers read through any container.
pub struct DiskReader<'a>(pub &'a dyn DiskSource);

impl ReadAt for DiskReader<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.0.size()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read at {offset} is past the end of the disk"),
            ));
        }
        self.0.read_at(buf, offset)
    }
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub report_version: u32,
    pub image: String,
    pub format: String,
    pub virtual_size: u64,
    pub disk_guid: String,
    pub partitions: Vec<InspectedPartition>,
}

#[derive(Debug, Serialize)]
pub struct InspectedPartition {
    pub index: u32,
    pub name: String,
    pub type_guid: String,
    pub type_name: Option<&'static str>,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
    pub attributes: u64,
    pub attribute_names: Vec<String>,
    pub read_only: bool,
    pub filesystem: FoundFilesystem,
    /// A dm-verity superblock found right after the ext4 file system (an
    /// appended tree), with its offset within the partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appended_verity: Option<AppendedVerity>,
    /// The security profile found in an ext4 root, read from the image alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileReport>,
}

#[derive(Debug, Serialize)]
pub struct AppendedVerity {
    pub hash_offset: u64,
    pub superblock: FoundFilesystem,
}

/// Reads one partition of a disk, for ext4-view.
struct PartitionBytes {
    disk: Arc<dyn DiskSource>,
    offset: u64,
    len: u64,
}

impl Ext4Read for PartitionBytes {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start.checked_add(dst.len() as u64).filter(|&end| end <= self.len);
        if end.is_none() {
            return Err(format!("read at {start} is past the end of the partition").into());
        }
        Ok(self.disk.read_at(dst, self.offset + start)?)
    }
}

/// An ext4 file system in an image, as the profile reader sees it.
struct Ext4Root(Ext4);

impl RootReader for Ext4Root {
    fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        self.0.read(path).ok()
    }
}

/// The profile of the root file system in a partition, if it has one.
fn root_profile(disk: &Arc<dyn DiskSource>, offset: u64, len: u64) -> Option<ProfileReport> {
    let fs = Ext4::load(Box::new(PartitionBytes { disk: Arc::clone(disk), offset, len })).ok()?;
    let report = describe_profile(&Ext4Root(fs));
    report.is_present().then_some(report)
}

/// What `inspect` found in a partition, flattened for JSON: `kind` is `vfat`,
/// `ext4`, `verity`, `empty` (all zero), `unknown` or `unreadable`; the other
/// fields are present where they apply.
#[derive(Debug, Default, Serialize)]
pub struct FoundFilesystem {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fat_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// FAT volume id, 8 hex digits (as the build report's `fs_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FoundFilesystem {
    fn from_probe(probe: FsProbe) -> FoundFilesystem {
        let kind = probe.kind();
        match probe {
            FsProbe::Fat { fat_type, label, volume_id, cluster_size, clusters } => {
                FoundFilesystem {
                    kind,
                    fat_type: Some(fat_type.name()),
                    label: Some(label),
                    volume_id: Some(format!("{volume_id:08x}")),
                    block_size: Some(cluster_size),
                    blocks: Some(u64::from(clusters)),
                    ..FoundFilesystem::default()
                }
            }
            FsProbe::Ext4 { label, uuid, block_size, blocks, free_blocks } => FoundFilesystem {
                kind,
                label: Some(label),
                uuid: Some(uuid.to_string()),
                block_size: Some(block_size),
                blocks: Some(blocks),
                used_bytes: Some(
                    blocks.saturating_sub(free_blocks).saturating_mul(u64::from(block_size)),
                ),
                ..FoundFilesystem::default()
            },
            FsProbe::Verity(sb) => FoundFilesystem {
                kind,
                uuid: Some(sb.uuid.to_string()),
                hash_algorithm: Some(sb.algorithm),
                block_size: Some(sb.data_block_size),
                data_blocks: Some(sb.data_blocks),
                salt: Some(crate::build::hex(&sb.salt)),
                ..FoundFilesystem::default()
            },
            FsProbe::Unreadable { reason } => {
                FoundFilesystem { kind, reason: Some(reason), ..FoundFilesystem::default() }
            }
            FsProbe::Empty | FsProbe::Unknown => {
                FoundFilesystem { kind, ..FoundFilesystem::default() }
            }
        }
    }

    /// One line for the human table.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.fat_type.unwrap_or(self.kind).to_string()];
        if let Some(label) = self.label.as_ref().filter(|l| !l.is_empty()) {
            parts.push(format!("label {label}"));
        }
        if let Some(id) = &self.volume_id {
            parts.push(format!("id {id}"));
        }
        if let Some(uuid) = &self.uuid {
            parts.push(format!("uuid {uuid}"));
        }
        if let Some(used) = self.used_bytes {
            parts.push(format!("{} used", Size(used)));
        }
        if let Some(reason) = &self.reason {
            parts.push(reason.clone());
        }
        parts.join(", ")
    }
}

/// Reads the GPT of `path` and probes every partition.
pub fn inspect_image(path: &Path) -> anyhow::Result<Inspection> {
    let (format, disk) = open_image_with_format(path)?;
    let disk: Arc<dyn DiskSource> = Arc::from(disk);
    let reader = DiskReader(disk.as_ref());
    let layout = gpt::read_gpt(&reader, disk.size())
        .with_context(|| format!("{} has no readable GPT", path.display()))?;
    let mut partitions = Vec::new();
    for (i, entry) in layout.entries.iter().enumerate() {
        let offset = entry.offset_bytes();
        let size = entry.size_bytes();
        partitions.push(InspectedPartition {
            index: u32::try_from(i + 1).unwrap_or(u32::MAX),
            name: entry.name.clone(),
            type_guid: entry.type_guid.to_string(),
            type_name: PartitionType::from_guid(entry.type_guid).map(PartitionType::name),
            uuid: entry.unique_guid.to_string(),
            offset,
            size,
            attributes: entry.attributes,
            attribute_names: attribute_names(entry.attributes),
            read_only: entry.attributes & (1 << 60) != 0,
            filesystem: FoundFilesystem::from_probe(probe_filesystem(&reader, offset, size)),
            appended_verity: None,
            profile: None,
        });
        let found = partitions.last_mut().expect("just pushed");
        if let (Some(block_size), Some(blocks)) =
            (found.filesystem.block_size, found.filesystem.blocks)
            && found.filesystem.kind == "ext4"
        {
            let hash_offset = blocks.saturating_mul(u64::from(block_size));
            if hash_offset < size
                && let Ok(Some(sb)) = probe_verity(&reader, offset, size, hash_offset)
            {
                found.appended_verity = Some(AppendedVerity {
                    hash_offset,
                    superblock: FoundFilesystem::from_probe(FsProbe::Verity(sb)),
                });
            }
        }
        if found.filesystem.kind == "ext4" && found.type_name == Some("root") {
            found.profile = root_profile(&disk, offset, size);
        }
    }
    Ok(Inspection {
        report_version: crate::report::REPORT_VERSION,
        image: path.display().to_string(),
        format: format.to_string(),
        virtual_size: disk.size(),
        disk_guid: layout.disk_guid.to_string(),
        partitions,
    })
}

impl Inspection {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} disk, {} virtual, GUID {}",
            self.image,
            self.format,
            Size(self.virtual_size),
            self.disk_guid
        );
        let _ = writeln!(
            out,
            "{:>3}  {:<12} {:<15} {:>9} {:>10}  {:<36}  {:<9} file system",
            "#", "name", "type", "size", "offset", "uuid", "flags"
        );
        for p in &self.partitions {
            let type_name = p.type_name.map(str::to_string).unwrap_or_else(|| p.type_guid.clone());
            let flags = if p.attribute_names.is_empty() {
                "-".to_string()
            } else {
                p.attribute_names.join(",")
            };
            let _ = writeln!(
                out,
                "{:>3}  {:<12} {:<15} {:>9} {:>10}  {:<36}  {:<9} {}",
                p.index,
                p.name,
                type_name,
                Size(p.size).to_string(),
                Size(p.offset).to_string(),
                p.uuid,
                flags,
                p.filesystem.summary()
            );
            if let Some(verity) = &p.appended_verity {
                let _ = writeln!(
                    out,
                    "       verity tree at byte {}: {}",
                    verity.hash_offset,
                    verity.superblock.summary()
                );
            }
            for line in p.profile.iter().flat_map(ProfileReport::lines) {
                let _ = writeln!(out, "       {line}");
            }
        }
        out
    }
}
