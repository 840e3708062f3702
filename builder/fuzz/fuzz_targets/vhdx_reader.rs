//! Opens arbitrary bytes as a VHDX and, when they parse, reads the start of the
//! disk and its data ranges. Errors are fine; panics, hangs and huge allocations
//! are bugs.
#![no_main]

use abforge::container::DiskSource;
use abforge::container::vhdx::VhdxReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = VhdxReader::open(data.to_vec()) else { return };
    let size = reader.size();
    let mut buf = vec![0u8; 64 * 1024];
    for offset in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
        let len = buf.len().min(usize::try_from(size.saturating_sub(offset)).unwrap_or(0));
        let _ = reader.read_at(&mut buf[..len], offset);
    }
    let _ = reader.data_ranges(0..size.min(1 << 30));
});
