//! Extended attributes (formats.md §3.9): in the inode's 96-byte area first, the
//! rest in one external block (entries sorted by index, name length, name), with
//! entry hashes, the block hash and the block checksum. POSIX ACLs arrive in the
//! VFS form (version 2) and are stored in ext4's disk form (version 1).
//!
//! Not supported: values in separate inodes (ea_inode), shared xattr blocks
//! (every block has refcount 1), and attributes that do not fit in one block.

use super::BLOCK_SIZE_USIZE;
use super::checksum;
use super::inode::XATTR_AREA_SIZE;
use super::le::{get_u16, get_u32, put_u8, put_u16, put_u32, round4};
use std::collections::BTreeMap;

const MAGIC: u32 = 0xEA02_0000;
const BLOCK_HEADER: usize = 32;

/// One attribute as stored: name index, name suffix, value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Attr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl Attr {
    fn entry_size(&self) -> usize {
        round4(16 + self.name.len())
    }
    fn value_size(&self) -> usize {
        round4(self.value.len())
    }
}

/// Why an attribute cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum XattrProblem {
    NameTooLong(Vec<u8>),
    BadAcl(Vec<u8>, &'static str),
    TooLarge,
}

const PREFIXES: &[(&[u8], u8)] =
    &[(b"user.", 1), (b"trusted.", 4), (b"security.", 6), (b"system.", 7)];

/// Converts full attribute names to (index, suffix), converts ACLs to disk form and
/// sorts the result as the external block wants (index, name length, name).
pub(crate) fn prepare(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Vec<Attr>, XattrProblem> {
    let mut attrs = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let attr = match full.as_slice() {
            b"system.posix_acl_access" => {
                Attr { index: 2, name: Vec::new(), value: acl(full, value)? }
            }
            b"system.posix_acl_default" => {
                Attr { index: 3, name: Vec::new(), value: acl(full, value)? }
            }
            _ => match PREFIXES.iter().find(|(prefix, _)| full.starts_with(prefix)) {
                Some((prefix, index)) => Attr {
                    index: *index,
                    name: full[prefix.len()..].to_vec(),
                    value: value.clone(),
                },
                // Unknown namespaces keep their full name under index 0, as e2fsprogs does.
                None => Attr { index: 0, name: full.clone(), value: value.clone() },
            },
        };
        if attr.name.len() > 255 {
            return Err(XattrProblem::NameTooLong(full.clone()));
        }
        attrs.push(attr);
    }
    attrs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(attrs)
}

/// VFS POSIX ACL (u32 version 2, then 8-byte {u16 tag, u16 perm, u32 id}) to the ext4
/// disk form (u32 version 1, then 4-byte entries, 8-byte ones for named users/groups).
fn acl(full: &[u8], value: &[u8]) -> Result<Vec<u8>, XattrProblem> {
    let bad = |why| XattrProblem::BadAcl(full.to_vec(), why);
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(bad("its length is not 4 + 8 × entries"));
    }
    if get_u32(value, 0) != 2 {
        return Err(bad("it is not a version 2 POSIX ACL"));
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for entry in value[4..].chunks_exact(8) {
        let tag = get_u16(entry, 0);
        out.extend_from_slice(&entry[0..4]);
        match tag {
            // USER, GROUP carry an id.
            0x02 | 0x08 => out.extend_from_slice(&entry[4..8]),
            // USER_OBJ, GROUP_OBJ, MASK, OTHER do not.
            0x01 | 0x04 | 0x10 | 0x20 => {}
            _ => return Err(bad("it has an unknown entry tag")),
        }
    }
    Ok(out)
}

/// Entry hash: name bytes rotated in by 5, then the zero-padded value's words by 16.
fn entry_hash(attr: &Attr) -> u32 {
    let mut hash = 0u32;
    for &byte in &attr.name {
        hash = hash.rotate_left(5) ^ u32::from(byte);
    }
    let mut padded = attr.value.clone();
    padded.resize(attr.value_size(), 0);
    for word in padded.chunks_exact(4) {
        hash = hash.rotate_left(16) ^ get_u32(word, 0);
    }
    hash
}

/// Splits sorted `attrs` between the inode area and the external block: each goes in
/// the inode if it still fits there, otherwise in the block.
pub(crate) fn place(attrs: Vec<Attr>) -> Result<(Vec<Attr>, Vec<Attr>), XattrProblem> {
    // 4 bytes of magic, and the entry list ends with a 4-byte zero.
    let inode_room = XATTR_AREA_SIZE - 4 - 4;
    let block_room = BLOCK_SIZE_USIZE - BLOCK_HEADER - 4;
    let (mut inode, mut block) = (Vec::new(), Vec::new());
    let (mut inode_used, mut block_used) = (0, 0);
    for attr in attrs {
        let need = attr.entry_size() + attr.value_size();
        if inode_used + need <= inode_room {
            inode_used += need;
            inode.push(attr);
        } else if block_used + need <= block_room {
            block_used += need;
            block.push(attr);
        } else {
            return Err(XattrProblem::TooLarge);
        }
    }
    Ok((inode, block))
}

/// Writes entries from `entries_at` and values downward from `values_end` in `buf`;
/// value offsets are relative to `base`. Returns the entry hashes.
fn write_entries(
    buf: &mut [u8],
    attrs: &[Attr],
    entries_at: usize,
    values_end: usize,
    base: usize,
) -> Vec<u32> {
    let mut entry = entries_at;
    let mut value_at = values_end;
    let mut hashes = Vec::with_capacity(attrs.len());
    for attr in attrs {
        let hash = entry_hash(attr);
        // Name lengths are at most 255 (checked in `prepare`), sizes below 4096.
        put_u8(buf, entry, u8::try_from(attr.name.len()).unwrap_or(0));
        put_u8(buf, entry + 1, attr.index);
        let offs = if attr.value.is_empty() {
            0
        } else {
            value_at -= attr.value_size();
            buf[value_at..value_at + attr.value.len()].copy_from_slice(&attr.value);
            value_at - base
        };
        put_u16(buf, entry + 2, u16::try_from(offs).unwrap_or(0));
        put_u32(buf, entry + 4, 0); // e_value_inum
        put_u32(buf, entry + 8, u32::try_from(attr.value.len()).unwrap_or(0));
        put_u32(buf, entry + 12, hash);
        buf[entry + 16..entry + 16 + attr.name.len()].copy_from_slice(&attr.name);
        entry += attr.entry_size();
        hashes.push(hash);
    }
    hashes
}

/// The in-inode area (from offset 128 + extra_isize to the end of the inode).
pub(crate) fn encode_in_inode(attrs: &[Attr]) -> [u8; XATTR_AREA_SIZE] {
    let mut area = [0u8; XATTR_AREA_SIZE];
    if attrs.is_empty() {
        return area;
    }
    put_u32(&mut area, 0, MAGIC);
    // Offsets in the inode are relative to the first entry, just after the magic.
    write_entries(&mut area, attrs, 4, XATTR_AREA_SIZE, 4);
    area
}

/// The external block numbered `block_nr`.
pub(crate) fn encode_block(attrs: &[Attr], block_nr: u64, fs_seed: u32) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE_USIZE];
    put_u32(&mut block, 0, MAGIC);
    put_u32(&mut block, 4, 1); // h_refcount
    put_u32(&mut block, 8, 1); // h_blocks
    let hashes = write_entries(&mut block, attrs, BLOCK_HEADER, BLOCK_SIZE_USIZE, 0);
    let block_hash = if hashes.contains(&0) {
        0
    } else {
        hashes.iter().fold(0u32, |h, &e| h.rotate_left(16) ^ e)
    };
    put_u32(&mut block, 12, block_hash);
    let csum = checksum::raw(checksum::raw(fs_seed, &block_nr.to_le_bytes()), &block);
    put_u32(&mut block, 16, csum);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_is_converted_to_disk_form() {
        // user::rw- user:1000:r-- group::r-- mask::r-- other::---
        let mut vfs = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            vfs.extend_from_slice(&tag.to_le_bytes());
            vfs.extend_from_slice(&perm.to_le_bytes());
            vfs.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl(b"system.posix_acl_access", &vfs).unwrap();
        assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&disk[..4], &[1, 0, 0, 0]);
        assert_eq!(&disk[8..16], &[2, 0, 4, 0, 0xE8, 0x03, 0, 0]);
        assert!(acl(b"x", &[2, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn sorting_placement_and_hash() {
        let mut map = BTreeMap::new();
        map.insert(b"user.big".to_vec(), vec![7u8; 3000]);
        map.insert(b"security.capability".to_vec(), vec![1u8; 20]);
        map.insert(b"user.a".to_vec(), b"x".to_vec());
        let attrs = prepare(&map).unwrap();
        let order: Vec<(u8, &[u8])> = attrs.iter().map(|a| (a.index, a.name.as_slice())).collect();
        assert_eq!(order, [(1, &b"a"[..]), (1, b"big"), (6, b"capability")]);
        let (inode, block) = place(attrs).unwrap();
        assert_eq!(inode.len(), 2);
        assert_eq!(block.len(), 1);
        // Hash of name "a" with value "x" padded: rotl(0,5)^'a' = 0x61; rotl(0x61,16)^0x78.
        assert_eq!(entry_hash(&inode[0]), 0x0061_0078);
        let area = encode_in_inode(&inode);
        assert_eq!(get_u32(&area, 0), MAGIC);
    }
}
