//! Command-line interface (the contract in DESIGN.md). Doc comments are the help text.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod build;
pub mod inspect;
pub mod mkfs;
pub mod verify;

use crate::error::{UsageError, exit_code_for, report};

pub mod convert;
pub mod slot;
pub mod verity;

/// Build immutable A/B operating-system disk images from one YAML manifest.
#[derive(Debug, Parser)]
#[command(name = "abforge", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(build::BuildArgs),
    Validate(build::ValidateArgs),
    Inspect(inspect::InspectArgs),
    Verify(verify::VerifyArgs),
    Mkfs(mkfs::MkfsArgs),
    /// Convert a disk image between raw, VHDX and fixed VHD.
    Convert(convert::ConvertArgs),
    /// dm-verity hash trees, byte-identical to `veritysetup format` / `verify`.
    Verity(verity::VerityArgs),
    Slot(slot::SlotArgs),
}

/// Parses the arguments, runs the subcommand and turns its result into an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            exit_code_for(&err)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Build(args) => build::run_build(args),
        Command::Validate(args) => build::run_validate(args),
        Command::Inspect(args) => inspect::run_inspect(args),
        Command::Verify(args) => verify::run(args),
        Command::Mkfs(args) => mkfs::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Verity(args) => verity::run(args),
        Command::Slot(args) => slot::run(args),
    }
}

/// SOURCE_DATE_EPOCH from the environment, if set; a value that is not a number
/// of seconds is a usage error.
pub(crate) fn source_date_epoch_from_env() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if !text.is_empty() => text.trim().parse().map(Some).map_err(|_| {
            UsageError::new(format!("SOURCE_DATE_EPOCH='{text}' is not a number of seconds")).into()
        }),
        _ => Ok(None),
    }
}
