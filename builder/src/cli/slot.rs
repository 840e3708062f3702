//! `abforge slot status|set-next|commit IMAGE`: offline A/B slot control, editing the
//! GRUB environment block of a raw, VHD or VHDX image in place (see `crate::slot`).

use std::path::PathBuf;
use std::process::ExitCode;

use abforge_kernels::Slot;

use crate::slot;

/// Offline A/B slot control: show or change which slot the image boots.
#[derive(Debug, clap::Args)]
pub struct SlotArgs {
    #[command(subcommand)]
    pub command: SlotCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SlotCommand {
    /// Show the default slot, the slot to try once (if any) and the slot the next boot starts.
    Status {
        /// A raw disk, a VHDX or a fixed VHD.
        image: PathBuf,
        /// Print one JSON document on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Mark SLOT to be booted once at the next boot; without `commit`, the boot after
    /// returns to the default slot.
    SetNext {
        /// A raw disk, a VHDX or a fixed VHD; edited in place.
        image: PathBuf,
        /// One of the image's slots (`a`, `b`).
        slot: Slot,
    },
    /// Make the slot being tried the default slot.
    Commit {
        /// A raw disk, a VHDX or a fixed VHD; edited in place.
        image: PathBuf,
    },
}

pub fn run(args: SlotArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SlotCommand::Status { image, json } => {
            let status = slot::status(&image)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
        }
        SlotCommand::SetNext { image, slot } => {
            let outcome = slot::set_next(&image, &slot)?;
            let unchanged = if outcome.written { "" } else { " (already so: nothing written)" };
            eprintln!(
                "{}: slot {slot} will be tried once at the next boot{unchanged}; without `abforge slot commit` the boot after returns to slot {}",
                image.display(),
                outcome.after.default
            );
        }
        SlotCommand::Commit { image } => {
            let outcome = slot::commit(&image)?;
            let booted = if outcome.before.tried == outcome.before.try_slot {
                ""
            } else {
                " (it had not been booted yet)"
            };
            eprintln!(
                "{}: slot {} is now the default slot{booted}",
                image.display(),
                outcome.after.default
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
