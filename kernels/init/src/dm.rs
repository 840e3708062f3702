//! Device-mapper ioctls: create a device, load a one-target table, resume it.
//!
//! Follows the kernel's uapi header `linux/dm-ioctl.h` (interface version 4). Every
//! request is one buffer: a 312-byte `struct dm_ioctl` header, then (for a table
//! load) `struct dm_target_spec` (40 bytes) followed by the target's parameter string,
//! NUL-terminated and padded to 8 bytes. This is an in-memory kernel interface, not
//! an on-disk format: the fields are in native byte order, written at the named offsets
//! below, which were checked against the header with a C compiler (`sizeof(struct dm_ioctl)` = 312, `name` at 48, `uuid` at 176,
//! `sizeof(struct dm_target_spec)` = 40). Supported: DM_VERSION, DM_DEV_CREATE,
//! DM_TABLE_LOAD, DM_DEV_SUSPEND (as resume). Left out: everything else (remove,
//! status, messages, multiple targets).
//!
//! This is the only module of the workspace with unsafe code: the ioctl itself.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

/// The device-mapper control node devtmpfs creates once dm-mod is loaded.
pub const CONTROL_PATH: &str = "/dev/mapper/control";

/// `sizeof(struct dm_ioctl)`.
const HEADER_SIZE_U32: u32 = 312;
pub const HEADER_SIZE: usize = HEADER_SIZE_U32 as usize;
/// `sizeof(struct dm_target_spec)`.
const TARGET_SPEC_SIZE: usize = 40;
/// Room for the kernel's answer; libdevmapper starts with 16 KiB too.
const MIN_BUFFER: usize = 16 * 1024;

// Offsets in `struct dm_ioctl`.
const OFF_VERSION: usize = 0; // u32[3]
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40; // u64
const OFF_NAME: usize = 48;
const NAME_LEN: usize = 128;

// Offsets in `struct dm_target_spec`.
const SPEC_OFF_SECTOR_START: usize = 0;
const SPEC_OFF_LENGTH: usize = 8;
const SPEC_OFF_NEXT: usize = 20;
const SPEC_OFF_TARGET_TYPE: usize = 24;
const TARGET_TYPE_LEN: usize = 16;

/// The interface version this code speaks (`DM_VERSION_MAJOR`); minor 0 asks for
/// nothing newer than the first 4.x kernels had.
const VERSION: [u32; 3] = [4, 0, 0];

pub const DM_READONLY_FLAG: u32 = 1 << 0;

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`: direction read|write (3 << 30), size 312
/// (<< 16), type 0xfd (<< 8), number `cmd`.
const fn opcode(cmd: u32) -> u32 {
    (3 << 30) | (HEADER_SIZE_U32 << 16) | (0xfd << 8) | cmd
}
const DM_VERSION: u32 = opcode(0);
const DM_DEV_CREATE: u32 = opcode(3);
const DM_DEV_SUSPEND: u32 = opcode(6);
const DM_TABLE_LOAD: u32 = opcode(9);

/// Why a device-mapper request failed.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("cannot open {CONTROL_PATH} (is dm-mod loaded?): {0}")]
    Control(io::Error),
    #[error("device-mapper {what} of '{name}' failed: {source}")]
    Ioctl { what: &'static str, name: String, source: io::Error },
    #[error("the kernel's device-mapper interface is version {0}, not 4")]
    Version(u32),
    #[error("device-mapper name '{0}' is empty or longer than 127 bytes")]
    Name(String),
    #[error("device-mapper target '{0}' is longer than 15 bytes")]
    TargetType(String),
    #[error("device-mapper table parameters are too long ({0} bytes)")]
    TooLong(usize),
}

fn put_u32(buf: &mut [u8], off: usize, value: u32) {
    buf[off..off + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], off: usize, value: u64) {
    buf[off..off + 8].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(buf: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[off..off + 4]);
    u32::from_ne_bytes(a)
}

/// A request buffer: the header filled in, `payload` after it.
fn request(name: &str, flags: u32, target_count: u32, payload: &[u8]) -> Result<Vec<u8>, DmError> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('\0') {
        return Err(DmError::Name(name.to_string()));
    }
    let used = HEADER_SIZE + payload.len();
    let mut buf = vec![0u8; used.max(MIN_BUFFER)];
    let size = u32::try_from(buf.len()).map_err(|_| DmError::TooLong(payload.len()))?;
    for (i, v) in VERSION.iter().enumerate() {
        put_u32(&mut buf, OFF_VERSION + 4 * i, *v);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, size);
    put_u32(&mut buf, OFF_DATA_START, HEADER_SIZE_U32);
    put_u32(&mut buf, OFF_TARGET_COUNT, target_count);
    put_u32(&mut buf, OFF_FLAGS, flags);
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    buf[HEADER_SIZE..used].copy_from_slice(payload);
    Ok(buf)
}

/// DM_DEV_CREATE for `name` (no table yet).
pub fn create_request(name: &str) -> Result<Vec<u8>, DmError> {
    request(name, 0, 0, &[])
}

/// DM_DEV_SUSPEND without DM_SUSPEND_FLAG: resumes `name`, making the loaded table live.
pub fn resume_request(name: &str) -> Result<Vec<u8>, DmError> {
    request(name, 0, 0, &[])
}

/// DM_TABLE_LOAD of one target covering sectors `0..sectors`.
pub fn table_load_request(
    name: &str,
    flags: u32,
    sectors: u64,
    target_type: &str,
    params: &str,
) -> Result<Vec<u8>, DmError> {
    if target_type.len() >= TARGET_TYPE_LEN {
        return Err(DmError::TargetType(target_type.to_string()));
    }
    // Spec, parameters, NUL, padded to 8 bytes as the kernel expects of `next`.
    let spec_len = (TARGET_SPEC_SIZE + params.len() + 1).next_multiple_of(8);
    let next = u32::try_from(spec_len).map_err(|_| DmError::TooLong(params.len()))?;
    let mut spec = vec![0u8; spec_len];
    put_u64(&mut spec, SPEC_OFF_SECTOR_START, 0);
    put_u64(&mut spec, SPEC_OFF_LENGTH, sectors);
    put_u32(&mut spec, SPEC_OFF_NEXT, next);
    spec[SPEC_OFF_TARGET_TYPE..SPEC_OFF_TARGET_TYPE + target_type.len()]
        .copy_from_slice(target_type.as_bytes());
    spec[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
    request(name, flags, 1, &spec)
}

/// The device number the kernel returned in `dev` (`huge_encode_dev` form), as
/// (major, minor).
pub fn reply_dev(buf: &[u8]) -> (u32, u32) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[OFF_DEV..OFF_DEV + 8]);
    let dev = u64::from_ne_bytes(a);
    // new_encode_dev(): minor bits 0-7 and 20-39, major bits 8-19; the masks keep
    // each value within 20 bits, so the conversions cannot fail.
    let major = u32::try_from((dev >> 8) & 0xfff).unwrap_or(u32::MAX);
    let minor = u32::try_from((dev & 0xff) | ((dev >> 12) & 0xfff00)).unwrap_or(u32::MAX);
    (major, minor)
}

/// One device-mapper ioctl on a request buffer the kernel reads and writes.
struct DmIoctl<'a> {
    opcode: Opcode,
    buf: &'a mut [u8],
}

// SAFETY: `as_ptr` returns a pointer to `buf`, a live mutable buffer of at least
// HEADER_SIZE bytes whose `data_size` field equals its length (built by `request`),
// so the kernel reads and writes only inside it; the output is not read through the
// pointer.
unsafe impl Ioctl for DmIoctl<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(
        _out: IoctlOutput,
        _extract_output: *mut core::ffi::c_void,
    ) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// An open `/dev/mapper/control`.
pub struct Control {
    file: File,
}

impl Control {
    /// Opens the control node and checks the interface version.
    pub fn open() -> Result<Control, DmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(DmError::Control)?;
        let control = Control { file };
        let mut buf = request("version", 0, 0, &[])?;
        control.call(DM_VERSION, "version check", "version", &mut buf)?;
        match get_u32(&buf, OFF_VERSION) {
            4 => Ok(control),
            other => Err(DmError::Version(other)),
        }
    }

    fn call(
        &self,
        opcode: u32,
        what: &'static str,
        name: &str,
        buf: &mut [u8],
    ) -> Result<(), DmError> {
        debug_assert!(
            buf.len() >= HEADER_SIZE && get_u32(buf, OFF_DATA_SIZE) as usize == buf.len()
        );
        let op = DmIoctl { opcode: opcode as Opcode, buf };
        // SAFETY: the buffer was built by `request`, whose header tells the kernel its
        // true size (see the `Ioctl` impl), and the opcode is a device-mapper
        // _IOWR(0xfd, ..., struct dm_ioctl) request on the control node.
        unsafe { rustix::ioctl::ioctl(self.file.as_fd(), op) }.map_err(|e| DmError::Ioctl {
            what,
            name: name.to_string(),
            source: e.into(),
        })
    }

    /// Creates a read-only device `name` with one target and activates it; returns
    /// its (major, minor).
    pub fn create_and_activate(
        &self,
        name: &str,
        sectors: u64,
        target_type: &str,
        params: &str,
    ) -> Result<(u32, u32), DmError> {
        let mut buf = create_request(name)?;
        self.call(DM_DEV_CREATE, "create", name, &mut buf)?;
        let dev = reply_dev(&buf);
        let mut buf = table_load_request(name, DM_READONLY_FLAG, sectors, target_type, params)?;
        self.call(DM_TABLE_LOAD, "table load", name, &mut buf)?;
        let mut buf = resume_request(name)?;
        self.call(DM_DEV_SUSPEND, "resume", name, &mut buf)?;
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_c_header() {
        // Values printed by a C program including <linux/dm-ioctl.h>.
        assert_eq!(DM_VERSION, 0xc138_fd00);
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn header_layout() {
        let buf = create_request("root").unwrap();
        assert_eq!(buf.len(), MIN_BUFFER);
        assert_eq!(&buf[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(get_u32(&buf, OFF_DATA_SIZE), 16384);
        assert_eq!(get_u32(&buf, OFF_DATA_START), 312);
        assert_eq!(get_u32(&buf, OFF_TARGET_COUNT), 0);
        assert_eq!(&buf[48..53], b"root\0");
        assert!(buf[53..].iter().all(|&b| b == 0));
        assert!(create_request("").is_err());
        assert!(create_request(&"x".repeat(128)).is_err());
        assert!(create_request(&"x".repeat(127)).is_ok());
    }

    #[test]
    fn table_load_layout() {
        let params = "1 8:3 8:3 4096 4096 2 3 sha256 00 -"; // 35 bytes
        let buf = table_load_request("root", DM_READONLY_FLAG, 16, "verity", params).unwrap();
        assert_eq!(get_u32(&buf, OFF_FLAGS), 1);
        assert_eq!(get_u32(&buf, OFF_TARGET_COUNT), 1);
        let spec = &buf[HEADER_SIZE..];
        assert_eq!(&spec[0..8], &0u64.to_le_bytes());
        assert_eq!(&spec[8..16], &16u64.to_le_bytes());
        // 40 + 35 + 1 = 76, padded to 80.
        assert_eq!(get_u32(spec, SPEC_OFF_NEXT), 80);
        assert_eq!(&spec[24..31], b"verity\0");
        assert_eq!(&spec[40..75], params.as_bytes());
        assert_eq!(spec[75], 0);
        assert!(table_load_request("root", 0, 1, "sixteen-chars-xx", "").is_err());
    }

    #[test]
    fn device_numbers_decode() {
        let mut buf = create_request("root").unwrap();
        // major 254, minor 0 and major 253, minor 300 in new_encode_dev form.
        for (major, minor) in [(254u32, 0u32), (253, 300), (8, 3)] {
            let (ma, mi) = (u64::from(major), u64::from(minor));
            let dev = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
            put_u64(&mut buf, OFF_DEV, dev);
            assert_eq!(reply_dev(&buf), (major, minor));
        }
    }
}
