//! abforge: builds immutable A/B operating-system disk images from a YAML manifest.
//!
//! Data flows one way: manifest → validated plan (pure, no I/O) → partition
//! producers → verity → disk container → report. This crate is the only one that
//! reads files named in a manifest or on the command line.

pub mod boot;
pub mod build;
pub mod cli;
pub mod container;
pub mod error;
pub mod identity;
pub mod inputs;
pub mod inspect;
pub mod manifest;
pub mod plan;
pub mod profile;
pub mod report;
pub mod slot;
pub mod source;
pub mod verify;
