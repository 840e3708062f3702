//! The boot chain as data: kernel command line, module closure, initramfs, GRUB A/B selection.
