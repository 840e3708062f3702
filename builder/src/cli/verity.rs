//! `abforge verity format` and `abforge verity verify`: dm-verity hash trees with
//! veritysetup's options and output, so one can replace the other.
//!
//! Differences from veritysetup, all for reproducibility or safety: the salt and
//! the UUID default to values derived from each other instead of random ones; a
//! data file whose size is not a multiple of the data block size is an error
//! (veritysetup silently leaves the tail unprotected) unless `--data-blocks`
//! says how much to cover; a HASH file created by a failed `format` is removed.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use abforge_partitions::guid::Guid;
use abforge_verity::{HashAlgorithm, Superblock, VerityError, VerityParams};
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::error::UsageError;

/// dm-verity hash trees, byte-identical to `veritysetup format`.
#[derive(Debug, Args)]
pub struct VerityArgs {
    #[command(subcommand)]
    pub command: VerityCommand,
}

#[derive(Debug, Subcommand)]
pub enum VerityCommand {
    /// Compute the hash tree of DATA and write it (with a superblock) to HASH.
    ///
    /// Prints the parameters and the `Root hash:` line like `veritysetup format`.
    /// HASH is created if missing; an existing HASH is written in place and never
    /// truncated. HASH may be DATA itself with --hash-offset past the data.
    Format(FormatArgs),
    /// Check DATA against the tree in HASH and ROOT_HASH.
    ///
    /// With a superblock, the parameters are read from it (options given must
    /// agree with it); with --no-superblock they must be repeated. Exits 1 naming
    /// the first bad data or hash block on a mismatch.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The data to protect (a file system image, a partition image...).
    pub data: PathBuf,
    /// Where the tree goes (created if missing, may be DATA itself).
    pub hash: PathBuf,
    #[command(flatten)]
    pub options: TreeOptions,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The protected data.
    pub data: PathBuf,
    /// The file holding the tree (may be DATA itself).
    pub hash: PathBuf,
    /// The root hash printed by `format`, in hex.
    pub root_hash: String,
    #[command(flatten)]
    pub options: TreeOptions,
}

#[derive(Debug, Args)]
pub struct TreeOptions {
    /// Salt in hex (up to 256 bytes), or `-` for none. Default: the 32-byte
    /// SHA-256 of "abforge verity salt\0" followed by the UUID's 16 bytes when
    /// --uuid is given (nothing otherwise), so the same options give the same
    /// tree (veritysetup picks a random salt).
    #[arg(long, value_name = "HEX|-", allow_hyphen_values = true)]
    pub salt: Option<String>,
    /// Superblock UUID. Default: derived from the salt (the first 16 bytes of
    /// SHA-256 of "abforge verity uuid\0" followed by the salt, with the
    /// version-4 bits set), instead of veritysetup's random one.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Byte offset of the hash area (superblock, then tree) in HASH, e.g. the
    /// data size when HASH is DATA. A multiple of 512 with a superblock.
    #[arg(long, value_name = "BYTES")]
    pub hash_offset: Option<u64>,
    /// Data block size in bytes: a power of two from 512 to 524288 [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub data_block_size: Option<u32>,
    /// Hash block size in bytes: a power of two from 512 to 524288 [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub hash_block_size: Option<u32>,
    /// Do not write (or expect) the superblock; verify then needs every option again.
    #[arg(long)]
    pub no_superblock: bool,
    /// Number of data blocks to protect. Default: the size of DATA (or the hash
    /// offset when HASH is DATA) divided by the data block size, which must
    /// divide it.
    #[arg(long, value_name = "N")]
    pub data_blocks: Option<u64>,
    /// Digest algorithm [default: sha256].
    #[arg(long = "hash", value_name = "ALGORITHM", value_parser = ["sha1", "sha256", "sha512"])]
    pub algorithm: Option<String>,
    /// Hash type: 1 (normal) or 0 (Chrome OS legacy) [default: 1].
    #[arg(long = "format", value_name = "0|1", value_parser = clap::value_parser!(u32).range(0..=1))]
    pub hash_type: Option<u32>,
}

/// Runs `abforge verity ...`.
pub fn run(args: VerityArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        VerityCommand::Format(args) => format(args),
        VerityCommand::Verify(args) => verify(args),
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError::new(message))
}

/// Parses hex text; `what` names the argument in the error.
fn parse_hex(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let bad = || usage(format!("{what} '{text}' is not an even number of hexadecimal digits"));
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()).ok_or_else(bad)
        })
        .collect()
}

fn parse_salt(text: &str) -> anyhow::Result<Vec<u8>> {
    if text == "-" {
        return Ok(Vec::new());
    }
    let salt = parse_hex(text, "--salt")?;
    if salt.len() > abforge_verity::MAX_SALT_SIZE {
        return Err(usage(format!(
            "--salt is {} bytes long; dm-verity allows at most 256",
            salt.len()
        )));
    }
    Ok(salt)
}

fn parse_uuid(text: &str) -> anyhow::Result<[u8; 16]> {
    let guid: Guid = text.parse().map_err(|e| usage(format!("--uuid: {e}")))?;
    Ok(guid.to_rfc_bytes())
}

/// The parameters the options ask for, with abforge's reproducible defaults.
fn params_from_options(options: &TreeOptions) -> anyhow::Result<VerityParams> {
    let uuid = options.uuid.as_deref().map(parse_uuid).transpose()?;
    let salt = match options.salt.as_deref() {
        Some(text) => parse_salt(text)?,
        None => abforge_verity::derive_salt(uuid.as_ref().map_or(&[][..], |u| &u[..])),
    };
    let uuid = uuid.unwrap_or_else(|| abforge_verity::derive_uuid(&salt));
    let params = VerityParams {
        hash_type: options.hash_type.unwrap_or(1),
        algorithm: options
            .algorithm
            .as_deref()
            .map_or(Some(HashAlgorithm::Sha256), HashAlgorithm::from_name)
            .ok_or_else(|| usage("--hash must be sha1, sha256 or sha512"))?,
        data_block_size: options.data_block_size.unwrap_or(4096),
        hash_block_size: options.hash_block_size.unwrap_or(4096),
        salt,
        uuid,
        superblock: !options.no_superblock,
    };
    params.validate().map_err(|e| usage(e.to_string()))?;
    Ok(params)
}

fn open_input(path: &Path, what: &str) -> anyhow::Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            usage(format!("{what} {} does not exist", path.display()))
        } else {
            anyhow::Error::new(e).context(format!("cannot open {what} {}", path.display()))
        }
    })
}

fn is_same_file(a: &File, b: &File) -> anyhow::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// Size of a file or block device.
fn input_size(file: &File, path: &Path) -> anyhow::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let metadata = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if metadata.is_file() {
        return Ok(metadata.len());
    }
    let mut handle = file;
    handle
        .seek(SeekFrom::End(0))
        .with_context(|| format!("cannot find the size of {}", path.display()))
}

/// The data-block count: `--data-blocks`, or the data size (the hash offset
/// when the tree follows the data in the same file) in whole blocks.
fn data_blocks(
    options: &TreeOptions,
    params: &VerityParams,
    data: &File,
    data_path: &Path,
    same_file: bool,
) -> anyhow::Result<u64> {
    if let Some(blocks) = options.data_blocks {
        if blocks == 0 {
            return Err(usage("--data-blocks must be at least 1"));
        }
        return Ok(blocks);
    }
    let block_size = u64::from(params.data_block_size);
    let (bytes, what) = if same_file {
        (options.hash_offset.unwrap_or(0), "the hash offset")
    } else {
        (input_size(data, data_path)?, "the data file's size")
    };
    if bytes == 0 {
        return Err(usage(format!(
            "{} is empty: there is nothing to protect",
            if same_file { "the area before --hash-offset" } else { "DATA" }
        )));
    }
    if bytes % block_size != 0 {
        return Err(usage(format!(
            "{what} ({bytes} bytes, {}) is not a multiple of the data block size {block_size}; \
             pass --data-blocks to protect only whole blocks",
            data_path.display()
        )));
    }
    Ok(bytes / block_size)
}

/// Wraps a library error: invalid requests exit 2, the rest 1.
fn verity_error(err: VerityError, context: String) -> anyhow::Error {
    if err.is_invalid_input() {
        usage(format!("{context}: {err}"))
    } else {
        anyhow::Error::new(err).context(context)
    }
}

fn format(args: FormatArgs) -> anyhow::Result<ExitCode> {
    let params = params_from_options(&args.options)?;
    let hash_offset = args.options.hash_offset.unwrap_or(0);
    let data = open_input(&args.data, "DATA")?;

    // Open HASH without truncating it; remember whether we created it so a
    // failure removes it again.
    let (hash, created) = match OpenOptions::new().read(true).write(true).open(&args.hash) {
        Ok(file) => (file, false),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&args.hash)
                .with_context(|| format!("cannot create hash file {}", args.hash.display()))?;
            (file, true)
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot open hash file {} for writing", args.hash.display())));
        }
    };
    let same_file = is_same_file(&data, &hash)?;
    let result = format_into(&args, &params, &data, &hash, hash_offset, same_file);
    if result.is_err() && created {
        drop(hash);
        // Best effort: the error being reported matters more than this one.
        let _ = std::fs::remove_file(&args.hash);
    }
    let output = result?;
    print_header(&args.hash, &params, &output, !same_file);
    Ok(ExitCode::SUCCESS)
}

fn format_into(
    args: &FormatArgs,
    params: &VerityParams,
    data: &File,
    hash: &File,
    hash_offset: u64,
    same_file: bool,
) -> anyhow::Result<abforge_verity::FormatOutput> {
    let blocks = data_blocks(&args.options, params, data, &args.data, same_file)?;
    let context = format!("cannot format {} into {}", args.data.display(), args.hash.display());
    let output = abforge_verity::format(data, 0, blocks, hash, hash_offset, params)
        .map_err(|e| verity_error(e, context.clone()))?;
    hash.sync_all().with_context(|| format!("cannot flush {}", args.hash.display()))?;
    Ok(output)
}

/// The lines `veritysetup format` prints (the key ones, same labels and tabs).
fn print_header(
    hash_path: &Path,
    params: &VerityParams,
    output: &abforge_verity::FormatOutput,
    separate_hash_file: bool,
) {
    let geometry = &output.geometry;
    println!("VERITY header information for {}", hash_path.display());
    if params.superblock {
        println!("UUID:            \t{}", Guid::from_rfc_bytes(params.uuid));
    } else {
        println!("UUID:            \t");
    }
    println!("Hash type:       \t{}", params.hash_type);
    println!("Data blocks:     \t{}", geometry.data_blocks());
    println!("Data block size: \t{}", params.data_block_size);
    println!("Hash blocks:     \t{}", output.hash_blocks());
    println!("Hash block size: \t{}", params.hash_block_size);
    println!("Hash algorithm:  \t{}", params.algorithm.name());
    if params.salt.is_empty() {
        println!("Salt:            \t-");
    } else {
        println!("Salt:            \t{}", abforge_verity::to_hex(&params.salt));
    }
    println!("Root hash:      \t{}", abforge_verity::to_hex(&output.root_hash));
    if separate_hash_file {
        println!("Hash device size: \t{} [bytes]", output.hash_end());
    }
}

/// With a superblock, each option given must agree with what it records.
fn check_option_agrees(
    options: &TreeOptions,
    sb: &Superblock,
    hash_path: &Path,
) -> anyhow::Result<()> {
    let disagree = |option: &str, given: String, found: String| {
        Err(usage(format!(
            "{option} {given} differs from the superblock of {}, which says {found}",
            hash_path.display()
        )))
    };
    if let Some(text) = options.salt.as_deref() {
        let salt = parse_salt(text)?;
        if salt != sb.salt {
            return disagree("--salt", text.to_string(), abforge_verity::to_hex(&sb.salt));
        }
    }
    if let Some(size) = options.data_block_size.filter(|&s| s != sb.data_block_size) {
        return disagree("--data-block-size", size.to_string(), sb.data_block_size.to_string());
    }
    if let Some(size) = options.hash_block_size.filter(|&s| s != sb.hash_block_size) {
        return disagree("--hash-block-size", size.to_string(), sb.hash_block_size.to_string());
    }
    if let Some(blocks) = options.data_blocks.filter(|&n| n != sb.data_blocks) {
        return disagree("--data-blocks", blocks.to_string(), sb.data_blocks.to_string());
    }
    if let Some(name) = options.algorithm.as_deref().filter(|&n| n != sb.algorithm.name()) {
        return disagree("--hash", name.to_string(), sb.algorithm.name().to_string());
    }
    if let Some(hash_type) = options.hash_type.filter(|&t| t != sb.hash_type) {
        return disagree("--format", hash_type.to_string(), sb.hash_type.to_string());
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let data = open_input(&args.data, "DATA")?;
    let hash = open_input(&args.hash, "HASH")?;
    let hash_offset = args.options.hash_offset.unwrap_or(0);
    let root_hash = parse_hex(&args.root_hash, "ROOT_HASH")?;
    let same_file = is_same_file(&data, &hash)?;

    let (params, blocks) = if args.options.no_superblock {
        let params = params_from_options(&args.options)?;
        let blocks = data_blocks(&args.options, &params, &data, &args.data, same_file)?;
        (params, blocks)
    } else {
        if let Some(text) = args.options.uuid.as_deref() {
            parse_uuid(text)?;
        }
        let sb = abforge_verity::read_superblock(&hash, hash_offset).map_err(|e| {
            verity_error(e, format!("cannot read the verity superblock of {}", args.hash.display()))
        })?;
        check_option_agrees(&args.options, &sb, &args.hash)?;
        (VerityParams::from_superblock(&sb), sb.data_blocks)
    };
    if root_hash.len() != params.algorithm.digest_size() {
        return Err(usage(format!(
            "ROOT_HASH has {} bytes, but {} digests have {}",
            root_hash.len(),
            params.algorithm.name(),
            params.algorithm.digest_size()
        )));
    }
    abforge_verity::verify(&data, 0, blocks, &hash, hash_offset, &params, &root_hash).map_err(
        |e| {
            verity_error(
                e,
                format!(
                    "verification of {} against {} failed",
                    args.data.display(),
                    args.hash.display()
                ),
            )
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex("00aB", "x").unwrap(), vec![0x00, 0xab]);
        assert!(parse_hex("abc", "x").is_err());
        assert!(parse_hex("zz", "x").is_err());
        assert!(parse_hex("é1", "x").is_err());
        assert_eq!(parse_salt("-").unwrap(), Vec::<u8>::new());
        assert!(parse_salt(&"ab".repeat(257)).is_err());
        assert_eq!(parse_salt(&"ab".repeat(256)).unwrap().len(), 256);
    }
}
