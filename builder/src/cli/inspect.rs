//! `abforge inspect`: what is in a disk image, read from the image alone.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::inspect::inspect_image;

/// Show the partitions of a raw or VHDX image and the file system in each.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A raw disk, a VHDX (made by abforge, qemu-img or Hyper-V) or a fixed VHD.
    pub image: PathBuf,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let inspection = inspect_image(&args.image)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", inspection.table());
    }
    Ok(ExitCode::SUCCESS)
}
