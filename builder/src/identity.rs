//! Identities derived from the manifest's `seed`, so the same manifest gives the
//! same disk on every machine and a different seed gives different identities.
//!
//! The disk GUID and partition UUIDs follow systemd-repart's scheme
//! (boot-and-signing.md §2): HMAC-SHA256 keyed with the seed over `"disk-uuid"`,
//! or over the partition type UUID (RFC byte order) followed, for the second and
//! later partitions of one type, by the little-endian 64-bit counter k ≥ 1; the
//! first 16 bytes become a version-4 UUID. Everything else (file-system UUIDs,
//! FAT volume ids, verity salts, VHDX ids) is HMAC-SHA256 over a purpose string
//! and a name, kept apart by a NUL separator.

use abforge_partitions::Guid;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The manifest seed, the key of every derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed(Vec<u8>);

impl Seed {
    /// A seed written as a UUID is used as its 16 bytes, as systemd-repart's
    /// `--seed` is, so the same UUID gives the same identities in both tools; any
    /// other text is used as its UTF-8 bytes.
    pub fn new(seed: &str) -> Seed {
        match seed.parse::<Guid>() {
            Ok(uuid) => Seed(uuid.to_rfc_bytes().to_vec()),
            Err(_) => Seed(seed.as_bytes().to_vec()),
        }
    }

    fn hmac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The GPT disk GUID.
    pub fn disk_guid(&self) -> Guid {
        guid_from(&self.hmac(&[b"disk-uuid"]))
    }

    /// The unique GUID of the `k`-th (from 0) partition of type `type_guid`.
    pub fn partition_uuid(&self, type_guid: Guid, k: u64) -> Guid {
        let type_bytes = type_guid.to_rfc_bytes();
        let digest = if k == 0 {
            self.hmac(&[&type_bytes])
        } else {
            self.hmac(&[&type_bytes, &k.to_le_bytes()])
        };
        guid_from(&digest)
    }

    /// 32 bytes for `purpose` (e.g. "ext4-uuid") and `name` (a partition template name).
    pub fn derive(&self, purpose: &str, name: &str) -> [u8; 32] {
        self.hmac(&[purpose.as_bytes(), &[0], name.as_bytes()])
    }

    /// A version-4 UUID for `purpose` and `name`.
    pub fn derive_guid(&self, purpose: &str, name: &str) -> Guid {
        guid_from(&self.derive(purpose, name))
    }

    /// A FAT volume id (serial number) for the file system of `name`.
    pub fn fat_volume_id(&self, name: &str) -> u32 {
        let d = self.derive("fat-volume-id", name);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }
}

fn guid_from(digest: &[u8; 32]) -> Guid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Guid::from_rfc_bytes(bytes).with_v4_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

    #[test]
    fn same_seed_same_identities_different_seed_different() {
        let a = Seed::new("eflow-1.4.0");
        let b = Seed::new("eflow-1.4.1");
        let esp: Guid = ESP.parse().unwrap();
        assert_eq!(a.disk_guid(), Seed::new("eflow-1.4.0").disk_guid());
        assert_ne!(a.disk_guid(), b.disk_guid());
        assert_ne!(a.partition_uuid(esp, 0), a.partition_uuid(esp, 1));
        assert_ne!(a.partition_uuid(esp, 0), b.partition_uuid(esp, 0));
        assert_ne!(a.fat_volume_id("BootEFI{SLOT}"), b.fat_volume_id("BootEFI{SLOT}"));
    }

    /// Values produced by systemd-repart 252 for `--seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0`
    /// with two ESPs and one generic Linux partition: our derivation is the same.
    #[test]
    fn matches_systemd_repart() {
        let seed = Seed::new("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        let esp: Guid = ESP.parse().unwrap();
        let linux: Guid = "0fc63daf-8483-4772-8e79-3d69d8477de4".parse().unwrap();
        assert_eq!(seed.disk_guid().to_string(), "3f200c87-6598-4b5b-8d76-e3fdee615e0b");
        assert_eq!(seed.partition_uuid(esp, 0).to_string(), "c750afde-e819-41d5-bab3-988c9bcddd73");
        assert_eq!(seed.partition_uuid(esp, 1).to_string(), "c128ed9b-f160-4a25-bc7c-c19b90691733");
        assert_eq!(
            seed.partition_uuid(linux, 0).to_string(),
            "f582192c-e3f5-4f7a-b201-2507ec9134bb"
        );
    }
}
