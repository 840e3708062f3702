//! Feeds arbitrary bytes to the file-system probe as a partition. Errors are
//! fine, panics are bugs.
#![no_main]

use abforge_partitions::probe::{probe_filesystem, probe_verity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let region = data.to_vec();
    let len = data.len() as u64;
    let _ = probe_filesystem(&region, 0, len);
    let _ = probe_filesystem(&region, 0, len.saturating_mul(2));
    let _ = probe_verity(&region, 0, len, len / 2);
});
