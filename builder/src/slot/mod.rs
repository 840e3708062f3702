//! Offline A/B slot control: reads and edits the GRUB environment block
//! (`EFI/abforge/grubenv`, the selector's state; see `abforge_kernels::grub`) inside
//! a raw, fixed VHD or VHDX image, in place.
//!
//! Finding the block: the GPT is read, the ESPs (type `esp`) are tried in entry
//! order, and the first whose FAT file system holds `EFI/abforge/grubenv` is used;
//! that is the ESP whose selector GRUB runs, since abforge writes the selector and the
//! block together and GRUB's `search --file` takes the first ESP in device order.
//! The other ESPs are never touched.
//!
//! Editing it as GRUB's `save_env` does: the file's bytes are located through its
//! directory entry and cluster chain ([`fat`]), read, changed with
//! [`abforge_kernels::grub::edit_envblk`] (a block of the same size, other variables
//! kept), and written back over the same sectors. The FAT, directory entries and
//! timestamps are not changed, so the file system stays consistent; in a VHDX only
//! payload bytes change (see [`crate::container::inplace`]). The image is opened
//! read-write only for `set-next` and `commit`, and flushed (`fsync`) at the end.
//!
//! The image's slots are the menu entries of the selector `EFI/abforge/select.cfg` on
//! the same ESP (its `--id abforge_<slot>` entries, as
//! [`abforge_kernels::grub::render_selector`] writes them): exactly the slots GRUB can
//! boot. A slot the selector does not know would make it boot its first slot instead,
//! so `set-next` refuses it (exit 2). Without a selector, `status` still works and
//! `set-next` refuses to guess (exit 1).
//!
//! Exit statuses: a request that the image cannot honour as asked (a slot it does not
//! have, `commit` with no slot being tried) is a usage error, 2; an image that cannot be
//! read, has no environment block, or cannot be written is a failure, 1.

pub mod fat;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use abforge_kernels::Slot;
use abforge_kernels::grub::{
    ENVBLK_PATH, ENVBLK_SIGNATURE, EnvEdit, SELECTOR_PATH, SlotState, edit_envblk, parse_envblk,
};
use abforge_partitions::gpt::{PartitionType, ReadAt, read_gpt_report};
use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use crate::container::inplace::{ImageUpdate, InPlaceError, open_for_update};
use crate::container::{ContainerFormat, DiskSource, detect_format, idx, open_image};
use crate::error::UsageError;

use fat::{Extent, FatVolume};

/// Largest environment block accepted (grub-editenv makes 1024 bytes; GRUB accepts
/// any size, and this bound keeps memory small).
pub const MAX_ENVBLK_BYTES: u64 = 64 * 1024;
/// Largest selector read to learn the slots.
const MAX_SELECTOR_BYTES: u64 = 256 * 1024;
/// Version of the `slot status --json` document.
pub const STATUS_JSON_VERSION: u32 = 1;

/// Reads a [`DiskSource`] through the GPT and FAT readers' [`ReadAt`].
struct DiskReadAt<'a, D: DiskSource + ?Sized>(&'a D);

impl<D: DiskSource + ?Sized> ReadAt for DiskReadAt<'_, D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
}

/// Where an image's environment block is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvBlockLocation {
    /// The image as messages name it.
    pub image: String,
    /// The ESP's 1-based GPT entry number.
    pub partition: u32,
    /// The ESP's GPT partition name.
    pub partition_name: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's bytes on the disk, in file order.
    pub extents: Vec<Extent>,
    /// The selector's slots in order, or `None` when the ESP has no selector.
    pub slots: Option<Vec<Slot>>,
}

impl EnvBlockLocation {
    /// "partition 1 'BootEFIA' of disk.vhdx".
    pub fn describe(&self) -> String {
        format!("partition {} '{}' of {}", self.partition, self.partition_name, self.image)
    }
}

/// `ENVBLK_PATH` without its leading slash, as messages show it.
fn envblk_name() -> &'static str {
    ENVBLK_PATH.trim_start_matches('/')
}

/// Finds the environment block of a disk (see the module comment for which ESP);
/// `image` names the disk in messages.
pub fn locate_envblk<D: DiskSource + ?Sized>(
    disk: &D,
    image: &str,
) -> anyhow::Result<EnvBlockLocation> {
    let reader = DiskReadAt(disk);
    let gpt = read_gpt_report(&reader, disk.size())
        .with_context(|| format!("cannot read the partition table of {image}"))?;
    let mut reasons: Vec<String> = Vec::new();
    for (entry, &number) in gpt.layout.entries.iter().zip(&gpt.slots) {
        if entry.type_guid != PartitionType::Esp.guid() {
            continue;
        }
        let esp = format!("partition {number} '{}' of {image}", entry.name);
        let volume = match FatVolume::open(&reader, entry.offset_bytes(), entry.size_bytes()) {
            Ok(volume) => volume,
            Err(err) => {
                reasons.push(format!("{esp}: {err}"));
                continue;
            }
        };
        let file = match volume.find(ENVBLK_PATH) {
            Ok(Some(file)) if !file.is_dir => file,
            Ok(Some(_)) => {
                reasons.push(format!("{esp}: {} is a directory", envblk_name()));
                continue;
            }
            Ok(None) => {
                reasons.push(format!("{esp}: no file {}", envblk_name()));
                continue;
            }
            Err(err) => {
                reasons.push(format!("{esp}: {err}"));
                continue;
            }
        };
        let size = u64::from(file.size);
        // usize always fits in u64 on the 64-bit targets abforge supports.
        if size < ENVBLK_SIGNATURE.len() as u64 || size > MAX_ENVBLK_BYTES {
            bail!(
                "{} on {esp} is {size} bytes, not a GRUB environment block (1024 bytes as grub-editenv makes them, at most {MAX_ENVBLK_BYTES})",
                envblk_name()
            );
        }
        let extents = volume
            .file_extents(&file)
            .with_context(|| format!("cannot find the bytes of {} on {esp}", envblk_name()))?;
        let slots = read_selector_slots(&volume, disk).with_context(|| {
            format!("cannot read {} on {esp}", SELECTOR_PATH.trim_start_matches('/'))
        })?;
        return Ok(EnvBlockLocation {
            image: image.to_string(),
            partition: number,
            partition_name: entry.name.clone(),
            size,
            extents,
            slots,
        });
    }
    let details = if reasons.is_empty() {
        "the partition table has no ESP (EFI system partition)".to_string()
    } else {
        reasons.join("; ")
    };
    Err(anyhow!(details)
        .context(format!("no GRUB environment block ({}) on any ESP of {image}", envblk_name())))
}

/// The selector's slots, or `None` when there is no selector on the volume.
fn read_selector_slots<D: DiskSource + ?Sized>(
    volume: &FatVolume<'_>,
    disk: &D,
) -> anyhow::Result<Option<Vec<Slot>>> {
    let Some(file) = volume.find(SELECTOR_PATH)? else {
        return Ok(None);
    };
    if file.is_dir || u64::from(file.size) > MAX_SELECTOR_BYTES {
        bail!("it is a directory or larger than {MAX_SELECTOR_BYTES} bytes");
    }
    let bytes = read_extents(disk, &volume.file_extents(&file)?)?;
    Ok(Some(selector_slots(&String::from_utf8_lossy(&bytes))))
}

/// The slots of a selector, from its `menuentry ... --id abforge_<slot>` lines, in order.
pub fn selector_slots(selector: &str) -> Vec<Slot> {
    let mut slots: Vec<Slot> = Vec::new();
    for line in selector.lines() {
        let line = line.trim_start();
        if !line.starts_with("menuentry ") {
            continue;
        }
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word != "--id" {
                continue;
            }
            let slot = words
                .next()
                .and_then(|id| id.strip_prefix("abforge_"))
                .and_then(|name| name.parse::<Slot>().ok());
            if let Some(slot) = slot.filter(|slot| !slots.contains(slot)) {
                slots.push(slot);
            }
        }
    }
    slots
}

fn read_extents<D: DiskSource + ?Sized>(disk: &D, extents: &[Extent]) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for extent in extents {
        let start = bytes.len();
        // Extents belong to a file of at most MAX_SELECTOR_BYTES or MAX_ENVBLK_BYTES.
        bytes.resize(start + idx(extent.len), 0);
        disk.read_at(&mut bytes[start..], extent.disk_offset)
            .with_context(|| format!("cannot read byte {} of the disk", extent.disk_offset))?;
    }
    Ok(bytes)
}

/// The A/B state of an image, as `slot status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub version: u32,
    pub image: String,
    pub format: String,
    /// Where the environment block is: the ESP's GPT entry number and name.
    pub partition: u32,
    pub partition_name: String,
    pub envblk_path: String,
    /// The selector's slots; `None` when the ESP has no selector.
    pub slots: Option<Vec<String>>,
    /// The committed slot.
    pub default: String,
    /// The slot to boot once, if any.
    #[serde(rename = "try")]
    pub try_slot: Option<String>,
    /// Whether the selector has started that try (the next boot then returns to the default).
    pub tried: bool,
    /// The slot the next boot starts.
    pub next_boot: String,
    #[serde(skip)]
    pub state: SlotState,
}

impl SlotStatus {
    fn new(
        path: &Path,
        format: ContainerFormat,
        location: &EnvBlockLocation,
        state: SlotState,
    ) -> SlotStatus {
        SlotStatus {
            version: STATUS_JSON_VERSION,
            image: path.display().to_string(),
            format: format.to_string(),
            partition: location.partition,
            partition_name: location.partition_name.clone(),
            envblk_path: envblk_name().to_string(),
            slots: location.slots.as_ref().map(|slots| slots.iter().map(Slot::to_string).collect()),
            default: state.default.to_string(),
            try_slot: state.try_slot.as_ref().map(Slot::to_string),
            tried: state.try_slot.is_some() && state.tried == state.try_slot,
            next_boot: state.next_boot().to_string(),
            state,
        }
    }

    /// The human-readable form of `slot status`.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "image:        {} ({})", self.image, self.format);
        let _ = writeln!(
            out,
            "environment:  {} on partition {} '{}'",
            self.envblk_path, self.partition, self.partition_name
        );
        let slots = match &self.slots {
            Some(slots) => slots.join(" "),
            None => format!("unknown (no {} on this ESP)", SELECTOR_PATH.trim_start_matches('/')),
        };
        let _ = writeln!(out, "slots:        {slots}");
        let _ = writeln!(out, "default:      {}", self.default);
        let try_text = match (&self.try_slot, self.tried) {
            (None, _) => "none".to_string(),
            (Some(slot), false) => format!("{slot} (not booted yet: the next boot tries it once)"),
            (Some(slot), true) => format!(
                "{slot} (booted once, not committed: the next boot returns to {})",
                self.default
            ),
        };
        let _ = writeln!(out, "try:          {try_text}");
        let _ = writeln!(out, "next boot:    {}", self.next_boot);
        if let Some(slots) = &self.slots
            && !slots.contains(&self.next_boot)
        {
            let first = slots.first().map_or("its first slot", String::as_str);
            let _ = writeln!(
                out,
                "note:         the selector has no slot {}: GRUB boots {first} instead",
                self.next_boot
            );
        }
        out
    }
}

/// The state in an environment block. A missing `abforge_default` means the
/// selector's first slot, as in the selector.
fn state_from_block(block: &[u8], location: &EnvBlockLocation) -> anyhow::Result<SlotState> {
    let vars: BTreeMap<String, String> = parse_envblk(block)?;
    let default_set = vars.get(abforge_kernels::grub::VAR_DEFAULT).is_some_and(|v| !v.is_empty());
    let first = match location.slots.as_ref().and_then(|slots| slots.first()) {
        Some(first) => first.clone(),
        None if default_set => Slot::a(), // not used: abforge_default is set
        None => bail!(
            "{} is not set and there is no selector naming the first slot",
            abforge_kernels::grub::VAR_DEFAULT
        ),
    };
    Ok(SlotState::from_env(&vars, &first)?)
}

/// Which ESP holds the block, its bytes, and the state they hold.
fn load<D: DiskSource + ?Sized>(
    disk: &D,
    path: &Path,
) -> anyhow::Result<(EnvBlockLocation, Vec<u8>, SlotState)> {
    let location = locate_envblk(disk, &path.display().to_string())?;
    let block = read_extents(disk, &location.extents)?;
    let state = state_from_block(&block, &location)
        .with_context(|| format!("{} on {} cannot be used", envblk_name(), location.describe()))?;
    Ok((location, block, state))
}

/// `slot status`: the state of an image, read without writing.
pub fn status(path: &Path) -> anyhow::Result<SlotStatus> {
    let format = {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        detect_format(&file).with_context(|| format!("cannot read {}", path.display()))?
    };
    let disk = open_image(path)?;
    let (location, _, state) = load(disk.as_ref(), path)?;
    Ok(SlotStatus::new(path, format, &location, state))
}

/// What an edit did.
#[derive(Clone, Debug)]
pub struct EditOutcome {
    pub before: SlotState,
    pub after: SlotStatus,
    /// False when the block already held the new state (nothing was written).
    pub written: bool,
}

/// `slot set-next`: marks `slot` to be booted once at the next boot.
pub fn set_next(path: &Path, slot: &Slot) -> anyhow::Result<EditOutcome> {
    edit(path, |location, state| {
        match &location.slots {
            Some(slots) if slots.contains(slot) => {}
            Some(slots) => {
                let names: Vec<String> = slots.iter().map(Slot::to_string).collect();
                return Err(UsageError::new(format!(
                    "{} has no slot {slot}: its selector boots slots {}",
                    location.image,
                    names.join(", ")
                ))
                .into());
            }
            None => bail!(
                "cannot check that {} has slot {slot}: there is no {} on {}",
                location.image,
                SELECTOR_PATH.trim_start_matches('/'),
                location.describe()
            ),
        }
        state.set_next(slot.clone());
        Ok(())
    })
}

/// `slot commit`: makes the slot being tried the default.
pub fn commit(path: &Path) -> anyhow::Result<EditOutcome> {
    edit(path, |location, state| {
        state.commit().map_err(|err| UsageError::new(format!("{}: {err}", location.image)))?;
        Ok(())
    })
}

/// Read-modify-write of the environment block of the image at `path`.
fn edit(
    path: &Path,
    change: impl FnOnce(&EnvBlockLocation, &mut SlotState) -> anyhow::Result<()>,
) -> anyhow::Result<EditOutcome> {
    let image = open_for_update(path)?;
    let (location, block, before) = load(image.as_ref(), path)?;
    let mut state = before.clone();
    change(&location, &mut state)?;
    let mut vars = BTreeMap::new();
    state.to_env(&mut vars);
    let edits: Vec<EnvEdit> =
        vars.into_iter().map(|(name, value)| EnvEdit::Set(name, value)).collect();
    let new_block = edit_envblk(&block, &edits)
        .with_context(|| format!("cannot rewrite {} on {}", envblk_name(), location.describe()))?;
    let written = new_block != block;
    if written {
        write_block(image.as_ref(), &location, &new_block)?;
        let check = read_extents(image.as_ref(), &location.extents)?;
        if check != new_block {
            bail!("{} on {} does not read back as written", envblk_name(), location.describe());
        }
    }
    let after = SlotStatus::new(path, image.format(), &location, state);
    Ok(EditOutcome { before, after, written })
}

/// Writes `block` over the file's extents: every extent is checked first, so an
/// extent that cannot be written in place leaves the image untouched.
fn write_block(
    image: &dyn ImageUpdate,
    location: &EnvBlockLocation,
    block: &[u8],
) -> anyhow::Result<()> {
    let not_writable = |err: InPlaceError| {
        let what = match err {
            InPlaceError::Unallocated { .. } => {
                "the environment block is in an unallocated VHDX block"
            }
            _ => "the environment block cannot be written in place",
        };
        anyhow::Error::new(err).context(format!(
            "{what} ({} on {})",
            envblk_name(),
            location.describe()
        ))
    };
    for extent in &location.extents {
        image.check_writable(extent.disk_offset, extent.len).map_err(not_writable)?;
    }
    let mut done = 0usize;
    for extent in &location.extents {
        // The extents add up to the block's length.
        let len = idx(extent.len);
        image.write_at(&block[done..done + len], extent.disk_offset).map_err(not_writable)?;
        done += len;
    }
    image.sync().map_err(not_writable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use abforge_kernels::grub::{SelectorConfig, SelectorSlot, render_selector};

    #[test]
    fn selector_slots_come_from_the_rendered_selector() {
        let uuid = |n: u8| abforge_partitions::Guid::from_rfc_bytes([n; 16]);
        let slot = |name: &str| name.parse::<Slot>().unwrap();
        let config = SelectorConfig {
            slots: ["a", "b", "c2"]
                .iter()
                .zip(1u8..)
                .map(|(name, n)| SelectorSlot { slot: slot(name), boot_fs_uuid: uuid(n) })
                .collect(),
            timeout_seconds: 0,
            serial_console: false,
        };
        let text = render_selector(&config).unwrap();
        assert_eq!(selector_slots(&text), vec![slot("a"), slot("b"), slot("c2")]);
        assert_eq!(selector_slots("menuentry x --id other {\n}\nset x=abforge_a\n"), vec![]);
    }

    /// A VHDX whose only stored block is the first MiB; a "block" located in the
    /// third MiB cannot be written in place, and the file is left as it was.
    #[test]
    fn unallocated_vhdx_block_is_refused_before_writing() {
        use crate::container::source::{ComposedDisk, Segment};
        use crate::container::vhd::VhdOptions;
        use crate::container::vhdx::VhdxOptions;
        use crate::container::{write_atomically, write_container};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhdx");
        let disk = ComposedDisk::new(8 << 20, vec![Segment::bytes(0, vec![7; 4096])]).unwrap();
        let ids = |n| abforge_partitions::Guid::from_rfc_bytes([n; 16]);
        let vhdx = VhdxOptions { block_size: 1 << 20, ..VhdxOptions::new(ids(1), ids(2), ids(3)) };
        let vhd = VhdOptions { unique_id: ids(4), timestamp: 0 };
        write_atomically(&path, |out| {
            write_container(ContainerFormat::Vhdx, &disk, out, &vhdx, &vhd)
        })
        .unwrap();
        let before = std::fs::read(&path).unwrap();
        let location = EnvBlockLocation {
            image: "disk.vhdx".into(),
            partition: 1,
            partition_name: "BootEFIA".into(),
            size: 1024,
            // The first half is stored (block 0), the second is not (block 2).
            extents: vec![
                Extent { disk_offset: 512, len: 512 },
                Extent { disk_offset: 2 << 20, len: 512 },
            ],
            slots: None,
        };
        let image = open_for_update(&path).unwrap();
        let err = write_block(image.as_ref(), &location, &[b'#'; 1024]).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("the environment block is in an unallocated VHDX block (EFI/abforge/grubenv on partition 1 'BootEFIA' of disk.vhdx)"),
            "{text}"
        );
        assert!(text.contains("payload block 2"), "{text}");
        drop(image);
        assert!(std::fs::read(&path).unwrap() == before);
    }
}
