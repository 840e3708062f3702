//! `abforge convert IN OUT --format vhdx|vhd|raw [--block-size SIZE]`: reads a raw,
//! VHDX or fixed VHD image (detected) and writes it, atomically, in another format.
//!
//! The identifiers a container needs (VHDX Page 83, file and data write GUIDs, VHD
//! unique id) are derived from SHA-256 of the virtual size and the first MiB of
//! the disk (where the GPT and its disk GUID live), so converting the same disk
//! twice gives byte-identical files and different disks get different ids. The VHD
//! time stamp comes from SOURCE_DATE_EPOCH (0 when unset).

use std::path::PathBuf;
use std::process::ExitCode;

use abforge_partitions::Guid;
use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::container::vhd::{VhdOptions, vhd_timestamp};
use crate::container::vhdx::writer::check_block_size;
use crate::container::vhdx::{DEFAULT_BLOCK_SIZE, VhdxOptions};
use crate::container::{
    ContainerFormat, DiskSource, open_image, write_atomically, write_container,
};
use crate::error::UsageError;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The image to read: raw, VHDX or fixed VHD (detected from its signatures).
    pub input: PathBuf,
    /// The image to write; replaced only once it is complete.
    pub output: PathBuf,
    /// The format to write.
    #[arg(long, value_enum)]
    pub format: ContainerFormat,
    /// VHDX block size, a power of two from 1MiB to 256MiB (default 32MiB).
    #[arg(long, value_name = "SIZE")]
    pub block_size: Option<String>,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let block_size = match (&args.block_size, args.format) {
        (None, _) => DEFAULT_BLOCK_SIZE,
        (Some(text), ContainerFormat::Vhdx) => {
            let bytes = text
                .parse::<crate::manifest::Size>()
                .map_err(|e| UsageError::new(e.to_string()))?
                .0;
            check_block_size(bytes).map_err(UsageError::new)?
        }
        (Some(_), format) => {
            return Err(UsageError::new(format!(
                "--block-size applies to VHDX output, not {format}"
            ))
            .into());
        }
    };
    let source = open_image(&args.input)?;
    let ids = derive_ids(source.as_ref())
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let vhdx_options = VhdxOptions {
        block_size,
        page83: ids[0],
        file_write_guid: ids[1],
        data_write_guid: ids[2],
        dense: false,
    };
    let vhd_options = VhdOptions {
        unique_id: ids[3],
        timestamp: vhd_timestamp(
            u64::try_from(super::source_date_epoch_from_env()?.unwrap_or(0)).unwrap_or(0),
        ),
    };
    write_atomically(&args.output, |out| {
        write_container(args.format, source.as_ref(), out, &vhdx_options, &vhd_options)
            .with_context(|| format!("cannot write {}", args.output.display()))
    })?;
    eprintln!(
        "wrote {} ({}) from a disk of {} bytes",
        args.output.display(),
        args.format,
        source.size()
    );
    Ok(ExitCode::SUCCESS)
}

/// Four identifiers derived from the disk's size and first MiB: Page 83, file
/// write, data write (VHDX) and unique id (VHD).
fn derive_ids(source: &dyn DiskSource) -> std::io::Result<[Guid; 4]> {
    let mut head = vec![0u8; source.size().min(1 << 20) as usize];
    source.read_at(&mut head, 0)?;
    let mut hasher = Sha256::new();
    hasher.update(b"abforge convert\0");
    hasher.update(source.size().to_le_bytes());
    hasher.update(&head);
    let disk_digest = hasher.finalize();
    Ok(["page83", "file-write", "data-write", "vhd-unique-id"].map(|label| {
        let digest =
            Sha256::new().chain_update(disk_digest).chain_update(label.as_bytes()).finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Guid::from_rfc_bytes(bytes).with_v4_bits()
    }))
}
