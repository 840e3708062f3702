//! Finding block devices without udev: sysfs uevent files and the disks' GPT.
//!
//! Sources: the `uevent` file of each entry of `/sys/class/block` (MAJOR, MINOR,
//! DEVNAME, DEVTYPE, and for partitions PARTN and PARTNAME, the GPT partition name;
//! a few patched kernels add PARTUUID, which is used when present). Mainline kernels
//! do not export a partition's unique GUID, so it is read from the GPT of the parent
//! disk (UEFI 2.10 §5.3: header at LBA 1, `PartitionEntryLBA` at byte 72,
//! `NumberOfPartitionEntries` at 80, `SizeOfPartitionEntry` at 84; in each entry the
//! unique partition GUID at byte 16, mixed-endian). The kernel has already validated
//! the GPT when it created the partitions, so the CRCs are not checked again; only the
//! signature and the bounds are. Left out: MBR partition identifiers
//! (`PARTUUID=xxxxxxxx-NN`), the backup GPT, and file-system UUIDs.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use abforge_partitions::Guid;

use abforge_kernels::cmdline::DeviceRef;

/// What the uevent file of a block device says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uevent {
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub devname: Option<String>,
    pub devtype: Option<String>,
    pub partn: Option<u32>,
    pub partname: Option<String>,
    pub partuuid: Option<Guid>,
}

/// Parses the `KEY=value` lines of a sysfs uevent file; unknown keys and malformed
/// values are ignored (the kernel writes them, not a user).
pub fn parse_uevent(text: &str) -> Uevent {
    let mut u = Uevent::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        match key {
            "MAJOR" => u.major = value.parse().ok(),
            "MINOR" => u.minor = value.parse().ok(),
            "DEVNAME" => u.devname = Some(value.to_string()),
            "DEVTYPE" => u.devtype = Some(value.to_string()),
            "PARTN" => u.partn = value.parse().ok(),
            "PARTNAME" => u.partname = Some(value.to_string()),
            "PARTUUID" => u.partuuid = value.to_ascii_lowercase().parse().ok(),
            _ => {}
        }
    }
    u
}

/// A block device found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// The node under /dev (`vda3`).
    pub devname: String,
    pub major: u32,
    pub minor: u32,
    /// For a partition: its number, its parent disk's devname, its GPT name and GUID.
    pub partn: Option<u32>,
    pub disk: Option<String>,
    pub partname: Option<String>,
    pub partuuid: Option<Guid>,
}

impl BlockDevice {
    /// `major:minor`, the form device-mapper tables take.
    pub fn dev(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    pub fn path(&self, dev_root: &str) -> String {
        format!("{dev_root}/{}", self.devname)
    }
}

/// Largest partition entry array read (the usual one is 128 × 128 bytes = 16 KiB).
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// The unique GUIDs of a GPT's partitions, indexed by partition number − 1, from a
/// disk whose logical sector is `sector_size` bytes. `None` when it has no GPT.
pub fn read_gpt_guids<R: Read + Seek>(
    disk: &mut R,
    sector_size: u64,
) -> io::Result<Option<Vec<Guid>>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut header = [0u8; 92];
    disk.seek(SeekFrom::Start(sector_size))?;
    if disk.read_exact(&mut header).is_err() || &header[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let u32_at = |off: usize| {
        u32::from_le_bytes([header[off], header[off + 1], header[off + 2], header[off + 3]])
    };
    let mut lba = [0u8; 8];
    lba.copy_from_slice(&header[72..80]);
    let entries_lba = u64::from_le_bytes(lba);
    let count = u64::from(u32_at(80));
    let entry_size = u64::from(u32_at(84));
    if entry_size < 128 || entry_size % 8 != 0 {
        return Err(bad("GPT partition entry size is invalid"));
    }
    let array_len = count
        .checked_mul(entry_size)
        .filter(|len| *len <= MAX_ENTRY_ARRAY)
        .ok_or_else(|| bad("GPT partition entry array is too large"))?;
    let start =
        entries_lba.checked_mul(sector_size).ok_or_else(|| bad("GPT entry LBA overflows"))?;
    disk.seek(SeekFrom::Start(start))?;
    let array_len =
        usize::try_from(array_len).map_err(|_| bad("GPT partition entry array is too large"))?;
    let entry_size =
        usize::try_from(entry_size).map_err(|_| bad("GPT partition entry size is invalid"))?;
    let mut array = vec![0u8; array_len];
    disk.read_exact(&mut array)?;
    let guids = array
        .chunks_exact(entry_size)
        .map(|entry| {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&entry[16..32]);
            Guid::from_mixed_endian(raw)
        })
        .collect();
    Ok(Some(guids))
}

/// Every block device of `sys_root/class/block`, sorted by name, partitions with their
/// GUID filled in from the parent disk's GPT (read from `dev_root/<disk>`) when the
/// uevent does not give it. Devices that vanish or cannot be read are skipped: the
/// caller polls until what it needs appears.
pub fn scan(sys_root: &Path, dev_root: &Path) -> Vec<BlockDevice> {
    let class = sys_root.join("class/block");
    let Ok(entries) = fs::read_dir(&class) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    let mut devices = Vec::new();
    for name in names {
        let entry = class.join(&name);
        let Ok(text) = fs::read_to_string(entry.join("uevent")) else { continue };
        let u = parse_uevent(&text);
        let (Some(major), Some(minor)) = (u.major, u.minor) else { continue };
        let is_partition = u.devtype.as_deref() == Some("partition");
        // A partition's sysfs directory sits inside its disk's directory.
        let disk = if is_partition {
            fs::canonicalize(&entry).ok().and_then(|p| {
                p.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned())
            })
        } else {
            None
        };
        devices.push(BlockDevice {
            devname: u.devname.unwrap_or(name),
            major,
            minor,
            partn: u.partn,
            disk,
            partname: u.partname,
            partuuid: u.partuuid,
        });
    }
    fill_partuuids(&mut devices, sys_root, dev_root);
    devices
}

fn fill_partuuids(devices: &mut [BlockDevice], sys_root: &Path, dev_root: &Path) {
    let mut disks: Vec<String> = devices
        .iter()
        .filter(|d| d.partuuid.is_none() && d.partn.is_some())
        .filter_map(|d| d.disk.clone())
        .collect();
    disks.sort();
    disks.dedup();
    for disk in disks {
        let sector_size = fs::read_to_string(
            sys_root.join("class/block").join(&disk).join("queue/logical_block_size"),
        )
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(512);
        let Ok(mut file) = File::open(dev_root.join(&disk)) else { continue };
        let Ok(Some(guids)) = read_gpt_guids(&mut file, sector_size) else { continue };
        for device in devices.iter_mut().filter(|d| d.disk.as_deref() == Some(disk.as_str())) {
            if device.partuuid.is_none() {
                let index = device
                    .partn
                    .and_then(|n| usize::try_from(n).ok())
                    .and_then(|n| n.checked_sub(1));
                device.partuuid = index.and_then(|i| guids.get(i)).copied().filter(|g| !g.is_nil());
            }
        }
    }
}

/// Why a device reference did not resolve to exactly one device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{what} {device} not found")]
    NotFound { what: String, device: String },
    #[error("{what} {device} is ambiguous: it matches {first} and {second}")]
    Ambiguous { what: String, device: String, first: String, second: String },
}

/// The one device `wanted` names among `devices`.
pub fn resolve<'a>(
    devices: &'a [BlockDevice],
    wanted: &DeviceRef,
    what: &str,
) -> Result<&'a BlockDevice, ResolveError> {
    let matches = |d: &&BlockDevice| match wanted {
        DeviceRef::PartUuid(guid) => d.partuuid.as_ref() == Some(guid),
        DeviceRef::PartLabel(label) => d.partname.as_deref() == Some(label.as_str()),
        DeviceRef::Path(path) => path.strip_prefix("/dev/") == Some(d.devname.as_str()),
    };
    let mut found = devices.iter().filter(matches);
    let first = found.next().ok_or_else(|| ResolveError::NotFound {
        what: what.to_string(),
        device: wanted.to_string(),
    })?;
    if let Some(second) = found.next() {
        return Err(ResolveError::Ambiguous {
            what: what.to_string(),
            device: wanted.to_string(),
            first: first.devname.clone(),
            second: second.devname.clone(),
        });
    }
    Ok(first)
}

/// The devname of block device `major:minor` (from `/sys/dev/block/M:m/uevent`).
pub fn devname_of(sys_root: &Path, major: u32, minor: u32) -> Option<String> {
    let text =
        fs::read_to_string(sys_root.join(format!("dev/block/{major}:{minor}/uevent"))).ok()?;
    parse_uevent(&text).devname
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const ROOT_A: &str = "06196e49-d8eb-6d49-2e30-42596c2dbb79";

    #[test]
    fn uevent_lines() {
        let u = parse_uevent(
            "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=3\nPARTNAME=RootFSA\n",
        );
        assert_eq!((u.major, u.minor, u.partn), (Some(254), Some(3), Some(3)));
        assert_eq!(u.devname.as_deref(), Some("vda3"));
        assert_eq!(u.partname.as_deref(), Some("RootFSA"));
        assert_eq!(u.partuuid, None);
        let patched =
            parse_uevent(&format!("MAJOR=8\nMINOR=1\nPARTUUID={}\n", ROOT_A.to_uppercase()));
        assert_eq!(patched.partuuid.unwrap().to_string(), ROOT_A);
        assert_eq!(parse_uevent("garbage\nMAJOR=x\n"), Uevent::default());
    }

    /// A disk image with a GPT at `sector` bytes per sector whose entry `index` has `guid`.
    fn gpt_disk(sector: u64, index: usize, guid: Guid) -> Vec<u8> {
        let s = usize::try_from(sector).unwrap();
        let mut disk = vec![0u8; s * 2 + 128 * 128];
        disk[s..s + 8].copy_from_slice(b"EFI PART");
        disk[s + 72..s + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[s + 80..s + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[s + 84..s + 88].copy_from_slice(&128u32.to_le_bytes());
        let at = 2 * s + index * 128;
        disk[at + 16..at + 32].copy_from_slice(&guid.to_mixed_endian());
        disk
    }

    #[test]
    fn gpt_guids_in_both_sector_sizes() {
        let guid: Guid = ROOT_A.parse().unwrap();
        for sector in [512, 4096] {
            let guids = read_gpt_guids(&mut Cursor::new(gpt_disk(sector, 2, guid)), sector)
                .unwrap()
                .unwrap();
            assert_eq!(guids.len(), 128);
            assert_eq!(guids[2], guid);
            assert!(guids[0].is_nil());
        }
        assert_eq!(read_gpt_guids(&mut Cursor::new(vec![0u8; 4096]), 512).unwrap(), None);
        let mut bad = gpt_disk(512, 0, guid);
        bad[512 + 84..512 + 88].copy_from_slice(&7u32.to_le_bytes());
        assert!(read_gpt_guids(&mut Cursor::new(bad), 512).is_err());
    }

    #[test]
    fn scan_a_fake_sysfs_and_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("sys");
        let dev = tmp.path().join("dev");
        fs::create_dir_all(sys.join("class/block")).unwrap();
        fs::create_dir_all(&dev).unwrap();
        let vda = sys.join("devices/virtio0/block/vda");
        fs::create_dir_all(vda.join("queue")).unwrap();
        fs::write(vda.join("uevent"), "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n").unwrap();
        fs::write(vda.join("queue/logical_block_size"), "512\n").unwrap();
        std::os::unix::fs::symlink(&vda, sys.join("class/block/vda")).unwrap();
        for (n, name) in [(3, "RootFSA"), (9, "Data")] {
            let part = vda.join(format!("vda{n}"));
            fs::create_dir_all(&part).unwrap();
            fs::write(
                part.join("uevent"),
                format!("MAJOR=254\nMINOR={n}\nDEVNAME=vda{n}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={name}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(&part, sys.join(format!("class/block/vda{n}"))).unwrap();
        }
        let guid: Guid = ROOT_A.parse().unwrap();
        fs::write(dev.join("vda"), gpt_disk(512, 2, guid)).unwrap();

        let devices = scan(&sys, &dev);
        assert_eq!(
            devices.iter().map(|d| d.devname.as_str()).collect::<Vec<_>>(),
            ["vda", "vda3", "vda9"]
        );
        let root = resolve(&devices, &DeviceRef::PartUuid(guid), "root partition").unwrap();
        assert_eq!(
            (root.devname.as_str(), root.dev(), root.disk.as_deref()),
            ("vda3", "254:3".to_string(), Some("vda"))
        );
        let data = resolve(&devices, &DeviceRef::PartLabel("Data".into()), "Data").unwrap();
        assert_eq!(data.devname, "vda9");
        assert_eq!(data.partuuid, None, "entry 9 of the GPT is empty");
        assert_eq!(
            resolve(&devices, &DeviceRef::Path("/dev/vda".into()), "disk").unwrap().dev(),
            "254:0"
        );
        let missing = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".parse().unwrap();
        let err = resolve(&devices, &DeviceRef::PartUuid(missing), "Log partition").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Log partition PARTUUID=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee not found"
        );

        let mut twice = devices.clone();
        twice.push(BlockDevice { devname: "vdb3".into(), ..devices[1].clone() });
        let err = resolve(&twice, &DeviceRef::PartUuid(guid), "root partition").unwrap_err();
        assert!(err.to_string().ends_with("is ambiguous: it matches vda3 and vdb3"), "{err}");
        assert_eq!(scan(&tmp.path().join("nothing"), &dev), Vec::new());
    }
}
