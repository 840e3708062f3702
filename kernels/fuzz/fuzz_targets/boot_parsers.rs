//! Feeds arbitrary bytes to every parser of abforge-kernels that reads data from a
//! disk image or a kernel: the GRUB environment block, the kernel command line and
//! the abforge.* parameters, and the module index files.
//! Errors are fine, panics are bugs. Run with `cargo fuzz run boot_parsers` in kernels/.

#![no_main]

use abforge_kernels::{cmdline, grub, modules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(vars) = grub::parse_envblk(data) {
        // What parses must render back into a block of the same size, or say why not.
        let _ = grub::edit_envblk(data, &[]);
        let _ = grub::render_envblk(&vars);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(line) = cmdline::Cmdline::parse(text) {
            let _ = line.render();
        }
        if let Ok(params) = cmdline::parse_abforge_params(text) {
            // What the init accepts, the builder renders back to the same values.
            let rendered =
                params.to_params(cmdline::RootStyle::Abforge).expect("accepted parameters render");
            let text: Vec<String> = rendered.iter().map(ToString::to_string).collect();
            assert_eq!(
                cmdline::parse_abforge_params(&text.join(" ")).expect("rendered parameters parse"),
                params
            );
        }
        if let Ok(index) = modules::ModuleIndex::from_modules_dep(text) {
            let _ = index.closure(&["ext4", "dm-verity"]);
        }
        let _ = modules::SoftDeps::parse(text);
        let _ = modules::Aliases::parse(text);
    }
});
