//! Parses arbitrary bytes as a verity superblock. Errors are fine, panics are
//! bugs. A superblock that parses must write back to the same bytes in every
//! field the parser reads (padding is ignored when parsing, zeroed when writing).
#![no_main]

use abforge_verity::Superblock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(superblock) = Superblock::parse(data) {
        let written = superblock.to_bytes();
        assert_eq!(Superblock::parse(&written).as_ref(), Ok(&superblock));
    }
});
