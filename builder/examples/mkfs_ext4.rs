//! Measuring harness for the ext4 bench: the path `abforge mkfs ext4` takes
//! (abforge::source::load_source, then abforge_partitions::ext4::write) with the
//! time of each step.
//!
//! Usage: cargo run --release -p abforge --example mkfs_ext4 -- SOURCE IMAGE SIZE_MIB [journal]

use abforge::source::{SourceOptions, load_source};
use abforge_partitions::FileRegion;
use abforge_partitions::ext4::{self, Ext4Options};
use abforge_partitions::tree::Timestamp;
use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, image, size_mib, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: mkfs_ext4 SOURCE IMAGE SIZE_MIB [journal]");
    };
    let size = size_mib.parse::<u64>()? << 20;
    let start = Instant::now();
    let opts = SourceOptions { source_date_epoch: Some(1_700_000_000), ..Default::default() };
    let tree = load_source(&PathBuf::from(source), &opts)?;
    let loaded = start.elapsed();
    let file = File::options().read(true).write(true).create(true).truncate(true).open(image)?;
    file.set_len(size)?;
    let ext4_opts = Ext4Options {
        label: "root".into(),
        timestamp: Timestamp::from_seconds(1_700_000_000),
        journal: rest.iter().any(|a| a == "journal"),
        ..Ext4Options::default()
    };
    let summary = ext4::write(&tree, &ext4_opts, FileRegion::new(&file, 0, size))?;
    let total = start.elapsed();
    eprintln!(
        "load {:.3}s  write {:.3}s  total {:.3}s  ({} inodes, {} bytes used)",
        loaded.as_secs_f64(),
        (total - loaded).as_secs_f64(),
        total.as_secs_f64(),
        summary.used_inodes,
        summary.used_bytes
    );
    Ok(())
}
