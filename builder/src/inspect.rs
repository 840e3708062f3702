//! Reading an image back: the GPT and, in each partition, the file system found
//! there. Works on anything [`open_image`] opens (raw, VHDX, VHD).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use abforge_partitions::gpt::{self, attribute_names, PartitionType, ReadAt};
use abforge_partitions::probe::{probe_filesystem, FsProbe};
use anyhow::Context as _;
use serde::Serialize;

use crate::container::{detect_format, open_image, DiskSource};
use crate::manifest::Size;

/// Lets the partition readers read through any container.
struct DiskReader<'a>(&'a dyn DiskSource);

impl ReadAt for DiskReader<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.0.size()) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("read at {offset} is past the end of the disk")));
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
    pub filesystem: FsProbe,
}

/// Reads the GPT of `path` and probes every partition.
pub fn inspect_image(path: &Path) -> anyhow::Result<Inspection> {
    let format = {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        detect_format(&file).with_context(|| format!("cannot read {}", path.display()))?
    };
    let disk = open_image(path)?;
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
            filesystem: probe_filesystem(&reader, offset, size),
        });
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
        let _ = writeln!(out, "{:>3}  {:<12} {:<15} {:>9} {:>10}  {:<36}  {:<9} file system", "#", "name", "type", "size", "offset", "uuid", "flags");
        for p in &self.partitions {
            let type_name = p.type_name.map(str::to_string).unwrap_or_else(|| p.type_guid.clone());
            let flags = if p.attribute_names.is_empty() { "-".to_string() } else { p.attribute_names.join(",") };
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
        }
        out
    }
}
