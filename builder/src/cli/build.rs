//! `abforge build` and `abforge validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;

use crate::build::{BuildOptions, build};
use crate::error::UsageError;
use crate::inputs::{Inputs, auto_sizes, check_fits, load_inputs};
use crate::manifest::{self, ImageFormat, ManifestError, Size};
use crate::plan::{ALIGNMENT, Overrides, Plan, plan};

/// Build the disk image a manifest describes.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The manifest (YAML); paths in it are relative to its directory.
    pub manifest: PathBuf,
    /// Directory the image, the report and the other artifacts are written to.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = "out")]
    pub out: PathBuf,
    /// Container of the whole disk (overrides the manifest's `format`).
    #[arg(long, value_enum)]
    pub format: Option<ImageFormat>,
    /// Timestamp for every file and header (overrides SOURCE_DATE_EPOCH and the manifest).
    #[arg(long, value_name = "N")]
    pub source_date_epoch: Option<i64>,
    /// Print the build report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also put the SHA-256 of the whole image file in the report (`image.sha256`):
    /// one more read of the file, its zeros included (a sparse raw image is read
    /// whole). `image.data_sha256` is always there.
    #[arg(long)]
    pub sha256: bool,
}

/// Check a manifest and its inputs without writing anything.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The manifest (YAML).
    pub manifest: PathBuf,
}

fn manifest_errors(errors: Vec<ManifestError>) -> anyhow::Error {
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    UsageError::new(text.join("\nerror: ")).into()
}

/// Parses, plans and loads the inputs of a manifest: everything that can be
/// checked before writing. Errors are usage errors (exit 2).
pub fn prepare(manifest_path: &Path, overrides: &Overrides) -> anyhow::Result<(Plan, Inputs)> {
    let (manifest, _) = manifest::load(manifest_path).map_err(|e| manifest_errors(vec![e]))?;
    // First pass with `size: auto` partitions at a placeholder size, to find and
    // load their contents; second pass with the measured sizes.
    let draft =
        plan(manifest_path, &manifest, overrides, &|_| Some(ALIGNMENT)).map_err(manifest_errors)?;
    let inputs = load_inputs(&draft, &manifest).map_err(manifest_errors)?;
    let sizes = auto_sizes(&draft, &manifest, &inputs).map_err(manifest_errors)?;
    let plan =
        plan(manifest_path, &manifest, overrides, &|spec| sizes.get(&spec.name.value).copied())
            .map_err(manifest_errors)?;
    check_fits(&plan, &inputs).map_err(manifest_errors)?;
    Ok((plan, inputs))
}

pub fn run_build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let overrides = Overrides {
        source_date_epoch: args.source_date_epoch.or(super::source_date_epoch_from_env()?),
        format: args.format,
    };
    let (plan, inputs) = prepare(&args.manifest, &overrides)?;
    if !args.quiet {
        for warning in &inputs.warnings {
            eprintln!("warning: {warning}");
        }
    }
    let options = BuildOptions { image_sha256: args.sha256 };
    let output = build(&plan, &inputs, &args.out, options)
        .with_context(|| format!("building {}", args.manifest.display()))?;
    if args.json {
        print!("{}", output.report.to_json());
    }
    if !args.quiet {
        eprintln!(
            "wrote {} ({} virtual, {} stored) and {} in {:.1?}",
            output.image.display(),
            Size(output.report.image.virtual_size),
            Size(output.report.image.stored_bytes),
            output.report_path.display(),
            started.elapsed()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let overrides =
        Overrides { source_date_epoch: super::source_date_epoch_from_env()?, format: None };
    let (plan, _) = prepare(&args.manifest, &overrides)?;
    println!(
        "{}: valid; {} partitions on a {} disk",
        args.manifest.display(),
        plan.partitions.len(),
        Size(plan.disk_size)
    );
    for p in &plan.partitions {
        println!(
            "  {:>3}  {:<12} {:>10}  at {:>10}  {:<5} {}",
            p.index,
            p.name,
            Size(p.size).to_string(),
            Size(p.offset).to_string(),
            p.filesystem.name(),
            if p.read_only { "read-only" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
