//! Reads a tar archive (plain, gzip or zstd) into a [`FileTree`].
//!
//! Format: POSIX.1-2017 `pax` (the ustar header plus pax extended headers, typeflags
//! `x` and `g`), and the GNU tar extensions found in root file-system archives:
//! long names and link names (`L`, `K`), base-256 numbers, the GNU magic, dump
//! directories (`D`, read as plain directories). Pax records used: `path`,
//! `linkpath`, `size`, `uid`, `gid`, `mtime` (with nanoseconds) and
//! `SCHILY.xattr.<name>` (raw xattr values, as GNU tar and libarchive write them)
//! and `LIBARCHIVE.xattr.<%-escaped name>` (base64 values, libarchive).
//!
//! Semantics follow extraction with `tar -x --numeric-owner`: a later entry for the
//! same path wins (a directory entry over a directory only updates its metadata), a
//! hard-link entry names an earlier entry, directories the archive implies but
//! does not list get [`SourceOptions::implicit_dir_meta`], and an entry `.`/`./`
//! gives the root its metadata. `./` prefixes are accepted; absolute paths and `..`
//! components are refused, naming the entry.
//!
//! Left out, on purpose: sparse members (GNU `S` and `GNU.sparse.*`; refused with a
//! message, since GNU tar writes them only with `--sparse`), multi-volume members,
//! user and group names (numeric ids only, so a build never depends on the host's
//! user database). POSIX ACLs in the text form of `tar --acls` (`SCHILY.acl.*`) are
//! refused with a message rather than dropped (a directory source carries them as
//! `system.posix_acl_*` xattrs).
//!
//! A plain archive is never copied: file contents are byte ranges of it, read with
//! positioned reads. A compressed archive is decompressed once, while it is parsed,
//! and only the member contents go to an unlinked temporary file, whose byte
//! ranges then serve as contents. Memory stays bounded either way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use abforge_partitions::tree::{
    Content, ContentSource, FileTree, Metadata, Node, NodeKind, Timestamp, TreeError,
};
use anyhow::Context;

use super::SourceOptions;
use crate::error::UsageError;

/// Size of a tar block: headers and member data are padded to it.
const BLOCK: usize = 512;
const BLOCK_U64: u64 = 512;
/// Largest pax header or GNU long name read into memory. Real ones are a few
/// KiB (xattr values are at most 64 KiB each).
const MAX_EXTENSION_LEN: u64 = 16 << 20;
/// How much a plain archive is read ahead when looking for headers.
const READ_AHEAD: usize = 256 << 10;

/// Reads `path`, a tar archive, possibly gzip- or zstd-compressed.
pub fn load_archive(path: &Path, opts: &SourceOptions) -> anyhow::Result<FileTree> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot read the archive '{name}'"))?;
    let len = file.metadata().with_context(|| format!("cannot read the archive '{name}'"))?.len();
    let mut head = [0u8; BLOCK];
    let head_len = read_up_to(&file, &mut head, 0)
        .with_context(|| format!("cannot read the archive '{name}'"))?;
    let head = &head[..head_len];

    let not_tar = |what: &str| -> anyhow::Error {
        UsageError::new(format!(
            "source '{name}' is {what}, not a directory or a tar archive (.tar, .tar.gz, .tar.zst)"
        ))
        .into()
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        let temp = scratch_file(opts, &name)?;
        let decoder = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(READ_AHEAD, file));
        let input = StreamInput::new(BufReader::with_capacity(READ_AHEAD, decoder), temp);
        build(input, &name, "gzip-compressed ", opts)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let temp = scratch_file(opts, &name)?;
        let decoder = zstd::stream::read::Decoder::new(file)
            .with_context(|| format!("cannot start decompressing '{name}'"))?;
        let input = StreamInput::new(BufReader::with_capacity(READ_AHEAD, decoder), temp);
        build(input, &name, "zstd-compressed ", opts)
    } else if head.starts_with(b"\xfd7zXZ\0") {
        Err(not_tar("xz-compressed (only gzip and zstd are supported)"))
    } else if head.starts_with(b"BZh") {
        Err(not_tar("bzip2-compressed (only gzip and zstd are supported)"))
    } else if head.is_empty() {
        Err(not_tar("an empty file"))
    } else if head.len() == BLOCK && (head.iter().all(|&b| b == 0) || checksum_matches(head)) {
        let input = PlainInput {
            data: Arc::new(ArchiveData { file, name: name.clone() }),
            len,
            position: 0,
            buffer: Vec::new(),
            buffer_start: 0,
        };
        build(input, &name, "", opts)
    } else {
        Err(not_tar("not a tar archive (no valid tar header at its start)"))
    }
}

/// An unlinked temporary file for decompressed member contents.
fn scratch_file(opts: &SourceOptions, archive: &str) -> anyhow::Result<Arc<ArchiveData>> {
    let file = match &opts.scratch_dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    }
    .with_context(|| format!("cannot create a temporary file to decompress '{archive}'"))?;
    Ok(Arc::new(ArchiveData { file, name: archive.to_string() }))
}

/// Where member contents are read from: the archive itself, or the temporary
/// file a compressed archive's members were decompressed into.
#[derive(Debug)]
struct ArchiveData {
    file: File,
    /// The archive's path, for messages.
    name: String,
}

/// One member's content: `range` of [`ArchiveData`].
#[derive(Debug)]
struct TarMember {
    data: Arc<ArchiveData>,
    range: Range<u64>,
    member: String,
}

impl ContentSource for TarMember {
    fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let available = self.len().saturating_sub(offset);
        let wanted = usize::try_from(available).unwrap_or(usize::MAX).min(buf.len());
        if wanted == 0 {
            return Ok(0);
        }
        // `offset < len`, so `start + offset < end` cannot overflow.
        read_up_to(&self.data.file, &mut buf[..wanted], self.range.start + offset).map_err(|err| {
            io::Error::new(err.kind(), format!("reading {}: {err}", self.describe()))
        })
    }

    fn describe(&self) -> String {
        format!("{}:{}", self.data.name, self.member)
    }
}

/// Reads from `offset` until `buf` is full or the file ends; returns the count.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}

/// The byte stream of an archive, block by block. An input that ends early
/// gives `UnexpectedEof`.
trait TarInput {
    /// The next 512-byte header block; `false` when the input ends exactly here.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool>;
    /// Member data of `len` bytes (plus padding) into memory.
    fn read_data(&mut self, len: u64) -> io::Result<Vec<u8>>;
    /// Member data of `len` bytes (plus padding) kept for later: its range in `data()`.
    fn keep_data(&mut self, len: u64) -> io::Result<Range<u64>>;
    /// Member data of `len` bytes (plus padding) passed over.
    fn skip_data(&mut self, len: u64) -> io::Result<()>;
    /// Makes everything kept readable through `data()`.
    fn finish(&mut self) -> io::Result<()>;
    fn data(&self) -> &Arc<ArchiveData>;
    /// Offset in the (decompressed) archive, for messages.
    fn position(&self) -> u64;
}

/// `value` as a `usize`, but at most `limit` (which is how large a buffer is).
fn at_most(value: u64, limit: usize) -> usize {
    usize::try_from(value).map_or(limit, |value| value.min(limit))
}

fn padded(len: u64) -> io::Result<u64> {
    len.checked_next_multiple_of(BLOCK_U64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "member size out of range"))
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends early")
}

/// An uncompressed archive file, read with positioned reads through a read-ahead buffer.
struct PlainInput {
    data: Arc<ArchiveData>,
    len: u64,
    position: u64,
    buffer: Vec<u8>,
    buffer_start: u64,
}

impl PlainInput {
    fn read_bytes(&mut self, out: &mut [u8]) -> io::Result<()> {
        let wanted = out.len() as u64;
        let end = self.position.checked_add(wanted).ok_or_else(truncated)?;
        if end > self.len {
            return Err(truncated());
        }
        let buffer_end = self.buffer_start + self.buffer.len() as u64;
        if self.position < self.buffer_start || end > buffer_end {
            let size = at_most(self.len - self.position, READ_AHEAD.max(out.len()));
            self.buffer.resize(size, 0);
            let got = read_up_to(&self.data.file, &mut self.buffer, self.position)?;
            if got < out.len() {
                return Err(truncated());
            }
            self.buffer.truncate(got);
            self.buffer_start = self.position;
        }
        // Inside the buffer, as checked just above.
        let start = at_most(self.position - self.buffer_start, self.buffer.len());
        out.copy_from_slice(&self.buffer[start..start + out.len()]);
        self.position = end;
        Ok(())
    }

    fn advance(&mut self, len: u64) -> io::Result<u64> {
        let start = self.position;
        let end = start.checked_add(padded(len)?).ok_or_else(truncated)?;
        if end > self.len {
            return Err(truncated());
        }
        self.position = end;
        Ok(start)
    }
}

impl TarInput for PlainInput {
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        if self.position == self.len {
            return Ok(false);
        }
        self.read_bytes(block)?;
        Ok(true)
    }

    fn read_data(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0; usize::try_from(len).map_err(|_| truncated())?];
        self.read_bytes(&mut out)?;
        let end = self.position.checked_add(padded(len)? - len).ok_or_else(truncated)?;
        if end > self.len {
            return Err(truncated());
        }
        self.position = end;
        Ok(out)
    }

    fn keep_data(&mut self, len: u64) -> io::Result<Range<u64>> {
        let start = self.advance(len)?;
        Ok(start..start + len)
    }

    fn skip_data(&mut self, len: u64) -> io::Result<()> {
        self.advance(len).map(drop)
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn data(&self) -> &Arc<ArchiveData> {
        &self.data
    }

    fn position(&self) -> u64 {
        self.position
    }
}

/// A decompressing stream; kept member data is appended to a temporary file.
struct StreamInput<R: Read> {
    reader: R,
    position: u64,
    temp: Arc<ArchiveData>,
    /// Bytes already written to `temp`.
    temp_len: u64,
    /// Kept data not yet written to `temp`.
    pending: Vec<u8>,
}

/// How much kept data is gathered before one write to the temporary file.
const WRITE_CHUNK: usize = 1 << 20;

impl<R: Read> StreamInput<R> {
    fn new(reader: R, temp: Arc<ArchiveData>) -> StreamInput<R> {
        StreamInput { reader, position: 0, temp, temp_len: 0, pending: Vec::new() }
    }

    /// Fills `out` unless the stream ends; returns how much was read.
    fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < out.len() {
            match self.reader.read(&mut out[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.position += done as u64;
        Ok(done)
    }

    fn fill_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        if self.fill(out)? < out.len() { Err(truncated()) } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.file.write_all_at(&self.pending, self.temp_len)?;
        self.temp_len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn skip_padding(&mut self, len: u64) -> io::Result<()> {
        // Padding is below one block.
        let pad = at_most(padded(len)? - len, BLOCK);
        let mut scratch = [0u8; BLOCK];
        self.fill_exact(&mut scratch[..pad])
    }
}

impl<R: Read> TarInput for StreamInput<R> {
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        match self.fill(block)? {
            0 => Ok(false),
            n if n < block.len() => Err(truncated()),
            _ => Ok(true),
        }
    }

    fn read_data(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0; usize::try_from(len).map_err(|_| truncated())?];
        self.fill_exact(&mut out)?;
        self.skip_padding(len)?;
        Ok(out)
    }

    fn keep_data(&mut self, len: u64) -> io::Result<Range<u64>> {
        let start = self.temp_len + self.pending.len() as u64;
        let mut left = len;
        while left > 0 {
            let chunk = at_most(left, WRITE_CHUNK);
            let old = self.pending.len();
            self.pending.resize(old + chunk, 0);
            let mut part = std::mem::take(&mut self.pending);
            let result = self.fill_exact(&mut part[old..]);
            self.pending = part;
            result?;
            left -= chunk as u64;
            if self.pending.len() >= WRITE_CHUNK {
                self.flush()?;
            }
        }
        self.skip_padding(len)?;
        Ok(start..start + len)
    }

    fn skip_data(&mut self, len: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; 64 << 10];
        let mut left = padded(len)?;
        while left > 0 {
            let chunk = at_most(left, scratch.len());
            self.fill_exact(&mut scratch[..chunk])?;
            left -= chunk as u64;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }

    fn data(&self) -> &Arc<ArchiveData> {
        &self.temp
    }

    fn position(&self) -> u64 {
        self.position
    }
}

// ----- Header fields (ustar layout, offsets from POSIX.1-2017 "ustar Interchange Format").

const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const DEVMAJOR: Range<usize> = 329..337;
const DEVMINOR: Range<usize> = 337..345;
/// Only in POSIX ustar (magic `ustar\0`); GNU tar keeps other fields there.
const PREFIX: Range<usize> = 345..500;

/// The bytes of a NUL-terminated (or full-width) text field.
fn text(field: &[u8]) -> &[u8] {
    field.iter().position(|&b| b == 0).map_or(field, |end| &field[..end])
}

/// A numeric field: octal digits (leading spaces allowed, ended by a space or NUL),
/// or GNU base-256 (first byte 0x80 for positive, 0xff for negative two's
/// complement). `None` when malformed or out of range.
fn number(field: &[u8]) -> Option<i128> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        if first == 0xff {
            // Negative: the whole field is a two's complement number.
            let mut unsigned: i128 = 0;
            for &byte in field {
                unsigned = unsigned.checked_mul(256)?.checked_add(i128::from(byte))?;
            }
            let bits = u32::try_from(field.len() * 8).ok()?;
            return unsigned.checked_sub(1i128.checked_shl(bits)?);
        }
        let mut value = i128::from(first & 0x7f);
        for &byte in &field[1..] {
            value = value.checked_mul(256)?.checked_add(i128::from(byte))?;
        }
        return Some(value);
    }
    let digits = text(field);
    let digits = &digits[digits.iter().take_while(|&&b| b == b' ').count()..];
    let end = digits.iter().position(|&b| b == b' ').unwrap_or(digits.len());
    let mut value: i128 = 0;
    for &byte in &digits[..end] {
        if !(b'0'..=b'7').contains(&byte) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(i128::from(byte - b'0'))?;
    }
    if digits[end..].iter().any(|&b| b != b' ') {
        return None;
    }
    Some(value)
}

/// Whether the header checksum matches: the sum of all bytes with the checksum
/// field read as spaces (unsigned, or signed as some old tars computed it).
fn checksum_matches(block: &[u8]) -> bool {
    let Some(stored) = number(&block[CHKSUM]) else {
        return false;
    };
    let mut unsigned: i128 = 0;
    let mut signed: i128 = 0;
    for (index, &byte) in block.iter().enumerate() {
        let byte = if CHKSUM.contains(&index) { b' ' } else { byte };
        unsigned += i128::from(byte);
        // Reading the byte as signed is the old tars' bug this accepts.
        signed += i128::from(i8::from_ne_bytes([byte]));
    }
    stored == unsigned || stored == signed
}

// ----- Pax extended headers.

/// The pax values that apply to one entry.
#[derive(Clone, Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Timestamp>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Values of `LIBARCHIVE.xattr.*` records, used for names with no `SCHILY.xattr.*` record.
    libarchive_xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse: bool,
    /// The first `SCHILY.acl.*` record's key, if any.
    acl: Option<String>,
}

/// One pax record: key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Splits pax records (`"<length> <key>=<value>\n"`, the length counting the whole record).
fn pax_records(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut records = Vec::new();
    // A header may be padded with NULs after the last record.
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|&b| b == b' ').ok_or("a pax record has no length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or("a pax record has an invalid length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("a pax record has a wrong length".to_string());
        }
        let body = &data[space + 1..len - 1];
        let equals = body.iter().position(|&b| b == b'=').ok_or("a pax record has no '='")?;
        records.push((&body[..equals], &body[equals + 1..]));
        data = &data[len..];
    }
    Ok(records)
}

impl Pax {
    fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |what: &str| {
            format!(
                "the pax record {what} has the invalid value '{}'",
                String::from_utf8_lossy(value)
            )
        };
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            // An empty value is a real (empty) attribute value.
            self.xattrs.insert(name.to_vec(), value.to_vec());
            return Ok(());
        }
        if let Some(encoded) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
            let name = percent_decode(encoded).ok_or_else(|| bad("LIBARCHIVE.xattr"))?;
            let value = base64_decode(value).ok_or_else(|| bad("LIBARCHIVE.xattr"))?;
            self.libarchive_xattrs.insert(name, value);
            return Ok(());
        }
        if key.starts_with(b"SCHILY.acl.")
            && !value.is_empty()
            && !(key == b"SCHILY.acl.access" && acl_is_trivial(value))
        {
            self.acl.get_or_insert_with(|| String::from_utf8_lossy(key).into_owned());
            return Ok(());
        }
        if key.starts_with(b"GNU.sparse.") {
            self.sparse = true;
            return Ok(());
        }
        // Other records with an empty value cancel a global one (POSIX).
        let decimal = || std::str::from_utf8(value).ok().filter(|v| !v.is_empty());
        match key {
            b"path" => self.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => self.linkpath = (!value.is_empty()).then(|| value.to_vec()),
            b"size" => {
                self.size = match decimal() {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| bad("'size'"))?),
                }
            }
            b"uid" => {
                self.uid = match decimal() {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| bad("'uid'"))?),
                }
            }
            b"gid" => {
                self.gid = match decimal() {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| bad("'gid'"))?),
                }
            }
            b"mtime" => {
                self.mtime = match decimal() {
                    None => None,
                    Some(v) => Some(pax_time(v).ok_or_else(|| bad("'mtime'"))?),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether a text access ACL only repeats the permission bits (owner, group and
/// other entries, nothing named, no mask).
fn acl_is_trivial(text: &[u8]) -> bool {
    text.split(|&b| b == b',' || b == b'\n').filter(|entry| !entry.is_empty()).all(|entry| {
        let mut fields = entry.split(|&b| b == b':');
        let tag = fields.next().unwrap_or_default();
        let qualifier = fields.next().unwrap_or_default();
        matches!(tag, b"user" | b"u" | b"group" | b"g" | b"other" | b"o") && qualifier.is_empty()
    })
}

/// Undoes the %XX escapes libarchive uses in xattr names.
fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let high = char::from(*bytes.next()?).to_digit(16)?;
            let low = char::from(*bytes.next()?).to_digit(16)?;
            // Two hex digits make a value below 256.
            out.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            out.push(byte);
        }
    }
    Some(out)
}

/// Decodes standard base64 (RFC 4648 §4), with or without `=` padding, as
/// libarchive writes xattr values.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let text = text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"=")).unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut count = 0;
    for &byte in text {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count).to_le_bytes()[0]);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// A pax time: decimal seconds with an optional fraction, possibly negative.
fn pax_time(text: &str) -> Option<Timestamp> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    // Nine digits of nanoseconds; further digits are below what a file system keeps.
    let mut nanoseconds: u32 = 0;
    for position in 0..9 {
        let digit = fraction.as_bytes().get(position).map_or(0, |b| u32::from(b - b'0'));
        nanoseconds = nanoseconds * 10 + digit;
    }
    if !negative {
        return Some(Timestamp { seconds, nanoseconds });
    }
    if nanoseconds == 0 {
        Some(Timestamp { seconds: seconds.checked_neg()?, nanoseconds: 0 })
    } else {
        // -1.25 s is 0.75 s after -2 s: seconds -2, nanoseconds 750 000 000.
        Some(Timestamp {
            seconds: seconds.checked_neg()?.checked_sub(1)?,
            nanoseconds: 1_000_000_000 - nanoseconds,
        })
    }
}

// ----- Entries.

#[derive(Debug)]
enum EntryKind {
    File(Range<u64>),
    HardLink(Vec<u8>),
    Symlink(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Directory,
    Fifo,
}

#[derive(Debug)]
struct Entry {
    path: Vec<u8>,
    meta: Metadata,
    kind: EntryKind,
}

/// Reads the archive's entries one by one.
struct Parser<'a, I: TarInput> {
    input: I,
    archive: &'a str,
    /// Describes the compression for messages: "gzip-compressed " or "".
    flavour: &'static str,
    global: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last entry read, for messages about what follows it.
    last: Option<String>,
}

impl<I: TarInput> Parser<'_, I> {
    fn refuse(&self, message: String) -> anyhow::Error {
        UsageError::new(format!("archive '{}': {message}", self.archive)).into()
    }

    /// Where we are, for messages.
    fn here(&self) -> String {
        match &self.last {
            Some(last) => format!("after the entry '{last}'"),
            None => "in the first entry".to_string(),
        }
    }

    /// An I/O error while reading the entry `entry` (or the header after the last one).
    fn io_error(&self, err: io::Error, entry: Option<&str>) -> anyhow::Error {
        let place = match entry {
            Some(entry) => format!("in the entry '{entry}'"),
            None => self.here(),
        };
        if err.kind() == io::ErrorKind::UnexpectedEof {
            self.refuse(format!("the {}archive is truncated: it ends {place}", self.flavour))
        } else {
            anyhow::Error::new(err).context(format!(
                "archive '{}': cannot read the {}archive {place} (at byte {})",
                self.archive,
                self.flavour,
                self.input.position()
            ))
        }
    }

    fn next_entry(&mut self) -> anyhow::Result<Option<Entry>> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut local: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut block = [0u8; BLOCK];
        loop {
            let header_at = self.input.position();
            if !self.input.read_block(&mut block).map_err(|err| self.io_error(err, None))? {
                return Err(self.refuse(format!(
                    "the {}archive is truncated: it ends {} without the end-of-archive blocks",
                    self.flavour,
                    self.here()
                )));
            }
            if block.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() || !local.is_empty() {
                    return Err(self.refuse(format!(
                        "an extended header {} is not followed by an entry",
                        self.here()
                    )));
                }
                // End of archive. (POSIX asks for two zero blocks; GNU tar accepts one.)
                return Ok(None);
            }
            if !checksum_matches(&block) {
                return Err(self.refuse(format!(
                    "the header at byte {header_at} of the {}archive ({}) is corrupt: its checksum does not match",
                    self.flavour,
                    self.here()
                )));
            }
            let header_name = String::from_utf8_lossy(text(&block[NAME])).into_owned();
            let corrupt = |field: &str| {
                self.refuse(format!(
                    "the header of the entry '{header_name}' has an invalid {field} field"
                ))
            };
            let size = u64::try_from(number(&block[SIZE]).ok_or_else(|| corrupt("size"))?)
                .map_err(|_| corrupt("size"))?;
            let typeflag = block[TYPEFLAG];
            let read_extension = |parser: &mut Self| -> anyhow::Result<Vec<u8>> {
                if size > MAX_EXTENSION_LEN {
                    return Err(parser.refuse(format!(
                        "the extended header '{header_name}' {} is {size} bytes, more than abforge accepts",
                        parser.here()
                    )));
                }
                parser.input.read_data(size).map_err(|err| parser.io_error(err, Some(&header_name)))
            };
            match typeflag {
                b'x' | b'g' => {
                    let data = read_extension(self)?;
                    let records = pax_records(&data).map_err(|why| {
                        self.refuse(format!("the pax header {} is corrupt: {why}", self.here()))
                    })?;
                    let records = records.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec()));
                    if typeflag == b'g' {
                        self.global.extend(records);
                    } else {
                        local.extend(records);
                    }
                    continue;
                }
                b'L' => {
                    long_name = Some(text(&read_extension(self)?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(text(&read_extension(self)?).to_vec());
                    continue;
                }
                b'V' => {
                    // A volume label: not a file.
                    self.input
                        .skip_data(size)
                        .map_err(|err| self.io_error(err, Some(&header_name)))?;
                    continue;
                }
                _ => {}
            }

            let mut pax = Pax::default();
            for (key, value) in self.global.iter().chain(local.iter()) {
                pax.apply(key, value).map_err(|why| {
                    self.refuse(format!("the entry '{header_name}' is corrupt: {why}"))
                })?;
            }
            let path = match (pax.path.take(), long_name.take()) {
                (Some(path), _) | (None, Some(path)) => path,
                (None, None) => {
                    let name = text(&block[NAME]);
                    let prefix = text(&block[PREFIX]);
                    if &block[MAGIC] == b"ustar\0" && !prefix.is_empty() {
                        [prefix, b"/", name].concat()
                    } else {
                        name.to_vec()
                    }
                }
            };
            let shown = String::from_utf8_lossy(&path).into_owned();
            let archive = self.archive;
            let bad_field = |field: &str| -> anyhow::Error {
                UsageError::new(format!(
                    "archive '{archive}': the header of the entry '{shown}' has an invalid {field} field"
                ))
                .into()
            };
            let link = match (pax.linkpath.take(), long_link.take()) {
                (Some(link), _) | (None, Some(link)) => link,
                (None, None) => text(&block[LINKNAME]).to_vec(),
            };
            let size = pax.size.unwrap_or(size);
            let id = |parsed: Option<u32>, field: Range<usize>, name: &str| match parsed {
                Some(id) => Ok(id),
                None => number(&block[field])
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad_field(name)),
            };
            let uid = id(pax.uid, UID, "uid")?;
            let gid = id(pax.gid, GID, "gid")?;
            let mtime = match pax.mtime {
                Some(mtime) => mtime,
                None => Timestamp::from_seconds(
                    number(&block[MTIME])
                        .and_then(|n| i64::try_from(n).ok())
                        .ok_or_else(|| bad_field("mtime"))?,
                ),
            };
            let mode = number(&block[MODE]).ok_or_else(|| bad_field("mode"))?;
            // Masked to the 12 permission bits (old tars also stored the type bits).
            let permissions = u16::try_from(mode & 0o7777).map_err(|_| bad_field("mode"))?;
            let mut meta = Metadata::new(permissions, uid, gid, mtime);
            meta.xattrs = std::mem::take(&mut pax.xattrs);
            for (name, value) in std::mem::take(&mut pax.libarchive_xattrs) {
                meta.xattrs.entry(name).or_insert(value);
            }
            if let Some(acl) = &pax.acl {
                return Err(self.refuse(format!(
                    "the entry '{shown}' has POSIX ACLs in text form ({acl}), which abforge does not read from tar archives; give the tree as a directory, or make the archive without '--acls'"
                )));
            }

            if typeflag == b'S' || pax.sparse {
                return Err(self.refuse(format!(
                    "the entry '{shown}' is a sparse file, which abforge does not read from tar archives; make the archive without '--sparse'"
                )));
            }
            let device = |field: Range<usize>, name: &str| {
                // Empty device fields read as 0; `number` accepts them.
                number(&block[field])
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad_field(name))
            };
            let kind = match typeflag {
                b'0' | b'\0' | b'7' if path.ends_with(b"/") => {
                    // Old (V7) tars mark directories with a trailing '/'.
                    self.skip(size, &shown)?;
                    EntryKind::Directory
                }
                b'0' | b'\0' | b'7' => {
                    let range = self
                        .input
                        .keep_data(size)
                        .map_err(|err| self.io_error(err, Some(&shown)))?;
                    EntryKind::File(range)
                }
                b'1' => {
                    self.skip(size, &shown)?;
                    EntryKind::HardLink(link)
                }
                b'2' => {
                    self.skip(size, &shown)?;
                    EntryKind::Symlink(link)
                }
                b'3' | b'4' => {
                    self.skip(size, &shown)?;
                    let major = device(DEVMAJOR, "devmajor")?;
                    let minor = device(DEVMINOR, "devminor")?;
                    if typeflag == b'3' {
                        EntryKind::CharDevice { major, minor }
                    } else {
                        EntryKind::BlockDevice { major, minor }
                    }
                }
                // 'D' is GNU's dump directory: a directory followed by a listing.
                b'5' | b'D' => {
                    self.skip(size, &shown)?;
                    EntryKind::Directory
                }
                b'6' => {
                    self.skip(size, &shown)?;
                    EntryKind::Fifo
                }
                b'M' => {
                    return Err(self.refuse(format!(
                        "the entry '{shown}' continues a multi-volume archive, which abforge does not read"
                    )));
                }
                other => {
                    return Err(self.refuse(format!(
                        "the entry '{shown}' has the unknown type '{}'",
                        char::from(other).escape_default()
                    )));
                }
            };
            self.last = Some(shown);
            return Ok(Some(Entry { path, meta, kind }));
        }
    }

    fn skip(&mut self, size: u64, shown: &str) -> anyhow::Result<()> {
        self.input.skip_data(size).map_err(|err| self.io_error(err, Some(shown)))
    }
}

/// Splits an entry path into its components: `./` and empty components dropped,
/// `..` and absolute paths refused.
fn entry_components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.first() == Some(&b'/') {
        return Err(
            "has an absolute path; entries must be relative (like 'etc/passwd' or './etc/passwd')",
        );
    }
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a '..' component, which could point outside the tree"),
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

fn build<I: TarInput>(
    input: I,
    archive: &str,
    flavour: &'static str,
    opts: &SourceOptions,
) -> anyhow::Result<FileTree> {
    let implicit = opts.implicit_dir_meta();
    let mut tree = FileTree::new(implicit.clone());
    let mut parser = Parser { input, archive, flavour, global: Vec::new(), last: None };
    let refuse = |message: String| -> anyhow::Error {
        UsageError::new(format!("archive '{archive}': {message}")).into()
    };
    let tree_error = |shown: &str, err: TreeError| -> anyhow::Error {
        refuse(format!("cannot place the entry '{shown}': {err}"))
    };

    while let Some(entry) = parser.next_entry()? {
        let shown = String::from_utf8_lossy(&entry.path).into_owned();
        let parts = entry_components(&entry.path)
            .map_err(|why| refuse(format!("the entry '{shown}' {why}")))?;
        let Some((name, parents)) = parts.split_last() else {
            // `.` itself: the root directory's metadata.
            if !matches!(entry.kind, EntryKind::Directory) {
                return Err(refuse(format!(
                    "the entry '{shown}' names the root but is not a directory"
                )));
            }
            let root = tree.root();
            tree.node_mut(root).meta = entry.meta;
            continue;
        };
        let parent = tree.make_dirs(parents, &implicit).map_err(|err| tree_error(&shown, err))?;
        let existing = match &tree.node(parent).kind {
            NodeKind::Directory(children) => children.get(*name).copied(),
            _ => None,
        };

        let kind = match entry.kind {
            EntryKind::HardLink(target) => {
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let target_parts = entry_components(&target).map_err(|why| {
                    refuse(format!(
                        "the hard link '{shown}' points to '{target_shown}', which {why}"
                    ))
                })?;
                if target_parts == parts {
                    // A link to itself, as some archivers write for duplicates: nothing to change.
                    if existing.is_some() {
                        continue;
                    }
                }
                let Some(target_id) = tree.lookup(&target_parts.join(&b'/')) else {
                    return Err(refuse(format!(
                        "the hard link '{shown}' points to '{target_shown}', which is not an earlier entry of the archive"
                    )));
                };
                if tree.node(target_id).kind.is_dir() {
                    return Err(refuse(format!(
                        "the hard link '{shown}' points to '{target_shown}', which is a directory"
                    )));
                }
                if existing.is_some() {
                    tree.unlink(parent, name);
                }
                tree.link(parent, name, target_id).map_err(|err| tree_error(&shown, err))?;
                continue;
            }
            EntryKind::Directory => {
                if let Some(id) = existing.filter(|&id| tree.node(id).kind.is_dir()) {
                    // A directory listed again (or after its children): new metadata, same contents.
                    tree.node_mut(id).meta = entry.meta;
                    continue;
                }
                NodeKind::Directory(BTreeMap::new())
            }
            EntryKind::File(range) => NodeKind::File(Content::Source(Arc::new(TarMember {
                data: Arc::clone(parser.input.data()),
                range,
                member: shown.clone(),
            }))),
            EntryKind::Symlink(target) => NodeKind::Symlink(target),
            EntryKind::CharDevice { major, minor } => NodeKind::CharDevice { major, minor },
            EntryKind::BlockDevice { major, minor } => NodeKind::BlockDevice { major, minor },
            EntryKind::Fifo => NodeKind::Fifo,
        };
        if existing.is_some() {
            // A later entry replaces an earlier one, as extraction does.
            tree.unlink(parent, name);
        }
        tree.add(parent, name, Node { meta: entry.meta, kind })
            .map_err(|err| tree_error(&shown, err))?;
    }
    parser
        .input
        .finish()
        .with_context(|| format!("cannot write the decompressed contents of '{archive}'"))?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"   644 \0"), Some(0o644));
        assert_eq!(number(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(number(b"0008\0"), None);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(&[0xff; 8]), Some(-1));
        assert_eq!(number(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]), Some(-2));
    }

    #[test]
    fn pax_times_and_records() {
        assert_eq!(
            pax_time("1700000000.5"),
            Some(Timestamp { seconds: 1700000000, nanoseconds: 500_000_000 })
        );
        assert_eq!(pax_time("12"), Some(Timestamp::from_seconds(12)));
        assert_eq!(pax_time("-1.25"), Some(Timestamp { seconds: -2, nanoseconds: 750_000_000 }));
        assert_eq!(pax_time("1.0000000019"), Some(Timestamp { seconds: 1, nanoseconds: 1 }));
        assert_eq!(pax_time("x"), None);
        let records = pax_records(b"12 path=a/b\n27 SCHILY.xattr.user.x=a\nb\n").unwrap();
        assert_eq!(
            records,
            [(&b"path"[..], &b"a/b"[..]), (&b"SCHILY.xattr.user.x"[..], &b"a\nb"[..])]
        );
        assert!(pax_records(b"99 path=a\n").is_err());
    }

    #[test]
    fn libarchive_encodings() {
        assert_eq!(base64_decode(b"aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode(b"aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64_decode(b"AQAAAgAgAAAAAAAAAAAAAAAAAAA").map(|v| v.len()), Some(20));
        assert_eq!(base64_decode(b"a*"), None);
        assert_eq!(percent_decode(b"user.a%3Db%25"), Some(b"user.a=b%".to_vec()));
        assert_eq!(percent_decode(b"%zz"), None);
        assert!(acl_is_trivial(b"user::rw-,group::r--,other::r--"));
        assert!(!acl_is_trivial(b"user::rw-,user:1000:r--,group::r--,mask::r--,other::r--"));
    }

    #[test]
    fn entry_paths() {
        assert_eq!(entry_components(b"./etc//passwd").unwrap(), [&b"etc"[..], b"passwd"]);
        assert!(entry_components(b"./").unwrap().is_empty());
        assert!(entry_components(b"/etc").is_err());
        assert!(entry_components(b"etc/../x").is_err());
    }
}
