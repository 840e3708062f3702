//! `abforge verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::UsageError;
use crate::verify::{Expectations, default_report_path, verify_image};

/// Check an image: its GPT and every dm-verity tree against its root hash.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A raw, VHDX or fixed VHD image written by `abforge build`.
    pub image: PathBuf,
    /// The build report with the root hashes (default: IMAGE with a .json extension).
    #[arg(long, value_name = "REPORT")]
    pub report: Option<PathBuf>,
    /// A root hash to check, overriding the report's: PARTITION=HEX (repeatable).
    #[arg(long = "root-hash", value_name = "PARTITION=HEX")]
    pub root_hashes: Vec<String>,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = args.report.clone().unwrap_or_else(|| default_report_path(&args.image));
    let mut expectations = if args.report.is_some() || report.exists() {
        Expectations::from_report(&report)?
    } else {
        Expectations::default()
    };
    for given in &args.root_hashes {
        let (name, hash) = given.split_once('=').ok_or_else(|| {
            UsageError::new(format!("--root-hash '{given}' is not PARTITION=HEX"))
        })?;
        expectations.root_hashes.insert(name.to_string(), hash.to_lowercase());
    }
    for line in verify_image(&args.image, &expectations)? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
