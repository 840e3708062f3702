//! Prints the config a GRUB EFI image for abforge disks must embed
//! ([`abforge_kernels::grub::EMBEDDED_CONFIG`]), for `grub-mkstandalone`:
//! `scripts/boot-inputs.sh` (`make grub-efi`) writes it to a file and passes it as
//! `boot/grub/grub.cfg=FILE`.

use std::io::Write;

fn main() -> std::io::Result<()> {
    std::io::stdout().write_all(abforge_kernels::grub::EMBEDDED_CONFIG.as_bytes())
}
