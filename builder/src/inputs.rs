//! The checks of a plan that need the disk, run before any byte is written: every
//! source exists and can be read, and every file system is big enough for its
//! contents. The trees loaded here are the ones the build writes, so each source
//! is read once.

use std::collections::BTreeMap;
use std::path::Path;

use abforge_partitions::fat;
use abforge_partitions::tree::FileTree;

use crate::manifest::{FilesystemKind, ManifestError, Size, SourceLocation};
use crate::plan::{Contents, Plan, PlannedPartition};
use crate::source::{SourceOptions, load_source};

/// File trees for the partitions that have contents, by GPT index.
#[derive(Debug, Default)]
pub struct Inputs {
    pub trees: BTreeMap<u32, FileTree>,
}

fn error(location: &SourceLocation, message: String) -> ManifestError {
    ManifestError { location: Some(location.clone()), message }
}

/// Loads every partition's contents and checks that each fits.
pub fn load_inputs(plan: &Plan) -> Result<Inputs, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let mut inputs = Inputs::default();
    if let Some((path, location)) = &plan.rootfs
        && !path.exists()
    {
        errors.push(error(location, format!("root source {} does not exist", path.display())));
    }
    let options = SourceOptions {
        source_date_epoch: Some(plan.source_date_epoch),
        ..SourceOptions::default()
    };
    for partition in &plan.partitions {
        let Some(contents) = &partition.contents else { continue };
        let location = partition.contents_location.as_ref().unwrap_or(&partition.location);
        let path = match contents {
            Contents::Directory(path) => path,
            Contents::Rootfs | Contents::Boot => {
                errors.push(error(
                    location,
                    format!(
                        "partition '{}': {} contents are not supported yet for {}",
                        partition.name,
                        if *contents == Contents::Rootfs { "rootfs" } else { "boot" },
                        partition.filesystem.name()
                    ),
                ));
                continue;
            }
        };
        if !path.exists() {
            errors.push(error(
                location,
                format!(
                    "partition '{}': contents {} does not exist",
                    partition.name,
                    path.display()
                ),
            ));
            continue;
        }
        match load_source(path, &options) {
            Ok(tree) => {
                if let Err(message) = check_fits(partition, &tree) {
                    errors.push(error(&partition.size_location, message));
                }
                inputs.trees.insert(partition.index, tree);
            }
            Err(err) => errors.push(error(
                location,
                format!(
                    "partition '{}': cannot read contents {}: {err:#}",
                    partition.name,
                    path.display()
                ),
            )),
        }
    }
    if errors.is_empty() { Ok(inputs) } else { Err(errors) }
}

/// Whether `tree` fits in the partition's file system.
fn check_fits(partition: &PlannedPartition, tree: &FileTree) -> Result<(), String> {
    let needed = match partition.filesystem {
        FilesystemKind::Vfat => {
            fat::min_fat_size(tree).map_err(|e| format!("partition '{}': {e}", partition.name))?
        }
        FilesystemKind::Ext4 | FilesystemKind::None => return Ok(()),
    };
    if needed > partition.size {
        return Err(format!(
            "partition '{}' ({}) is too small for its contents, which need at least {}",
            partition.name,
            Size(partition.size),
            Size(needed.div_ceil(1 << 20) << 20)
        ));
    }
    Ok(())
}

/// The directory a manifest's relative paths are resolved against.
pub fn base_dir(manifest_path: &Path) -> &Path {
    manifest_path.parent().unwrap_or(Path::new("."))
}
