//! Kernel module closure: the modules to put in an initramfs, in load order.
//!
//! Reads the index files `depmod` (kmod) writes in `lib/modules/<version>/`:
//!
//! - `modules.dep` (required): one line per module, `path: dep-path dep-path ...`,
//!   paths relative to that directory, the dependency list already transitive. A
//!   module's name is its file name without `.ko` / `.ko.gz` / `.ko.xz` / `.ko.zst`,
//!   with `-` read as `_` (`dm-verity` and `dm_verity` are one module).
//! - `modules.softdep` (optional): `softdep <module> pre: <names> post: <names>`,
//!   soft dependencies declared by the modules (`ext4` wants `crc32c` loaded first
//!   so its checksums do not need a later modprobe that an initramfs lacks).
//! - `modules.alias` (optional): `alias <alias> <module>`; a soft dependency often
//!   names an alias (`crypto-crc32c`). Only exact aliases are used (no wildcards).
//! - `modules.builtin` (optional): modules built into the kernel; asking for one is
//!   not an error and adds nothing.
//!
//! The load order matches what `modprobe --show-depends` prints: for each module,
//! its `pre:` soft dependencies, then its dependencies from the last listed to the
//! first (depmod lists them so the last must load first), then the module, then its
//! `post:` soft dependencies; a module already placed is not placed again. An alias
//! naming several modules loads all of them in the order of `modules.alias`.
//! Left out: `modules.dep.bin` and the other binary indexes, `options`/`install`
//! lines of modprobe.d, wildcard aliases, and soft dependencies that name nothing
//! known (skipped, as modprobe does).
//!
//! Parsing works on text ([`ModulesDep::parse`] and friends) so it is testable without
//! files; [`ModuleIndex::load`] reads the files of a directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a module index could not be read or a closure computed.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error(
        "{} has no modules.dep: run `depmod -b <root> <version>` (package kmod) to create it",
        dir.display()
    )]
    MissingModulesDep { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{file} line {line}: {reason}")]
    Syntax { file: &'static str, line: usize, reason: String },
    #[error("module '{name}' is not in modules.dep{}", requested_by.as_ref().map(|m| format!(" (needed by '{m}')")).unwrap_or_default())]
    UnknownModule { name: String, requested_by: Option<String> },
    #[error("modules.dep has a dependency cycle through '{0}'")]
    Cycle(String),
}

/// How a module file is compressed (from its suffix).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModuleCompression {
    None,
    Gzip,
    Xz,
    Zstd,
}

const SUFFIXES: &[(&str, ModuleCompression)] = &[
    (".ko", ModuleCompression::None),
    (".ko.gz", ModuleCompression::Gzip),
    (".ko.xz", ModuleCompression::Xz),
    (".ko.zst", ModuleCompression::Zstd),
];

/// A module to load.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Module {
    /// Normalized name (`dm_verity`).
    pub name: String,
    /// Path as listed in modules.dep, relative to `lib/modules/<version>` (`kernel/drivers/md/dm-verity.ko`).
    pub path: String,
    pub compression: ModuleCompression,
}

/// The module name with `-` read as `_` and any module suffix removed.
pub fn normalize_name(name: &str) -> String {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = SUFFIXES.iter().find_map(|(suffix, _)| file.strip_suffix(suffix)).unwrap_or(file);
    stem.replace('-', "_")
}

fn module_from_path(path: &str) -> Option<Module> {
    let file = path.rsplit('/').next()?;
    let (stem, compression) =
        SUFFIXES.iter().find_map(|(suffix, c)| file.strip_suffix(suffix).map(|s| (s, *c)))?;
    if stem.is_empty() {
        return None;
    }
    Some(Module { name: stem.replace('-', "_"), path: path.to_string(), compression })
}

#[derive(Clone, Debug)]
struct DepEntry {
    module: Module,
    /// Normalized names of the dependencies, in modules.dep order.
    deps: Vec<String>,
}

/// The parsed `modules.dep`.
#[derive(Clone, Debug, Default)]
pub struct ModulesDep {
    entries: BTreeMap<String, DepEntry>,
}

impl ModulesDep {
    /// Parses modules.dep text. Blank lines and `#` comment lines are skipped
    /// (depmod writes none; test fixtures use them for their provenance).
    pub fn parse(text: &str) -> Result<ModulesDep, ModulesError> {
        let syntax = |line: usize, reason: String| ModulesError::Syntax {
            file: "modules.dep",
            line,
            reason,
        };
        let mut entries = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(syntax(number, "expected 'path: dependencies'".into()));
            };
            let module = module_from_path(path.trim()).ok_or_else(|| {
                syntax(
                    number,
                    format!(
                        "'{}' is not a module file (.ko, .ko.gz, .ko.xz, .ko.zst)",
                        path.trim()
                    ),
                )
            })?;
            let mut dep_names = Vec::new();
            for dep in deps.split_whitespace() {
                let dep_module = module_from_path(dep)
                    .ok_or_else(|| syntax(number, format!("'{dep}' is not a module file")))?;
                dep_names.push(dep_module.name);
            }
            let name = module.name.clone();
            if entries.insert(name.clone(), DepEntry { module, deps: dep_names }).is_some() {
                return Err(syntax(number, format!("module '{name}' is listed twice")));
            }
        }
        // Every dependency must have its own line, so the closure never reaches an unknown name.
        for entry in entries.values() {
            if let Some(missing) = entry.deps.iter().find(|d| !entries.contains_key(*d)) {
                return Err(ModulesError::UnknownModule {
                    name: missing.clone(),
                    requested_by: Some(entry.module.name.clone()),
                });
            }
        }
        Ok(ModulesDep { entries })
    }

    /// The module called `name` (any spelling: `dm-verity`, `dm_verity.ko`).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.entries.get(&normalize_name(name)).map(|e| &e.module)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Soft dependencies from `modules.softdep`: names (modules or aliases) per module.
#[derive(Clone, Debug, Default)]
pub struct SoftDeps {
    pre: BTreeMap<String, Vec<String>>,
    post: BTreeMap<String, Vec<String>>,
}

impl SoftDeps {
    /// Parses `softdep <module> [pre: names...] [post: names...]` lines; `#` comments
    /// and blank lines are skipped. Names before any `pre:`/`post:` are `pre`, as in
    /// kmod's own files.
    pub fn parse(text: &str) -> Result<SoftDeps, ModulesError> {
        let mut out = SoftDeps::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                return Err(ModulesError::Syntax {
                    file: "modules.softdep",
                    line: index + 1,
                    reason: "expected 'softdep <module> pre: ... post: ...'".into(),
                });
            };
            let module = normalize_name(module);
            let mut post = false;
            for word in words {
                match word {
                    "pre:" => post = false,
                    "post:" => post = true,
                    name => {
                        let list = if post { &mut out.post } else { &mut out.pre };
                        list.entry(module.clone()).or_default().push(name.to_string());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Exact aliases from `modules.alias`: alias → modules, in file order.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    map: BTreeMap<String, Vec<String>>,
}

impl Aliases {
    /// Parses `alias <alias> <module>` lines, keeping only aliases without wildcards.
    pub fn parse(text: &str) -> Result<Aliases, ModulesError> {
        let mut out = Aliases::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some("alias"), Some(alias), Some(module), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(ModulesError::Syntax {
                    file: "modules.alias",
                    line: index + 1,
                    reason: "expected 'alias <alias> <module>'".into(),
                });
            };
            if alias.contains(['*', '?', '[']) {
                continue;
            }
            let modules = out.map.entry(alias.replace('-', "_")).or_default();
            let module = normalize_name(module);
            if !modules.contains(&module) {
                modules.push(module);
            }
        }
        Ok(out)
    }

    /// Modules an exact alias names (`-` and `_` equal), in file order.
    pub fn resolve(&self, alias: &str) -> &[String] {
        self.map.get(&alias.replace('-', "_")).map_or(&[], Vec::as_slice)
    }
}

/// Names of built-in modules from `modules.builtin` (`kernel/fs/ext4/ext4.ko` lines).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(normalize_name)
        .collect()
}

/// Everything needed to compute a closure for one kernel.
#[derive(Clone, Debug, Default)]
pub struct ModuleIndex {
    pub dep: ModulesDep,
    pub softdeps: SoftDeps,
    pub aliases: Aliases,
    pub builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Reads `modules.dep` (required) and `modules.softdep`, `modules.alias`,
    /// `modules.builtin` (each optional) from `dir` (`<root>/lib/modules/<version>`).
    pub fn load(dir: &Path) -> Result<ModuleIndex, ModulesError> {
        let dep_path = dir.join("modules.dep");
        let dep_text = match fs::read_to_string(&dep_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ModulesError::MissingModulesDep { dir: dir.to_path_buf() });
            }
            Err(source) => return Err(ModulesError::Read { path: dep_path, source }),
        };
        let optional = |name: &str| -> Result<String, ModulesError> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ModulesError::Read { path, source }),
            }
        };
        Ok(ModuleIndex {
            dep: ModulesDep::parse(&dep_text)?,
            softdeps: SoftDeps::parse(&optional("modules.softdep")?)?,
            aliases: Aliases::parse(&optional("modules.alias")?)?,
            builtin: parse_builtin(&optional("modules.builtin")?),
        })
    }

    /// An index of modules.dep alone (no soft dependencies, aliases or built-ins).
    pub fn from_modules_dep(text: &str) -> Result<ModuleIndex, ModulesError> {
        Ok(ModuleIndex { dep: ModulesDep::parse(text)?, ..ModuleIndex::default() })
    }

    /// The requested modules and everything they need, in load order (see the module
    /// comment). Built-in modules are skipped; a name found neither in modules.dep
    /// nor among the built-ins is an error naming it.
    pub fn closure<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<Module>, ModulesError> {
        let mut state = ClosureState {
            placed: BTreeSet::new(),
            in_progress: BTreeSet::new(),
            order: Vec::new(),
        };
        for name in names {
            let name = normalize_name(name.as_ref());
            if self.dep.entries.contains_key(&name) {
                self.visit(&name, &mut state)?;
            } else if !self.builtin.contains(&name) {
                return Err(ModulesError::UnknownModule { name, requested_by: None });
            }
        }
        Ok(state.order)
    }

    fn visit(&self, name: &str, state: &mut ClosureState) -> Result<(), ModulesError> {
        if state.placed.contains(name) {
            return Ok(());
        }
        if !state.in_progress.insert(name.to_string()) {
            return Err(ModulesError::Cycle(name.to_string()));
        }
        let entry = self.dep.entries.get(name).ok_or_else(|| ModulesError::UnknownModule {
            name: name.to_string(),
            requested_by: None,
        })?;
        for soft in self.softdeps.pre.get(name).into_iter().flatten() {
            self.visit_soft(soft, state)?;
        }
        for dep in entry.deps.iter().rev() {
            self.visit(dep, state)?;
        }
        state.in_progress.remove(name);
        state.placed.insert(name.to_string());
        state.order.push(entry.module.clone());
        for soft in self.softdeps.post.get(name).into_iter().flatten() {
            self.visit_soft(soft, state)?;
        }
        Ok(())
    }

    /// A soft dependency: a module name or an alias; unknown names and modules
    /// already being placed (a soft cycle) are skipped.
    fn visit_soft(&self, name: &str, state: &mut ClosureState) -> Result<(), ModulesError> {
        let normalized = normalize_name(name);
        let targets: Vec<String> = if self.dep.entries.contains_key(&normalized) {
            vec![normalized]
        } else {
            self.aliases.resolve(name).to_vec()
        };
        for target in targets {
            if self.dep.entries.contains_key(&target) && !state.in_progress.contains(&target) {
                self.visit(&target, state)?;
            }
        }
        Ok(())
    }
}

struct ClosureState {
    placed: BTreeSet<String>,
    in_progress: BTreeSet<String>,
    order: Vec<Module>,
}

/// Where the module load list lives in the initramfs.
pub const LOAD_LIST_PATH: &str = "etc/abforge/modules.load";

/// The load list the builder writes into the initramfs and the init reads: one
/// module path per line (relative to `lib/modules/<version>`, as in modules.dep), in
/// load order, ending with a newline.
pub fn render_load_list(modules: &[Module]) -> String {
    modules.iter().map(|m| format!("{}\n", m.path)).collect()
}

/// Reads a load list back: the non-empty lines that are not `#` comments.
pub fn parse_load_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
kernel/crypto/crc32c_generic.ko.zst:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
";

    fn names(modules: &[Module]) -> Vec<&str> {
        modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize_name("dm-verity"), "dm_verity");
        assert_eq!(normalize_name("kernel/drivers/md/dm-verity.ko"), "dm_verity");
        assert_eq!(normalize_name("crc32c-intel.ko.xz"), "crc32c_intel");
        assert_eq!(normalize_name("x.ko.zst"), "x");
        assert_eq!(normalize_name("x.ko.gz"), "x");
    }

    #[test]
    fn closure_puts_dependencies_first_like_modprobe() {
        let index = ModuleIndex::from_modules_dep(DEP).unwrap();
        let got = index.closure(&["dm-verity", "ext4"]).unwrap();
        assert_eq!(
            names(&got),
            ["reed_solomon", "dm_mod", "dm_bufio", "dm_verity", "jbd2", "mbcache", "crc16", "ext4"]
        );
        assert_eq!(got[3].path, "kernel/drivers/md/dm-verity.ko");
        // Asking again, or for a dependency already placed, adds nothing.
        let got = index.closure(&["dm_mod", "dm-verity", "dm_mod"]).unwrap();
        assert_eq!(names(&got), ["dm_mod", "reed_solomon", "dm_bufio", "dm_verity"]);
    }

    #[test]
    fn compression_comes_from_the_suffix() {
        let index = ModuleIndex::from_modules_dep(DEP).unwrap();
        let got = index.closure(&["crc32c_generic", "crc32c_intel"]).unwrap();
        assert_eq!(got[0].compression, ModuleCompression::Zstd);
        assert_eq!(got[1].compression, ModuleCompression::Xz);
        assert_eq!(index.dep.get("ext4").unwrap().compression, ModuleCompression::None);
    }

    #[test]
    fn softdeps_through_aliases_load_first() {
        let mut index = ModuleIndex::from_modules_dep(DEP).unwrap();
        index.softdeps = SoftDeps::parse(
            "# Soft dependencies extracted from modules themselves.\n\
             softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\nsoftdep dm_mod post: nonexistent\n",
        )
        .unwrap();
        index.aliases = Aliases::parse(
            "alias crypto-crc32c-intel crc32c_intel\nalias crypto-crc32c crc32c_intel\n\
             alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\nalias crypto-crc32c crc32c_generic\n",
        )
        .unwrap();
        let got = index.closure(&["ext4"]).unwrap();
        assert_eq!(
            names(&got),
            ["crc32c_intel", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]
        );
        assert_eq!(names(&index.closure(&["dm-mod"]).unwrap()), ["dm_mod"]);
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let mut index = ModuleIndex::from_modules_dep(DEP).unwrap();
        index.builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\n");
        assert_eq!(names(&index.closure(&["virtio-blk", "crc16"]).unwrap()), ["crc16"]);
    }

    #[test]
    fn unknown_module_is_named() {
        let index = ModuleIndex::from_modules_dep(DEP).unwrap();
        let err = index.closure(&["ext4", "no-such-module"]).unwrap_err();
        assert_eq!(err.to_string(), "module 'no_such_module' is not in modules.dep");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = ModulesDep::parse("kernel/a.ko:\nnot a line\n").unwrap_err();
        assert_eq!(err.to_string(), "modules.dep line 2: expected 'path: dependencies'");
        let err = ModulesDep::parse("kernel/a.txt:\n").unwrap_err();
        assert!(err.to_string().contains("line 1: 'kernel/a.txt' is not a module file"), "{err}");
        let err = ModulesDep::parse("kernel/a.ko:\nother/a.ko:\n").unwrap_err();
        assert!(err.to_string().contains("line 2: module 'a' is listed twice"), "{err}");
        let err = ModulesDep::parse("kernel/a.ko: kernel/b.ko\n").unwrap_err();
        assert_eq!(err.to_string(), "module 'b' is not in modules.dep (needed by 'a')");
        assert!(SoftDeps::parse("options x y=1\n").is_err());
        assert!(Aliases::parse("alias onlyone\n").is_err());
    }

    #[test]
    fn cycles_are_reported() {
        let index = ModuleIndex::from_modules_dep("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(matches!(index.closure(&["a"]), Err(ModulesError::Cycle(_))));
    }

    #[test]
    fn missing_modules_dep_suggests_depmod() {
        let dir = std::env::temp_dir().join("abforge-kernels-no-such-dir/lib/modules/6.1.0");
        let err = ModuleIndex::load(&dir).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("abforge-kernels-no-such-dir/lib/modules/6.1.0 has no modules.dep"),
            "{text}"
        );
        assert!(text.contains("depmod -b"), "{text}");
    }

    #[test]
    fn load_list_round_trips() {
        let index = ModuleIndex::from_modules_dep(DEP).unwrap();
        let modules = index.closure(&["ext4"]).unwrap();
        let text = render_load_list(&modules);
        assert_eq!(
            text,
            "kernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\nkernel/lib/crc16.ko\nkernel/fs/ext4/ext4.ko\n"
        );
        assert_eq!(
            parse_load_list(&text),
            modules.iter().map(|m| m.path.clone()).collect::<Vec<_>>()
        );
    }
}
