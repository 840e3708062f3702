//! `abforge verity` against `veritysetup` (cryptsetup): the same inputs and
//! options must give byte-identical hash files and the same root hash, and
//! `veritysetup verify` must accept every tree abforge writes. Also: single-byte
//! flips are caught and named, and bad input fails cleanly.
//!
//! Build the binary first: `cargo build -p abforge`.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use abforge_tests::{abforge, run, run_ok, scratch, tool};

const UUID: &str = "01234567-89ab-4def-8123-456789abcdef";

/// Deterministic bytes (xorshift), so failures reproduce.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A data file of `blocks` blocks: random data, with (for larger files) a run
/// of explicit zero blocks and a hole, to exercise the zero-block shortcuts.
fn write_data(path: &Path, blocks: u64, block_size: u64, seed: u64) {
    let len = blocks * block_size;
    let file = File::create(path).unwrap();
    file.set_len(len).unwrap();
    let len = usize::try_from(len).unwrap();
    if blocks < 64 {
        file.write_all_at(&pseudo_random(len, seed), 0).unwrap();
        return;
    }
    // First quarter random, second quarter zeros written out, third a hole, last random.
    let quarter = len / 4;
    file.write_all_at(&pseudo_random(quarter, seed), 0).unwrap();
    file.write_all_at(&vec![0u8; quarter], quarter as u64).unwrap();
    let tail = len - 3 * quarter;
    file.write_all_at(&pseudo_random(tail, seed + 1), (3 * quarter) as u64).unwrap();
}

fn root_hash(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Root hash:"))
        .unwrap_or_else(|| panic!("no Root hash line in:\n{stdout}"));
    line.split_whitespace().last().unwrap().to_string()
}

#[derive(Debug, Clone)]
struct Case {
    blocks: u64,
    data_block_size: u64,
    hash_block_size: u64,
    algorithm: &'static str,
    salt: &'static str,
    superblock: bool,
    same_file: bool,
    hash_type: u32,
}

const BASE: Case = Case {
    blocks: 300,
    data_block_size: 4096,
    hash_block_size: 4096,
    algorithm: "sha256",
    salt: "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
    superblock: true,
    same_file: false,
    hash_type: 1,
};

impl Case {
    /// The options both tools take (format and verify).
    fn options(&self) -> Vec<String> {
        let mut options = vec![
            format!("--data-block-size={}", self.data_block_size),
            format!("--hash-block-size={}", self.hash_block_size),
            format!("--hash={}", self.algorithm),
            format!("--salt={}", self.salt),
            format!("--format={}", self.hash_type),
            format!("--data-blocks={}", self.blocks),
        ];
        if !self.superblock {
            options.push("--no-superblock".into());
        }
        if self.same_file {
            options.push(format!("--hash-offset={}", self.blocks * self.data_block_size));
        }
        options
    }

    fn format_options(&self) -> Vec<String> {
        let mut options = self.options();
        options.push(format!("--uuid={UUID}"));
        options
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for blocks in [1, 2, 127, 128, 129, 16384, 16385] {
        cases.push(Case { blocks, ..BASE });
    }
    cases.push(Case { blocks: 5000, data_block_size: 1024, hash_block_size: 4096, ..BASE });
    cases.push(Case { blocks: 3000, data_block_size: 4096, hash_block_size: 512, ..BASE });
    for algorithm in ["sha1", "sha512"] {
        for blocks in [1, 129, 16385] {
            cases.push(Case { blocks, algorithm, ..BASE });
        }
    }
    for salt in
        ["-", "a1b2c3d4", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"]
    {
        cases.push(Case { salt, ..BASE });
    }
    cases.push(Case { superblock: false, blocks: 16385, ..BASE });
    for superblock in [true, false] {
        cases.push(Case { same_file: true, superblock, ..BASE });
        cases.push(Case { same_file: true, superblock, blocks: 1, ..BASE });
    }
    cases.push(Case { hash_type: 0, algorithm: "sha1", blocks: 2000, ..BASE });
    cases.push(Case { hash_type: 0, blocks: 2000, salt: "a1b2c3d4", superblock: false, ..BASE });
    cases
}

/// Runs both tools on the same inputs; returns the root hash after checking
/// that outputs match byte for byte and that veritysetup accepts abforge's tree.
fn check_case(dir: &Path, index: usize, case: &Case) {
    let data = dir.join(format!("data{index}"));
    write_data(&data, case.blocks, case.data_block_size, index as u64 + 1);
    let (theirs, ours) = if case.same_file {
        let theirs = dir.join(format!("vsame{index}"));
        let ours = dir.join(format!("asame{index}"));
        fs::copy(&data, &theirs).unwrap();
        fs::copy(&data, &ours).unwrap();
        (theirs.clone(), ours.clone())
    } else {
        (dir.join(format!("vhash{index}")), dir.join(format!("ahash{index}")))
    };
    let (their_data, our_data) = if case.same_file { (&theirs, &ours) } else { (&data, &data) };

    let out = run_ok(
        std::process::Command::new(tool("veritysetup"))
            .arg("format")
            .arg(their_data)
            .arg(&theirs)
            .args(case.format_options()),
    );
    let their_root = root_hash(&out);
    let out =
        run_ok(abforge(["verity", "format"]).arg(our_data).arg(&ours).args(case.format_options()));
    let our_root = root_hash(&out);
    assert_eq!(our_root, their_root, "root hash differs for {case:?}");
    let (a, b) = (fs::read(&ours).unwrap(), fs::read(&theirs).unwrap());
    assert!(a == b, "hash files differ for {case:?}: {} vs {} bytes", a.len(), b.len());

    run_ok(
        std::process::Command::new(tool("veritysetup"))
            .arg("verify")
            .arg(our_data)
            .arg(&ours)
            .arg(&our_root)
            .args(case.options()),
    );
    run_ok(
        abforge(["verity", "verify"]).arg(our_data).arg(&ours).arg(&our_root).args(case.options()),
    );
    for path in [&data, &theirs, &ours] {
        let _ = fs::remove_file(path);
    }
}

#[test]
#[cfg_attr(not(any(ci, have_veritysetup)), ignore = "needs veritysetup (package cryptsetup-bin)")]
fn byte_identical_to_veritysetup() {
    let dir = scratch();
    for (index, case) in cases().iter().enumerate() {
        check_case(dir.path(), index, case);
    }
}

/// Default options (superblock in a separate file) parse back from the
/// superblock when verifying, without repeating them.
#[test]
#[cfg_attr(not(any(ci, have_veritysetup)), ignore = "needs veritysetup (package cryptsetup-bin)")]
fn defaults_are_reproducible_and_read_back_from_the_superblock() {
    let dir = scratch();
    let data = dir.path().join("data");
    write_data(&data, 1000, 4096, 99);
    let first =
        root_hash(&run_ok(abforge(["verity", "format"]).arg(&data).arg(dir.path().join("h1"))));
    let second =
        root_hash(&run_ok(abforge(["verity", "format"]).arg(&data).arg(dir.path().join("h2"))));
    assert_eq!(first, second);
    assert_eq!(fs::read(dir.path().join("h1")).unwrap(), fs::read(dir.path().join("h2")).unwrap());
    run_ok(abforge(["verity", "verify"]).arg(&data).arg(dir.path().join("h1")).arg(&first));
    run_ok(
        std::process::Command::new(tool("veritysetup"))
            .arg("verify")
            .arg(&data)
            .arg(dir.path().join("h1"))
            .arg(&first),
    );
    // Given options must agree with the superblock.
    let out = run(abforge(["verity", "verify", "--data-block-size=1024"])
        .arg(&data)
        .arg(dir.path().join("h1"))
        .arg(&first));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

fn expect_failure(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

fn flip(path: &Path, position: u64) {
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, position).unwrap();
}

#[test]
fn single_byte_flips_are_found_and_named() {
    let dir = scratch();
    let data = dir.path().join("data");
    let hash = dir.path().join("hash");
    let blocks = 16385u64;
    write_data(&data, blocks, 4096, 5);
    let root =
        root_hash(&run_ok(abforge(["verity", "format", "--salt=a1b2c3d4"]).arg(&data).arg(&hash)));
    let verify = || run(abforge(["verity", "verify"]).arg(&data).arg(&hash).arg(&root));
    // Data: a sample across random, zero and hole regions.
    let data_len = blocks * 4096;
    for position in
        [0, 4095, 4096, 129 * 4096 + 17, data_len / 4 + 5, data_len / 2 + 4096, data_len - 1]
    {
        flip(&data, position);
        expect_failure(&verify(), 1, &format!("data block {} ", position / 4096));
        flip(&data, position);
    }
    // Tree: superblock at 0, top level at block 1, level 1 at 2..=3, level 0 from 4.
    let hash_len = fs::metadata(&hash).unwrap().len();
    for position in
        [4096, 8191, 8192, 3 * 4096 + 100, 4 * 4096, 4 * 4096 + 31, 70 * 4096 + 2000, hash_len - 1]
    {
        flip(&hash, position);
        expect_failure(&verify(), 1, &format!("hash block {} ", position / 4096));
        flip(&hash, position);
    }
    // The superblock is not covered by the root hash, but a damaged salt gives
    // a different tree, so the root no longer matches.
    flip(&hash, 88);
    expect_failure(&verify(), 1, "does not match the root hash");
    flip(&hash, 88);
    let out = verify();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A wrong root hash.
    let mut wrong = root.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    expect_failure(
        &run(abforge(["verity", "verify"]).arg(&data).arg(&hash).arg(&wrong)),
        1,
        "the root hash",
    );
}

#[test]
fn bad_input_fails_cleanly_and_leaves_no_file() {
    let dir = scratch();
    let data = dir.path().join("data");
    write_data(&data, 100, 4096, 7);
    let hash = dir.path().join("hash");
    let format =
        |args: &[&str]| run(abforge(["verity", "format"]).arg(&data).arg(&hash).args(args));

    expect_failure(&format(&["--data-block-size=1000"]), 2, "not a power of two");
    expect_failure(&format(&["--hash-block-size=256"]), 2, "not a power of two");
    expect_failure(&format(&["--salt=xyz1"]), 2, "hexadecimal");
    expect_failure(&format(&["--salt=abc"]), 2, "hexadecimal");
    expect_failure(&format(&[&format!("--salt={}", "ab".repeat(257))]), 2, "at most 256");
    expect_failure(&format(&["--uuid=not-a-uuid"]), 2, "--uuid");
    expect_failure(&format(&["--hash-offset=100"]), 2, "multiple of 512");
    expect_failure(&format(&["--data-blocks=101"]), 2, "too small");
    assert!(!hash.exists(), "a failed format left {}", hash.display());

    // A data size that is not a multiple of the block size.
    let odd = dir.path().join("odd");
    fs::write(&odd, pseudo_random(5000, 1)).unwrap();
    let out = run(abforge(["verity", "format"]).arg(&odd).arg(&hash));
    expect_failure(&out, 2, "not a multiple of the data block size");
    assert!(!hash.exists());
    // ...unless --data-blocks says how much to protect.
    run_ok(abforge(["verity", "format", "--data-blocks=1"]).arg(&odd).arg(&hash));
    fs::remove_file(&hash).unwrap();

    // Missing data.
    let out = run(abforge(["verity", "format"]).arg(dir.path().join("missing")).arg(&hash));
    expect_failure(&out, 2, "does not exist");
    assert!(!hash.exists());

    // A hash offset overlapping the data of the same file: the data is untouched.
    let before = fs::read(&data).unwrap();
    let out = run(abforge(["verity", "format", "--hash-offset=204800", "--data-blocks=100"])
        .arg(&data)
        .arg(&data));
    expect_failure(&out, 2, "overlaps");
    assert!(fs::read(&data).unwrap() == before, "the data was modified");

    // A truncated tree, then one cut inside the superblock.
    let root = root_hash(&run_ok(abforge(["verity", "format"]).arg(&data).arg(&hash)));
    let len = fs::metadata(&hash).unwrap().len();
    File::options().write(true).open(&hash).unwrap().set_len(len - 1).unwrap();
    let verify = || run(abforge(["verity", "verify"]).arg(&data).arg(&hash).arg(&root));
    expect_failure(&verify(), 1, "truncated");
    File::options().write(true).open(&hash).unwrap().set_len(100).unwrap();
    expect_failure(&verify(), 1, "superblock");
    // A root hash that is not hex, or too short.
    expect_failure(
        &run(abforge(["verity", "verify"]).arg(&data).arg(&hash).arg("xyz")),
        2,
        "ROOT_HASH",
    );
}
