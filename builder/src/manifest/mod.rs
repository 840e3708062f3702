//! The manifest: one YAML file describing the whole A/B image (DESIGN.md,
//! "Manifest"). Parsing is strict: unknown keys, wrong types and bad sizes are
//! errors naming the file, line and column.
//!
//! YAML crate: `serde_yaml` is deprecated and unmaintained, and its forks either
//! carry advisories (`serde_yml`) or keep its weak error locations. `serde-saphyr`
//! is maintained, panic-free on hostile input, reports line and column for every
//! error, and offers `Spanned<T>` so checks made after parsing (overlaps,
//! duplicate names) can point at the line too.

pub mod size;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use serde_saphyr::Spanned;

pub use size::{Size, SizeSpec};

/// A location in a manifest, for messages: `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLocation {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A manifest error: what is wrong and, where known, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub location: Option<SourceLocation>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{location}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Output container of `build`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Dynamic VHDX (Hyper-V, EFLOW): zero blocks take no space.
    Vhdx,
    /// Fixed VHD (Azure): the raw disk, rounded up to a whole MiB, plus a footer.
    Vhd,
    /// Sparse raw disk.
    Raw,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Raw => "raw",
        }
    }
}

/// Options of the VHDX container.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhdxSpec {
    /// Payload block size: a power of two from 1MiB to 256MiB (default 32MiB).
    #[serde(default)]
    pub block_size: Option<Spanned<Size>>,
}

/// The file system a partition is formatted with.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesystemKind {
    Vfat,
    Ext4,
    /// Left unformatted (all zero), like EFLOW's `Unused` partition.
    None,
}

impl FilesystemKind {
    pub fn name(self) -> &'static str {
        match self {
            FilesystemKind::Vfat => "vfat",
            FilesystemKind::Ext4 => "ext4",
            FilesystemKind::None => "none",
        }
    }
}

/// Where a root partition's dm-verity hash tree goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerityMode {
    /// After the file system, in the same partition.
    Appended,
    /// In the paired DPS root-verity partition.
    Partition,
    None,
}

/// The whole manifest as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Image name: names the output files and becomes IMAGE_ID.
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    /// Every GUID, UUID, salt and volume id derives from it.
    pub seed: Spanned<String>,
    /// Timestamp for every file and header; SOURCE_DATE_EPOCH and
    /// `--source-date-epoch` override it.
    #[serde(default)]
    pub source_date_epoch: Option<Spanned<i64>>,
    #[serde(default)]
    pub format: Option<Spanned<ImageFormat>>,
    /// Slot names, in order (default `[a, b]`).
    #[serde(default)]
    pub slots: Option<Spanned<Vec<Spanned<String>>>>,
    /// Whole-disk size; derived from the partitions when absent.
    #[serde(default)]
    pub disk_size: Option<Spanned<Size>>,
    #[serde(default)]
    pub vhdx: Option<VhdxSpec>,
    #[serde(default)]
    pub rootfs: Option<RootfsSpec>,
    pub partitions: Spanned<Vec<PartitionSpec>>,
    /// The security profile baked into the root (overlays, firewall, SSH,
    /// identity, extra files); absent means the root is written as given.
    #[serde(default)]
    pub system: Option<Spanned<crate::profile::config::SystemConfig>>,
    /// The boot chain: kernel, initramfs, GRUB and the A/B selector.
    #[serde(default)]
    pub boot: Option<crate::boot::BootSpec>,
}

/// The root file-system source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// A directory or a tar archive, relative to the manifest.
    pub source: Spanned<String>,
    /// Owners given to the root's entries instead of the source's, e.g.
    /// `{ uid: 0, gid: 0 }` so a CI job running as any user builds a root-owned tree.
    #[serde(default)]
    pub owner: Option<crate::source::OwnerMapping>,
}

/// One `partitions:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// GPT partition name; `{SLOT}` is replaced by the slot letter (upper case)
    /// for `per_slot` entries.
    pub name: Spanned<String>,
    #[serde(default)]
    pub per_slot: bool,
    /// A name (`esp`, `root`, `root-verity`, `root-verity-sig`, `xbootldr`,
    /// `var`, `linux`) or a GUID.
    #[serde(rename = "type")]
    pub type_: Spanned<String>,
    pub size: Spanned<SizeSpec>,
    /// Explicit start within the disk; otherwise right after the previous one.
    #[serde(default)]
    pub offset: Option<Spanned<Size>>,
    #[serde(default)]
    pub filesystem: Option<Spanned<FilesystemKind>>,
    /// `rootfs` (the root source), `boot` (the boot payload), or a directory
    /// relative to the manifest (write `./boot` for a directory named boot).
    #[serde(default)]
    pub contents: Option<Spanned<String>>,
    /// File-system label (defaults to the partition name, cut to fit).
    #[serde(default)]
    pub label: Option<Spanned<String>>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub verity: Option<Spanned<VerityMode>>,
    /// Where the running system mounts it (documentation, fstab).
    #[serde(default)]
    pub mount: Option<Spanned<String>>,
    /// ext4 only: write a journal (default: yes unless `read_only`).
    #[serde(default)]
    pub journal: Option<bool>,
    /// With `size: auto`: room added to what the contents need (default 16MiB).
    #[serde(default)]
    pub headroom: Option<Spanned<Size>>,
    /// With `verity: partition`: which slots get the root at the first build.
    /// `first-slot` (the default) leaves the other slots' root, hash and Boot
    /// partitions empty and named `_empty`, as systemd-sysupdate does, since a
    /// disk cannot hold two partitions with the UUIDs the root hash gives;
    /// `every-slot` writes them all, the other slots keeping seeded UUIDs.
    #[serde(default)]
    pub populate: Option<Spanned<Populate>>,
}

/// See [`PartitionSpec::populate`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Populate {
    FirstSlot,
    EverySlot,
}

/// Reads and parses a manifest file.
pub fn load(path: &Path) -> Result<(Manifest, String), ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        location: None,
        message: format!("cannot read manifest {}: {e}", path.display()),
    })?;
    let manifest = parse(path, &text)?;
    Ok((manifest, text))
}

/// Parses manifest text; `path` is used in messages only.
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    serde_saphyr::from_str::<Manifest>(text).map_err(|err| {
        let location = err.location().map(|l| SourceLocation {
            file: path.to_path_buf(),
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        });
        let mut message = plain_message(&err);
        if let Some(loc) = &location
            && let Some((key, value)) = key_and_value_at(text, loc.line, loc.column)
            && !message.contains(&format!("'{key}'"))
            && (message.starts_with("invalid") || message.starts_with("expected"))
        {
            message = format!("{} for '{key}' (found '{value}')", readable_type_error(&message));
        }
        ManifestError { location, message }
    })
}

/// The key whose value starts at (line, column), and that value's text, read
/// from the manifest text, so a type error can say which field it is about.
fn key_and_value_at(text: &str, line: u32, column: u32) -> Option<(String, String)> {
    let line_text = text.lines().nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let chars: Vec<char> = line_text.chars().collect();
    let col = usize::try_from(column).ok()?.checked_sub(1)?.min(chars.len());
    let before: String = chars[..col].iter().collect();
    let value: String =
        chars[col..].iter().take_while(|c| !matches!(c, ',' | '}' | ']' | '#')).collect();
    // The key is the last `word:` before the value (block or flow mapping).
    let key_end = before.trim_end().strip_suffix(':')?;
    let key: String = key_end
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then(|| (key, value.trim().to_string()))
}

/// serde-saphyr's terse type errors in words: "invalid i64" → "expected a whole number".
fn readable_type_error(message: &str) -> String {
    match message {
        "invalid i64" | "invalid u64" | "invalid u32" | "invalid i32" => {
            "expected a whole number".to_string()
        }
        "invalid bool" => "expected true or false".to_string(),
        other => other.to_string(),
    }
}

/// The parser's message without its own "error: line N column M:" prefix and
/// snippet, since we print the location ourselves.
fn plain_message(err: &serde_saphyr::Error) -> String {
    let text = err.without_snippet().to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.find(": ") {
        Some(i) if first.starts_with("line ") => &first[i + 2..],
        _ => first,
    };
    // Some messages repeat the location at their end.
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    };
    message.replace('`', "'")
}

/// The location of a spanned manifest value, for messages.
pub fn location_of<T>(path: &Path, spanned: &Spanned<T>) -> SourceLocation {
    SourceLocation {
        file: path.to_path_buf(),
        line: u32::try_from(spanned.referenced.line()).unwrap_or(u32::MAX),
        column: u32::try_from(spanned.referenced.column()).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Manifest, ManifestError> {
        parse(Path::new("m.yaml"), text)
    }

    const MINIMAL: &str = "name: demo\nversion: '1'\nseed: s\npartitions:\n  - { name: ESP, type: esp, size: 8MiB, filesystem: vfat }\n";

    #[test]
    fn parses_a_minimal_manifest() {
        let m = parse_text(MINIMAL).unwrap();
        assert_eq!(m.name.value, "demo");
        assert_eq!(m.partitions.value.len(), 1);
        assert_eq!(m.partitions.value[0].size.value, SizeSpec::Fixed(Size(8 << 20)));
    }

    #[test]
    fn unknown_keys_name_line_and_column() {
        let text = MINIMAL.replace("seed: s\n", "seed: s\ncolour: blue\n");
        let err = parse_text(&text).unwrap_err();
        assert_eq!(err.location.as_ref().map(|l| (l.line, l.column)), Some((4, 1)));
        assert!(err.to_string().starts_with("m.yaml:4:1: unknown field 'colour'"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_and_value() {
        let text = MINIMAL.replace("seed: s\n", "seed: s\nsource_date_epoch: yesterday\n");
        let err = parse_text(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "m.yaml:4:20: expected a whole number for 'source_date_epoch' (found 'yesterday')"
        );
        let text = MINIMAL.replace("filesystem: vfat", "filesystem: vfat, read_only: maybe");
        let err = parse_text(&text).unwrap_err().to_string();
        assert!(err.contains("'read_only' (found 'maybe')"), "{err}");
    }

    #[test]
    fn bad_sizes_are_explained() {
        let text = MINIMAL.replace("8MiB", "8 megs");
        let err = parse_text(&text).unwrap_err();
        assert!(err.to_string().contains("'8 megs' is not a size"), "{err}");
        assert_eq!(err.location.map(|l| l.line), Some(5));
    }
}
