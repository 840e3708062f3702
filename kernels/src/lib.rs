//! The boot chain as data: kernel command line, module closure, initramfs, GRUB A/B selection.
//!
//! - [`cmdline`]: a validated kernel command line, the `abforge.*` parameters that
//!   abforge's init reads (generator and parser, shared by the builder and the init),
//!   and the equivalent parameters for a systemd initrd.
//! - [`modules`]: which kernel modules to load, in which order, from `modules.dep`.
//! - [`cpio`]: a reproducible "newc" cpio writer for the initramfs, optionally compressed.
//! - [`grub`]: per-slot `grub.cfg`, the ESP selector implementing A/B with one-shot
//!   tries, and the GRUB environment block that holds the selector's state.
//!
//! Apart from [`modules::ModuleIndex::load`] (which reads a kernel's `modules.*`
//! index files) and the file contents a caller hands to [`cpio`], nothing here
//! touches the file system: everything is built from and rendered to values.

pub mod cmdline;
pub mod cpio;
pub mod grub;
pub mod modules;
pub mod slot;

pub use slot::Slot;
