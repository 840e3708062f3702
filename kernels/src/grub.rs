//! GRUB configuration for A/B boot: per-slot `grub.cfg`, the ESP selector, and the
//! GRUB environment block that holds the selector's state.
//!
//! Follows GRUB 2.06 (Debian bookworm's grub-efi-amd64-bin): the script language of
//! the GRUB manual ("Shell-like scripting"), `load_env`/`save_env`, `search`,
//! `configfile`, `default`/`fallback`, and the environment block format of
//! `grub-core/lib/envblk.c`. Only these GRUB modules are needed: part_gpt fat ext2
//! search search_fs_file search_fs_uuid configfile echo test loadenv linux normal
//! (plus serial terminal for a serial console).
//!
//! # The boot chain
//!
//! 1. Firmware runs `\EFI\BOOT\BOOTX64.EFI` from an ESP (the first, normally): a
//!    GRUB image made by `grub-mkstandalone` (with the `regexp` module) whose
//!    **embedded config** must do exactly [`EMBEDDED_CONFIG`]:
//!    ```text
//!    regexp --set=1:root '^(\([^)]*\))' "$cmdpath"
//!    if [ -f /EFI/abforge/select.cfg ]; then configfile /EFI/abforge/select.cfg; fi
//!    search --no-floppy --file --set=root /EFI/abforge/select.cfg
//!    configfile /EFI/abforge/select.cfg
//!    ```
//!    that is: run the selector of the ESP GRUB was loaded from (`$cmdpath` is
//!    `(hd0,gpt1)/EFI/BOOT`), and search for one only if that ESP has none. Both
//!    ESPs carry the selector and `search` takes whichever GRUB's device order
//!    finds first (seen: the second ESP under OVMF), so without the first line
//!    the state `abforge slot` edits (on the first ESP) and the state GRUB reads
//!    could differ. The binary carries nothing specific to an image, so one build
//!    of it serves every image.
//! 2. The selector (`EFI/abforge/select.cfg`, [`render_selector`]) keeps `$root` (that
//!    ESP), loads its state from `EFI/abforge/grubenv` on the same ESP, picks the slot
//!    (below), and runs a menu entry per slot with `default` = the chosen slot and
//!    `fallback` = the others. Each entry finds its slot's Boot partition with
//!    `search --fs-uuid` (the ext4 UUID of Boot{SLOT}, derived from the image seed, so
//!    unique to the image and known at build time; GRUB 2.06 cannot search by GPT
//!    partition UUID, and labels or marker files could match another disk), sets
//!    `root` to it and runs its `/abforge/grub.cfg` with `configfile`.
//! 3. The slot config ([`render_slot_config`]) checks that kernel and initrd exist,
//!    loads them with the slot's command line (its root hash included) and boots. If
//!    the partition, the config, the kernel or the initrd is missing, the entry
//!    returns without a loaded kernel and GRUB boots the `fallback` entry: the
//!    other slot.
//!
//! # A/B state (environment block variables)
//!
//! - `abforge_default`: the committed slot, booted normally.
//! - `abforge_try`: a slot to boot once (set by `abforge slot set-next`), empty if none.
//! - `abforge_tried`: set by the selector to `abforge_try` when it starts that try.
//!
//! At each boot: if `abforge_try` is set and differs from `abforge_tried`, the selector
//! saves `abforge_tried=<try>` and boots the try slot. If they are equal, that try
//! already had its one boot and was not committed: the selector clears both and boots
//! `abforge_default` (the previous slot). Committing ([`SlotState::commit`], offline
//! with `abforge slot commit` or by the booted system with `grub-editenv`) makes the
//! tried slot the default and clears the try. [`SlotState::next_boot`] is the same
//! logic in Rust, used for `slot status` and tested against the script's intent.
//!
//! Left out: boot counting for the default slot (a default slot that fails after the
//! kernel started, like a verity error found by the init, reboots into itself; the
//! try mechanism is what protects an update), Secure Boot (`shim`), menus for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use abforge_partitions::Guid;

use crate::cmdline::{CmdlineError, Param};
use crate::slot::Slot;

/// Where the selector lives on the ESP (what the embedded config searches for).
pub const SELECTOR_PATH: &str = "/EFI/abforge/select.cfg";
/// Where the environment block lives on the ESP.
pub const ENVBLK_PATH: &str = "/EFI/abforge/grubenv";
/// Where each slot's config lives on its Boot partition.
pub const SLOT_CONFIG_PATH: &str = "/abforge/grub.cfg";
/// The embedded config of the GRUB EFI binary (see the module comment).
pub const EMBEDDED_CONFIG: &str = "regexp --set=1:root '^(\\([^)]*\\))' \"$cmdpath\"\n\
if [ -f /EFI/abforge/select.cfg ]; then configfile /EFI/abforge/select.cfg; fi\n\
search --no-floppy --file --set=root /EFI/abforge/select.cfg\n\
configfile /EFI/abforge/select.cfg\n";

/// Environment variable: the committed slot.
pub const VAR_DEFAULT: &str = "abforge_default";
/// Environment variable: the slot to boot once.
pub const VAR_TRY: &str = "abforge_try";
/// Environment variable: the try the selector has started.
pub const VAR_TRIED: &str = "abforge_tried";

/// Why a GRUB configuration or environment block could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubError {
    #[error(
        "kernel parameter '{0}' cannot pass through GRUB: GRUB escapes ' and \\ with a backslash, which the kernel keeps"
    )]
    UnpassableParam(String),
    #[error("'{path}' cannot be used as a GRUB path: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("the selector needs at least one slot, and each slot once")]
    InvalidSlots,
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error(
        "not a GRUB environment block: it must start with '# GRUB Environment Block' and a newline"
    )]
    EnvBadSignature,
    #[error("GRUB environment block line {line}: {reason}")]
    EnvSyntax { line: usize, reason: &'static str },
    #[error(
        "GRUB environment variable name '{0}' is invalid: use letters, digits and '_', not starting with a digit"
    )]
    EnvBadName(String),
    #[error("the GRUB environment needs {needed} bytes, more than the {size}-byte block")]
    EnvTooBig { needed: usize, size: usize },
    #[error("GRUB environment variable {name} is '{value}', which is not a slot name")]
    EnvBadSlot { name: &'static str, value: String },
    #[error("no slot is being tried, so there is nothing to commit")]
    NothingToCommit,
}

/// What goes into one slot's `grub.cfg` on its Boot partition.
#[derive(Clone, Debug)]
pub struct SlotConfig {
    pub slot: Slot,
    /// Kernel path on the Boot partition (`/vmlinuz-6.1.0-26-amd64`).
    pub kernel: String,
    /// Initrd path on the Boot partition.
    pub initrd: String,
    /// The complete kernel command line, in order.
    pub params: Vec<Param>,
}

/// One slot as the selector sees it.
#[derive(Clone, Debug)]
pub struct SelectorSlot {
    pub slot: Slot,
    /// The file-system UUID of the slot's Boot partition (ext4 `s_uuid`).
    pub boot_fs_uuid: Guid,
}

/// What goes into the ESP selector.
#[derive(Clone, Debug)]
pub struct SelectorConfig {
    /// Slots in order; the first is booted when the state names no known slot.
    pub slots: Vec<SelectorSlot>,
    /// Seconds the (hidden) menu waits; 0 boots at once.
    pub timeout_seconds: u32,
    /// Also use the first serial port (115200 baud) for GRUB's console.
    pub serial_console: bool,
}

/// Quotes a word for GRUB's script language: single quotes when it holds anything
/// but plain characters. A `'` cannot be inside single quotes, so it is refused.
fn grub_word(word: &str) -> Option<String> {
    if word.contains('\'') {
        return None;
    }
    let plain = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.,:/=+@%".contains(&b));
    Some(if plain { word.to_string() } else { format!("'{word}'") })
}

fn check_grub_path(path: &str) -> Result<(), GrubError> {
    let reason = if !path.starts_with('/') {
        "it must be absolute on its partition"
    } else if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./+".contains(&b)) {
        "use only letters, digits and - _ . / +"
    } else if path.split('/').any(|c| c == "..") {
        "'..' is not allowed"
    } else {
        return Ok(());
    };
    Err(GrubError::InvalidPath { path: path.to_string(), reason })
}

/// Renders one kernel parameter as a GRUB `linux` argument. GRUB hands the argument
/// to the kernel quoted as a whole (`"key=a b"`) when it contains a space, which the
/// kernel reads as `key` = `a b`; it escapes `'`, `"` and `\` with a backslash, which
/// the kernel does not undo, so those are refused.
fn grub_kernel_arg(param: &Param) -> Result<String, GrubError> {
    let kernel_form = match param.value() {
        None => param.key().to_string(),
        Some(value) => format!("{}={value}", param.key()),
    };
    if kernel_form.contains(['\\', '"']) {
        return Err(GrubError::UnpassableParam(kernel_form));
    }
    grub_word(&kernel_form).ok_or(GrubError::UnpassableParam(kernel_form))
}

/// The `grub.cfg` of one slot's Boot partition. `root` must already be that
/// partition (the selector sets it). The command line is checked against the
/// kernel's length limit.
pub fn render_slot_config(config: &SlotConfig) -> Result<String, GrubError> {
    check_grub_path(&config.kernel)?;
    check_grub_path(&config.initrd)?;
    let mut line = crate::cmdline::Cmdline::new();
    // The caller's list is used as given; this only checks the length.
    for param in &config.params {
        line.allow_repeated(param.key());
        line.push(param.clone())?;
    }
    line.render()?;
    let args: Vec<String> = config.params.iter().map(grub_kernel_arg).collect::<Result<_, _>>()?;
    let slot = config.slot.as_str();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "# abforge: slot {slot}. Generated; the command line carries this slot's root parameters.\n\
         set abforge_slot={slot}\n\
         if [ -f {kernel} ]; then\n\
         \x20 if [ -f {initrd} ]; then\n\
         \x20   echo \"abforge: booting slot {slot}\"\n\
         \x20   linux {kernel} {args}\n\
         \x20   initrd {initrd}\n\
         \x20   boot\n\
         \x20 fi\n\
         fi\n\
         echo \"abforge: slot {slot}: cannot load {kernel} and {initrd}\"\n",
        kernel = config.kernel,
        initrd = config.initrd,
        args = args.join(" "),
    );
    Ok(out)
}

/// The ESP selector `EFI/abforge/select.cfg` (see the module comment for its logic).
pub fn render_selector(config: &SelectorConfig) -> Result<String, GrubError> {
    let slots = &config.slots;
    if slots.is_empty()
        || (1..slots.len()).any(|i| slots[..i].iter().any(|s| s.slot == slots[i].slot))
    {
        return Err(GrubError::InvalidSlots);
    }
    let first = slots[0].slot.as_str();
    let mut out = String::new();
    // Writing to a String cannot fail, so the results of write! are ignored below.
    let _ = writeln!(
        out,
        "# abforge A/B selector. Generated; its state is in {ENVBLK_PATH} on this ESP."
    );
    let _ = writeln!(
        out,
        "# {VAR_DEFAULT}: committed slot; {VAR_TRY}: slot to boot once; {VAR_TRIED}: try started."
    );
    if config.serial_console {
        out.push_str(
            "serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n",
        );
    }
    let _ = write!(
        out,
        "set abforge_esp=\"$root\"\n\
         set abforge_env=\"($abforge_esp){ENVBLK_PATH}\"\n\
         set {VAR_DEFAULT}={first}\n\
         set {VAR_TRY}=\n\
         set {VAR_TRIED}=\n\
         load_env --file \"$abforge_env\" {VAR_DEFAULT} {VAR_TRY} {VAR_TRIED}\n\
         set abforge_boot=\"${VAR_DEFAULT}\"\n\
         if [ -n \"${VAR_TRY}\" ]; then\n\
         \x20 if [ \"${VAR_TRIED}\" = \"${VAR_TRY}\" ]; then\n\
         \x20   echo \"abforge: slot ${VAR_TRY} was tried and not committed: back to slot ${VAR_DEFAULT}\"\n\
         \x20   set {VAR_TRY}=\n\
         \x20   set {VAR_TRIED}=\n\
         \x20   save_env --file \"$abforge_env\" {VAR_TRY} {VAR_TRIED}\n\
         \x20 else\n\
         \x20   echo \"abforge: trying slot ${VAR_TRY} once\"\n\
         \x20   set {VAR_TRIED}=\"${VAR_TRY}\"\n\
         \x20   save_env --file \"$abforge_env\" {VAR_TRIED}\n\
         \x20   set abforge_boot=\"${VAR_TRY}\"\n\
         \x20 fi\n\
         fi\n\
         set timeout={timeout}\n\
         set timeout_style=hidden\n",
        timeout = config.timeout_seconds,
    );
    // default = the chosen slot's entry, fallback = the others in order.
    for (index, entry) in slots.iter().enumerate() {
        let keyword = if index == 0 { "if" } else { "elif" };
        let fallback: Vec<String> =
            (0..slots.len()).filter(|i| *i != index).map(|i| i.to_string()).collect();
        let _ = write!(
            out,
            "{keyword} [ \"$abforge_boot\" = \"{slot}\" ]; then\n\
             \x20 set default={index}\n\
             \x20 set fallback=\"{fallback}\"\n",
            slot = entry.slot,
            fallback = fallback.join(" "),
        );
    }
    let _ = write!(
        out,
        "else\n\
         \x20 echo \"abforge: unknown slot '$abforge_boot': booting slot {first}\"\n\
         \x20 set default=0\n\
         \x20 set fallback=\"{}\"\n\
         fi\n",
        (1..slots.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
    );
    for entry in slots {
        let slot = entry.slot.as_str();
        let uuid = entry.boot_fs_uuid;
        let _ = write!(
            out,
            "menuentry \"abforge slot {slot}\" --id abforge_{slot} {{\n\
             \x20 if search --no-floppy --fs-uuid --set=abforge_slotdev {uuid}; then\n\
             \x20   set root=\"$abforge_slotdev\"\n\
             \x20   configfile {SLOT_CONFIG_PATH}\n\
             \x20 else\n\
             \x20   echo \"abforge: the Boot partition of slot {slot} (file system {uuid}) is missing\"\n\
             \x20 fi\n\
             }}\n"
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Environment block
// ---------------------------------------------------------------------------

/// Size of the environment block grub-editenv creates.
pub const ENVBLK_SIZE: usize = 1024;
/// The first line of an environment block.
pub const ENVBLK_SIGNATURE: &[u8] = b"# GRUB Environment Block\n";
/// The comment grub-editenv (2.06) writes after the signature; rendered blocks carry
/// it too, so an empty block is byte-identical to `grub-editenv FILE create`.
pub const ENVBLK_WARNING: &[u8] =
    b"# WARNING: Do not edit this file by tools other than grub-editenv!!!\n";

/// Reads an environment block: the signature, then `name=value` lines (values with
/// `\` escapes undone), `#` comment lines, and the `#` padding. A variable set twice
/// keeps its last value, as `load_env` does.
pub fn parse_envblk(block: &[u8]) -> Result<BTreeMap<String, String>, GrubError> {
    let body = block.strip_prefix(ENVBLK_SIGNATURE).ok_or(GrubError::EnvBadSignature)?;
    let mut vars = BTreeMap::new();
    let mut pos = 0;
    let mut line = 1; // the signature
    while pos < body.len() {
        line += 1;
        let syntax = |reason| GrubError::EnvSyntax { line, reason };
        if body[pos] == b'#' {
            // A comment or the padding: up to the next newline or the end.
            pos = body[pos..].iter().position(|&b| b == b'\n').map_or(body.len(), |n| pos + n + 1);
            continue;
        }
        let name_len = body[pos..]
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .filter(|&n| body[pos + n] == b'=')
            .ok_or(syntax("expected name=value"))?;
        let name = std::str::from_utf8(&body[pos..pos + name_len])
            .map_err(|_| syntax("the name is not UTF-8"))?;
        check_env_name(name)?;
        pos += name_len + 1;
        let mut value = Vec::new();
        loop {
            match body.get(pos) {
                None => return Err(syntax("the value does not end with a newline")),
                Some(b'\n') => {
                    pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped =
                        *body.get(pos + 1).ok_or(syntax("the block ends inside an escape"))?;
                    value.push(escaped);
                    pos += 2;
                }
                Some(&b) => {
                    value.push(b);
                    pos += 1;
                }
            }
        }
        let value = String::from_utf8(value).map_err(|_| syntax("the value is not UTF-8"))?;
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

fn check_env_name(name: &str) -> Result<(), GrubError> {
    let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid { Ok(()) } else { Err(GrubError::EnvBadName(name.to_string())) }
}

/// Renders variables (in name order, after the signature and grub-editenv's warning
/// comment) into a block of `size` bytes padded with `#`.
fn render_envblk_sized(vars: &BTreeMap<String, String>, size: usize) -> Result<Vec<u8>, GrubError> {
    let mut out = ENVBLK_SIGNATURE.to_vec();
    out.extend_from_slice(ENVBLK_WARNING);
    for (name, value) in vars {
        check_env_name(name)?;
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        for &b in value.as_bytes() {
            // GRUB escapes a backslash and a newline with a backslash.
            if b == b'\\' || b == b'\n' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    if out.len() > size {
        return Err(GrubError::EnvTooBig { needed: out.len(), size });
    }
    out.resize(size, b'#');
    Ok(out)
}

/// A 1024-byte environment block holding `vars` (in name order), as grub-editenv makes.
pub fn render_envblk(vars: &BTreeMap<String, String>) -> Result<[u8; ENVBLK_SIZE], GrubError> {
    let bytes = render_envblk_sized(vars, ENVBLK_SIZE)?;
    let mut block = [b'#'; ENVBLK_SIZE];
    block.copy_from_slice(&bytes);
    Ok(block)
}

/// One change to an environment block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvEdit {
    Set(String, String),
    Unset(String),
}

/// Applies `edits` to a block and returns the new block, the same size as the old one
/// (so it can be written back in place, which is what `save_env` needs).
pub fn edit_envblk(block: &[u8], edits: &[EnvEdit]) -> Result<Vec<u8>, GrubError> {
    let mut vars = parse_envblk(block)?;
    for edit in edits {
        match edit {
            EnvEdit::Set(name, value) => {
                vars.insert(name.clone(), value.clone());
            }
            EnvEdit::Unset(name) => {
                vars.remove(name);
            }
        }
    }
    render_envblk_sized(&vars, block.len())
}

/// The A/B state held in the environment block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    pub default: Slot,
    pub try_slot: Option<Slot>,
    pub tried: Option<Slot>,
}

impl SlotState {
    /// A fresh image: `default` boots, nothing to try.
    pub fn new(default: Slot) -> SlotState {
        SlotState { default, try_slot: None, tried: None }
    }

    /// Reads the state from environment variables; a missing `abforge_default` means
    /// `first_slot`, as in the selector.
    pub fn from_env(
        vars: &BTreeMap<String, String>,
        first_slot: &Slot,
    ) -> Result<SlotState, GrubError> {
        let slot = |name: &'static str| -> Result<Option<Slot>, GrubError> {
            match vars.get(name).map(String::as_str) {
                None | Some("") => Ok(None),
                Some(value) => value
                    .parse()
                    .map(Some)
                    .map_err(|_| GrubError::EnvBadSlot { name, value: value.to_string() }),
            }
        };
        Ok(SlotState {
            default: slot(VAR_DEFAULT)?.unwrap_or_else(|| first_slot.clone()),
            try_slot: slot(VAR_TRY)?,
            tried: slot(VAR_TRIED)?,
        })
    }

    /// Writes the state into environment variables (empty values for "none", as the
    /// selector's `save_env` leaves them).
    pub fn to_env(&self, vars: &mut BTreeMap<String, String>) {
        let text = |slot: &Option<Slot>| slot.as_ref().map(Slot::to_string).unwrap_or_default();
        vars.insert(VAR_DEFAULT.to_string(), self.default.to_string());
        vars.insert(VAR_TRY.to_string(), text(&self.try_slot));
        vars.insert(VAR_TRIED.to_string(), text(&self.tried));
    }

    /// A fresh 1024-byte environment block for this state.
    pub fn render_envblk(&self) -> Result<[u8; ENVBLK_SIZE], GrubError> {
        let mut vars = BTreeMap::new();
        self.to_env(&mut vars);
        render_envblk(&vars)
    }

    /// Marks `slot` to be booted once at the next boot.
    pub fn set_next(&mut self, slot: Slot) {
        self.try_slot = Some(slot);
        self.tried = None;
    }

    /// Makes the slot being tried the default and clears the try; returns it.
    pub fn commit(&mut self) -> Result<Slot, GrubError> {
        let slot = self.try_slot.take().ok_or(GrubError::NothingToCommit)?;
        self.tried = None;
        self.default = slot.clone();
        Ok(slot)
    }

    /// Which slot the next boot starts, without changing anything.
    pub fn next_boot(&self) -> Slot {
        self.clone().boot()
    }

    /// What the selector does at one boot: updates the state as its `save_env` does
    /// and returns the slot it starts.
    pub fn boot(&mut self) -> Slot {
        match &self.try_slot {
            Some(try_slot) if self.tried.as_ref() == Some(try_slot) => {
                self.try_slot = None;
                self.tried = None;
                self.default.clone()
            }
            Some(try_slot) => {
                let slot = try_slot.clone();
                self.tried = Some(slot.clone());
                slot
            }
            None => self.default.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_config() -> SlotConfig {
        SlotConfig {
            slot: Slot::a(),
            kernel: "/vmlinuz-6.1.0-26-amd64".into(),
            initrd: "/initrd.img-6.1.0-26-amd64".into(),
            params: vec![
                Param::new("console", "ttyS0,115200").unwrap(),
                Param::new("abforge.slot", "a").unwrap(),
                Param::new("msg", "two words").unwrap(),
                Param::flag("quiet").unwrap(),
            ],
        }
    }

    fn selector() -> SelectorConfig {
        SelectorConfig {
            slots: vec![
                SelectorSlot {
                    slot: Slot::a(),
                    boot_fs_uuid: "0a0a0a0a-0000-4000-8000-000000000001".parse().unwrap(),
                },
                SelectorSlot {
                    slot: Slot::b(),
                    boot_fs_uuid: "0b0b0b0b-0000-4000-8000-000000000002".parse().unwrap(),
                },
            ],
            timeout_seconds: 0,
            serial_console: true,
        }
    }

    #[test]
    fn slot_config_loads_kernel_and_initrd_with_quoted_args() {
        let text = render_slot_config(&slot_config()).unwrap();
        assert!(
            text.contains(
                "    linux /vmlinuz-6.1.0-26-amd64 console=ttyS0,115200 abforge.slot=a 'msg=two words' quiet\n"
            ),
            "{text}"
        );
        assert!(text.contains("    initrd /initrd.img-6.1.0-26-amd64\n    boot\n"), "{text}");
        assert!(text.contains("if [ -f /vmlinuz-6.1.0-26-amd64 ]; then"), "{text}");
    }

    #[test]
    fn slot_config_refuses_what_grub_cannot_pass() {
        let mut config = slot_config();
        config.params.push(Param::new("x", "it's").unwrap());
        assert!(
            matches!(render_slot_config(&config), Err(GrubError::UnpassableParam(p)) if p == "x=it's")
        );
        let mut config = slot_config();
        config.params.push(Param::new("x", "a\\b").unwrap());
        assert!(render_slot_config(&config).is_err());
        let mut config = slot_config();
        config.kernel = "vmlinuz".into();
        assert!(matches!(render_slot_config(&config), Err(GrubError::InvalidPath { .. })));
        let mut config = slot_config();
        config.kernel = "/boot/$x".into();
        assert!(render_slot_config(&config).is_err());
        let mut config = slot_config();
        config.params.push(Param::new("big", &"x".repeat(2100)).unwrap());
        assert!(matches!(
            render_slot_config(&config),
            Err(GrubError::Cmdline(CmdlineError::TooLong { .. }))
        ));
    }

    #[test]
    fn selector_has_entries_default_and_fallback() {
        let text = render_selector(&selector()).unwrap();
        for needle in [
            "set abforge_env=\"($abforge_esp)/EFI/abforge/grubenv\"",
            "load_env --file \"$abforge_env\" abforge_default abforge_try abforge_tried",
            "save_env --file \"$abforge_env\" abforge_tried",
            "save_env --file \"$abforge_env\" abforge_try abforge_tried",
            "if [ \"$abforge_boot\" = \"a\" ]; then\n  set default=0\n  set fallback=\"1\"\n",
            "elif [ \"$abforge_boot\" = \"b\" ]; then\n  set default=1\n  set fallback=\"0\"\n",
            "menuentry \"abforge slot b\" --id abforge_b {\n  if search --no-floppy --fs-uuid --set=abforge_slotdev 0b0b0b0b-0000-4000-8000-000000000002; then",
            "    configfile /abforge/grub.cfg\n",
            "serial --unit=0 --speed=115200",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let mut twice = selector();
        twice.slots[1].slot = Slot::a();
        assert_eq!(render_selector(&twice), Err(GrubError::InvalidSlots));
        assert_eq!(
            render_selector(&SelectorConfig { slots: vec![], ..selector() }),
            Err(GrubError::InvalidSlots)
        );
    }

    #[test]
    fn envblk_renders_and_parses() {
        let mut vars = BTreeMap::new();
        vars.insert("abforge_default".to_string(), "a".to_string());
        vars.insert("odd".to_string(), "back\\slash\nnewline".to_string());
        vars.insert("empty".to_string(), String::new());
        let block = render_envblk(&vars).unwrap();
        assert_eq!(block.len(), 1024);
        let expected_start = b"# GRUB Environment Block\n\
            # WARNING: Do not edit this file by tools other than grub-editenv!!!\nabforge_default=a\nempty=\nodd=back\\\\slash\\\nnewline\n###";
        assert_eq!(&block[..expected_start.len()], expected_start);
        assert!(block[expected_start.len()..].iter().all(|&b| b == b'#'));
        assert_eq!(parse_envblk(&block).unwrap(), vars);
    }

    #[test]
    fn envblk_errors() {
        assert_eq!(parse_envblk(b"# GRUB Environment\n"), Err(GrubError::EnvBadSignature));
        assert!(matches!(
            parse_envblk(b"# GRUB Environment Block\nnovalue\n###"),
            Err(GrubError::EnvSyntax { line: 2, .. })
        ));
        assert!(matches!(
            parse_envblk(b"# GRUB Environment Block\na=b"),
            Err(GrubError::EnvSyntax { .. })
        ));
        let mut vars = BTreeMap::new();
        vars.insert("big".to_string(), "x".repeat(1000));
        let err = render_envblk(&vars).unwrap_err();
        assert_eq!(err, GrubError::EnvTooBig { needed: 1099, size: 1024 });
        assert!(err.to_string().contains("1099 bytes"), "{err}");
        vars.clear();
        vars.insert("bad name".to_string(), "x".into());
        assert!(matches!(render_envblk(&vars), Err(GrubError::EnvBadName(_))));
    }

    #[test]
    fn envblk_edit_keeps_the_size() {
        let block = SlotState::new(Slot::a()).render_envblk().unwrap();
        let edited = edit_envblk(
            &block,
            &[EnvEdit::Set(VAR_TRY.into(), "b".into()), EnvEdit::Unset(VAR_TRIED.into())],
        )
        .unwrap();
        assert_eq!(edited.len(), 1024);
        let vars = parse_envblk(&edited).unwrap();
        assert_eq!(vars.get(VAR_TRY).map(String::as_str), Some("b"));
        assert!(!vars.contains_key(VAR_TRIED));
        // A larger block (grub-editenv accepts any size) stays its size.
        let mut big = block.to_vec();
        big.extend_from_slice(&[b'#'; 1024]);
        assert_eq!(edit_envblk(&big, &[]).unwrap().len(), 2048);
    }

    #[test]
    fn one_shot_try_then_back_to_default() {
        let mut state = SlotState::new(Slot::a());
        assert_eq!(state.boot(), Slot::a());
        state.set_next(Slot::b());
        assert_eq!(state.next_boot(), Slot::b());
        assert_eq!(state.boot(), Slot::b()); // the one try
        assert_eq!(state.tried, Some(Slot::b()));
        assert_eq!(state.boot(), Slot::a()); // not committed: back
        assert_eq!(state, SlotState::new(Slot::a()));
        assert_eq!(state.boot(), Slot::a());
    }

    #[test]
    fn commit_makes_the_try_default() {
        let mut state = SlotState::new(Slot::a());
        assert_eq!(state.commit(), Err(GrubError::NothingToCommit));
        state.set_next(Slot::b());
        assert_eq!(state.boot(), Slot::b());
        assert_eq!(state.commit(), Ok(Slot::b()));
        assert_eq!(state, SlotState::new(Slot::b()));
        assert_eq!(state.boot(), Slot::b());
        assert_eq!(state.boot(), Slot::b());
    }

    #[test]
    fn state_round_trips_through_the_environment() {
        let mut state = SlotState::new(Slot::a());
        state.set_next(Slot::b());
        state.boot();
        let block = state.render_envblk().unwrap();
        let back = SlotState::from_env(&parse_envblk(&block).unwrap(), &Slot::a()).unwrap();
        assert_eq!(back, state);
        let empty = parse_envblk(&render_envblk(&BTreeMap::new()).unwrap()).unwrap();
        assert_eq!(SlotState::from_env(&empty, &Slot::b()).unwrap(), SlotState::new(Slot::b()));
        let mut bad = BTreeMap::new();
        bad.insert(VAR_TRY.to_string(), "B!".to_string());
        assert!(matches!(SlotState::from_env(&bad, &Slot::a()), Err(GrubError::EnvBadSlot { .. })));
    }

    #[test]
    fn embedded_config_points_at_the_selector() {
        assert!(EMBEDDED_CONFIG.contains(&format!("--file --set=root {SELECTOR_PATH}")));
        assert!(EMBEDDED_CONFIG.contains(&format!("configfile {SELECTOR_PATH}")));
    }
}
