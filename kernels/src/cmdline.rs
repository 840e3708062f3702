//! Kernel command lines: composition, validation, and the root/verity parameters.
//!
//! Follows the kernel's own splitting rules (`next_arg()` in `lib/cmdline.c`, Linux
//! 6.1): parameters are separated by white space; a double quote toggles quoting, so
//! `key="a b"` and `"key=a b"` both give the key `key` and the value `a b`; there is
//! no escape character, so a value can never contain a double quote. The whole line,
//! with its terminating NUL, must fit in `COMMAND_LINE_SIZE` (2048 bytes on x86-64).
//!
//! Supported subset: parameters are `key` or `key=value`; a value is written quoted
//! when it contains a space. Refused: double quotes, control characters (tabs,
//! newlines) and non-ASCII bytes in keys, control characters in values, and `--`
//! (the start of init's own arguments, which abforge does not use). Keys compare
//! with `-` and `_` as equal, as the kernel and systemd do, so `dm-mod.x` and
//! `dm_mod.x` are the same key. A key may appear once unless it is on the line's
//! allow-list of repeatable keys (`console` by default: each one adds a console).
//!
//! Those refusals are for lines abforge composes ([`Cmdline`], [`split_kernel_args`]).
//! A line the kernel booted with is read as the kernel reads it
//! ([`split_booted_args`], [`parse_abforge_params`]): up to `--`, and a word abforge
//! would refuse is skipped rather than stopping the boot, unless it is an `abforge.*`
//! parameter.
//!
//! Two families of generated parameters live here:
//!
//! - [`InitParams`]: the `abforge.*` parameters read by abforge's own init, with the
//!   renderer ([`InitParams::to_params`]) and the parser ([`parse_abforge_params`]) in
//!   one place, so the builder and the init cannot drift apart. The names are listed
//!   on [`InitParams`].
//! - the same root description for a systemd initrd ([`RootStyle::SystemdExplicit`],
//!   [`RootStyle::SystemdRootHash`]): `roothash=`, `systemd.verity_root_data=`,
//!   `systemd.verity_root_hash=`, `systemd.verity_root_options=` as documented in
//!   systemd-veritysetup-generator(8).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use abforge_partitions::Guid;

use crate::slot::{ParseSlotError, Slot};

/// The kernel's `COMMAND_LINE_SIZE` on x86-64: the longest command line including its
/// terminating NUL.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// Keys that may appear more than once by default.
pub const DEFAULT_REPEATABLE: &[&str] = &["console"];

/// Why a command line or one of its parameters was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel parameter name '{key}' is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("the value of kernel parameter '{key}' is invalid: {reason}")]
    InvalidValue { key: String, reason: &'static str },
    #[error("kernel parameter '{key}' is given twice (only {allowed} may repeat)")]
    Duplicate { key: String, allowed: String },
    #[error(
        "the kernel command line is {length} bytes with its terminating NUL, over the limit of {limit} bytes"
    )]
    TooLong { length: usize, limit: usize },
    #[error("the kernel command line has an unterminated double quote in '{0}'")]
    UnterminatedQuote(String),
}

/// One kernel parameter: `key` or `key=value` (the value may be empty: `key=`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Param {
    key: String,
    value: Option<String>,
}

impl Param {
    /// A parameter without a value (`quiet`, `ro`).
    pub fn flag(key: &str) -> Result<Param, CmdlineError> {
        check_key(key)?;
        Ok(Param { key: key.to_string(), value: None })
    }

    /// A `key=value` parameter.
    pub fn new(key: &str, value: &str) -> Result<Param, CmdlineError> {
        check_key(key)?;
        check_value(key, value)?;
        Ok(Param { key: key.to_string(), value: Some(value.to_string()) })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The key with `-` read as `_`: what duplicates are detected on.
    pub fn normalized_key(&self) -> String {
        normalize_key(&self.key)
    }
}

impl fmt::Display for Param {
    /// The kernel's form: `key`, `key=value`, or `key="value with spaces"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.key),
            Some(value) if value.contains(' ') => write!(f, "{}=\"{value}\"", self.key),
            Some(value) => write!(f, "{}={value}", self.key),
        }
    }
}

fn normalize_key(key: &str) -> String {
    key.replace('-', "_")
}

fn check_key(key: &str) -> Result<(), CmdlineError> {
    let reason = if key.is_empty() {
        "it is empty"
    } else if key == "--" {
        "'--' (arguments for init) is not supported"
    } else if key.contains('=') {
        "it contains '='"
    } else if key.contains('"') {
        "it contains a double quote"
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        "it must be printable ASCII without spaces"
    } else {
        return Ok(());
    };
    Err(CmdlineError::InvalidKey { key: key.to_string(), reason })
}

fn check_value(key: &str, value: &str) -> Result<(), CmdlineError> {
    let reason = if value.contains('"') {
        "it contains a double quote, which the kernel cannot pass"
    } else if value.chars().any(|c| c.is_control()) {
        "it contains a control character (tab, newline ...)"
    } else {
        return Ok(());
    };
    Err(CmdlineError::InvalidValue { key: key.to_string(), reason })
}

/// An ordered kernel command line without duplicate keys (except allowed ones).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cmdline {
    params: Vec<Param>,
    /// Normalized keys that may repeat.
    repeatable: BTreeSet<String>,
}

impl Default for Cmdline {
    fn default() -> Cmdline {
        Cmdline::new()
    }
}

impl Cmdline {
    /// An empty command line on which [`DEFAULT_REPEATABLE`] keys may repeat.
    pub fn new() -> Cmdline {
        Cmdline {
            params: Vec::new(),
            repeatable: DEFAULT_REPEATABLE.iter().map(|k| normalize_key(k)).collect(),
        }
    }

    /// Lets `key` appear more than once from now on.
    pub fn allow_repeated(&mut self, key: &str) {
        self.repeatable.insert(normalize_key(key));
    }

    /// Splits `text` the way the kernel does and adds each parameter in order.
    pub fn parse(text: &str) -> Result<Cmdline, CmdlineError> {
        let mut line = Cmdline::new();
        for param in split_kernel_args(text)? {
            line.push(param)?;
        }
        Ok(line)
    }

    /// Appends a parameter; refuses a second occurrence of a non-repeatable key.
    pub fn push(&mut self, param: Param) -> Result<(), CmdlineError> {
        let normalized = param.normalized_key();
        if !self.repeatable.contains(&normalized)
            && self.params.iter().any(|p| p.normalized_key() == normalized)
        {
            let allowed = if self.repeatable.is_empty() {
                "no key".to_string()
            } else {
                self.repeatable.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            return Err(CmdlineError::Duplicate { key: param.key, allowed });
        }
        self.params.push(param);
        Ok(())
    }

    /// Appends `key=value`.
    pub fn push_value(&mut self, key: &str, value: &str) -> Result<(), CmdlineError> {
        self.push(Param::new(key, value)?)
    }

    /// Appends a flag without a value.
    pub fn push_flag(&mut self, key: &str) -> Result<(), CmdlineError> {
        self.push(Param::flag(key)?)
    }

    /// Appends every parameter of `params` in order.
    pub fn extend<I: IntoIterator<Item = Param>>(&mut self, params: I) -> Result<(), CmdlineError> {
        for param in params {
            self.push(param)?;
        }
        Ok(())
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The first parameter named `key` (with `-` and `_` equal).
    pub fn get(&self, key: &str) -> Option<&Param> {
        let normalized = normalize_key(key);
        self.params.iter().find(|p| p.normalized_key() == normalized)
    }

    /// The line as the kernel receives it, checked against [`COMMAND_LINE_SIZE`].
    pub fn render(&self) -> Result<String, CmdlineError> {
        self.render_with_limit(COMMAND_LINE_SIZE)
    }

    /// The line, checked against `limit` bytes including the terminating NUL.
    pub fn render_with_limit(&self, limit: usize) -> Result<String, CmdlineError> {
        let text = self.params.iter().map(Param::to_string).collect::<Vec<_>>().join(" ");
        let length = text.len().saturating_add(1);
        if length > limit {
            return Err(CmdlineError::TooLong { length, limit });
        }
        Ok(text)
    }
}

/// Splits a command line into parameters with the kernel's rules (see the module
/// comment); the quotes are removed from the values. Every word must be a valid
/// [`Param`]: this is the reading for lines abforge composes.
pub fn split_kernel_args(text: &str) -> Result<Vec<Param>, CmdlineError> {
    split_words(text)?
        .into_iter()
        .map(|(key, value)| match value {
            None => Param::flag(key),
            Some(value) => Param::new(key, value),
        })
        .collect()
}

/// The parameters of a command line the kernel booted with (`/proc/cmdline`), read as
/// the kernel reads them: split like [`split_kernel_args`], up to a `--` word (what
/// follows it is handed to init as arguments, not parameters). A word that could not
/// be a [`Param`] (a double quote inside a value, a control character, a key that is
/// not printable ASCII) is left out instead of refused: it is someone else's, and
/// the boot must not stop over it. Only an unterminated quote is an error.
pub fn split_booted_args(text: &str) -> Result<Vec<Param>, CmdlineError> {
    Ok(booted_words(text)?
        .into_iter()
        .filter_map(|(key, value)| match value {
            None => Param::flag(key).ok(),
            Some(value) => Param::new(key, value).ok(),
        })
        .collect())
}

/// The words of a booted command line up to `--`, unchecked (see [`split_booted_args`]).
fn booted_words(text: &str) -> Result<Vec<(&str, Option<&str>)>, CmdlineError> {
    let mut words = split_words(text)?;
    if let Some(end) = words.iter().position(|word| *word == ("--", None)) {
        words.truncate(end);
    }
    Ok(words)
}

/// Splits a command line into `(key, value)` words with the kernel's rules, quotes
/// removed, nothing else checked.
fn split_words(text: &str) -> Result<Vec<(&str, Option<&str>)>, CmdlineError> {
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(is_kernel_space);
        if rest.is_empty() {
            return Ok(words);
        }
        let mut in_quote = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if is_kernel_space(c) && !in_quote {
                end = i;
                break;
            }
            if c == '"' {
                in_quote = !in_quote;
            }
        }
        let word = &rest[..end];
        rest = &rest[end..];
        if in_quote {
            return Err(CmdlineError::UnterminatedQuote(word.to_string()));
        }
        // The kernel drops a leading quote of the whole word, then a leading quote of
        // the value, and the closing quote at the end of the word.
        let (whole_quoted, body) = match word.strip_prefix('"') {
            Some(inner) => (true, inner),
            None => (false, word),
        };
        words.push(match body.split_once('=') {
            None => {
                let key = if whole_quoted { body.strip_suffix('"').unwrap_or(body) } else { body };
                (key, None)
            }
            Some((key, value)) => {
                let value = match value.strip_prefix('"') {
                    Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
                    None if whole_quoted => value.strip_suffix('"').unwrap_or(value),
                    None => value,
                };
                (key, Some(value))
            }
        });
    }
}

/// White space as the kernel's `isspace()` sees it in a command line.
fn is_kernel_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r')
}

// ---------------------------------------------------------------------------
// Root and verity parameters
// ---------------------------------------------------------------------------

/// Why a set of `abforge.*` parameters (or the values given to build one) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error("kernel parameter {key} is missing")]
    Missing { key: &'static str },
    #[error("kernel parameter {key} is given without abforge.verity.roothash")]
    VerityWithoutRootHash { key: String },
    #[error("unknown kernel parameter {key} (abforge's init knows {known})")]
    Unknown { key: String, known: String },
    #[error("kernel parameter {key}={value} is invalid: {reason}")]
    Invalid { key: String, value: String, reason: String },
    #[error(transparent)]
    Slot(#[from] ParseSlotError),
    #[error(
        "the systemd 'roothash=' form finds the hash tree by partition UUID, so it needs the tree in its own partition (verity: partition), not appended"
    )]
    RootHashNeedsHashPartition,
}

/// A block device as the init or systemd finds it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DeviceRef {
    /// `PARTUUID=<uuid>`: the GPT partition with this unique GUID.
    PartUuid(Guid),
    /// `PARTLABEL=<name>`: the GPT partition with this name.
    PartLabel(String),
    /// `/dev/...`: a device node path.
    Path(String),
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::PartUuid(guid) => write!(f, "PARTUUID={guid}"),
            DeviceRef::PartLabel(label) => write!(f, "PARTLABEL={label}"),
            DeviceRef::Path(path) => f.write_str(path),
        }
    }
}

impl FromStr for DeviceRef {
    type Err = String;

    /// Parses `PARTUUID=...`, `PARTLABEL=...` or `/dev/...`; the error is the reason.
    fn from_str(s: &str) -> Result<DeviceRef, String> {
        if let Some(uuid) = s.strip_prefix("PARTUUID=") {
            // Guids print lowercase; accept uppercase as the kernel does.
            uuid.to_ascii_lowercase()
                .parse::<Guid>()
                .map(DeviceRef::PartUuid)
                .map_err(|e| e.to_string())
        } else if let Some(label) = s.strip_prefix("PARTLABEL=") {
            if label.is_empty() || label.contains([' ', ',', '"']) {
                Err("a partition label must be non-empty, without spaces, commas or quotes"
                    .to_string())
            } else {
                Ok(DeviceRef::PartLabel(label.to_string()))
            }
        } else if s.starts_with("/dev/") && !s.contains([' ', ',', '"']) {
            Ok(DeviceRef::Path(s.to_string()))
        } else {
            Err("expected PARTUUID=<uuid>, PARTLABEL=<name> or /dev/<node>".to_string())
        }
    }
}

/// A hash algorithm dm-verity and veritysetup support.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }
}

impl FromStr for HashAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<HashAlgorithm, String> {
        match s {
            "sha1" => Ok(HashAlgorithm::Sha1),
            "sha256" => Ok(HashAlgorithm::Sha256),
            "sha512" => Ok(HashAlgorithm::Sha512),
            _ => Err("expected sha1, sha256 or sha512".to_string()),
        }
    }
}

/// What dm-verity does when a block of the root does not match its hash
/// (`abforge.verity.oncorruption`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum OnCorruption {
    /// The read fails with EIO: dm-verity's default, no option in the table.
    #[default]
    Eio,
    /// The kernel restarts the machine (table option `restart_on_corruption`), so the
    /// bootloader can fall back to the other slot.
    Restart,
    /// The kernel panics (table option `panic_on_corruption`).
    Panic,
}

impl OnCorruption {
    /// The value of `abforge.verity.oncorruption`.
    pub fn name(self) -> &'static str {
        match self {
            OnCorruption::Eio => "eio",
            OnCorruption::Restart => "restart",
            OnCorruption::Panic => "panic",
        }
    }

    /// The option of the dm-verity table line (verity.rst); `None` for the default.
    pub fn table_option(self) -> Option<&'static str> {
        match self {
            OnCorruption::Eio => None,
            OnCorruption::Restart => Some("restart_on_corruption"),
            OnCorruption::Panic => Some("panic_on_corruption"),
        }
    }

    /// The option of `systemd.verity_root_options` (veritytab(5)); `None` for the default.
    pub fn systemd_option(self) -> Option<&'static str> {
        match self {
            OnCorruption::Eio => None,
            OnCorruption::Restart => Some("restart-on-corruption"),
            OnCorruption::Panic => Some("panic-on-corruption"),
        }
    }
}

impl FromStr for OnCorruption {
    type Err = String;

    fn from_str(s: &str) -> Result<OnCorruption, String> {
        match s {
            "eio" => Ok(OnCorruption::Eio),
            "restart" => Ok(OnCorruption::Restart),
            "panic" => Ok(OnCorruption::Panic),
            _ => Err("expected eio, restart or panic".to_string()),
        }
    }
}

/// Longest salt veritysetup accepts, in bytes.
pub const MAX_SALT_LEN: usize = 256;

/// How to open the dm-verity device over the root file system.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerityParams {
    /// The root hash, `hash_algorithm.digest_len()` bytes.
    pub root_hash: Vec<u8>,
    /// The salt, possibly empty (veritysetup's `-`), at most [`MAX_SALT_LEN`] bytes.
    pub salt: Vec<u8>,
    /// Where the hash tree is; `None`: on the root device itself, at `hash_offset`.
    pub hash_device: Option<DeviceRef>,
    /// Byte offset of the hash area on the hash device (where the verity superblock
    /// starts, veritysetup's `--hash-offset`).
    pub hash_offset: u64,
    /// Number of data blocks covered by the tree.
    pub data_blocks: u64,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub hash_algorithm: HashAlgorithm,
}

impl VerityParams {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.root_hash.len() != self.hash_algorithm.digest_len() {
            return Err(invalid(
                K_ROOTHASH,
                &hex(&self.root_hash),
                format!(
                    "a {} root hash is {} bytes ({} hex digits)",
                    self.hash_algorithm.name(),
                    self.hash_algorithm.digest_len(),
                    2 * self.hash_algorithm.digest_len()
                ),
            ));
        }
        if self.salt.len() > MAX_SALT_LEN {
            return Err(invalid(K_SALT, &hex(&self.salt), "a salt is at most 256 bytes".into()));
        }
        for (key, size) in
            [(K_DATA_BLOCK_SIZE, self.data_block_size), (K_HASH_BLOCK_SIZE, self.hash_block_size)]
        {
            check_block_size(key, size)?;
        }
        if self.data_blocks == 0 {
            return Err(invalid(K_DATA_BLOCKS, "0", "the data area cannot be empty".into()));
        }
        Ok(())
    }
}

fn check_block_size(key: &str, size: u32) -> Result<(), ParamsError> {
    if size.is_power_of_two() && (512..=1 << 20).contains(&size) {
        Ok(())
    } else {
        Err(invalid(key, &size.to_string(), "a power of two from 512 to 1048576".into()))
    }
}

/// Everything abforge's init needs to know about the slot it boots.
///
/// Kernel parameters (all values without spaces; the init ignores other parameters,
/// and refuses unknown `abforge.*` ones so a typo cannot go unnoticed):
///
/// | parameter | value | required |
/// |---|---|---|
/// | `abforge.slot` | slot name (`a`) | yes |
/// | `abforge.root` | root device: `PARTUUID=<uuid>`, `PARTLABEL=<name>` or `/dev/<node>` | yes |
/// | `abforge.rootfstype` | file system type of the root | no, `ext4` |
/// | `abforge.verity.roothash` | hex root hash; its presence turns verity on | no |
/// | `abforge.verity.salt` | hex salt, `-` for none | with verity |
/// | `abforge.verity.hashdev` | device holding the hash tree | no, the root device |
/// | `abforge.verity.hashoffset` | byte offset of the hash area (verity superblock) on it | with verity |
/// | `abforge.verity.datablocks` | number of data blocks | with verity |
/// | `abforge.verity.datablocksize` | bytes | no, 4096 |
/// | `abforge.verity.hashblocksize` | bytes | no, 4096 |
/// | `abforge.verity.hashalg` | `sha256`, `sha1`, `sha512` | no, `sha256` |
/// | `abforge.verity.oncorruption` | what a block failing its hash does: `eio` (the read fails), `restart`, `panic` | no, `eio` |
/// | `abforge.data` | device mounted at /var | no |
/// | `abforge.log` | device mounted at /logs | no |
/// | `abforge.overlays` | comma-separated absolute directories made writable (`/etc,/home,/root`) | no |
/// | `abforge.overlaydir` | where their upper and work directories live in the final system (`/var/.eflow/overlays`) | with overlays |
/// | `abforge.init` | the real init to execute | no, `/sbin/init` |
/// | `abforge.wait` | seconds to wait for the devices | no, 30 |
///
/// The renderer writes every parameter, defaults included, so the command line
/// shows the whole configuration; the exception is `abforge.verity.oncorruption`,
/// written only when it is not `eio`, so that lines rendered before it existed stay
/// byte-identical.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InitParams {
    pub slot: Slot,
    pub root: DeviceRef,
    pub root_fstype: String,
    pub verity: Option<VerityParams>,
    pub data: Option<DeviceRef>,
    pub log: Option<DeviceRef>,
    pub overlays: Vec<String>,
    pub overlay_dir: Option<String>,
    pub init: String,
    pub wait_seconds: u32,
    /// What dm-verity does on a corrupted block; anything but the default needs
    /// `verity`. (A field of [`InitParams`] rather than [`VerityParams`] so that
    /// code building a `VerityParams` literal keeps compiling.)
    pub verity_on_corruption: OnCorruption,
}

/// Default file system type of the root.
pub const DEFAULT_ROOT_FSTYPE: &str = "ext4";
/// Default real init.
pub const DEFAULT_INIT: &str = "/sbin/init";
/// Default time to wait for devices, in seconds.
pub const DEFAULT_WAIT_SECONDS: u32 = 30;
/// Default dm-verity block size.
pub const DEFAULT_VERITY_BLOCK_SIZE: u32 = 4096;

const K_SLOT: &str = "abforge.slot";
const K_ROOT: &str = "abforge.root";
const K_ROOTFSTYPE: &str = "abforge.rootfstype";
const K_ROOTHASH: &str = "abforge.verity.roothash";
const K_SALT: &str = "abforge.verity.salt";
const K_HASHDEV: &str = "abforge.verity.hashdev";
const K_HASHOFFSET: &str = "abforge.verity.hashoffset";
const K_DATA_BLOCKS: &str = "abforge.verity.datablocks";
const K_DATA_BLOCK_SIZE: &str = "abforge.verity.datablocksize";
const K_HASH_BLOCK_SIZE: &str = "abforge.verity.hashblocksize";
const K_HASHALG: &str = "abforge.verity.hashalg";
const K_ONCORRUPTION: &str = "abforge.verity.oncorruption";
const K_DATA: &str = "abforge.data";
const K_LOG: &str = "abforge.log";
const K_OVERLAYS: &str = "abforge.overlays";
const K_OVERLAYDIR: &str = "abforge.overlaydir";
const K_INIT: &str = "abforge.init";
const K_WAIT: &str = "abforge.wait";

/// Every `abforge.*` parameter name, in the order the renderer writes them.
pub const ABFORGE_KEYS: &[&str] = &[
    K_SLOT,
    K_ROOT,
    K_ROOTFSTYPE,
    K_ROOTHASH,
    K_SALT,
    K_HASHDEV,
    K_HASHOFFSET,
    K_DATA_BLOCKS,
    K_DATA_BLOCK_SIZE,
    K_HASH_BLOCK_SIZE,
    K_HASHALG,
    K_ONCORRUPTION,
    K_DATA,
    K_LOG,
    K_OVERLAYS,
    K_OVERLAYDIR,
    K_INIT,
    K_WAIT,
];

/// The verity keys other than the root hash: they need it.
const VERITY_DEPENDENT_KEYS: &[&str] = &[
    K_SALT,
    K_HASHDEV,
    K_HASHOFFSET,
    K_DATA_BLOCKS,
    K_DATA_BLOCK_SIZE,
    K_HASH_BLOCK_SIZE,
    K_HASHALG,
    K_ONCORRUPTION,
];

fn invalid(key: &str, value: &str, reason: String) -> ParamsError {
    ParamsError::Invalid { key: key.to_string(), value: value.to_string(), reason }
}

/// Which initrd reads the root parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RootStyle {
    /// abforge's own init: the `abforge.*` parameters of [`InitParams`].
    Abforge,
    /// A systemd initrd with the devices named: `roothash=`, `systemd.verity_root_data=`,
    /// `systemd.verity_root_hash=`, `systemd.verity_root_options=hash-offset=…,salt=…`,
    /// then `root=/dev/mapper/root ro`. Works with the tree appended or in its own partition.
    SystemdExplicit,
    /// A systemd initrd that finds both partitions from the root hash alone
    /// (`roothash=`): the data partition's UUID is the first half of the root hash,
    /// the hash partition's the second half (Discoverable Partitions). Needs the hash
    /// tree in its own partition.
    SystemdRootHash,
}

impl InitParams {
    /// Parameters for a slot with defaults for everything optional.
    pub fn new(slot: Slot, root: DeviceRef) -> InitParams {
        InitParams {
            slot,
            root,
            root_fstype: DEFAULT_ROOT_FSTYPE.to_string(),
            verity: None,
            data: None,
            log: None,
            overlays: Vec::new(),
            overlay_dir: None,
            init: DEFAULT_INIT.to_string(),
            wait_seconds: DEFAULT_WAIT_SECONDS,
            verity_on_corruption: OnCorruption::Eio,
        }
    }

    /// Checks the values a parser would refuse, so what is rendered parses back.
    pub fn validate(&self) -> Result<(), ParamsError> {
        check_word(K_ROOTFSTYPE, &self.root_fstype)?;
        match &self.verity {
            Some(verity) => verity.validate()?,
            None if self.verity_on_corruption != OnCorruption::default() => {
                return Err(ParamsError::VerityWithoutRootHash { key: K_ONCORRUPTION.to_string() });
            }
            None => {}
        }
        for dir in &self.overlays {
            check_abs_path(K_OVERLAYS, dir)?;
        }
        match &self.overlay_dir {
            Some(dir) => check_abs_path(K_OVERLAYDIR, dir)?,
            None if !self.overlays.is_empty() => {
                return Err(ParamsError::Missing { key: K_OVERLAYDIR });
            }
            None => {}
        }
        check_abs_path(K_INIT, &self.init)?;
        Ok(())
    }

    /// The parameters that describe this slot's root to the chosen initrd.
    ///
    /// For the systemd styles only the root is described (systemd mounts /var, /logs
    /// and the overlays from the root's fstab); `slot`, `data`, `log` and the overlays
    /// are not rendered.
    pub fn to_params(&self, style: RootStyle) -> Result<Vec<Param>, ParamsError> {
        self.validate()?;
        match style {
            RootStyle::Abforge => self.abforge_params(),
            RootStyle::SystemdExplicit | RootStyle::SystemdRootHash => self.systemd_params(style),
        }
    }

    fn abforge_params(&self) -> Result<Vec<Param>, ParamsError> {
        let mut out = vec![
            Param::new(K_SLOT, self.slot.as_str())?,
            Param::new(K_ROOT, &self.root.to_string())?,
            Param::new(K_ROOTFSTYPE, &self.root_fstype)?,
        ];
        if let Some(v) = &self.verity {
            out.push(Param::new(K_ROOTHASH, &hex(&v.root_hash))?);
            out.push(Param::new(K_SALT, &salt_text(&v.salt))?);
            if let Some(dev) = &v.hash_device {
                out.push(Param::new(K_HASHDEV, &dev.to_string())?);
            }
            out.push(Param::new(K_HASHOFFSET, &v.hash_offset.to_string())?);
            out.push(Param::new(K_DATA_BLOCKS, &v.data_blocks.to_string())?);
            out.push(Param::new(K_DATA_BLOCK_SIZE, &v.data_block_size.to_string())?);
            out.push(Param::new(K_HASH_BLOCK_SIZE, &v.hash_block_size.to_string())?);
            out.push(Param::new(K_HASHALG, v.hash_algorithm.name())?);
            if self.verity_on_corruption != OnCorruption::default() {
                out.push(Param::new(K_ONCORRUPTION, self.verity_on_corruption.name())?);
            }
        }
        if let Some(dev) = &self.data {
            out.push(Param::new(K_DATA, &dev.to_string())?);
        }
        if let Some(dev) = &self.log {
            out.push(Param::new(K_LOG, &dev.to_string())?);
        }
        if !self.overlays.is_empty() {
            out.push(Param::new(K_OVERLAYS, &self.overlays.join(","))?);
        }
        if let Some(dir) = &self.overlay_dir {
            out.push(Param::new(K_OVERLAYDIR, dir)?);
        }
        out.push(Param::new(K_INIT, &self.init)?);
        out.push(Param::new(K_WAIT, &self.wait_seconds.to_string())?);
        Ok(out)
    }

    fn systemd_params(&self, style: RootStyle) -> Result<Vec<Param>, ParamsError> {
        let mut out = Vec::new();
        match &self.verity {
            None => out.push(Param::new("root", &self.root.to_string())?),
            Some(v) => {
                out.push(Param::new("roothash", &hex(&v.root_hash))?);
                let on_corruption = self.verity_on_corruption.systemd_option();
                if style == RootStyle::SystemdRootHash {
                    if v.hash_device.is_none() {
                        return Err(ParamsError::RootHashNeedsHashPartition);
                    }
                    if let Some(option) = on_corruption {
                        out.push(Param::new("systemd.verity_root_options", option)?);
                    }
                } else {
                    let hash_device = v.hash_device.as_ref().unwrap_or(&self.root);
                    out.push(Param::new("systemd.verity_root_data", &self.root.to_string())?);
                    out.push(Param::new("systemd.verity_root_hash", &hash_device.to_string())?);
                    let mut options = vec![format!("hash-offset={}", v.hash_offset)];
                    if !v.salt.is_empty() {
                        options.push(format!("salt={}", hex(&v.salt)));
                    }
                    options.push(format!("data-blocks={}", v.data_blocks));
                    options.push(format!("data-block-size={}", v.data_block_size));
                    options.push(format!("hash-block-size={}", v.hash_block_size));
                    options.push(format!("hash={}", v.hash_algorithm.name()));
                    options.extend(on_corruption.map(str::to_string));
                    out.push(Param::new("systemd.verity_root_options", &options.join(","))?);
                }
                out.push(Param::new("root", "/dev/mapper/root")?);
            }
        }
        out.push(Param::new("rootfstype", &self.root_fstype)?);
        out.push(Param::flag("ro")?);
        Ok(out)
    }
}

/// Reads the `abforge.*` parameters of a command line (`/proc/cmdline`) into
/// [`InitParams`]. The line is read as the kernel reads it ([`split_booted_args`]:
/// up to `--`), and other parameters are ignored, whatever they hold; unknown
/// `abforge.*` ones, a parameter given twice, missing required ones, verity
/// parameters without the root hash and malformed values are errors naming the
/// parameter.
pub fn parse_abforge_params(cmdline: &str) -> Result<InitParams, ParamsError> {
    let mut found: Vec<(&'static str, &str)> = Vec::new();
    for (word_key, value) in booted_words(cmdline)? {
        if !word_key.starts_with("abforge.") {
            continue;
        }
        let Some(&key) = ABFORGE_KEYS.iter().find(|k| **k == word_key) else {
            return Err(ParamsError::Unknown {
                key: word_key.to_string(),
                known: ABFORGE_KEYS.join(", "),
            });
        };
        if found.iter().any(|(k, _)| *k == key) {
            return Err(CmdlineError::Duplicate {
                key: key.to_string(),
                allowed: "no abforge.* key".into(),
            }
            .into());
        }
        let Some(value) = value else {
            return Err(invalid(key, "", "it needs a value (key=value)".into()));
        };
        check_value(key, value)?;
        found.push((key, value));
    }
    let get = |key: &str| found.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let require = |key: &'static str| get(key).ok_or(ParamsError::Missing { key });

    let slot: Slot = require(K_SLOT)?.parse()?;
    let root = parse_device(K_ROOT, require(K_ROOT)?)?;
    let mut params = InitParams::new(slot, root);
    if let Some(fstype) = get(K_ROOTFSTYPE) {
        check_word(K_ROOTFSTYPE, fstype)?;
        params.root_fstype = fstype.to_string();
    }
    match get(K_ROOTHASH) {
        None => {
            if let Some(key) = VERITY_DEPENDENT_KEYS.iter().find(|k| get(k).is_some()) {
                return Err(ParamsError::VerityWithoutRootHash { key: key.to_string() });
            }
        }
        Some(root_hash) => {
            let hash_algorithm = match get(K_HASHALG) {
                None => HashAlgorithm::Sha256,
                Some(name) => name.parse().map_err(|reason| invalid(K_HASHALG, name, reason))?,
            };
            let salt = require(K_SALT)?;
            let verity = VerityParams {
                root_hash: parse_hex(K_ROOTHASH, root_hash)?,
                salt: if salt == "-" { Vec::new() } else { parse_hex(K_SALT, salt)? },
                hash_device: get(K_HASHDEV).map(|d| parse_device(K_HASHDEV, d)).transpose()?,
                hash_offset: parse_number(K_HASHOFFSET, require(K_HASHOFFSET)?)?,
                data_blocks: parse_number(K_DATA_BLOCKS, require(K_DATA_BLOCKS)?)?,
                data_block_size: match get(K_DATA_BLOCK_SIZE) {
                    Some(v) => parse_number(K_DATA_BLOCK_SIZE, v)?,
                    None => DEFAULT_VERITY_BLOCK_SIZE,
                },
                hash_block_size: match get(K_HASH_BLOCK_SIZE) {
                    Some(v) => parse_number(K_HASH_BLOCK_SIZE, v)?,
                    None => DEFAULT_VERITY_BLOCK_SIZE,
                },
                hash_algorithm,
            };
            verity.validate()?;
            params.verity = Some(verity);
            if let Some(name) = get(K_ONCORRUPTION) {
                params.verity_on_corruption =
                    name.parse().map_err(|reason| invalid(K_ONCORRUPTION, name, reason))?;
            }
        }
    }
    params.data = get(K_DATA).map(|d| parse_device(K_DATA, d)).transpose()?;
    params.log = get(K_LOG).map(|d| parse_device(K_LOG, d)).transpose()?;
    if let Some(list) = get(K_OVERLAYS) {
        params.overlays = list.split(',').map(str::to_string).collect();
    }
    params.overlay_dir = get(K_OVERLAYDIR).map(str::to_string);
    if let Some(init) = get(K_INIT) {
        params.init = init.to_string();
    }
    if let Some(wait) = get(K_WAIT) {
        params.wait_seconds = parse_number(K_WAIT, wait)?;
    }
    params.validate()?;
    Ok(params)
}

fn parse_device(key: &str, value: &str) -> Result<DeviceRef, ParamsError> {
    value.parse().map_err(|reason| invalid(key, value, reason))
}

fn parse_number<T: FromStr>(key: &str, value: &str) -> Result<T, ParamsError> {
    // Decimal digits only: no sign, no leading '+', no hex.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(key, value, "expected a decimal number".into()));
    }
    value.parse().map_err(|_| invalid(key, value, "the number is too large".into()))
}

fn parse_hex(key: &str, value: &str) -> Result<Vec<u8>, ParamsError> {
    if !value.len().is_multiple_of(2) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(key, value, "expected an even number of hex digits".into()));
    }
    let digit = |b: u8| -> u8 {
        // Checked above to be a hex digit.
        match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        }
    };
    Ok(value.as_bytes().chunks(2).map(|pair| (digit(pair[0]) << 4) | digit(pair[1])).collect())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn salt_text(salt: &[u8]) -> String {
    if salt.is_empty() { "-".to_string() } else { hex(salt) }
}

fn check_word(key: &str, value: &str) -> Result<(), ParamsError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(invalid(key, value, "expected letters, digits, '.', '_' or '-'".into()));
    }
    Ok(())
}

fn check_abs_path(key: &str, path: &str) -> Result<(), ParamsError> {
    let reason = if !path.starts_with('/') {
        "the path must be absolute"
    } else if path.contains([',', ' ', '"']) || path.chars().any(char::is_control) {
        "the path must not contain commas, spaces, quotes or control characters"
    } else if path.split('/').any(|c| c == "." || c == "..") {
        "the path must not contain '.' or '..'"
    } else {
        return Ok(());
    };
    Err(invalid(key, path, reason.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid(s: &str) -> Guid {
        s.parse().unwrap()
    }

    fn sample_verity() -> VerityParams {
        VerityParams {
            root_hash: (0u8..32).collect(),
            salt: vec![0xab; 32],
            hash_device: None,
            hash_offset: 4_259_840_000,
            data_blocks: 1_040_000,
            data_block_size: 4096,
            hash_block_size: 4096,
            hash_algorithm: HashAlgorithm::Sha256,
        }
    }

    fn sample_params() -> InitParams {
        let mut p = InitParams::new(
            Slot::a(),
            DeviceRef::PartUuid(guid("06196e49-d8eb-6d49-2e30-42596c2dbb79")),
        );
        p.verity = Some(sample_verity());
        p.data = Some(DeviceRef::PartUuid(guid("11111111-2222-3333-4444-555555555555")));
        p.log = Some(DeviceRef::PartLabel("Log".into()));
        p.overlays = vec!["/etc".into(), "/home".into(), "/root".into()];
        p.overlay_dir = Some("/var/.eflow/overlays".into());
        p
    }

    fn render(params: &[Param]) -> String {
        let mut line = Cmdline::new();
        line.extend(params.iter().cloned()).unwrap();
        line.render().unwrap()
    }

    #[test]
    fn renders_flags_values_and_quotes_spaces() {
        let mut line = Cmdline::new();
        line.push_value("console", "ttyS0,115200").unwrap();
        line.push_flag("quiet").unwrap();
        line.push_value("msg", "hello world").unwrap();
        line.push_value("empty", "").unwrap();
        assert_eq!(line.render().unwrap(), "console=ttyS0,115200 quiet msg=\"hello world\" empty=");
    }

    #[test]
    fn parse_follows_kernel_quoting() {
        let line = Cmdline::parse("  a=\"x y\"\t\"b=c d\" flag \"q\" \n").unwrap();
        let got: Vec<(&str, Option<&str>)> =
            line.params().iter().map(|p| (p.key(), p.value())).collect();
        assert_eq!(got, [("a", Some("x y")), ("b", Some("c d")), ("flag", None), ("q", None)]);
        // A quote in the middle of a value stays in it, and a value may not hold one.
        assert!(matches!(
            Cmdline::parse("e=f\"g h\""),
            Err(CmdlineError::InvalidValue { ref key, .. }) if key == "e"
        ));
        assert_eq!(
            Cmdline::parse("a=\"unterminated"),
            Err(CmdlineError::UnterminatedQuote("a=\"unterminated".into()))
        );
    }

    #[test]
    fn parse_render_round_trip() {
        let text = "console=tty0 console=ttyS0 root=/dev/vda2 msg=\"a b\" ro";
        assert_eq!(Cmdline::parse(text).unwrap().render().unwrap(), text);
    }

    #[test]
    fn duplicates_are_refused_except_allowed_keys() {
        let mut line = Cmdline::new();
        line.push_value("console", "tty0").unwrap();
        line.push_value("console", "ttyS0").unwrap();
        line.push_value("dm-mod.create", "x").unwrap();
        let err = line.push_value("dm_mod.create", "y").unwrap_err();
        assert_eq!(
            err,
            CmdlineError::Duplicate { key: "dm_mod.create".into(), allowed: "console".into() }
        );
        assert!(err.to_string().contains("'dm_mod.create' is given twice"), "{err}");
        line.allow_repeated("dm-mod.create");
        line.push_value("dm_mod.create", "y").unwrap();
        assert!(matches!(Cmdline::parse("ro ro"), Err(CmdlineError::Duplicate { .. })));
    }

    #[test]
    fn invalid_keys_and_values_are_refused() {
        for key in ["", "a=b", "a\"", "a b", "--", "é"] {
            assert!(Param::flag(key).is_err(), "{key:?} accepted");
        }
        assert!(Param::new("k", "a\"b").is_err());
        assert!(Param::new("k", "a\tb").is_err());
        assert!(Param::new("k", "a\nb").is_err());
    }

    #[test]
    fn length_limit_counts_the_nul() {
        let mut line = Cmdline::new();
        line.push_value("k", &"x".repeat(2045)).unwrap(); // "k=" + 2045 = 2047, + NUL = 2048
        assert_eq!(line.render().unwrap().len(), 2047);
        let mut line = Cmdline::new();
        line.push_value("k", &"x".repeat(2046)).unwrap();
        let err = line.render().unwrap_err();
        assert_eq!(err, CmdlineError::TooLong { length: 2049, limit: 2048 });
        assert!(err.to_string().contains("2049 bytes"), "{err}");
        assert!(err.to_string().contains("limit of 2048"), "{err}");
        assert!(line.render_with_limit(4096).is_ok());
    }

    #[test]
    fn abforge_params_render_exactly() {
        let text = render(&sample_params().to_params(RootStyle::Abforge).unwrap());
        assert_eq!(
            text,
            "abforge.slot=a abforge.root=PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 \
             abforge.rootfstype=ext4 \
             abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             abforge.verity.salt=abababababababababababababababababababababababababababababababab \
             abforge.verity.hashoffset=4259840000 abforge.verity.datablocks=1040000 \
             abforge.verity.datablocksize=4096 abforge.verity.hashblocksize=4096 \
             abforge.verity.hashalg=sha256 abforge.data=PARTUUID=11111111-2222-3333-4444-555555555555 \
             abforge.log=PARTLABEL=Log abforge.overlays=/etc,/home,/root \
             abforge.overlaydir=/var/.eflow/overlays abforge.init=/sbin/init abforge.wait=30"
        );
    }

    #[test]
    fn abforge_params_round_trip_among_other_parameters() {
        let mut params = sample_params();
        let text = format!(
            "console=ttyS0 {} quiet",
            render(&params.to_params(RootStyle::Abforge).unwrap())
        );
        assert_eq!(parse_abforge_params(&text).unwrap(), params);

        params.verity.as_mut().unwrap().salt.clear();
        params.verity.as_mut().unwrap().hash_device = Some(DeviceRef::Path("/dev/vda4".into()));
        params.data = None;
        params.overlays.clear();
        params.overlay_dir = None;
        let text = render(&params.to_params(RootStyle::Abforge).unwrap());
        assert!(text.contains("abforge.verity.salt=-"), "{text}");
        assert_eq!(parse_abforge_params(&text).unwrap(), params);

        let plain = InitParams::new("b".parse().unwrap(), DeviceRef::Path("/dev/sda3".into()));
        let text = render(&plain.to_params(RootStyle::Abforge).unwrap());
        assert_eq!(parse_abforge_params(&text).unwrap(), plain);
    }

    #[test]
    fn minimal_abforge_params_take_defaults() {
        let p = parse_abforge_params(
            "abforge.slot=b abforge.root=PARTUUID=06196E49-D8EB-6D49-2E30-42596C2DBB79 \
             abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             abforge.verity.salt=- abforge.verity.hashoffset=8192 abforge.verity.datablocks=2",
        )
        .unwrap();
        assert_eq!(p.slot.as_str(), "b");
        assert_eq!(p.root_fstype, "ext4");
        assert_eq!(p.init, "/sbin/init");
        let v = p.verity.unwrap();
        assert_eq!(
            (v.data_block_size, v.hash_block_size, v.hash_algorithm),
            (4096, 4096, HashAlgorithm::Sha256)
        );
        assert!(v.salt.is_empty());
    }

    #[test]
    fn abforge_param_errors_name_the_parameter() {
        let base = "abforge.slot=a abforge.root=/dev/vda3";
        let cases: &[(&str, &str)] = &[
            ("abforge.root=/dev/vda3", "abforge.slot is missing"),
            ("abforge.slot=a", "abforge.root is missing"),
            (&format!("{base} abforge.rooot=x"), "unknown kernel parameter abforge.rooot"),
            (&format!("{base} abforge.slot=b"), "'abforge.slot' is given twice"),
            (
                &format!("{base} abforge.verity.salt=00"),
                "abforge.verity.salt is given without abforge.verity.roothash",
            ),
            (&format!("{base} abforge.verity.roothash=00"), "abforge.verity.salt is missing"),
            (
                &format!(
                    "{base} abforge.verity.roothash=00 abforge.verity.salt=- abforge.verity.hashoffset=0 abforge.verity.datablocks=1"
                ),
                "a sha256 root hash is 32 bytes",
            ),
            (
                &format!("{base} abforge.wait=-1"),
                "abforge.wait=-1 is invalid: expected a decimal number",
            ),
            (&format!("{base} abforge.data=UUID=x"), "abforge.data=UUID=x is invalid"),
            (&format!("{base} abforge.overlays=/etc"), "abforge.overlaydir is missing"),
            (
                &format!("{base} abforge.overlays=etc abforge.overlaydir=/var/o"),
                "the path must be absolute",
            ),
            (&format!("{base} abforge.init"), "abforge.init= is invalid: it needs a value"),
            ("abforge.slot=A abforge.root=/dev/vda3", "'A' is not a slot name"),
        ];
        for (text, expected) in cases {
            let err = parse_abforge_params(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn systemd_explicit_form() {
        let params = sample_params();
        let text = render(&params.to_params(RootStyle::SystemdExplicit).unwrap());
        assert_eq!(
            text,
            "roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             systemd.verity_root_data=PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 \
             systemd.verity_root_hash=PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 \
             systemd.verity_root_options=hash-offset=4259840000,salt=abababababababababababababababababababababababababababababababab,\
             data-blocks=1040000,data-block-size=4096,hash-block-size=4096,hash=sha256 \
             root=/dev/mapper/root rootfstype=ext4 ro"
        );
    }

    #[test]
    fn systemd_roothash_form_needs_a_hash_partition() {
        let mut params = sample_params();
        assert_eq!(
            params.to_params(RootStyle::SystemdRootHash).unwrap_err(),
            ParamsError::RootHashNeedsHashPartition
        );
        params.verity.as_mut().unwrap().hash_device =
            Some(DeviceRef::PartUuid(guid("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")));
        assert_eq!(
            render(&params.to_params(RootStyle::SystemdRootHash).unwrap()),
            "roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             root=/dev/mapper/root rootfstype=ext4 ro"
        );
        params.verity = None;
        assert_eq!(
            render(&params.to_params(RootStyle::SystemdRootHash).unwrap()),
            "root=PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 rootfstype=ext4 ro"
        );
    }

    #[test]
    fn on_corruption_renders_only_when_not_the_default_and_round_trips() {
        let mut params = sample_params();
        let text = render(&params.to_params(RootStyle::Abforge).unwrap());
        assert!(!text.contains("oncorruption"), "{text}");
        assert_eq!(parse_abforge_params(&text).unwrap().verity_on_corruption, OnCorruption::Eio);
        for (mode, name) in [(OnCorruption::Restart, "restart"), (OnCorruption::Panic, "panic")] {
            params.verity_on_corruption = mode;
            let text = render(&params.to_params(RootStyle::Abforge).unwrap());
            assert!(
                text.contains(&format!(
                    "abforge.verity.hashalg=sha256 abforge.verity.oncorruption={name} abforge.data="
                )),
                "{text}"
            );
            assert_eq!(parse_abforge_params(&text).unwrap(), params);
            assert_eq!(name.parse::<OnCorruption>(), Ok(mode));
            assert_eq!(mode.name(), name);
        }
        // Written explicitly, the default parses too.
        let text = format!(
            "{} abforge.verity.oncorruption=eio",
            render(&sample_params().to_params(RootStyle::Abforge).unwrap())
        );
        assert_eq!(parse_abforge_params(&text).unwrap(), sample_params());
    }

    #[test]
    fn on_corruption_errors() {
        let base = "abforge.slot=a abforge.root=/dev/vda3";
        let verity = "abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             abforge.verity.salt=- abforge.verity.hashoffset=8192 abforge.verity.datablocks=2";
        let err =
            parse_abforge_params(&format!("{base} {verity} abforge.verity.oncorruption=maybe"))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel parameter abforge.verity.oncorruption=maybe is invalid: expected eio, restart or panic"
        );
        let err = parse_abforge_params(&format!("{base} abforge.verity.oncorruption=restart"))
            .unwrap_err();
        assert_eq!(
            err,
            ParamsError::VerityWithoutRootHash { key: "abforge.verity.oncorruption".into() }
        );
        // Without verity, only the default can be rendered.
        let mut plain = InitParams::new(Slot::a(), DeviceRef::Path("/dev/vda3".into()));
        plain.verity_on_corruption = OnCorruption::Panic;
        assert_eq!(
            plain.to_params(RootStyle::Abforge).unwrap_err(),
            ParamsError::VerityWithoutRootHash { key: "abforge.verity.oncorruption".into() }
        );
        assert!("Restart".parse::<OnCorruption>().is_err());
    }

    #[test]
    fn on_corruption_reaches_the_systemd_options() {
        let mut params = sample_params();
        params.verity_on_corruption = OnCorruption::Restart;
        let text = render(&params.to_params(RootStyle::SystemdExplicit).unwrap());
        assert!(
            text.contains(",hash=sha256,restart-on-corruption root=/dev/mapper/root"),
            "{text}"
        );
        params.verity.as_mut().unwrap().hash_device = Some(DeviceRef::Path("/dev/vda4".into()));
        params.verity_on_corruption = OnCorruption::Panic;
        assert_eq!(
            render(&params.to_params(RootStyle::SystemdRootHash).unwrap()),
            "roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             systemd.verity_root_options=panic-on-corruption root=/dev/mapper/root rootfstype=ext4 ro"
        );
    }

    #[test]
    fn booted_lines_are_read_as_the_kernel_reads_them() {
        // Words abforge would refuse are skipped, and `--` ends the parameters.
        let text =
            "console=ttyS0 \u{e9}t\u{e9}=1 e=f\"g\"h dm_mod.x=\"a b\" -- abforge.slot=b single";
        let params = split_booted_args(text).unwrap();
        let got: Vec<(&str, Option<&str>)> = params.iter().map(|p| (p.key(), p.value())).collect();
        assert_eq!(got, [("console", Some("ttyS0")), ("dm_mod.x", Some("a b"))]);
        assert!(split_kernel_args(text).is_err());
        assert!(matches!(split_booted_args("a=\"open"), Err(CmdlineError::UnterminatedQuote(_))));

        // parse_abforge_params ignores the same foreign words and what follows `--` ...
        let line =
            format!("{text} {}", render(&sample_params().to_params(RootStyle::Abforge).unwrap()));
        assert!(matches!(parse_abforge_params(&line), Err(ParamsError::Missing { .. })));
        let line = format!(
            "\u{e9}t\u{e9}=1 e=f\"g\"h {} -- abforge.slot=b abforge.bogus",
            render(&sample_params().to_params(RootStyle::Abforge).unwrap())
        );
        assert_eq!(parse_abforge_params(&line).unwrap(), sample_params());
        // ... but not a malformed abforge.* one.
        let err =
            parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3 abforge.init=/a\"b\"c")
                .unwrap_err();
        assert!(matches!(
            err,
            ParamsError::Cmdline(CmdlineError::InvalidValue { ref key, .. }) if key == "abforge.init"
        ));
    }

    #[test]
    fn generated_params_combine_with_user_params() {
        let mut line = Cmdline::parse("console=ttyS0 abforge.slot=b").unwrap();
        let err = line.extend(sample_params().to_params(RootStyle::Abforge).unwrap()).unwrap_err();
        assert!(matches!(err, CmdlineError::Duplicate { key, .. } if key == "abforge.slot"));
    }
}
