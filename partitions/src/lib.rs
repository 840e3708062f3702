//! Partition-level formats for abforge: GUIDs, the in-memory file tree that
//! file-system writers consume, and (in their own modules) GPT, FAT and ext4.
//!
//! This crate reads no file named by a user: callers hand it byte sinks and
//! file trees. `builder` is the only crate that opens manifest paths.

pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod guid;
pub mod probe;
pub mod region;
pub mod tree;

pub use guid::Guid;
pub use region::FileRegion;
