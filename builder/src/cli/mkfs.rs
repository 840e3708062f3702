//! `abforge mkfs ext4|vfat SOURCE IMAGE`: one file system from a directory or a
//! tar archive, without root and without mke2fs or mkfs.vfat.

use std::path::PathBuf;
use std::process::ExitCode;

use abforge_partitions::ext4::{self, Ext4Options};
use abforge_partitions::fat::{self, FatOptions};
use abforge_partitions::tree::Timestamp;
use abforge_partitions::{FileRegion, Guid};
use anyhow::Context as _;

use crate::container::write_atomically;
use crate::error::UsageError;
use crate::identity::Seed;
use crate::inputs::DEFAULT_HEADROOM;
use crate::manifest::Size;
use crate::source::dir::write_ext4_while_loading;
use crate::source::{OwnerMapping, SourceOptions, load_source};

/// Make one file system image from a directory or a tar archive.
#[derive(Debug, clap::Args)]
pub struct MkfsArgs {
    #[command(subcommand)]
    pub kind: MkfsKind,
}

#[derive(Debug, clap::Subcommand)]
pub enum MkfsKind {
    /// An ext4 file system (metadata_csum, extents, 64bit, flex_bg; no journal unless --journal).
    Ext4(Ext4Args),
    /// A FAT file system (FAT12/16/32 as the size allows), e.g. an ESP.
    Vfat(VfatArgs),
}

#[derive(Debug, clap::Args)]
pub struct Ext4Args {
    /// A directory, or a tar archive (.tar, .tar.gz, .tar.zst).
    pub source: PathBuf,
    /// The image file to create or overwrite.
    pub image: PathBuf,
    /// Size of the file system (default: just big enough, plus 16MiB).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Volume label (at most 16 bytes).
    #[arg(long, value_name = "L", default_value = "")]
    pub label: String,
    /// File-system UUID (default: derived from the label, size and time, so it is reproducible).
    #[arg(long, value_name = "U")]
    pub uuid: Option<String>,
    /// Timestamp of the file system; later file times are clamped to it.
    #[arg(long, value_name = "N")]
    pub source_date_epoch: Option<i64>,
    /// Give every entry this owner (UID:GID), e.g. 0:0 to build a root-owned tree as any user.
    #[arg(long, value_name = "UID:GID")]
    pub owner: Option<String>,
    /// Write an empty journal (for file systems mounted read-write).
    #[arg(long)]
    pub journal: bool,
}

#[derive(Debug, clap::Args)]
pub struct VfatArgs {
    /// A directory, or a tar archive.
    pub source: PathBuf,
    /// The image file to create or overwrite.
    pub image: PathBuf,
    /// Size of the file system.
    #[arg(long, value_name = "SIZE")]
    pub size: String,
    /// Volume label (at most 11 characters).
    #[arg(long, value_name = "L", default_value = "NO NAME")]
    pub label: String,
    /// Timestamp of every entry.
    #[arg(long, value_name = "N")]
    pub source_date_epoch: Option<i64>,
}

fn parse_size(text: &str) -> anyhow::Result<u64> {
    Ok(text.parse::<Size>().map_err(|e| UsageError::new(e.to_string()))?.0)
}

fn parse_owner(text: &str) -> anyhow::Result<OwnerMapping> {
    let bad = || UsageError::new(format!("--owner '{text}' is not UID:GID"));
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    Ok(OwnerMapping::force(uid.parse().map_err(|_| bad())?, gid.parse().map_err(|_| bad())?))
}

fn epoch(given: Option<i64>) -> anyhow::Result<i64> {
    Ok(given.or(super::source_date_epoch_from_env()?).unwrap_or(0))
}

pub fn run(args: MkfsArgs) -> anyhow::Result<ExitCode> {
    match args.kind {
        MkfsKind::Ext4(args) => run_ext4(args),
        MkfsKind::Vfat(args) => run_vfat(args),
    }
}

fn run_ext4(args: Ext4Args) -> anyhow::Result<ExitCode> {
    let sde = epoch(args.source_date_epoch)?;
    if args.label.len() > 16 {
        return Err(UsageError::new(format!(
            "label '{}' is longer than the 16 bytes ext4 allows",
            args.label
        ))
        .into());
    }
    let owner = args.owner.as_deref().map(parse_owner).transpose()?;
    let requested = args.size.as_deref().map(parse_size).transpose()?;
    let source_options =
        SourceOptions { owner, source_date_epoch: Some(sde), ..SourceOptions::default() };
    let seed = Seed::new("abforge mkfs ext4");
    let identity = format!("{}\0{}\0{}", args.label, requested.unwrap_or(0), sde);
    let uuid = match &args.uuid {
        Some(text) => text.parse::<Guid>().map_err(|e| UsageError::new(e.to_string()))?,
        None => seed.derive_guid("ext4-uuid", &identity),
    };
    let options = Ext4Options {
        label: args.label.clone(),
        uuid,
        hash_seed: seed.derive_guid("ext4-hash-seed", &identity),
        timestamp: Timestamp::from_seconds(sde),
        journal: args.journal,
        inode_ratio: args.journal.then_some(16384),
        // A one-off image, not read back by this process: to the device at once.
        write_behind: true,
        ..Ext4Options::default()
    };
    let writing = || format!("writing {}", args.image.display());
    let cannot_size = || format!("cannot size {}", args.image.display());
    // Whole blocks: a size that is not a multiple of 4096 is rounded down.
    let whole_blocks = requested.map(|size| size / 4096 * 4096);
    // A directory into a file system of a given size is written while it is read.
    // Should that fail, it is done again the ordinary way, whose error (the first
    // problem in its order, named as always) is the one reported.
    let streamed = match whole_blocks {
        Some(size) if args.source.is_dir() => write_atomically(&args.image, |file| {
            file.set_len(size).with_context(cannot_size)?;
            write_ext4_while_loading(&args.source, &source_options, &options, file, size)
        })
        .ok()
        .map(|summary| (summary, size)),
        _ => None,
    };
    let (summary, size) = match streamed {
        Some(written) => written,
        None => {
            let tree = load_source(&args.source, &source_options)?;
            let size = match whole_blocks {
                Some(size) => size,
                None => {
                    (ext4::min_size(&tree, &options)? + DEFAULT_HEADROOM).div_ceil(1 << 20) << 20
                }
            };
            write_atomically(&args.image, |file| {
                file.set_len(size).with_context(cannot_size)?;
                Ok(ext4::write(&tree, &options, FileRegion::new(file, 0, size))?)
            })
            .with_context(writing)
            .map(|summary| (summary, size))?
        }
    };
    eprintln!(
        "wrote {}: ext4, {}, {} used, {} inodes, UUID {}",
        args.image.display(),
        Size(size),
        Size(summary.used_bytes),
        summary.used_inodes,
        options.uuid
    );
    Ok(ExitCode::SUCCESS)
}

fn run_vfat(args: VfatArgs) -> anyhow::Result<ExitCode> {
    let sde = epoch(args.source_date_epoch)?;
    let size = parse_size(&args.size)?;
    if args.label.len() > 11 {
        return Err(UsageError::new(format!(
            "label '{}' is longer than the 11 characters FAT allows",
            args.label
        ))
        .into());
    }
    let tree = load_source(
        &args.source,
        &SourceOptions { source_date_epoch: Some(sde), ..SourceOptions::default() },
    )?;
    fat::check_fat_fits(&tree, size)
        .map_err(|e| UsageError::new(format!("{}: {e}", args.source.display())))?;
    let seed = Seed::new("abforge mkfs vfat");
    let options = FatOptions {
        volume_id: seed.fat_volume_id(&format!("{}\0{size}\0{sde}", args.label)),
        label: args.label.to_ascii_uppercase(),
        timestamp: Timestamp::from_seconds(sde),
        hidden_sectors: 0,
    };
    let summary = write_atomically(&args.image, |file| {
        file.set_len(size).with_context(|| format!("cannot size {}", args.image.display()))?;
        Ok(fat::write_fat(&tree, &options, FileRegion::new(file, 0, size))?)
    })
    .with_context(|| format!("writing {}", args.image.display()))?;
    eprintln!("wrote {}: {}, {}", args.image.display(), summary.fat_type.name(), Size(size));
    Ok(ExitCode::SUCCESS)
}
