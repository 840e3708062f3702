//! The build report (DESIGN.md, "Outputs of build"): one JSON document describing
//! the image, every partition and every verity tree. Fields are only added, never
//! renamed; `report_version` changes when a field changes meaning.

use serde::Serialize;

use crate::manifest::ImageFormat;
use crate::plan::{Plan, partition_type_name};

/// Bumped when a field changes meaning.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub report_version: u32,
    pub name: String,
    pub version: String,
    pub format: ImageFormat,
    pub source_date_epoch: i64,
    pub image: ImageReport,
    pub disk_guid: String,
    pub partitions: Vec<PartitionReport>,
    pub verity: Vec<VerityReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageReport {
    /// File name, relative to the report.
    pub path: String,
    /// SHA-256 of the whole image file, when the build was asked for it
    /// (`--sha256`): hashing every byte is a pass over the file's zeros too.
    pub sha256: Option<String>,
    /// SHA-256 of the list of every non-zero 4 KiB block of the image file, in
    /// order, as its offset (little-endian u64) then its SHA-256. Independent of
    /// how the host file system stores holes.
    pub data_sha256: String,
    pub virtual_size: u64,
    /// Bytes the file takes on disk when written (its length for containers,
    /// the sum of its data extents for sparse raw files).
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionReport {
    pub index: u32,
    pub name: String,
    pub slot: Option<String>,
    pub type_guid: String,
    pub type_name: Option<String>,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
    pub filesystem: String,
    pub read_only: bool,
    pub attributes: u64,
    pub label: Option<String>,
    /// File-system UUID (ext4) or volume id (FAT, as 8 hex digits).
    pub fs_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerityReport {
    pub partition: String,
    pub slot: Option<String>,
    pub root_hash: String,
    pub salt: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub hash_offset: u64,
    /// The partition holding the tree when it is not `partition` itself
    /// (`verity: partition`); `hash_offset` is then within that partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_partition: Option<String>,
}

impl Report {
    /// The report skeleton for a plan; the image and file-system fields are filled
    /// in by the build.
    pub fn from_plan(plan: &Plan, image: ImageReport) -> Report {
        Report {
            report_version: REPORT_VERSION,
            name: plan.name.clone(),
            version: plan.version.clone(),
            format: plan.format,
            source_date_epoch: plan.source_date_epoch,
            image,
            disk_guid: plan.disk_guid.to_string(),
            partitions: plan
                .partitions
                .iter()
                .map(|p| PartitionReport {
                    index: p.index,
                    name: p.name.clone(),
                    slot: p.slot.clone(),
                    type_guid: p.type_guid.to_string(),
                    type_name: partition_type_name(p.type_guid).map(str::to_string),
                    uuid: p.uuid.to_string(),
                    offset: p.offset,
                    size: p.size,
                    filesystem: p.filesystem.name().to_string(),
                    read_only: p.read_only,
                    attributes: p.attributes,
                    label: None,
                    fs_id: None,
                })
                .collect(),
            verity: Vec::new(),
        }
    }

    /// Pretty JSON with a trailing newline, as written to `<name>.json`.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        let mut text = serde_json::to_string_pretty(self).expect("report serialises");
        text.push('\n');
        text
    }
}
