//! The desired configuration and the files it lives in: what the server's control task
//! owns, and changes one target at a time.
//!
//! A change (add or remove a target, add, remove or resize a LUN) touches exactly one file:
//! the one that declares the target (an included file, or the main file), or, for a new
//! target, `<include>/<name>.toml`. That file is read again just before it is edited (so an
//! operator's saved edit of it is kept), edited with `toml_edit` (comments, layout and the
//! other tables in it stay as they are), validated whole with the same checks as a load, and
//! written atomically. Nothing else is read: the target's name is checked for uniqueness by a
//! lookup in the in-memory index, so a change costs the same with 3 targets as with 3,000.
//! Any error leaves everything as it was: no file written, no state changed.
//!
//! The target adopted after an edit is the one the edited file now declares, so an operator's
//! pending edit of that same target is applied with the change (and shows in its diff).
//! Pending edits of other targets wait for `keel reload`, which re-reads every file.
//!
//! Data is never destroyed here: removing a target or a LUN leaves its backing file, and a
//! resize only grows.
//!
//! File I/O is synchronous; callers on the runtime run these methods on the blocking pool.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use super::diff::{ConfigDiff, diff, diff_target};
use super::files::{self, FileCounts, Origin};
use super::validator::line_of;
use super::{
    Backing, Config, ConfigError, ConfigErrors, EMBEDDED_DEFAULT, ErrorKind, Loaded, Names,
    TargetConfig, load_path, load_text, parse_main, parse_target_file,
};

/// How the embedded default names itself in messages.
const EMBEDDED_NAME: &str = "embedded default";

/// The desired configuration, the files it was read from, and where each target lives.
pub struct Store {
    /// The main file; `None`: the embedded default, which cannot be edited.
    main: Option<PathBuf>,
    config: Config,
    /// Lower-cased target name → where it is.
    slots: HashMap<String, Slot>,
    counts: FileCounts,
}

/// Where a target is: its index in `config.targets` and the file declaring it.
struct Slot {
    position: usize,
    origin: Origin,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Store {
    /// Reads and validates the configuration file at `path` and its include directory.
    pub fn load(path: &Path) -> Result<Store, ConfigErrors> {
        let mut counts = FileCounts::default();
        let loaded = load_path(path, &mut counts)?;
        Ok(Store::adopt(Some(path.to_path_buf()), loaded, counts))
    }

    /// The embedded default ([`EMBEDDED_DEFAULT`]); its include directory is relative to the
    /// working directory.
    pub fn embedded() -> Result<Store, ConfigErrors> {
        let mut counts = FileCounts::default();
        let loaded = load_text(EMBEDDED_DEFAULT, EMBEDDED_NAME, Path::new(""), &mut counts)?;
        Ok(Store::adopt(None, loaded, counts))
    }

    fn adopt(main: Option<PathBuf>, loaded: Loaded, counts: FileCounts) -> Store {
        let mut store = Store {
            main,
            config: loaded.config,
            slots: HashMap::new(),
            counts,
        };
        store.index(loaded.origins);
        store
    }

    fn index(&mut self, origins: Vec<Origin>) {
        self.slots = self
            .config
            .targets
            .iter()
            .zip(origins)
            .enumerate()
            .map(|(position, (t, origin))| (key(&t.name), Slot { position, origin }))
            .collect();
    }

    /// The desired configuration. Targets are in load order (main file, then included files
    /// by name), except that a removal moves the last target into the removed one's place.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The main configuration file (`None`: the embedded default).
    pub fn main_file(&self) -> Option<&Path> {
        self.main.as_deref()
    }

    /// Where target `name` is declared.
    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.slots.get(&key(name)).map(|s| &s.origin)
    }

    /// Re-reads every file, validates the whole, and adopts it: the diff from the
    /// configuration before. On error nothing changes.
    pub fn reload(&mut self) -> Result<ConfigDiff, ConfigErrors> {
        let loaded = match &self.main {
            Some(path) => load_path(path, &mut self.counts)?,
            None => load_text(
                EMBEDDED_DEFAULT,
                EMBEDDED_NAME,
                Path::new(""),
                &mut self.counts,
            )?,
        };
        // Relative LUN files, reservations and atomic-write journals all live under
        // data_dir: adopting a new one would swap every relative LUN to another (often new,
        // empty) file at once, while the running journals stay where they are.
        if loaded.config.data_dir != self.config.data_dir {
            return Err(ConfigErrors::one(
                ErrorKind::Invalid,
                self.main_name(),
                format!(
                    "data_dir changes need a restart; nothing changed (running with {}, the \
                     file says {})",
                    self.config.data_dir.display(),
                    loaded.config.data_dir.display()
                ),
            ));
        }
        let change = diff(&self.config, &loaded.config);
        self.config = loaded.config;
        self.index(loaded.origins);
        Ok(change)
    }

    /// Adds a target (`spec`: the keys of a `[[target]]` table, LUNs under `lun`), saved as
    /// `<include>/<name>.toml`.
    pub fn add_target(&mut self, spec: &toml::Table) -> Result<ConfigDiff, ConfigErrors> {
        let Some(include) = self.config.include.clone() else {
            return Err(ConfigErrors::one(
                ErrorKind::Invalid,
                self.main_name(),
                "[server] has no include directory, so an added target has no file to be \
                 saved in: add include = \"targets.d\" to [server] (relative to this file)",
            ));
        };
        let text = new_target_file_text(spec)?;
        // Until the spec validates, the name may be anything: no path is made from it.
        let shown = match spec.get("name").and_then(toml::Value::as_str) {
            Some(name) if crate::iscsi::name::check_iscsi_name(name).is_ok() => {
                target_file_path(&include, name).display().to_string()
            }
            _ => "new target".to_string(),
        };
        let target = validate_spec(&text, &self.config.data_dir, &shown)?;
        if let Some(slot) = self.slots.get(&key(&target.name)) {
            return Err(ConfigErrors::one(
                ErrorKind::Conflict,
                &shown,
                format!(
                    "target {:?} already exists (in {})",
                    target.name,
                    self.origin_name(&slot.origin)
                ),
            ));
        }
        let path = target_file_path(&include, &target.name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(ConfigErrors::one(
                ErrorKind::Conflict,
                &shown,
                format!(
                    "the file exists but target {:?} is not loaded from it: `keel reload` to \
                     load it, or move the file away",
                    target.name
                ),
            ));
        }
        files::create_dir_durably(&include).map_err(|e| io_error(&include, "cannot create", e))?;
        files::write_atomically(&path, &text, &mut self.counts)
            .map_err(|e| io_error(&path, "cannot write", e))?;
        let change = diff_target(None, Some(&target));
        self.insert(target, Origin::Included(path));
        Ok(change)
    }

    /// Removes a target from its file (the file goes when nothing else is left in it; the
    /// target's backing files stay).
    pub fn remove_target(&mut self, name: &str) -> Result<ConfigDiff, ConfigErrors> {
        let origin = self.slot(name)?.origin.clone();
        let path = self.editable_path(&origin, name)?;
        let shown = path.display().to_string();
        let mut doc = self.read_document(&path)?;
        let targets = target_tables(&mut doc, name, &shown)?;
        let index = target_index(targets, name).ok_or_else(|| gone(&shown, name))?;
        targets.remove(index);
        if targets.is_empty() {
            doc.remove("target");
        }
        if matches!(origin, Origin::Included(_)) && doc.as_table().is_empty() {
            files::remove_durably(&path, &mut self.counts)
                .map_err(|e| io_error(&path, "cannot remove", e))?;
        } else {
            let text = doc.to_string();
            self.validate_edit(&origin, &shown, &text, name)?;
            files::write_atomically(&path, &text, &mut self.counts)
                .map_err(|e| io_error(&path, "cannot write", e))?;
        }
        let removed = self.take(name);
        Ok(diff_target(removed.as_ref(), None))
    }

    /// Adds a LUN (`spec`: the keys of a `[[target.lun]]` table) to a target.
    pub fn add_lun(
        &mut self,
        target: &str,
        spec: &toml::Table,
    ) -> Result<ConfigDiff, ConfigErrors> {
        let current = self.target(target)?;
        // The spec alone first, so its mistakes are told without lines of a file it is not in.
        let text = new_lun_text(&current.name, spec)?;
        let shown = format!("new LUN of target {:?}", current.name);
        let checked = validate_spec(&text, &self.config.data_dir, &shown)?;
        let Some(lun) = checked.luns.first() else {
            return Err(ConfigErrors::one(
                ErrorKind::Invalid,
                &shown,
                "no LUN given",
            ));
        };
        let number = lun.lun;
        if current.luns.iter().any(|l| l.lun == number) {
            return Err(ConfigErrors::one(
                ErrorKind::Conflict,
                &shown,
                format!("target {:?} already has LUN {number}", current.name),
            ));
        }
        let mut table = edit_table(spec, &shown)?;
        order_keys(&mut table, LUN_KEYS_FIRST);
        self.edit_target(target, |entry, shown| {
            let name = current_name(entry);
            let mut luns = LunList::of(entry, true).ok_or_else(|| {
                ConfigErrors::one(
                    ErrorKind::Invalid,
                    shown,
                    format!("target {name:?}: lun is not a list of LUN tables"),
                )
            })?;
            luns.push(table);
            Ok(())
        })
    }

    /// Removes a LUN from a target (its backing file stays). A target keeps at least one LUN:
    /// remove the target instead.
    pub fn remove_lun(&mut self, target: &str, lun: u64) -> Result<ConfigDiff, ConfigErrors> {
        let current = self.target(target)?;
        let name = current.name.clone();
        if !current.luns.iter().any(|l| l.lun == lun) {
            return Err(no_lun(&name, lun));
        }
        if current.luns.len() == 1 {
            return Err(ConfigErrors::one(
                ErrorKind::Conflict,
                &self.origin_name(&self.slot(target)?.origin),
                format!(
                    "LUN {lun} is the only LUN of target {name:?}, and a target needs one: \
                     remove the target instead"
                ),
            ));
        }
        self.edit_target(target, |entry, shown| {
            let mut luns = LunList::of(entry, false).ok_or_else(|| gone_lun(shown, &name, lun))?;
            let index = luns.find(lun).ok_or_else(|| gone_lun(shown, &name, lun))?;
            luns.remove(index);
            Ok(())
        })
    }

    /// Grows a file-backed LUN to `size` bytes (its `size` key is set; the service grows the
    /// file). A shrink is refused, as it would destroy data; so is a block-device LUN, whose
    /// size is the device's own (keel does not rescan devices).
    pub fn resize_lun(
        &mut self,
        target: &str,
        lun: u64,
        size: u64,
    ) -> Result<ConfigDiff, ConfigErrors> {
        let current = self.target(target)?;
        let name = current.name.clone();
        let what = format!("target {name:?} LUN {lun}");
        let Some(config) = current.luns.iter().find(|l| l.lun == lun) else {
            return Err(no_lun(&name, lun));
        };
        let (path, create_size) = match &config.backing {
            Backing::File { path, create_size } => (path, *create_size),
            Backing::Block { path, .. } => {
                return Err(ConfigErrors::one(
                    ErrorKind::Invalid,
                    &what,
                    format!(
                        "is the block device {}: its size is the device's own, and keel does \
                         not resize or rescan block devices",
                        path.display()
                    ),
                ));
            }
            Backing::Volume(spec) => {
                return Err(ConfigErrors::one(
                    ErrorKind::Invalid,
                    &what,
                    format!(
                        "is the volume {}/{}: keel does not grow provisioned volumes yet; \
                         grow it on the storage server (zfs set volsize=...) and change its \
                         size in the configuration",
                        spec.pool, spec.name
                    ),
                ));
            }
        };
        // The larger of what the file says and what the medium already is: a file grown
        // outside keel is data too.
        let on_disk = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let now = create_size.unwrap_or(0).max(on_disk);
        if size < now {
            return Err(ConfigErrors::one(
                ErrorKind::Conflict,
                &what,
                format!(
                    "shrinking from {now} to {size} bytes would destroy data: keel only grows \
                     LUNs"
                ),
            ));
        }
        if create_size == Some(size) {
            return Ok(ConfigDiff::default());
        }
        let value = size_value(size).ok_or_else(|| {
            ConfigErrors::one(
                ErrorKind::Invalid,
                &what,
                format!("size {size} is too large"),
            )
        })?;
        self.edit_target(target, |entry, shown| {
            let mut luns = LunList::of(entry, false).ok_or_else(|| gone_lun(shown, &name, lun))?;
            let index = luns.find(lun).ok_or_else(|| gone_lun(shown, &name, lun))?;
            luns.set_size(index, value);
            Ok(())
        })
    }

    /// Re-reads the file declaring `name`, lets `edit` change the target's table, validates
    /// the edited file, writes it, and adopts the target as the file now declares it.
    fn edit_target(
        &mut self,
        name: &str,
        edit: impl FnOnce(&mut Table, &str) -> Result<(), ConfigErrors>,
    ) -> Result<ConfigDiff, ConfigErrors> {
        let slot = self.slot(name)?;
        let (position, origin) = (slot.position, slot.origin.clone());
        let path = self.editable_path(&origin, name)?;
        let shown = path.display().to_string();
        let mut doc = self.read_document(&path)?;
        let targets = target_tables(&mut doc, name, &shown)?;
        let index = target_index(targets, name).ok_or_else(|| gone(&shown, name))?;
        let entry = targets.get_mut(index).ok_or_else(|| gone(&shown, name))?;
        edit(entry, &shown)?;
        let text = doc.to_string();
        let new = self
            .validate_edit(&origin, &shown, &text, name)?
            .ok_or_else(|| gone(&shown, name))?;
        files::write_atomically(&path, &text, &mut self.counts)
            .map_err(|e| io_error(&path, "cannot write", e))?;
        let old = std::mem::replace(&mut self.config.targets[position], new);
        Ok(diff_target(
            Some(&old),
            Some(&self.config.targets[position]),
        ))
    }

    /// Validates the edited text of one file on its own (syntax, schema, every target in it,
    /// names unique within it) and returns its version of target `name`.
    fn validate_edit(
        &self,
        origin: &Origin,
        shown: &str,
        text: &str,
        name: &str,
    ) -> Result<Option<TargetConfig>, ConfigErrors> {
        let (targets, mut errors) = match origin {
            Origin::Main => match parse_main(text) {
                Ok(main) => (main.targets, main.errors),
                Err(e) => (Vec::new(), vec![e]),
            },
            Origin::Included(_) => {
                let part = parse_target_file(text, &self.config.data_dir);
                (part.targets, part.errors)
            }
        };
        let mut names = Names::new(shown);
        for declared in &targets {
            errors.extend(names.declare(declared, None));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors::invalid(shown, errors));
        }
        Ok(targets
            .into_iter()
            .map(|d| d.target)
            .find(|t| t.name.eq_ignore_ascii_case(name)))
    }

    fn slot(&self, name: &str) -> Result<&Slot, ConfigErrors> {
        self.slots.get(&key(name)).ok_or_else(|| {
            ConfigErrors::one(
                ErrorKind::NotFound,
                self.main_name(),
                format!("no target {name:?} is configured"),
            )
        })
    }

    fn target(&self, name: &str) -> Result<&TargetConfig, ConfigErrors> {
        let position = self.slot(name)?.position;
        Ok(&self.config.targets[position])
    }

    fn insert(&mut self, target: TargetConfig, origin: Origin) {
        let position = self.config.targets.len();
        self.slots
            .insert(key(&target.name), Slot { position, origin });
        self.config.targets.push(target);
    }

    /// Takes target `name` out of the configuration; the last target moves into its place,
    /// so the cost does not depend on how many there are.
    fn take(&mut self, name: &str) -> Option<TargetConfig> {
        let position = self.slots.remove(&key(name))?.position;
        if position >= self.config.targets.len() {
            return None;
        }
        let removed = self.config.targets.swap_remove(position);
        if let Some(moved) = self.config.targets.get(position)
            && let Some(slot) = self.slots.get_mut(&key(&moved.name))
        {
            slot.position = position;
        }
        Some(removed)
    }

    fn main_name(&self) -> &str {
        self.main
            .as_deref()
            .and_then(Path::to_str)
            .unwrap_or(EMBEDDED_NAME)
    }

    fn origin_name(&self, origin: &Origin) -> String {
        match origin {
            Origin::Main => self.main_name().to_string(),
            Origin::Included(path) => path.display().to_string(),
        }
    }

    /// The file to edit for a target declared at `origin`.
    fn editable_path(&self, origin: &Origin, name: &str) -> Result<PathBuf, ConfigErrors> {
        match (origin, &self.main) {
            (Origin::Included(path), _) => Ok(path.clone()),
            (Origin::Main, Some(main)) => Ok(main.clone()),
            (Origin::Main, None) => Err(ConfigErrors::one(
                ErrorKind::Conflict,
                EMBEDDED_NAME,
                format!(
                    "target {name:?} is part of the embedded default configuration, which \
                     keel cannot change: serve a configuration file (--config) to change it"
                ),
            )),
        }
    }

    /// Reads a file (again) and parses it for editing.
    fn read_document(&mut self, path: &Path) -> Result<DocumentMut, ConfigErrors> {
        let shown = path.display().to_string();
        let text =
            files::read(path, &mut self.counts).map_err(|e| io_error(path, "cannot read", e))?;
        text.parse::<DocumentMut>().map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start));
            ConfigErrors::invalid(&shown, vec![ConfigError::new(line, e.message().trim())])
        })
    }

    #[cfg(test)]
    fn counts(&self) -> FileCounts {
        self.counts
    }
}

/// `<include>/<name>.toml`.
fn target_file_path(include: &Path, name: &str) -> PathBuf {
    include.join(format!("{name}.toml"))
}

/// The text of a new included file holding one target, its keys in the order people write
/// them (name first, then the rest).
fn new_target_file_text(spec: &toml::Table) -> Result<String, ConfigErrors> {
    let mut table = edit_table(spec, "new target")?;
    order_keys(
        &mut table,
        &["name", "alias", "portal_group_tag", "allowed_initiators"],
    );
    if let Some(Item::ArrayOfTables(luns)) = table.get_mut("lun") {
        for lun in luns.iter_mut() {
            order_keys(lun, LUN_KEYS_FIRST);
        }
    }
    let mut targets = ArrayOfTables::new();
    targets.push(table);
    let mut doc = DocumentMut::new();
    doc.insert("target", Item::ArrayOfTables(targets));
    Ok(format!(
        "# Added while keel ran (keel target add). keel edits this file when the target changes\n\
         # through its control socket; edit it freely too, then run `keel reload`.\n\n{doc}"
    ))
}

/// The keys a LUN table starts with, in this order.
const LUN_KEYS_FIRST: &[&str] = &["lun", "file", "block", "direct", "size"];

/// Puts `first` keys first, in that order; the others keep theirs after them.
fn order_keys(table: &mut Table, first: &[&str]) {
    let rank = |k: &toml_edit::Key| {
        first
            .iter()
            .position(|f| *f == k.get())
            .unwrap_or(first.len())
    };
    table.sort_values_by(|a, _, b, _| rank(a).cmp(&rank(b)));
}

/// A one-target document for validating a LUN spec on its own.
fn new_lun_text(target: &str, spec: &toml::Table) -> Result<String, ConfigErrors> {
    let mut table = toml::Table::new();
    table.insert("name".into(), toml::Value::String(target.to_string()));
    table.insert(
        "lun".into(),
        toml::Value::Array(vec![toml::Value::Table(spec.clone())]),
    );
    wrap_target(table)
}

/// `[[target]]` with `table`'s keys, as TOML text.
fn wrap_target(table: toml::Table) -> Result<String, ConfigErrors> {
    let mut doc = toml::Table::new();
    doc.insert(
        "target".into(),
        toml::Value::Array(vec![toml::Value::Table(table)]),
    );
    toml::to_string(&doc).map_err(|e| {
        ConfigErrors::one(
            ErrorKind::Invalid,
            "new target",
            format!("cannot be written as TOML: {e}"),
        )
    })
}

/// Validates a one-target text made from a spec; its errors name `shown` and no line (the
/// text is not a file the caller can open).
fn validate_spec(text: &str, data_dir: &Path, shown: &str) -> Result<TargetConfig, ConfigErrors> {
    let part = parse_target_file(text, data_dir);
    if !part.errors.is_empty() {
        let errors = part
            .errors
            .into_iter()
            .map(|e| ConfigError::new(None, e.message))
            .collect();
        return Err(ConfigErrors::invalid(shown, errors));
    }
    part.targets
        .into_iter()
        .next()
        .map(|d| d.target)
        .ok_or_else(|| ConfigErrors::one(ErrorKind::Invalid, shown, "no target given"))
}

/// A spec as a `toml_edit` table, ready to be placed in a document.
fn edit_table(spec: &toml::Table, shown: &str) -> Result<Table, ConfigErrors> {
    let text = toml::to_string(spec).map_err(|e| {
        ConfigErrors::one(
            ErrorKind::Invalid,
            shown,
            format!("cannot be written as TOML: {e}"),
        )
    })?;
    let doc = text.parse::<DocumentMut>().map_err(|e| {
        ConfigErrors::one(ErrorKind::Invalid, shown, e.message().trim().to_string())
    })?;
    let mut table = doc.as_table().clone();
    // No position: it is written after the table before it in the document (its sibling
    // LUNs), not where the root of its own little document was.
    table.set_position(None);
    table.decor_mut().clear();
    Ok(table)
}

/// A size for the file: "2GiB" when a whole number of a binary unit, else bytes.
fn size_value(bytes: u64) -> Option<Value> {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return Some(Value::from(format!("{}{unit}", bytes >> shift)));
        }
    }
    i64::try_from(bytes).ok().map(Value::from)
}

/// The `[[target]]` tables of a document.
fn target_tables<'d>(
    doc: &'d mut DocumentMut,
    name: &str,
    shown: &str,
) -> Result<&'d mut ArrayOfTables, ConfigErrors> {
    match doc.get_mut("target") {
        Some(Item::ArrayOfTables(targets)) => Ok(targets),
        Some(_) => Err(ConfigErrors::one(
            ErrorKind::Invalid,
            shown,
            "targets are not written as [[target]] tables, the only form keel edits",
        )),
        None => Err(gone(shown, name)),
    }
}

/// The `name` of a target table, for messages.
fn current_name(target: &Table) -> String {
    target
        .get("name")
        .and_then(Item::as_str)
        .unwrap_or("?")
        .to_string()
}

fn target_index(targets: &ArrayOfTables, name: &str) -> Option<usize> {
    targets.iter().position(|t| {
        t.get("name")
            .and_then(Item::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

/// A target's LUN entries, as `[[target.lun]]` tables or an inline array.
enum LunList<'a> {
    Tables(&'a mut ArrayOfTables),
    Inline(&'a mut Array),
}

impl<'a> LunList<'a> {
    /// The `lun` entries of a target table; `create` makes an empty `[[target.lun]]` list when
    /// there is none.
    fn of(target: &'a mut Table, create: bool) -> Option<LunList<'a>> {
        if create && !target.contains_key("lun") {
            target.insert("lun", Item::ArrayOfTables(ArrayOfTables::new()));
        }
        match target.get_mut("lun")? {
            Item::ArrayOfTables(tables) => Some(LunList::Tables(tables)),
            Item::Value(Value::Array(array)) => Some(LunList::Inline(array)),
            _ => None,
        }
    }

    fn find(&self, lun: u64) -> Option<usize> {
        let wanted = i64::try_from(lun).ok()?;
        match self {
            LunList::Tables(tables) => tables
                .iter()
                .position(|t| t.get("lun").and_then(Item::as_integer) == Some(wanted)),
            LunList::Inline(array) => array.iter().position(|v| {
                v.as_inline_table()
                    .and_then(|t| t.get("lun"))
                    .and_then(Value::as_integer)
                    == Some(wanted)
            }),
        }
    }

    fn remove(&mut self, index: usize) {
        match self {
            LunList::Tables(tables) => {
                tables.remove(index);
            }
            LunList::Inline(array) => {
                array.remove(index);
            }
        }
    }

    fn push(&mut self, table: Table) {
        match self {
            LunList::Tables(tables) => tables.push(table),
            LunList::Inline(array) => array.push(table.into_inline_table()),
        }
    }

    /// Sets `size` of entry `index`, keeping the comment after the old value.
    fn set_size(&mut self, index: usize, mut value: Value) {
        let old = match self {
            LunList::Tables(tables) => tables.get_mut(index).and_then(|t| {
                if !t.contains_key("size") {
                    t.insert("size", Item::Value(Value::from(0)));
                }
                t.get_mut("size").and_then(Item::as_value_mut)
            }),
            LunList::Inline(array) => array
                .get_mut(index)
                .and_then(Value::as_inline_table_mut)
                .and_then(|t| {
                    if !t.contains_key("size") {
                        t.insert("size", Value::from(0));
                    }
                    t.get_mut("size")
                }),
        };
        if let Some(old) = old {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
    }
}

fn gone(shown: &str, name: &str) -> ConfigErrors {
    ConfigErrors::one(
        ErrorKind::Conflict,
        shown,
        format!(
            "no longer declares target {name:?} (edited since keel read it): run `keel reload`"
        ),
    )
}

fn gone_lun(shown: &str, name: &str, lun: u64) -> ConfigErrors {
    ConfigErrors::one(
        ErrorKind::Conflict,
        shown,
        format!(
            "target {name:?} no longer has LUN {lun} (edited since keel read it): run `keel \
             reload`"
        ),
    )
}

fn no_lun(name: &str, lun: u64) -> ConfigErrors {
    ConfigErrors::one(
        ErrorKind::NotFound,
        &format!("target {name:?}"),
        format!("has no LUN {lun}"),
    )
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> ConfigErrors {
    ConfigErrors::one(
        ErrorKind::Io,
        &path.display().to_string(),
        format!("{what}: {e}"),
    )
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
