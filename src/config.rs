//! `targets.toml`: the schema, parsing with located errors, and validation.
//!
//! Everything a running keel needs to know about its targets comes from here. Parsing is pure
//! (text in, [`Config`] or a list of [`ConfigError`]s out) so `keel check` and `keel serve`
//! report the same problems the same way.
//!
//! `[server] include = "DIR"` names a directory (relative to the main file's) whose `*.toml`
//! files hold more `[[target]]` tables, and nothing else: read in file-name order, not
//! recursively, hidden files (`.name`, as keel's own temporary files are) and editor
//! leftovers skipped. The main file and every included file are validated as one whole; each
//! error names its own file, and a target name declared twice names both places. A missing
//! directory reads as empty, with a warning. The [`Store`] saves targets added while keel
//! runs there, one file each.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod auth;
mod cluster;
mod control;
pub mod diff;
mod files;
mod pools;
mod size;
pub mod store;
mod validator;

use crate::cluster::ClusterSettings;
use crate::iscsi::Settings;
use crate::iscsi::name::check_iscsi_name;
use crate::provision::{PoolSettings, VolumeSpec};
use crate::storage::{DirectIo, IoEngine};
pub use auth::{AccessSettings, read_secret_file};
use auth::{RawAccess, RawCredential};
pub use control::{ControlGroup, ControlSettings, DEFAULT_CONTROL_SOCKET, resolve_group};
pub use diff::{ConfigDiff, TargetDiff};
use files::FileCounts;
pub use files::Origin;
pub use size::parse_size_text;
use size::{SizeValue, parse_size};
pub use store::Store;
pub use validator::ConfigError;
use validator::{Validator, line_of};

/// The configuration `keel serve` uses when given none: one 1 GiB sparse-file LUN under
/// `./keel-data`, on 127.0.0.1:3260. Targets added through the control socket are saved in
/// `./keel-data/targets.d`, so they survive a restart.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
portals = ["127.0.0.1:3260"]
data_dir = "keel-data"
include = "keel-data/targets.d"

[[target]]
name = "iqn.2026-11.io.keel:default"
alias = "default"

[[target.lun]]
lun = 0
file = "default-lun0.img"
size = "1GiB"
"#;

/// The default iSCSI port (RFC 7143 §13.5.1... IANA: 3260).
pub const DEFAULT_PORT: u16 = 3260;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
    #[serde(default, rename = "pool")]
    pools: Vec<pools::RawPool>,
    cluster: Option<cluster::RawCluster>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    portals: Option<Vec<Spanned<String>>>,
    data_dir: Option<String>,
    max_recv_data_segment_length: Option<Spanned<u32>>,
    max_burst_length: Option<Spanned<u32>>,
    first_burst_length: Option<Spanned<u32>>,
    max_outstanding_r2t: Option<Spanned<u32>>,
    immediate_data: Option<bool>,
    initial_r2t: Option<bool>,
    queue_depth: Option<Spanned<u32>>,
    write_buffer_mib: Option<Spanned<u32>>,
    nop_interval_secs: Option<Spanned<u64>>,
    nop_timeout_secs: Option<Spanned<u64>>,
    login_timeout_secs: Option<Spanned<u64>>,
    chap_algorithms: Option<Spanned<Vec<String>>>,
    max_connections: Option<Spanned<u32>>,
    max_connections_per_address: Option<Spanned<u32>>,
    max_sessions_per_initiator: Option<Spanned<u32>>,
    discovery_chap: Option<Vec<RawCredential>>,
    discovery_mutual_chap: Option<RawCredential>,
    io_engine: Option<Spanned<String>>,
    /// A directory of files holding more `[[target]]` tables.
    include: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
}

/// An included file: `[[target]]` tables only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetFile {
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    alias: Option<String>,
    portal_group_tag: Option<Spanned<u16>>,
    allowed_initiators: Option<Vec<Spanned<String>>>,
    chap: Option<Vec<RawCredential>>,
    mutual_chap: Option<RawCredential>,
    #[serde(default, rename = "lun")]
    luns: Vec<RawLun>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    lun: Spanned<u64>,
    file: Option<Spanned<String>>,
    block: Option<Spanned<String>>,
    direct: Option<Spanned<DirectValue>>,
    size: Option<Spanned<SizeValue>>,
    block_size: Option<Spanned<u32>>,
    physical_block_size: Option<Spanned<u32>>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    removable: bool,
    sanitize_rate: Option<Spanned<SizeValue>>,
    /// A provisioned volume, "POOL/NAME" (`config/pools.rs`), with its keys.
    volume: Option<Spanned<String>>,
    clone_of: Option<Spanned<String>>,
    volblocksize: Option<Spanned<SizeValue>>,
    sparse: Option<bool>,
    on_remove: Option<Spanned<String>>,
}

/// `direct` of a block LUN: `true`, `false` or `"auto"` (the strings "true" and "false" too,
/// which is what the CLI's one-line LUN spec sends).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DirectValue {
    Flag(bool),
    Text(String),
    /// Anything else, refused by the validator with the values that are allowed.
    Other(toml::Value),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub portals: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub iscsi: Settings,
    pub access: AccessSettings,
    /// The storage engine for file and block-device LUNs.
    pub io_engine: IoEngine,
    /// `[server] include`, resolved: the directory whose `*.toml` files hold more targets, and
    /// where targets added while keel runs are saved.
    pub include: Option<PathBuf>,
    /// Every target, from the main file and then the included files (in file name order).
    pub targets: Vec<TargetConfig>,
    /// Where the Prometheus metrics are served over HTTP (`GET /metrics`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket (`admin::socket`).
    pub control: ControlSettings,
    /// `[[pool]]` tables: where declared volumes live (main file only).
    pub pools: Vec<PoolSettings>,
    /// `[cluster]`: the CTDB cluster keel serves in (`None`: a single node).
    pub cluster: Option<ClusterSettings>,
    /// Problems that do not stop keel (short CHAP secrets, odd allow-list names).
    pub warnings: Vec<ConfigError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    pub name: String,
    pub alias: Option<String>,
    pub portal_group_tag: u16,
    /// Initiator names and `*` patterns admitted; empty: everyone.
    pub allowed_initiators: Vec<String>,
    /// CHAP demanded by this target; `None`: no authentication.
    pub chap: Option<crate::iscsi::chap::ChapPolicy>,
    pub luns: Vec<LunConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    pub lun: u64,
    pub backing: Backing,
    pub block_size: u32,
    /// Bytes per physical block: `block_size` times a power of two (READ CAPACITY(16)
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT).
    pub physical_block_size: u32,
    pub read_only: bool,
    /// Removable medium (virtual media): initiators may eject and load it.
    pub removable: bool,
    /// Bytes per second SANITIZE OVERWRITE may write (`None`: unpaced).
    pub sanitize_rate: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A regular file, created sparse at `create_size` bytes when missing.
    File {
        path: PathBuf,
        create_size: Option<u64>,
    },
    /// An existing block device, read and written with O_DIRECT as `direct` says.
    Block { path: PathBuf, direct: DirectIo },
    /// A volume keel makes (or adopts) in a pool and serves once it is ready.
    Volume(VolumeSpec),
}

/// Why a configuration or a change to it was refused, for callers that answer differently
/// (the control socket's error codes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text or the change does not validate; the errors say where and why.
    #[default]
    Invalid,
    /// The change names a target or LUN that is not configured.
    NotFound,
    /// The change clashes with what is configured (a name or LUN number in use, a file that
    /// already exists, a shrink).
    Conflict,
    /// A file could not be read or written.
    Io,
}

/// All problems found in a configuration (its main file and included files); displays one
/// per line as `file:line: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file read, or the main file: the file of every error that names none.
    pub source_name: String,
    pub errors: Vec<ConfigError>,
    pub kind: ErrorKind,
}

impl ConfigErrors {
    /// One problem, of `kind`, in (or about) `file`.
    pub fn one(kind: ErrorKind, file: &str, message: impl Into<String>) -> Self {
        ConfigErrors {
            source_name: file.to_string(),
            errors: vec![ConfigError::new(None, message)],
            kind,
        }
    }

    /// The problems of a configuration that does not validate.
    pub fn invalid(source_name: &str, errors: Vec<ConfigError>) -> Self {
        ConfigErrors {
            source_name: source_name.to_string(),
            errors,
            kind: ErrorKind::Invalid,
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", e.located(&self.source_name))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated configuration and the file of each of its targets.
struct Loaded {
    pub config: Config,
    /// `origins[i]` declares `config.targets[i]`.
    pub origins: Vec<Origin>,
}

/// Reads and validates a configuration file and the files of its include directory
/// (resolved against the file's own directory).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_path(path, &mut FileCounts::default()).map(|loaded| loaded.config)
}

/// Parses and validates the text of a main configuration file; `source_name` names it in
/// errors. Pure unless the text has `[server] include`: that directory (relative to the
/// working directory) is read too.
pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigErrors> {
    load_text(text, source_name, Path::new(""), &mut FileCounts::default())
        .map(|loaded| loaded.config)
}

/// Loads the main file at `path` and its include directory (relative to the file's own
/// directory).
fn load_path(path: &Path, counts: &mut FileCounts) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let text = files::read(path, counts)
        .map_err(|e| ConfigErrors::one(ErrorKind::Io, &name, format!("cannot read: {e}")))?;
    let base = path.parent().unwrap_or(Path::new(""));
    load_text(&text, &name, base, counts)
}

/// Loads a main file's text; its include directory, when relative, is taken from `base_dir`.
/// Every error of every file is reported, each with its file.
fn load_text(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    counts: &mut FileCounts,
) -> Result<Loaded, ConfigErrors> {
    let main = parse_main(text).map_err(|e| ConfigErrors::invalid(source_name, vec![e]))?;
    let mut errors = main.errors;
    let mut config = main.config;
    let mut origins = Vec::new();
    let mut names = Names::new(source_name);
    for declared in main.targets {
        errors.extend(names.declare(&declared, None));
        config.targets.push(declared.target);
        origins.push(Origin::Main);
    }
    if let Some((dir, line)) = main.include {
        let dir = base_dir.join(dir);
        match files::list_include_dir(&dir, counts) {
            Ok(files) => {
                for file in files {
                    let shown = file.display().to_string();
                    let text = match files::read(&file, counts) {
                        Ok(text) => text,
                        Err(e) => {
                            errors.push(in_file(&shown, ConfigError::new(None, e.to_string())));
                            continue;
                        }
                    };
                    let part = parse_target_file(&text, &config.data_dir);
                    errors.extend(part.errors.into_iter().map(|e| in_file(&shown, e)));
                    let warnings = part.warnings.into_iter().map(|w| in_file(&shown, w));
                    config.warnings.extend(warnings);
                    for declared in part.targets {
                        errors.extend(names.declare(&declared, Some(&shown)));
                        config.targets.push(declared.target);
                        origins.push(Origin::Included(file.clone()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                config.warnings.push(ConfigError::new(
                    Some(line),
                    format!(
                        "include directory {} does not exist: no targets from it (it is \
                         created when a target is added)",
                        dir.display()
                    ),
                ));
            }
            Err(e) => errors.push(ConfigError::new(
                Some(line),
                format!("include directory {}: {e}", dir.display()),
            )),
        }
        config.include = Some(dir);
    }
    let volumes = config
        .targets
        .iter()
        .zip(&origins)
        .flat_map(|(target, origin)| {
            let file = match origin {
                Origin::Main => None,
                Origin::Included(path) => Some(path.display().to_string()),
            };
            target
                .luns
                .iter()
                .filter_map(move |lun| match &lun.backing {
                    Backing::Volume(spec) => Some((
                        format!("target {:?} LUN {}", target.name, lun.lun),
                        spec,
                        file.clone(),
                    )),
                    _ => None,
                })
        });
    errors.extend(pools::check_volumes(&config.pools, volumes));
    if errors.is_empty() {
        Ok(Loaded { config, origins })
    } else {
        Err(ConfigErrors::invalid(source_name, errors))
    }
}

/// `error`, as found in `file`.
fn in_file(file: &str, mut error: ConfigError) -> ConfigError {
    error.file.get_or_insert_with(|| file.to_string());
    error
}

/// Target names declared so far, for the one-declaration rule across files.
struct Names<'a> {
    main_name: &'a str,
    /// Lower-cased name → (file, `None` for the main file; line).
    seen: BTreeMap<String, (Option<String>, usize)>,
}

impl<'a> Names<'a> {
    /// `main_name` shows the main file in messages.
    fn new(main_name: &'a str) -> Self {
        Names {
            main_name,
            seen: BTreeMap::new(),
        }
    }

    /// Records a declaration in `file` (`None`: the main file); an error if the name is
    /// already declared, naming the first place.
    fn declare(&mut self, declared: &Declared, file: Option<&str>) -> Option<ConfigError> {
        let name = &declared.target.name;
        let key = name.to_ascii_lowercase();
        if let Some((first_file, first_line)) = self.seen.get(&key) {
            let first = match (first_file.as_deref(), file) {
                (a, b) if a == b => format!("line {first_line}"),
                (a, _) => format!("{}:{first_line}", a.unwrap_or(self.main_name)),
            };
            return Some(ConfigError {
                file: file.map(str::to_string),
                line: Some(declared.line),
                message: format!("target {name:?} is declared twice (first at {first})"),
            });
        }
        self.seen
            .insert(key, (file.map(str::to_string), declared.line));
        None
    }
}

impl Config {
    /// Nothing: no portals, no targets, default settings. What runs before startup, so
    /// starting is `diff(&Config::empty(), &loaded)`, the same path as a reload. Its
    /// `needs_restart` then names the settings `loaded` sets away from their defaults, which
    /// startup builds with anyway; [`Config::only_settings`] gives a base without them.
    pub fn empty() -> Config {
        Config {
            portals: Vec::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            iscsi: Settings::default(),
            access: AccessSettings::default(),
            io_engine: IoEngine::default(),
            include: None,
            targets: Vec::new(),
            metrics_listen: None,
            control: ControlSettings::default(),
            pools: Vec::new(),
            cluster: None,
            warnings: Vec::new(),
        }
    }

    /// This configuration's server settings with no portals and no targets: the state
    /// before startup when the service is built with these settings (a diff from it has an
    /// empty `needs_restart`).
    pub fn only_settings(&self) -> Config {
        Config {
            portals: Vec::new(),
            targets: Vec::new(),
            warnings: Vec::new(),
            ..self.clone()
        }
    }

    /// The target called `name` (names compare ignoring ASCII case, as at validation).
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

/// `data_dir` when the file names none.
const DEFAULT_DATA_DIR: &str = "/var/lib/keel";

/// The main file's `[server]` part and its own targets, validated, before the include
/// directory (if any) is read.
struct MainFile {
    config: Config,
    /// `[server] include` as written, with its line.
    include: Option<(String, usize)>,
    targets: Vec<Declared>,
    errors: Vec<ConfigError>,
}

/// A validated `[[target]]` table and the line of its `name`, for duplicate messages.
struct Declared {
    target: TargetConfig,
    line: usize,
}

/// The targets of one file, validated; errors and warnings are the file's own (no file set).
struct TargetFile {
    targets: Vec<Declared>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

/// The located error of text TOML cannot parse into the schema.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError::new(
        e.span().map(|s| line_of(text, s.start)),
        e.message().trim().to_string(),
    )
}

/// Parses and validates a main file's text (its include directory is not read).
fn parse_main(text: &str) -> Result<MainFile, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
    let mut v = Validator::new(text);
    let include = raw.server.include.as_ref().map(|i| {
        let line = line_of(text, i.span().start);
        if i.get_ref().is_empty() {
            v.error(
                i,
                "include is empty: name a directory, or leave the key out",
            );
        }
        (i.get_ref().clone(), line)
    });
    let mut config = v.server(&raw.server);
    config.pools = v.pools(&raw.pools);
    config.cluster = raw.cluster.as_ref().and_then(|c| v.cluster(c));
    let targets = v.targets(raw.targets, &config.data_dir);
    config.warnings = v.warnings;
    Ok(MainFile {
        config,
        include,
        targets,
        errors: v.errors,
    })
}

/// Parses and validates an included file's text: `[[target]]` tables only, their relative
/// LUN files living in `data_dir`.
fn parse_target_file(text: &str, data_dir: &Path) -> TargetFile {
    let raw: RawTargetFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let mut error = syntax_error(text, &e);
            if error.message.contains("unknown field") {
                error.message += " (an included file holds only [[target]] tables)";
            }
            return TargetFile {
                targets: Vec::new(),
                errors: vec![error],
                warnings: Vec::new(),
            };
        }
    };
    let mut v = Validator::new(text);
    let targets = v.targets(raw.targets, data_dir);
    TargetFile {
        targets,
        errors: v.errors,
        warnings: v.warnings,
    }
}

impl Validator<'_> {
    /// The `[server]` table: every setting, no targets yet.
    fn server(&mut self, server: &RawServer) -> Config {
        let data_dir = PathBuf::from(
            server
                .data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        );
        let portals = self.portals(server);
        let iscsi = self.iscsi(server);
        let s = server;
        let access = self.access(RawAccess {
            chap_algorithms: &s.chap_algorithms,
            max_connections: &s.max_connections,
            max_connections_per_address: &s.max_connections_per_address,
            max_sessions_per_initiator: &s.max_sessions_per_initiator,
            discovery_chap: &s.discovery_chap,
            discovery_mutual_chap: &s.discovery_mutual_chap,
        });
        let io_engine = match &server.io_engine {
            None => IoEngine::default(),
            Some(v) => match v.get_ref().as_str() {
                "auto" => IoEngine::Auto,
                "io_uring" => IoEngine::IoUring,
                "threads" => IoEngine::Threads,
                other => {
                    self.error(
                        v,
                        format!(
                            "io_engine {other:?} is not one of \"auto\", \"io_uring\", \"threads\""
                        ),
                    );
                    IoEngine::default()
                }
            },
        };
        let control = self.control(&s.control_socket, &s.control_group);
        let metrics_listen = match &server.metrics_listen {
            Some(v) if !v.get_ref().is_empty() => match v.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    let message = format!(
                        "metrics_listen {:?} is not an address and port such as \"127.0.0.1:9860\"",
                        v.get_ref()
                    );
                    self.error(v, message);
                    None
                }
            },
            _ => None,
        };
        Config {
            portals,
            data_dir,
            iscsi,
            access,
            io_engine,
            // Resolved by the loader, which knows the main file's directory.
            include: None,
            targets: Vec::new(),
            metrics_listen,
            control,
            pools: Vec::new(),
            cluster: None,
            warnings: Vec::new(),
        }
    }

    /// `[[target]]` tables, each validated on its own; names are checked for duplicates by
    /// the loader, across every file.
    fn targets(&mut self, raw: Vec<RawTarget>, data_dir: &Path) -> Vec<Declared> {
        raw.into_iter()
            .map(|t| {
                let line = line_of(self.text(), t.name.span().start);
                Declared {
                    target: self.target(t, data_dir),
                    line,
                }
            })
            .collect()
    }

    fn target(&mut self, t: RawTarget, data_dir: &Path) -> TargetConfig {
        let name = t.name.get_ref().clone();
        if let Err(why) = check_iscsi_name(&name) {
            self.error(&t.name, format!("target name {name:?}: {why}"));
        }
        let portal_group_tag = match &t.portal_group_tag {
            Some(tag) if *tag.get_ref() == 0 => {
                self.error(tag, "portal_group_tag must be between 1 and 65535");
                1
            }
            Some(tag) => *tag.get_ref(),
            None => 1,
        };
        if t.luns.is_empty() {
            self.error(&t.name, format!("target {name:?} has no [[target.lun]]"));
        }
        let allowed_initiators = self.allowed_initiators(&name, &t.allowed_initiators);
        let chap = self.chap_policy(&format!("target {name:?}"), &t.chap, &t.mutual_chap);
        let mut numbers = BTreeSet::new();
        let mut luns = Vec::new();
        for l in t.luns {
            if !numbers.insert(*l.lun.get_ref()) {
                self.error(
                    &l.lun,
                    format!("target {name:?}: LUN {} is declared twice", l.lun.get_ref()),
                );
            }
            if let Some(lun) = self.lun(&name, l, data_dir) {
                luns.push(lun);
            }
        }
        TargetConfig {
            name,
            alias: t.alias,
            portal_group_tag,
            allowed_initiators,
            chap,
            luns,
        }
    }

    fn portals(&mut self, server: &RawServer) -> Vec<SocketAddr> {
        let Some(list) = &server.portals else {
            return vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))];
        };
        let mut out = Vec::new();
        for p in list {
            match parse_portal(p.get_ref()) {
                Ok(addr) => out.push(addr),
                Err(why) => self.error(p, why),
            }
        }
        if out.is_empty() && self.errors.is_empty() {
            self.errors.push(ConfigError::new(
                None,
                "server.portals is empty: keel would listen nowhere",
            ));
        }
        out
    }

    fn iscsi(&mut self, s: &RawServer) -> Settings {
        let d = Settings::default();
        // Ranges from RFC 7143 §13 (segment and burst lengths 512..2^24-1).
        let settings = Settings {
            max_recv_data_segment_length: self.in_range(
                &s.max_recv_data_segment_length,
                d.max_recv_data_segment_length,
                512..=16_777_215,
                "max_recv_data_segment_length",
                "",
            ),
            max_burst_length: self.in_range(
                &s.max_burst_length,
                d.max_burst_length,
                512..=16_777_215,
                "max_burst_length",
                "",
            ),
            first_burst_length: self.in_range(
                &s.first_burst_length,
                d.first_burst_length,
                512..=16_777_215,
                "first_burst_length",
                "",
            ),
            max_outstanding_r2t: self.in_range(
                &s.max_outstanding_r2t,
                d.max_outstanding_r2t,
                1..=65535,
                "max_outstanding_r2t",
                "",
            ),
            queue_depth: self.in_range(&s.queue_depth, d.queue_depth, 1..=4096, "queue_depth", ""),
            // At least one largest write (8 MiB) must fit, or it could never run.
            write_buffer_mib: self.in_range(
                &s.write_buffer_mib,
                d.write_buffer_mib,
                8..=(1 << 20),
                "write_buffer_mib",
                "",
            ),
            immediate_data: s.immediate_data.unwrap_or(d.immediate_data),
            initial_r2t: s.initial_r2t.unwrap_or(d.initial_r2t),
            // 0: never ping. Bounded so an idle deadline (last heard + interval) stays a
            // representable instant.
            nop_interval_secs: self.in_range(
                &s.nop_interval_secs,
                d.nop_interval_secs,
                0..=3600,
                "nop_interval_secs",
                " seconds",
            ),
            nop_timeout_secs: self.in_range(
                &s.nop_timeout_secs,
                d.nop_timeout_secs,
                1..=3600,
                "nop_timeout_secs",
                " seconds",
            ),
            login_timeout_secs: self.in_range(
                &s.login_timeout_secs,
                d.login_timeout_secs,
                1..=3600,
                "login_timeout_secs",
                " seconds",
            ),
        };
        if let Some(x) = &s.first_burst_length
            && settings.first_burst_length > settings.max_burst_length
        {
            self.error(
                x,
                "first_burst_length may not exceed max_burst_length (RFC 7143 §13.14)",
            );
        }
        settings
    }

    fn lun(&mut self, target: &str, l: RawLun, data_dir: &Path) -> Option<LunConfig> {
        let number = *l.lun.get_ref();
        let what = format!("target {target:?} LUN {number}");
        if number > 16383 {
            self.error(&l.lun, format!("{what}: LUN numbers go up to 16383"));
        }
        let block_size = match &l.block_size {
            Some(b) if matches!(b.get_ref(), 512 | 4096) => *b.get_ref(),
            Some(b) => {
                self.error(b, format!("{what}: block_size must be 512 or 4096"));
                512
            }
            None => 512,
        };
        let physical_block_size = self.physical_block_size(&what, &l, block_size);
        if let Some(volume) = &l.volume {
            if let Some(d) = &l.direct {
                self.error(
                    d,
                    format!(
                        "{what}: direct applies to block = LUNs; a volume uses O_DIRECT where \
                         its device allows it"
                    ),
                );
            }
            for (key, set) in [("file", l.file.is_some()), ("block", l.block.is_some())] {
                if set {
                    self.error(
                        volume,
                        format!("{what}: give one of volume, file or block ({key} too)"),
                    );
                }
            }
            let backing = Backing::Volume(self.volume(
                &what,
                target,
                number,
                block_size,
                pools::RawVolume {
                    volume,
                    size: l.size.as_ref(),
                    clone_of: l.clone_of.as_ref(),
                    volblocksize: l.volblocksize.as_ref(),
                    sparse: l.sparse,
                    on_remove: l.on_remove.as_ref(),
                },
            )?);
            return Some(LunConfig {
                lun: number,
                backing,
                block_size,
                physical_block_size,
                read_only: l.read_only,
                removable: l.removable,
                sanitize_rate: self.sanitize_rate(&what, &l),
            });
        }
        let not_a_volume = "applies to volume LUNs only (volume = \"POOL/NAME\")";
        if let Some(c) = &l.clone_of {
            self.error(c, format!("{what}: clone_of {not_a_volume}"));
        }
        if let Some(v) = &l.volblocksize {
            self.error(v, format!("{what}: volblocksize {not_a_volume}"));
        }
        if let Some(o) = &l.on_remove {
            self.error(o, format!("{what}: on_remove {not_a_volume}"));
        }
        let create_size = match &l.size {
            None => None,
            Some(s) => {
                match parse_size(s.get_ref()) {
                    Ok(0) => {
                        self.error(s, format!("{what}: size must be more than 0"));
                        None
                    }
                    Ok(bytes) if bytes % block_size as u64 != 0 => {
                        self.error(s, format!("{what}: size {bytes} is not a multiple of the block size {block_size}"));
                        None
                    }
                    Ok(bytes) => Some(bytes),
                    Err(why) => {
                        self.error(s, format!("{what}: {why}"));
                        None
                    }
                }
            }
        };
        let backing = match (&l.file, &l.block) {
            (Some(file), None) => {
                if let Some(d) = &l.direct {
                    self.error(
                        d,
                        format!("{what}: direct applies to block devices (block = \"/dev/...\")"),
                    );
                }
                let path = data_dir.join(file.get_ref());
                if file.get_ref().is_empty() {
                    self.error(file, format!("{what}: file is empty"));
                    return None;
                }
                Backing::File { path, create_size }
            }
            (None, Some(block)) => {
                if let Some(s) = &l.size {
                    self.error(
                        s,
                        format!(
                            "{what}: size applies to files only; a block device has its own size"
                        ),
                    );
                }
                let direct = match l.direct.as_ref() {
                    None => DirectIo::Auto,
                    Some(d) => match d.get_ref() {
                        DirectValue::Flag(true) => DirectIo::On,
                        DirectValue::Flag(false) => DirectIo::Off,
                        DirectValue::Text(t) if t == "auto" => DirectIo::Auto,
                        DirectValue::Text(t) if t == "true" => DirectIo::On,
                        DirectValue::Text(t) if t == "false" => DirectIo::Off,
                        other => {
                            let shown = match other {
                                DirectValue::Text(t) => format!("{t:?}"),
                                DirectValue::Other(v) => v.to_string(),
                                DirectValue::Flag(f) => f.to_string(),
                            };
                            self.error(
                                d,
                                format!(
                                    "{what}: direct = {shown} is not one of true, false, \"auto\""
                                ),
                            );
                            DirectIo::Auto
                        }
                    },
                };
                Backing::Block {
                    path: PathBuf::from(block.get_ref()),
                    direct,
                }
            }
            (Some(file), Some(_)) => {
                self.error(file, format!("{what}: give either file or block, not both"));
                return None;
            }
            (None, None) => {
                self.error(
                    &l.lun,
                    format!("{what}: needs file = \"...\" or block = \"/dev/...\""),
                );
                return None;
            }
        };
        let sanitize_rate = self.sanitize_rate(&what, &l);
        Some(LunConfig {
            lun: number,
            backing,
            block_size,
            physical_block_size,
            read_only: l.read_only,
            removable: l.removable,
            sanitize_rate,
        })
    }

    /// `sanitize_rate`: bytes per second SANITIZE OVERWRITE may write.
    fn sanitize_rate(&mut self, what: &str, l: &RawLun) -> Option<u64> {
        match &l.sanitize_rate {
            None => None,
            Some(r) => match parse_size(r.get_ref()) {
                Ok(0) => {
                    self.error(
                        r,
                        format!("{what}: sanitize_rate must be more than 0 per second"),
                    );
                    None
                }
                Ok(bytes) => Some(bytes),
                Err(why) => {
                    self.error(r, format!("{what}: sanitize_rate: {why}"));
                    None
                }
            },
        }
    }

    /// `physical_block_size`: the logical block size (default) or a power-of-two multiple of
    /// it, at most [`MAX_PHYSICAL_BLOCK_SIZE`]. READ CAPACITY(16) reports the ratio as a
    /// power-of-two exponent (SBC-4 §5.20.2), so nothing else can be expressed.
    fn physical_block_size(&mut self, what: &str, l: &RawLun, block_size: u32) -> u32 {
        let Some(p) = &l.physical_block_size else {
            return block_size;
        };
        let size = *p.get_ref();
        let ok = size >= block_size
            && size <= MAX_PHYSICAL_BLOCK_SIZE
            && size.is_multiple_of(block_size)
            && (size / block_size).is_power_of_two();
        if ok {
            size
        } else {
            self.error(
                p,
                format!(
                    "{what}: physical_block_size {size} must be the block size {block_size} \
                     times a power of two, at most {MAX_PHYSICAL_BLOCK_SIZE}"
                ),
            );
            block_size
        }
    }
}

/// Largest `physical_block_size` accepted (64 KiB).
pub const MAX_PHYSICAL_BLOCK_SIZE: u32 = 64 * 1024;

/// Parses a portal: `IP:port`, `[IPv6]:port`, or an address without a port (3260).
fn parse_portal(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    // Host names resolve once, at load time.
    match (text, DEFAULT_PORT).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) if !text.contains(':') => Ok(addr),
        _ => match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Ok(addr),
            _ => Err(format!(
                "portal {text:?} is not an address like \"127.0.0.1:3260\" or \"[::1]:3260\""
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[server]
portals = ["127.0.0.1:3260", "[::1]:3261"]
data_dir = "/var/lib/keel"

[[target]]
name = "iqn.2026-11.org.example:disk0"
alias = "disk0"

[[target.lun]]
lun = 0
file = "/var/lib/keel/disk0.img"
size = "1GiB"

[[target.lun]]
lun = 1
block = "/dev/sdx"
"#;

    #[test]
    fn the_documented_shape_parses() {
        let c = parse(EXAMPLE, "t.toml").unwrap();
        assert_eq!(c.portals.len(), 2);
        assert_eq!(c.portals[1].port(), 3261);
        let t = &c.targets[0];
        assert_eq!(t.name, "iqn.2026-11.org.example:disk0");
        assert_eq!(t.portal_group_tag, 1);
        assert_eq!(
            t.luns[0].backing,
            Backing::File {
                path: "/var/lib/keel/disk0.img".into(),
                create_size: Some(1 << 30)
            }
        );
        assert_eq!(
            t.luns[1].backing,
            Backing::Block {
                path: "/dev/sdx".into(),
                direct: DirectIo::Auto
            }
        );
    }

    #[test]
    fn direct_is_a_flag_or_auto_for_block_luns_only() {
        let block = |extra: &str| {
            format!(
                "[[target]]\nname = \"iqn.2026-11.org.example:x\"\n[[target.lun]]\nlun = 0\n\
                 block = \"/dev/sdx\"\n{extra}\n"
            )
        };
        let direct =
            |extra: &str| match &parse(&block(extra), "x").unwrap().targets[0].luns[0].backing {
                Backing::Block { direct, .. } => *direct,
                other => panic!("{other:?}"),
            };
        assert_eq!(direct(""), DirectIo::Auto, "the default");
        assert_eq!(direct("direct = \"auto\""), DirectIo::Auto);
        assert_eq!(direct("direct = true"), DirectIo::On);
        assert_eq!(direct("direct = false"), DirectIo::Off);
        // What the CLI's one-line spec sends.
        assert_eq!(direct("direct = \"true\""), DirectIo::On);
        assert_eq!(direct("direct = \"false\""), DirectIo::Off);
        let err = parse(&block("direct = \"sometimes\""), "x").unwrap_err();
        assert!(err.to_string().contains("not one of true, false"), "{err}");
        let err = parse(&block("direct = 1"), "x").unwrap_err();
        assert!(
            err.to_string().contains("direct = 1 is not one of"),
            "{err}"
        );
        let file = "[[target]]\nname = \"iqn.2026-11.org.example:x\"\n[[target.lun]]\nlun = 0\n\
                    file = \"x.img\"\nsize = 4096\ndirect = true\n";
        let err = parse(file, "x").unwrap_err();
        assert!(
            err.to_string().contains("direct applies to block devices"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_documents_a_valid_file() {
        let text = include_str!("../targets.toml.example");
        let c = parse(text, "targets.toml.example").unwrap();
        assert_eq!(c.targets[0].luns.len(), 2);
        assert_eq!(
            c.iscsi,
            Settings::default(),
            "the example shows the defaults"
        );
        assert_eq!(
            c.access,
            AccessSettings::default(),
            "the example shows the defaults"
        );
        let t = &c.targets[0];
        assert_eq!(t.allowed_initiators.len(), 2);
        assert!(t.chap.as_ref().is_some_and(|p| p.mutual.is_some()));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.io_engine, IoEngine::Auto, "the example shows the default");
        let lun0 = &t.luns[0];
        assert_eq!(
            lun0.physical_block_size, lun0.block_size,
            "the example shows the default"
        );
        assert!(
            t.luns.iter().all(|l| !l.removable),
            "the example shows the default"
        );
    }

    #[test]
    fn physical_block_size_is_a_power_of_two_multiple_of_the_block_size() {
        let lun = |extra: &str| {
            format!(
                "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n[[target.lun]]\nlun = 0\n\
                 file = \"a.img\"\nsize = \"1MiB\"\n{extra}\n"
            )
        };
        let pbs =
            |extra: &str| parse(&lun(extra), "x").unwrap().targets[0].luns[0].physical_block_size;
        assert_eq!(pbs(""), 512);
        assert_eq!(pbs("block_size = 4096"), 4096);
        assert_eq!(pbs("physical_block_size = 4096"), 4096);
        assert_eq!(pbs("physical_block_size = 65536"), 65536);
        assert_eq!(pbs("block_size = 4096\nphysical_block_size = 16384"), 16384);
        for bad in [
            "physical_block_size = 256",
            "physical_block_size = 1536",
            "physical_block_size = 3072",
            "physical_block_size = 131072",
            "block_size = 4096\nphysical_block_size = 512",
            "physical_block_size = 0",
        ] {
            let errs = parse(&lun(bad), "x.toml").unwrap_err();
            let shown = errs.to_string();
            let line = 7 + usize::from(bad.starts_with("block_size"));
            assert!(
                shown.contains(&format!("x.toml:{line}: target"))
                    && shown.contains("physical_block_size"),
                "{bad}: {shown}"
            );
        }
    }

    #[test]
    fn the_embedded_default_is_valid_and_relative_files_live_in_data_dir() {
        let c = parse(EMBEDDED_DEFAULT, "default").unwrap();
        assert_eq!(c.portals, vec!["127.0.0.1:3260".parse().unwrap()]);
        assert_eq!(
            c.targets[0].luns[0].backing,
            Backing::File {
                path: "keel-data/default-lun0.img".into(),
                create_size: Some(1 << 30)
            }
        );
    }

    #[test]
    fn errors_are_located_and_all_reported() {
        let text = r#"
[[target]]
name = "iqn.2026-11.org.example:a"
[[target.lun]]
lun = 0
file = "a.img"
size = "12Q"
[[target.lun]]
lun = 0
block = "/dev/x"
size = "1GiB"
[[target]]
name = "IQN.bad"
[[target.lun]]
lun = 70000
"#;
        let errs = parse(text, "bad.toml").unwrap_err();
        let shown = errs.to_string();
        assert!(shown.contains("bad.toml:7: target \"iqn.2026-11.org.example:a\" LUN 0: size \"12Q\" has an unknown unit"), "{shown}");
        assert!(
            shown.contains("bad.toml:9:") && shown.contains("declared twice"),
            "{shown}"
        );
        assert!(
            shown.contains("bad.toml:11:") && shown.contains("size applies to files only"),
            "{shown}"
        );
        assert!(
            shown.contains("bad.toml:13:") && shown.contains("lower case"),
            "{shown}"
        );
        assert!(shown.contains("LUN numbers go up to 16383"), "{shown}");
        assert!(shown.contains("needs file"), "{shown}");
    }

    #[test]
    fn out_of_range_settings_are_located_and_named_with_their_bounds() {
        let text = "[server]\nqueue_depth = 0\nwrite_buffer_mib = 4\nlogin_timeout_secs = 0\n";
        let shown = parse(text, "r.toml").unwrap_err().to_string();
        for expected in [
            "r.toml:2: queue_depth must be between 1 and 4096",
            "r.toml:3: write_buffer_mib must be between 8 and 1048576",
            "r.toml:4: login_timeout_secs must be between 1 and 3600 seconds",
        ] {
            assert!(shown.contains(expected), "{shown}");
        }
    }

    #[test]
    fn nop_interval_secs_is_checked_and_zero_turns_pings_off() {
        let interval = |value: &str| {
            parse(
                &format!("[server]\nnop_interval_secs = {value}\n"),
                "n.toml",
            )
            .map(|c| c.iscsi.nop_interval_secs)
        };
        assert_eq!(interval("0").unwrap(), 0);
        assert_eq!(interval("3600").unwrap(), 3600);
        for bad in ["3601", "18446744073709551615"] {
            let shown = interval(bad).unwrap_err().to_string();
            assert!(
                shown.contains("n.toml:2: nop_interval_secs must be between 0 and 3600 seconds"),
                "{bad}: {shown}"
            );
        }
    }

    #[test]
    fn io_engine_is_checked() {
        for (text, engine) in [
            ("", IoEngine::Auto),
            ("[server]\nio_engine = \"auto\"\n", IoEngine::Auto),
            ("[server]\nio_engine = \"io_uring\"\n", IoEngine::IoUring),
            ("[server]\nio_engine = \"threads\"\n", IoEngine::Threads),
        ] {
            assert_eq!(parse(text, "x").unwrap().io_engine, engine, "{text}");
        }
        let errs = parse("[server]\n\nio_engine = \"uring\"\n", "x.toml").unwrap_err();
        assert!(
            errs.to_string()
                .contains("x.toml:3: io_engine \"uring\" is not one of"),
            "{errs}"
        );
    }

    #[test]
    fn sanitize_rate_is_a_size_per_second_and_unpaced_by_default() {
        let text = "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n[[target.lun]]\nlun = 0\nfile = \"a.img\"\nsanitize_rate = \"8MiB\"\n[[target.lun]]\nlun = 1\nfile = \"b.img\"\n";
        let c = parse(text, "x").unwrap();
        let rates: Vec<Option<u64>> = c.targets[0].luns.iter().map(|l| l.sanitize_rate).collect();
        assert_eq!(rates, [Some(8 << 20), None]);
        assert!(parse(&text.replace("\"8MiB\"", "0"), "x").is_err());
        assert!(parse(&text.replace("8MiB", "8 furlongs"), "x").is_err());
    }

    #[test]
    fn removable_is_per_lun_and_off_by_default() {
        let text = "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n[[target.lun]]\nlun = 0\nfile = \"a.img\"\nremovable = true\n[[target.lun]]\nlun = 1\nfile = \"b.img\"\n";
        let c = parse(text, "x").unwrap();
        let removable: Vec<bool> = c.targets[0].luns.iter().map(|l| l.removable).collect();
        assert_eq!(removable, [true, false]);
        let errs = parse(
            &text.replace("removable = true", "removable = \"yes\""),
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(errs.errors[0].line, Some(6), "{errs}");
    }

    #[test]
    fn syntax_errors_and_typos_have_lines() {
        let errs = parse(
            "[server]\nportals = [\"127.0.0.1:3260\"]\nportal = 1\n",
            "x",
        )
        .unwrap_err();
        assert_eq!(errs.errors[0].line, Some(3), "{errs}");
        assert!(
            errs.errors[0].message.contains("unknown field `portal`"),
            "{errs}"
        );
        let errs = parse("[server\n", "x").unwrap_err();
        assert_eq!(errs.errors[0].line, Some(1));
    }

    #[test]
    fn sizes_and_portals() {
        assert_eq!(parse_size(&SizeValue::Text("256MiB".into())), Ok(256 << 20));
        assert_eq!(parse_size(&SizeValue::Text("4096".into())), Ok(4096));
        assert_eq!(parse_size(&SizeValue::Text("2 G".into())), Ok(2 << 30));
        assert_eq!(parse_size(&SizeValue::Bytes(512)), Ok(512));
        assert!(parse_size(&SizeValue::Text("99999999999T".into())).is_err());
        assert!(parse_size(&SizeValue::Text("GiB".into())).is_err());
        assert_eq!(
            parse_portal("10.0.0.1"),
            Ok("10.0.0.1:3260".parse().unwrap())
        );
        assert_eq!(parse_portal("[::1]"), Ok("[::1]:3260".parse().unwrap()));
        assert!(parse_portal("not an address:x").is_err());
    }

    #[test]
    fn load_reads_the_include_directory_and_locates_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("keel.toml");
        std::fs::write(&main, "[server]\ninclude = \"targets.d\"\n").unwrap();
        let c = load(&main).unwrap();
        assert_eq!(c.include, Some(dir.path().join("targets.d")));
        assert!(c.targets.is_empty());
        assert_eq!(
            c.warnings.len(),
            1,
            "a missing directory is empty, with a warning"
        );
        assert_eq!(c.warnings[0].line, Some(2));
        let include = dir.path().join("targets.d");
        std::fs::create_dir(&include).unwrap();
        let target = "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n[[target.lun]]\nlun = 0\nfile = \"a.img\"\n";
        std::fs::write(include.join("a.toml"), target).unwrap();
        let c = load(&main).unwrap();
        assert_eq!(c.targets.len(), 1);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        std::fs::write(
            include.join("b.toml"),
            target.replace("a.img\"", "b.img\"\nblock_size = 7"),
        )
        .unwrap();
        let shown = load(&main).unwrap_err().to_string();
        let b = include.join("b.toml").display().to_string();
        assert!(shown.contains(&format!("{b}:6: target")), "{shown}");
        assert!(
            shown.contains(&format!(
                "{b}:2: target \"iqn.2026-11.org.example:a\" is declared twice (first at {}:2)",
                include.join("a.toml").display()
            )),
            "{shown}"
        );
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_located_when_wrong() {
        assert_eq!(parse("", "x").unwrap().metrics_listen, None);
        assert_eq!(
            parse("[server]\nmetrics_listen = \"\"\n", "x")
                .unwrap()
                .metrics_listen,
            None
        );
        let c = parse("[server]\nmetrics_listen = \"127.0.0.1:9860\"\n", "x").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9860".parse().unwrap()));
        let err = parse("[server]\nmetrics_listen = \"localhost\"\n", "x").unwrap_err();
        assert_eq!(err.errors[0].line, Some(2), "{err}");
        assert!(err.to_string().contains("metrics_listen"), "{err}");
    }

    #[test]
    fn settings_are_range_checked() {
        let errs = parse(
            "[server]\nmax_burst_length = 100\nfirst_burst_length = 20000000\n",
            "x",
        )
        .unwrap_err();
        assert_eq!(errs.errors.len(), 2, "{errs}");
        let c = parse("[server]\nqueue_depth = 32\n", "x").unwrap();
        assert_eq!(c.iscsi.queue_depth, 32);
        assert_eq!(c.iscsi.write_buffer_mib, 1024, "the default");
        let c = parse("[server]\nwrite_buffer_mib = 64\n", "x").unwrap();
        assert_eq!(c.iscsi.write_buffer_mib, 64);
        let err = parse("[server]\nwrite_buffer_mib = 4\n", "x").unwrap_err();
        assert!(err.to_string().contains("write_buffer_mib"), "{err}");
        assert!(c.targets.is_empty());
    }
}
