//! Feeds arbitrary bytes to the GPT reader as a whole disk. Errors are fine,
//! panics (and large allocations) are bugs.
#![no_main]

use abforge_partitions::gpt::read_gpt_report;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let disk = data.to_vec();
    // The claimed size is the real one, and also one that is larger than the
    // bytes available (a truncated image).
    let size = data.len() as u64;
    let _ = read_gpt_report(&disk, size);
    let _ = read_gpt_report(&disk, size.saturating_mul(3));
    if let Ok(report) = read_gpt_report(&disk, size) {
        for entry in &report.layout.entries {
            let _ = (entry.size_bytes(), entry.offset_bytes());
        }
        let _ = report.layout.validate();
    }
});
