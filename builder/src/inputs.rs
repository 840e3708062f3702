//! The checks of a plan that need the disk, run before any byte is written: every
//! source exists and can be read, `size: auto` partitions are measured, and every
//! file system is big enough for its contents. The trees loaded here are the ones
//! the build writes, so each source is read once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use abforge_partitions::tree::FileTree;
use abforge_partitions::{ext4, fat};

use crate::boot::{BootPayload, prepare_boot};
use crate::manifest::{
    FilesystemKind, Manifest, ManifestError, Size, SizeSpec, SourceLocation, Spanned, VerityMode,
    location_of,
};
use crate::plan::{ALIGNMENT, Contents, Plan, PlannedPartition, size_with_appended_tree};
use crate::profile::config::SystemConfig;
use crate::profile::{ProfileContext, compose};
use crate::source::{SourceOptions, load_source};

/// Where the running system mounts the Data and Log partitions.
pub const DATA_MOUNT: &str = "/var";
pub const LOG_MOUNT: &str = "/logs";

/// Room added to a `size: auto` file system when the manifest gives no `headroom`.
pub const DEFAULT_HEADROOM: u64 = 16 << 20;

/// The file trees of a build.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The root tree (`rootfs.source`), shared by every slot's root partition.
    pub rootfs: Option<FileTree>,
    /// Directory contents, by GPT index.
    pub trees: BTreeMap<u32, FileTree>,
    /// The initial content of the Data partition (the root's `/var` and the
    /// overlay directories), when the manifest has a `system:` profile.
    pub data: Option<FileTree>,
    /// Things the user should know that do not stop the build.
    pub warnings: Vec<String>,
    /// The boot chain, when the manifest has `boot:`.
    pub boot: Option<BootPayload>,
}

impl Inputs {
    /// The tree a partition's file system is made from; `None` for an empty one.
    pub fn tree_for(&self, partition: &PlannedPartition) -> Option<&FileTree> {
        if partition.contents.is_none() && partition.mount.as_deref() == Some(DATA_MOUNT) {
            return self.data.as_ref();
        }
        match partition.contents.as_ref()? {
            Contents::Rootfs => self.rootfs.as_ref(),
            Contents::Directory(_) => self.trees.get(&partition.index),
            Contents::Boot => None,
        }
    }
}

fn error(location: &SourceLocation, message: String) -> ManifestError {
    ManifestError { location: Some(location.clone()), message }
}

/// Loads the root tree and every partition's directory contents.
pub fn load_inputs(plan: &Plan, manifest: &Manifest) -> Result<Inputs, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let mut inputs = Inputs::default();
    let base = SourceOptions {
        source_date_epoch: Some(plan.source_date_epoch),
        ..SourceOptions::default()
    };
    if let Some((path, location)) = &plan.rootfs {
        if !path.exists() {
            errors.push(error(location, format!("root source {} does not exist", path.display())));
        } else {
            let owner = manifest.rootfs.as_ref().and_then(|r| r.owner.clone());
            let options = SourceOptions { owner, ..base.clone() };
            match load_source(path, &options) {
                Ok(tree) => inputs.rootfs = Some(tree),
                Err(err) => errors.push(error(
                    location,
                    format!("cannot read the root source {}: {err:#}", path.display()),
                )),
            }
        }
    }
    if let Some(system) = &manifest.system
        && let Err(mut problems) = apply_profile(plan, system, &mut inputs)
    {
        errors.append(&mut problems);
    }
    for partition in &plan.partitions {
        let Some(contents) = &partition.contents else { continue };
        let location = partition.contents_location.as_ref().unwrap_or(&partition.location);
        match contents {
            Contents::Rootfs => {}
            Contents::Boot if manifest.boot.is_none() => errors.push(error(
                location,
                format!(
                    "partition '{}' takes the boot contents but the manifest has no boot: section",
                    partition.name
                ),
            )),
            Contents::Boot => {}
            Contents::Directory(path) => {
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
                match load_source(path, &base) {
                    Ok(tree) => {
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
        }
    }
    if let Some(spec) = &manifest.boot
        && errors.is_empty()
    {
        match prepare_boot(plan, spec, inputs.rootfs.as_ref()) {
            Ok(payload) => {
                if !payload.skipped_modules.is_empty() {
                    inputs.warnings.push(format!(
                        "the kernel has no {} module: the initramfs goes without",
                        payload.skipped_modules.join(", ")
                    ));
                }
                inputs.boot = Some(payload);
            }
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    if errors.is_empty() { Ok(inputs) } else { Err(errors) }
}

/// Composes the security profile over the root tree: the root gains the
/// generated files and loses its `/var`, which becomes the Data partition's tree.
fn apply_profile(
    plan: &Plan,
    system: &Spanned<SystemConfig>,
    inputs: &mut Inputs,
) -> Result<(), Vec<ManifestError>> {
    let at = |message: String| vec![error(&location_of(&plan.manifest_path, system), message)];
    let base_dir = plan.manifest_path.parent().unwrap_or(Path::new("."));
    let problems = system.value.validate(base_dir);
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| ManifestError {
                location: p.location.map(|(line, column)| SourceLocation {
                    file: plan.manifest_path.clone(),
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                    column: u32::try_from(column).unwrap_or(u32::MAX),
                }),
                message: format!("system: {}", p.message),
            })
            .collect());
    }
    let find = |mount: &str| plan.partitions.iter().find(|p| p.mount.as_deref() == Some(mount));
    let data = find(DATA_MOUNT).ok_or_else(|| {
        at(format!("system: the profile puts /var and the overlays on a Data partition, but no partition has 'mount: {DATA_MOUNT}'"))
    })?;
    if data.filesystem != FilesystemKind::Ext4 || data.contents.is_some() {
        return Err(at(format!(
            "system: the Data partition '{}' (mount {DATA_MOUNT}) must be ext4 without contents: its contents come from the root's /var",
            data.name
        )));
    }
    let log = find(LOG_MOUNT).ok_or_else(|| {
        at(format!("system: no partition has 'mount: {LOG_MOUNT}' for the Log partition"))
    })?;
    let mut root = inputs
        .rootfs
        .take()
        .ok_or_else(|| at("system: a profile needs the root tree (rootfs.source)".to_string()))?;
    let context = ProfileContext::new(
        &plan.name,
        &plan.version,
        log.uuid,
        data.uuid,
        plan.source_date_epoch,
        base_dir,
    );
    let summary =
        compose(&mut root, &system.value, &context).map_err(|err| at(format!("{err:#}")))?;
    inputs.warnings.extend(summary.warnings);
    inputs.rootfs = Some(root);
    inputs.data = Some(summary.data);
    Ok(())
}

/// The smallest file system (bytes) that holds a partition's contents.
fn needed_fs_size(
    plan: &Plan,
    partition: &PlannedPartition,
    inputs: &Inputs,
) -> Result<u64, String> {
    let placeholder = crate::boot::placeholder_verity(plan, partition);
    let tree = crate::build::partition_tree(plan, inputs, partition, placeholder.as_ref())
        .map_err(|e| format!("partition '{}': {e:#}", partition.name))?;
    let tree = tree.as_ref();
    match partition.filesystem {
        FilesystemKind::Vfat => {
            fat::min_fat_size(tree).map_err(|e| format!("partition '{}': {e}", partition.name))
        }
        FilesystemKind::Ext4 => ext4::min_size(tree, &crate::build::ext4_options(plan, partition))
            .map_err(|e| format!("partition '{}': {e}", partition.name)),
        FilesystemKind::None => Ok(0),
    }
}

/// Sizes for the `size: auto` partitions, by manifest name (both slots of a
/// per-slot entry get the same size, so either can hold the other's image).
pub fn auto_sizes(
    plan: &Plan,
    manifest: &Manifest,
    inputs: &Inputs,
) -> Result<HashMap<String, u64>, Vec<ManifestError>> {
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut errors = Vec::new();
    for spec in &manifest.partitions.value {
        if spec.size.value != SizeSpec::Auto {
            continue;
        }
        let headroom = spec.headroom.as_ref().map_or(DEFAULT_HEADROOM, |h| h.value.0);
        for partition in plan.partitions.iter().filter(|p| p.template == spec.name.value) {
            match needed_fs_size(plan, partition, inputs) {
                Ok(needed) => {
                    let fs = (needed + headroom).div_ceil(4096) * 4096;
                    let size = match partition.verity {
                        VerityMode::Appended => size_with_appended_tree(fs),
                        VerityMode::Partition | VerityMode::None => fs,
                    };
                    let size = size.div_ceil(ALIGNMENT) * ALIGNMENT;
                    let entry = sizes.entry(spec.name.value.clone()).or_insert(size);
                    *entry = (*entry).max(size);
                }
                Err(message) => errors.push(error(&partition.size_location, message)),
            }
        }
    }
    if errors.is_empty() { Ok(sizes) } else { Err(errors) }
}

/// Checks that every file system holds its contents.
pub fn check_fits(plan: &Plan, inputs: &Inputs) -> Result<(), Vec<ManifestError>> {
    let errors: Vec<ManifestError> = plan
        .partitions
        .iter()
        .filter(|p| p.filesystem != FilesystemKind::None)
        .filter_map(|partition| match needed_fs_size(plan, partition, inputs) {
            Err(message) => Some(error(&partition.size_location, message)),
            Ok(needed) if needed > partition.fs_size => Some(error(
                &partition.size_location,
                format!(
                    "partition '{}' ({}{}) is too small for its contents, which need at least {}",
                    partition.name,
                    Size(partition.size),
                    if partition.fs_size < partition.size {
                        format!(", {} of it for the file system", Size(partition.fs_size))
                    } else {
                        String::new()
                    },
                    Size(needed.div_ceil(ALIGNMENT) * ALIGNMENT)
                ),
            )),
            Ok(_) => None,
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}
