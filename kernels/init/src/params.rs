//! The `abforge.*` kernel parameters this init reads from `/proc/cmdline`.
//!
//! This module mirrors `abforge_kernels::cmdline::{parse_abforge_params, InitParams}`
//! (same parameter names, same defaults, same types and field names) so that it can
//! be replaced by a dependency on that crate once both are merged; see the crate
//! README section in `main.rs`. It follows the kernel's splitting rules (`next_arg()`
//! in `lib/cmdline.c`): parameters are separated by white space and a double quote
//! toggles quoting, so `key="a b"` gives the value `a b`.
//!
//! | parameter | value | default |
//! |---|---|---|
//! | `abforge.slot` | slot name (`a`) | required |
//! | `abforge.root` | `PARTUUID=<uuid>`, `PARTLABEL=<name>` or `/dev/<node>` | required |
//! | `abforge.rootfstype` | file system of the root | `ext4` |
//! | `abforge.verity.roothash` | hex root hash; its presence turns verity on | off |
//! | `abforge.verity.salt` | hex salt, `-` for none | required with verity |
//! | `abforge.verity.hashdev` | device holding the hash tree | the root device |
//! | `abforge.verity.hashoffset` | byte offset of the verity superblock on it | required with verity |
//! | `abforge.verity.datablocks` | number of data blocks | required with verity |
//! | `abforge.verity.datablocksize` / `hashblocksize` | bytes | 4096 |
//! | `abforge.verity.hashalg` | `sha256`, `sha1`, `sha512` | `sha256` |
//! | `abforge.verity.oncorruption` | `eio`, `restart`, `panic` (only here, not yet in abforge-kernels) | `eio` |
//! | `abforge.data` / `abforge.log` | devices mounted at /var and /logs | from profile.json |
//! | `abforge.overlays` | comma-separated directories to overlay | from profile.json |
//! | `abforge.overlaydir` | where their `<name>/upper` and `<name>/work` live | required with overlays |
//! | `abforge.init` | the real init | `/sbin/init` |
//! | `abforge.wait` | seconds to wait for devices | 30 |
//!
//! Left out: nothing of the abforge-kernels parser's checks except the exact error
//! wording; unknown `abforge.*` parameters are refused, so a typo cannot go unnoticed.

use std::fmt;
use std::str::FromStr;

use abforge_partitions::Guid;

/// Why the `abforge.*` parameters of a command line are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("the kernel command line has an unterminated double quote in '{0}'")]
    UnterminatedQuote(String),
    #[error("kernel parameter {key} is missing")]
    Missing { key: &'static str },
    #[error("kernel parameter {key} is given twice")]
    Duplicate { key: String },
    #[error("kernel parameter {key} is given without abforge.verity.roothash")]
    VerityWithoutRootHash { key: String },
    #[error("unknown kernel parameter {key} (abforge's init knows {known})")]
    Unknown { key: String, known: String },
    #[error("kernel parameter {key}={value} is invalid: {reason}")]
    Invalid { key: String, value: String, reason: String },
}

/// One `key` or `key=value` word of a command line, quotes removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

/// Splits a command line the way the kernel does (see the module comment).
pub fn split_kernel_args(text: &str) -> Result<Vec<Param>, ParamsError> {
    let mut params = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            return Ok(params);
        }
        let mut in_quote = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if c.is_ascii_whitespace() && !in_quote {
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
            return Err(ParamsError::UnterminatedQuote(word.to_string()));
        }
        // The kernel drops a quote opening the whole word or the value, and the
        // quote closing the word.
        let (whole_quoted, body) = match word.strip_prefix('"') {
            Some(inner) => (true, inner),
            None => (false, word),
        };
        let param = match body.split_once('=') {
            None => {
                let key = if whole_quoted { body.strip_suffix('"').unwrap_or(body) } else { body };
                Param { key: key.to_string(), value: None }
            }
            Some((key, value)) => {
                let value = match value.strip_prefix('"') {
                    Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
                    None if whole_quoted => value.strip_suffix('"').unwrap_or(value),
                    None => value,
                };
                Param { key: key.to_string(), value: Some(value.to_string()) }
            }
        };
        params.push(param);
    }
}

/// A block device as the init finds it.
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

    fn from_str(s: &str) -> Result<DeviceRef, String> {
        if let Some(uuid) = s.strip_prefix("PARTUUID=") {
            uuid.to_ascii_lowercase()
                .parse::<Guid>()
                .map(DeviceRef::PartUuid)
                .map_err(|e| e.to_string())
        } else if let Some(label) = s.strip_prefix("PARTLABEL=") {
            if label.is_empty() || label.contains([' ', ',', '"']) {
                Err("a partition label must be non-empty, without spaces, commas or quotes".into())
            } else {
                Ok(DeviceRef::PartLabel(label.to_string()))
            }
        } else if s.starts_with("/dev/") && !s.contains([' ', ',', '"']) {
            Ok(DeviceRef::Path(s.to_string()))
        } else {
            Err("expected PARTUUID=<uuid>, PARTLABEL=<name> or /dev/<node>".into())
        }
    }
}

/// A hash algorithm of dm-verity.
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
            _ => Err("expected sha256, sha1 or sha512".into()),
        }
    }
}

/// What dm-verity does when a block does not match its hash.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum OnCorruption {
    /// The read fails with EIO (dm-verity's default).
    #[default]
    Eio,
    /// The kernel restarts the machine (`restart_on_corruption`): the bootloader can fall back.
    Restart,
    /// The kernel panics (`panic_on_corruption`).
    Panic,
}

impl OnCorruption {
    pub fn name(self) -> &'static str {
        match self {
            OnCorruption::Eio => "eio",
            OnCorruption::Restart => "restart",
            OnCorruption::Panic => "panic",
        }
    }
}

/// Longest salt veritysetup accepts, in bytes.
pub const MAX_SALT_LEN: usize = 256;

/// How to open the dm-verity device over the root file system.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerityParams {
    pub root_hash: Vec<u8>,
    /// Possibly empty (`-`).
    pub salt: Vec<u8>,
    /// `None`: the hash tree is on the root device itself.
    pub hash_device: Option<DeviceRef>,
    /// Byte offset of the verity superblock on the hash device (veritysetup's `--hash-offset`).
    pub hash_offset: u64,
    pub data_blocks: u64,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub hash_algorithm: HashAlgorithm,
    pub on_corruption: OnCorruption,
}

/// Everything the init needs to know about the slot it boots.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InitParams {
    /// The slot name (`a`, `b`): 1 to 16 characters from a-z, 0-9.
    pub slot: String,
    pub root: DeviceRef,
    pub root_fstype: String,
    pub verity: Option<VerityParams>,
    pub data: Option<DeviceRef>,
    pub log: Option<DeviceRef>,
    /// Directories to overlay (empty: take them from profile.json).
    pub overlays: Vec<String>,
    pub overlay_dir: Option<String>,
    pub init: String,
    pub wait_seconds: u32,
}

pub const DEFAULT_ROOT_FSTYPE: &str = "ext4";
pub const DEFAULT_INIT: &str = "/sbin/init";
pub const DEFAULT_WAIT_SECONDS: u32 = 30;
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

/// Every `abforge.*` parameter name this init knows.
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

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ParamsError {
    ParamsError::Invalid { key: key.to_string(), value: value.to_string(), reason: reason.into() }
}

/// Reads the `abforge.*` parameters of a command line. Other parameters are
/// ignored; unknown `abforge.*` ones, repeats, missing required ones and malformed
/// values are errors naming the parameter.
pub fn parse_abforge_params(cmdline: &str) -> Result<InitParams, ParamsError> {
    let mut found: Vec<(&'static str, String)> = Vec::new();
    for param in split_kernel_args(cmdline)? {
        if !param.key.starts_with("abforge.") {
            continue;
        }
        let Some(&key) = ABFORGE_KEYS.iter().find(|k| **k == param.key) else {
            return Err(ParamsError::Unknown { key: param.key, known: ABFORGE_KEYS.join(", ") });
        };
        if found.iter().any(|(k, _)| *k == key) {
            return Err(ParamsError::Duplicate { key: key.to_string() });
        }
        let Some(value) = param.value else {
            return Err(invalid(key, "", "it needs a value (key=value)"));
        };
        found.push((key, value));
    }
    let get = |key: &str| found.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
    let require = |key: &'static str| get(key).ok_or(ParamsError::Missing { key });

    let slot = require(K_SLOT)?;
    let slot_ok = !slot.is_empty()
        && slot.len() <= 16
        && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !slot_ok {
        return Err(invalid(K_SLOT, slot, "a slot name is 1 to 16 characters from a-z and 0-9"));
    }
    let mut params = InitParams {
        slot: slot.to_string(),
        root: parse_device(K_ROOT, require(K_ROOT)?)?,
        root_fstype: DEFAULT_ROOT_FSTYPE.to_string(),
        verity: None,
        data: None,
        log: None,
        overlays: Vec::new(),
        overlay_dir: None,
        init: DEFAULT_INIT.to_string(),
        wait_seconds: DEFAULT_WAIT_SECONDS,
    };
    if let Some(fstype) = get(K_ROOTFSTYPE) {
        if fstype.is_empty()
            || !fstype.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(K_ROOTFSTYPE, fstype, "expected letters, digits, '.', '_' or '-'"));
        }
        params.root_fstype = fstype.to_string();
    }
    match get(K_ROOTHASH) {
        None => {
            if let Some(key) = VERITY_DEPENDENT_KEYS.iter().find(|k| get(k).is_some()) {
                return Err(ParamsError::VerityWithoutRootHash { key: key.to_string() });
            }
        }
        Some(root_hash) => params.verity = Some(parse_verity(root_hash, &get, &require)?),
    }
    params.data = get(K_DATA).map(|d| parse_device(K_DATA, d)).transpose()?;
    params.log = get(K_LOG).map(|d| parse_device(K_LOG, d)).transpose()?;
    if let Some(list) = get(K_OVERLAYS) {
        params.overlays = list.split(',').map(str::to_string).collect();
        for dir in &params.overlays {
            check_abs_path(K_OVERLAYS, dir)?;
        }
    }
    if let Some(dir) = get(K_OVERLAYDIR) {
        check_abs_path(K_OVERLAYDIR, dir)?;
        params.overlay_dir = Some(dir.to_string());
    } else if !params.overlays.is_empty() {
        return Err(ParamsError::Missing { key: K_OVERLAYDIR });
    }
    if let Some(init) = get(K_INIT) {
        check_abs_path(K_INIT, init)?;
        params.init = init.to_string();
    }
    if let Some(wait) = get(K_WAIT) {
        params.wait_seconds = parse_number(K_WAIT, wait)?;
    }
    Ok(params)
}

fn parse_verity<'a>(
    root_hash: &str,
    get: &dyn Fn(&str) -> Option<&'a str>,
    require: &dyn Fn(&'static str) -> Result<&'a str, ParamsError>,
) -> Result<VerityParams, ParamsError> {
    let hash_algorithm = match get(K_HASHALG) {
        None => HashAlgorithm::Sha256,
        Some(name) => name.parse().map_err(|reason: String| invalid(K_HASHALG, name, reason))?,
    };
    let on_corruption = match get(K_ONCORRUPTION) {
        None | Some("eio") => OnCorruption::Eio,
        Some("restart") => OnCorruption::Restart,
        Some("panic") => OnCorruption::Panic,
        Some(other) => {
            return Err(invalid(K_ONCORRUPTION, other, "expected eio, restart or panic"));
        }
    };
    let root_hash_bytes = parse_hex(K_ROOTHASH, root_hash)?;
    if root_hash_bytes.len() != hash_algorithm.digest_len() {
        return Err(invalid(
            K_ROOTHASH,
            root_hash,
            format!(
                "a {} root hash is {} bytes ({} hex digits)",
                hash_algorithm.name(),
                hash_algorithm.digest_len(),
                2 * hash_algorithm.digest_len()
            ),
        ));
    }
    let salt = require(K_SALT)?;
    let salt = if salt == "-" { Vec::new() } else { parse_hex(K_SALT, salt)? };
    if salt.len() > MAX_SALT_LEN {
        return Err(invalid(K_SALT, &hex(&salt), "a salt is at most 256 bytes"));
    }
    let block_size = |key: &'static str| -> Result<u32, ParamsError> {
        let Some(text) = get(key) else { return Ok(DEFAULT_VERITY_BLOCK_SIZE) };
        let size: u32 = parse_number(key, text)?;
        if size.is_power_of_two() && (512..=1 << 20).contains(&size) {
            Ok(size)
        } else {
            Err(invalid(key, text, "a power of two from 512 to 1048576"))
        }
    };
    let data_blocks: u64 = parse_number(K_DATA_BLOCKS, require(K_DATA_BLOCKS)?)?;
    if data_blocks == 0 {
        return Err(invalid(K_DATA_BLOCKS, "0", "the data area cannot be empty"));
    }
    Ok(VerityParams {
        root_hash: root_hash_bytes,
        salt,
        hash_device: get(K_HASHDEV).map(|d| parse_device(K_HASHDEV, d)).transpose()?,
        hash_offset: parse_number(K_HASHOFFSET, require(K_HASHOFFSET)?)?,
        data_blocks,
        data_block_size: block_size(K_DATA_BLOCK_SIZE)?,
        hash_block_size: block_size(K_HASH_BLOCK_SIZE)?,
        hash_algorithm,
        on_corruption,
    })
}

fn parse_device(key: &str, value: &str) -> Result<DeviceRef, ParamsError> {
    value.parse().map_err(|reason: String| invalid(key, value, reason))
}

fn parse_number<T: FromStr>(key: &str, value: &str) -> Result<T, ParamsError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(key, value, "expected a decimal number"));
    }
    value.parse().map_err(|_| invalid(key, value, "the number is too large"))
}

fn parse_hex(key: &str, value: &str) -> Result<Vec<u8>, ParamsError> {
    if value.len() % 2 != 0 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(key, value, "expected an even number of hex digits"));
    }
    value
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            // Both bytes are ASCII hex digits (checked above), so this is valid UTF-8.
            let text = std::str::from_utf8(pair).map_err(|_| invalid(key, value, "not ASCII"))?;
            u8::from_str_radix(text, 16).map_err(|_| invalid(key, value, "expected hex digits"))
        })
        .collect()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    Err(invalid(key, path, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "console=ttyS0 abforge.slot=a abforge.root=PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79 \
         abforge.rootfstype=ext4 \
         abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
         abforge.verity.salt=abababababababababababababababababababababababababababababababab \
         abforge.verity.hashoffset=4259840000 abforge.verity.datablocks=1040000 \
         abforge.verity.datablocksize=4096 abforge.verity.hashblocksize=4096 \
         abforge.verity.hashalg=sha256 abforge.data=PARTUUID=11111111-2222-3333-4444-555555555555 \
         abforge.log=PARTLABEL=Log abforge.overlays=/etc,/home,/root \
         abforge.overlaydir=/var/.eflow/overlays abforge.init=/sbin/init abforge.wait=30 quiet";

    #[test]
    fn parses_the_line_abforge_kernels_renders() {
        let p = parse_abforge_params(FULL).unwrap();
        assert_eq!(p.slot, "a");
        assert_eq!(p.root.to_string(), "PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79");
        let v = p.verity.as_ref().unwrap();
        assert_eq!(v.root_hash, (0u8..32).collect::<Vec<_>>());
        assert_eq!(v.salt, vec![0xab; 32]);
        assert_eq!((v.hash_offset, v.data_blocks), (4_259_840_000, 1_040_000));
        assert_eq!(v.hash_device, None);
        assert_eq!(v.on_corruption, OnCorruption::Eio);
        assert_eq!(p.data.unwrap().to_string(), "PARTUUID=11111111-2222-3333-4444-555555555555");
        assert_eq!(p.log, Some(DeviceRef::PartLabel("Log".into())));
        assert_eq!(p.overlays, ["/etc", "/home", "/root"]);
        assert_eq!(p.overlay_dir.as_deref(), Some("/var/.eflow/overlays"));
        assert_eq!((p.init.as_str(), p.wait_seconds), ("/sbin/init", 30));
    }

    #[test]
    fn minimal_line_takes_defaults() {
        let p = parse_abforge_params(
            "abforge.slot=b abforge.root=PARTUUID=06196E49-D8EB-6D49-2E30-42596C2DBB79 \
             abforge.verity.roothash=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
             abforge.verity.salt=- abforge.verity.hashoffset=8192 abforge.verity.datablocks=2 \
             abforge.verity.oncorruption=restart",
        )
        .unwrap();
        assert_eq!(p.root.to_string(), "PARTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79");
        assert_eq!((p.root_fstype.as_str(), p.init.as_str()), ("ext4", "/sbin/init"));
        let v = p.verity.unwrap();
        assert!(v.salt.is_empty());
        assert_eq!((v.data_block_size, v.hash_block_size), (4096, 4096));
        assert_eq!(v.on_corruption, OnCorruption::Restart);
        let plain = parse_abforge_params("abforge.slot=a abforge.root=/dev/vda3").unwrap();
        assert_eq!(plain.verity, None);
        assert!(plain.overlays.is_empty() && plain.data.is_none());
    }

    #[test]
    fn kernel_quoting_rules() {
        let got = split_kernel_args("  a=\"x y\"\t\"b=c d\" flag \"q\" \n").unwrap();
        let got: Vec<_> = got.iter().map(|p| (p.key.as_str(), p.value.as_deref())).collect();
        assert_eq!(got, [("a", Some("x y")), ("b", Some("c d")), ("flag", None), ("q", None)]);
        assert_eq!(
            split_kernel_args("a=\"open"),
            Err(ParamsError::UnterminatedQuote("a=\"open".into()))
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        let base = "abforge.slot=a abforge.root=/dev/vda3";
        let cases: &[(&str, &str)] = &[
            ("abforge.root=/dev/vda3", "abforge.slot is missing"),
            ("abforge.slot=a", "abforge.root is missing"),
            (&format!("{base} abforge.rooot=x"), "unknown kernel parameter abforge.rooot"),
            (&format!("{base} abforge.slot=b"), "abforge.slot is given twice"),
            (&format!("{base} abforge.verity.salt=00"), "abforge.verity.salt is given without"),
            (&format!("{base} abforge.verity.roothash=00"), "a sha256 root hash is 32 bytes"),
            (&format!("{base} abforge.wait=-1"), "abforge.wait=-1 is invalid: expected a decimal"),
            (&format!("{base} abforge.data=UUID=x"), "abforge.data=UUID=x is invalid"),
            (&format!("{base} abforge.overlays=/etc"), "abforge.overlaydir is missing"),
            (&format!("{base} abforge.overlays=etc abforge.overlaydir=/v"), "must be absolute"),
            (&format!("{base} abforge.init"), "abforge.init= is invalid: it needs a value"),
            ("abforge.slot=A abforge.root=/dev/vda3", "abforge.slot=A is invalid"),
            (&format!("{base} abforge.root=/dev/vda4"), "abforge.root is given twice"),
        ];
        for (text, expected) in cases {
            let err = parse_abforge_params(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = parse_abforge_params(
            &FULL
                .replace("restart", "x")
                .replace("hashalg=sha256", "hashalg=sha256 abforge.verity.oncorruption=maybe"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected eio, restart or panic"), "{err}");
    }
}
