//! The `keel` command: serve targets, check a configuration, or drive a running keel through
//! its control socket (`status`, `reload`, `target`, `lun`, `session`: thin clients of
//! `admin::client`, one request each); `drill`, a failover drill against any target.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use keel::admin::client::{self, ClientError};
use keel::admin::{self, ErrorCode, LogoutFilter};
use keel::config;
use keel::server::Server;
use keel::server::control::Control;
use serde_json::{Map, Value};

#[derive(Parser)]
#[command(name = "keel", version, about = "A userspace iSCSI target")]
struct Cli {
    /// The control socket of the running keel [env: KEEL_SOCKET; default: /run/keel/keel.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the targets of a configuration (or the embedded default: one 1 GiB file LUN under
    /// ./keel-data on 127.0.0.1:3260).
    Serve {
        /// Path to targets.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and report every problem with its line.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show targets, LUNs, sessions and totals of the running keel.
    Status {
        /// Print the raw JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration and apply the difference (like SIGHUP); prints the located
    /// errors and changes nothing when it does not validate.
    Reload {
        /// Print the raw JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove a target (persisted in the configuration).
    #[command(subcommand)]
    Target(TargetCommand),
    /// Add, remove or grow a LUN of a target (persisted in the configuration).
    #[command(subcommand)]
    Lun(LunCommand),
    /// List sessions, ask some to log out, or close them.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Reload the persistent reservations kept in the cluster ([cluster]): what a node runs
    /// before it answers on a public address it has just taken over.
    #[command(subcommand)]
    Reservations(ReservationsCommand),
    /// Check that this node is fit to serve: portals listening, every LUN open and its
    /// backing present. Exits 1 when not (the CTDB event script's monitor runs it).
    Health {
        /// Print the raw JSON result.
        #[arg(long)]
        json: bool,
    },
    /// A failover drill against any iSCSI target: write self-describing blocks, reconnect
    /// through failures with the same ISID, read back, and report acknowledged writes lost
    /// (exit 1 if any, or corruption, unrecovered errors, a reservation change).
    Drill(DrillArgs),
}

#[derive(Subcommand)]
enum ReservationsCommand {
    /// Adopt every LUN's reservation table as committed in the cluster database.
    Reload {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DrillArgs {
    /// The target's portal, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    portal: String,
    /// The target's iSCSI name.
    #[arg(long, value_name = "IQN")]
    target: String,
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// The initiator name to log in with.
    #[arg(long, value_name = "IQN", default_value = keel::drill::DEFAULT_INITIATOR)]
    initiator: String,
    /// Write for this long, then settle, read everything back and report (without it: until
    /// SIGINT or SIGTERM; a second signal stops at once).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// How many blocks (from --first-lba) the drill writes to.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    blocks: u64,
    #[arg(long, value_name = "LBA", default_value_t = 0)]
    first_lba: u64,
    /// Write to sequential LBAs instead of random ones.
    #[arg(long)]
    sequential: bool,
    /// Commands in flight at once.
    #[arg(long, value_name = "N", default_value_t = 1)]
    queue_depth: usize,
    /// Every Nth command reads back a recorded block (0: only the full read-backs).
    #[arg(long, value_name = "N", default_value_t = 8)]
    read_every: u64,
    /// Also read back every recorded block this often while writing.
    #[arg(long, value_name = "SECS")]
    verify_every: Option<f64>,
    /// Do not read every recorded block back right after a reconnect.
    #[arg(long)]
    no_verify_on_reconnect: bool,
    /// A command without status for this long: drop the connection and reconnect.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    command_timeout: f64,
    /// Report I/O stalls (no command completing) at least this long as events.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    stall_report_ms: u64,
    /// Register this persistent-reservation key (hex) at the start and check it after every
    /// reconnect.
    #[arg(long, value_name = "HEX")]
    pr_key: Option<String>,
    /// Also reserve: we, ex, wero, earo, wear, eaar (or the type's number).
    #[arg(long, value_name = "TYPE", requires = "pr_key")]
    reserve_type: Option<String>,
    /// Register and reserve again when a reconnect finds them gone (still reported).
    #[arg(long, requires = "pr_key")]
    pr_reestablish: bool,
    /// Register with APTPL (ask the target to keep the reservation through a restart).
    #[arg(long, requires = "pr_key")]
    pr_aptpl: bool,
    /// Write with FUA (forced unit access).
    #[arg(long)]
    fua: bool,
    /// After the stop, how long settling and the final read-back may take.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    grace: f64,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl DrillArgs {
    fn options(&self) -> Result<keel::drill::Options, String> {
        let seconds = |name: &str, value: f64| {
            std::time::Duration::try_from_secs_f64(value)
                .map_err(|_| format!("--{name} {value}: not a number of seconds"))
        };
        let mut o = keel::drill::Options::new(&self.portal, &self.target);
        o.lun = self.lun;
        o.initiator = self.initiator.clone();
        o.duration = self.duration.map(|d| seconds("duration", d)).transpose()?;
        o.blocks = self.blocks;
        o.first_lba = self.first_lba;
        o.pattern = if self.sequential {
            keel::drill::Pattern::Sequential
        } else {
            keel::drill::Pattern::Random
        };
        o.queue_depth = self.queue_depth;
        o.read_every = self.read_every;
        o.verify_every = self
            .verify_every
            .map(|d| seconds("verify-every", d))
            .transpose()?;
        o.verify_on_reconnect = !self.no_verify_on_reconnect;
        o.command_timeout = seconds("command-timeout", self.command_timeout)?;
        o.stall_report = std::time::Duration::from_millis(self.stall_report_ms);
        o.pr_key = self
            .pr_key
            .as_deref()
            .map(keel::drill::parse_key)
            .transpose()?;
        o.reserve = self
            .reserve_type
            .as_deref()
            .map(keel::drill::ReservationType::parse)
            .transpose()?;
        o.pr_reestablish = self.pr_reestablish;
        o.pr_aptpl = self.pr_aptpl;
        o.fua = self.fua;
        o.grace = seconds("grace", self.grace)?;
        o.validate()?;
        Ok(o)
    }
}

#[derive(Subcommand)]
enum TargetCommand {
    /// Add a target: `keel target add iqn.2026-11.io.keel:db --lun 0:file=db.img,size=10GiB`.
    Add {
        /// The target's iSCSI name.
        name: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        /// An initiator name or `*` pattern admitted (repeat for more; none: everyone).
        #[arg(long = "allow", value_name = "INITIATOR")]
        allowed_initiators: Vec<String>,
        #[arg(long)]
        portal_group_tag: Option<u16>,
        /// A LUN, `N:key=value,...` with the keys of [[target.lun]], e.g.
        /// `0:file=a.img,size=1GiB,read_only` (repeat for more).
        #[arg(long = "lun", value_name = "SPEC")]
        luns: Vec<String>,
        /// The whole [[target]] table as JSON (CHAP and the rest); the other flags add to it.
        #[arg(long = "json", value_name = "SPEC")]
        spec: Option<String>,
        /// Add every [[target]] table of FILE (the format of an included file), one by one.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "spec", "luns", "alias"])]
        from: Option<std::path::PathBuf>,
        /// With --from: then wait (up to SECONDS, default 600) until every LUN of them is
        /// ready or failed; exits non-zero if any failed or is still not ready.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "600", requires = "from")]
        wait: Option<u64>,
        /// Print the raw JSON result.
        #[arg(long)]
        raw: bool,
    },
    /// Remove a target: its sessions are asked to log out; its files are kept, and so are
    /// its volumes unless their `on_remove = "destroy"` or --destroy-volumes says otherwise.
    Remove {
        name: String,
        /// Also destroy the volumes keel created for its LUNs (never one it did not create).
        #[arg(long)]
        destroy_volumes: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LunCommand {
    /// Add a LUN: `keel lun add iqn.2026-11.io.keel:db --lun 1:file=logs.img,size=1GiB`.
    Add {
        target: String,
        /// The LUN, `N:key=value,...` with the keys of [[target.lun]].
        #[arg(long = "lun", value_name = "SPEC", required_unless_present = "spec")]
        lun: Option<String>,
        /// The [[target.lun]] table as JSON; --lun adds to it.
        #[arg(long = "json", value_name = "SPEC")]
        spec: Option<String>,
        /// Print the raw JSON result.
        #[arg(long)]
        raw: bool,
    },
    /// Remove a LUN (its file is kept; its volume too unless `on_remove = "destroy"` or
    /// --destroy-volume).
    Remove {
        target: String,
        lun: u64,
        /// Also destroy the volume keel created for it (never one it did not create).
        #[arg(long)]
        destroy_volume: bool,
        #[arg(long)]
        json: bool,
    },
    /// Grow a LUN: SIZE in bytes or with a unit (`20GiB`). Never shrinks.
    Resize {
        target: String,
        lun: u64,
        size: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// List sessions (of one target with --target).
    List {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the sessions matching every filter given to log out (RFC 7143 §11.9.1 event 1).
    Logout {
        #[command(flatten)]
        filter: LogoutArgs,
        /// A planned move: logins arriving on --portal's address meanwhile are redirected
        /// to ADDRESS (`10.0.0.2:3260` or `10.0.0.2:3260,1`; RFC 7143 status 0x0101).
        #[arg(long, value_name = "ADDRESS", requires = "portal")]
        redirect: Option<String>,
        /// How long the redirection lasts.
        #[arg(long, value_name = "SECS", default_value_t = admin::protocol::DEFAULT_REDIRECT_SECS, requires = "redirect")]
        redirect_secs: u64,
        #[arg(long)]
        json: bool,
    },
    /// End the sessions matching every filter given at once, without asking (their portal
    /// address has left this node: the CTDB event script's releaseip).
    Close {
        #[command(flatten)]
        filter: LogoutArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = true)]
struct LogoutArgs {
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    initiator: Option<String>,
    #[arg(long)]
    tsih: Option<u16>,
    /// keel's local address the session came in on: `10.0.0.1:3260`, or an IP alone
    /// (`10.0.0.1`: every port).
    #[arg(long)]
    portal: Option<keel::iscsi::PortalMatch>,
}

// `keel generate`: the man pages or a shell's completions, from the CLI definition (the
// package build runs it on the built binary, so both follow every subcommand added). Parsed
// apart from `Cli` so that neither documents this packaging tool itself.
#[derive(Parser)]
#[command(
    name = "keel generate",
    about = "Write keel's man pages or shell completions (for packaging)"
)]
struct Generate {
    #[command(subcommand)]
    what: Generated,
}

#[derive(Subcommand)]
enum Generated {
    /// keel.8 and keel-SUBCOMMAND.8 for every visible subcommand, into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL, on stdout.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    keel::server::logging::init();
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        return match generate(Generate::parse_from(std::env::args_os().skip(1)).what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keel generate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let socket = cli
        .socket
        .or_else(|| std::env::var_os("KEEL_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONTROL_SOCKET));
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {}", w.located(&config.display().to_string()));
                }
                let luns: usize = c.targets.iter().map(|t| t.luns.len()).sum();
                println!(
                    "{}: OK ({} targets, {} LUNs, portals {:?})",
                    config.display(),
                    c.targets.len(),
                    luns,
                    c.portals
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let loaded = match &config {
                Some(path) => config::Store::load(path),
                None => {
                    eprintln!(
                        "keel: no --config given; serving the embedded default (see `keel serve --help`)"
                    );
                    config::Store::embedded()
                }
            };
            let store = match loaded {
                Ok(store) => store,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                // Storage syscalls run on the blocking pool; bound it so a slow disk queues
                // work instead of spawning threads without limit.
                .max_blocking_threads(64)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("keel: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(store)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keel: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json } => control(&socket, admin::Command::Status, json),
        Command::Reload { json } => control(&socket, admin::Command::Reload, json),
        Command::Target(TargetCommand::Add {
            from: Some(file),
            wait,
            ..
        }) => bulk_add(&socket, &file, wait.map(std::time::Duration::from_secs)),
        Command::Target(TargetCommand::Add {
            name,
            alias,
            allowed_initiators,
            portal_group_tag,
            luns,
            spec,
            raw,
            ..
        }) => {
            let target = (|| -> Result<Map<String, Value>, String> {
                let mut t = match &spec {
                    Some(text) => client::json_object(text)?,
                    None => Map::new(),
                };
                if let Some(name) = name {
                    t.insert("name".into(), name.into());
                }
                if !t.contains_key("name") {
                    return Err("give the target's name (or \"name\" in --json)".into());
                }
                if let Some(alias) = alias {
                    t.insert("alias".into(), alias.into());
                }
                if !allowed_initiators.is_empty() {
                    t.insert("allowed_initiators".into(), allowed_initiators.into());
                }
                if let Some(tag) = portal_group_tag {
                    t.insert("portal_group_tag".into(), tag.into());
                }
                if !luns.is_empty() {
                    let mut list = match t.remove("lun") {
                        Some(Value::Array(list)) => list,
                        Some(_) => return Err("\"lun\" in --json must be a list".into()),
                        None => Vec::new(),
                    };
                    for l in &luns {
                        list.push(Value::Object(client::lun_spec(l)?));
                    }
                    t.insert("lun".into(), Value::Array(list));
                }
                Ok(t)
            })();
            match target {
                Ok(target) => control(&socket, admin::Command::TargetAdd { target }, raw),
                Err(why) => usage(&why),
            }
        }
        Command::Target(TargetCommand::Remove {
            name,
            destroy_volumes,
            json,
        }) => control(
            &socket,
            admin::Command::TargetRemove {
                name,
                destroy_volumes,
            },
            json,
        ),
        Command::Lun(LunCommand::Add {
            target,
            lun,
            spec,
            raw,
        }) => {
            let parsed = (|| -> Result<Map<String, Value>, String> {
                let mut l = match &spec {
                    Some(text) => client::json_object(text)?,
                    None => Map::new(),
                };
                if let Some(line) = &lun {
                    l.extend(client::lun_spec(line)?);
                }
                Ok(l)
            })();
            match parsed {
                Ok(lun) => control(&socket, admin::Command::LunAdd { target, lun }, raw),
                Err(why) => usage(&why),
            }
        }
        Command::Lun(LunCommand::Remove {
            target,
            lun,
            destroy_volume,
            json,
        }) => control(
            &socket,
            admin::Command::LunRemove {
                target,
                lun,
                destroy_volume,
            },
            json,
        ),
        Command::Lun(LunCommand::Resize {
            target,
            lun,
            size,
            json,
        }) => match config::parse_size_text(&size) {
            Ok(size) => control(
                &socket,
                admin::Command::LunResize { target, lun, size },
                json,
            ),
            Err(why) => usage(&why),
        },
        Command::Session(SessionCommand::List { target, json }) => {
            control(&socket, admin::Command::SessionList { target }, json)
        }
        Command::Session(SessionCommand::Logout {
            filter,
            redirect,
            redirect_secs,
            json,
        }) => {
            let redirect = match redirect
                .map(|to| keel::iscsi::redirects::check_target_address(&to))
                .transpose()
            {
                Ok(to) => to.map(|target_address| admin::LoginRedirect {
                    target_address,
                    seconds: redirect_secs,
                }),
                Err(why) => return usage(&format!("--redirect {why}")),
            };
            let filter = logout_filter(filter);
            control(
                &socket,
                admin::Command::SessionLogout { filter, redirect },
                json,
            )
        }
        Command::Session(SessionCommand::Close { filter, json }) => control(
            &socket,
            admin::Command::SessionClose(logout_filter(filter)),
            json,
        ),
        Command::Reservations(ReservationsCommand::Reload { json }) => {
            control(&socket, admin::Command::ReservationsReload, json)
        }
        Command::Health { json } => health(&socket, json),
        Command::Drill(args) => drill(&args),
    }
}

fn logout_filter(filter: LogoutArgs) -> LogoutFilter {
    LogoutFilter {
        target: filter.target,
        initiator: filter.initiator,
        tsih: filter.tsih,
        portal: filter.portal,
    }
}

/// `keel health`: the problems found, and exit status 1 if there are any, or if keel does
/// not answer at all (a monitor must fail then too).
fn health(socket: &std::path::Path, json: bool) -> ExitCode {
    let command = admin::Command::Health;
    match client::call(socket, &command) {
        Ok(result) => {
            if json {
                println!("{result}");
            }
            let healthy = result.get("healthy").and_then(|h| h.as_bool()) == Some(true);
            let problems = result.get("problems").and_then(|p| p.as_array());
            if !json {
                for problem in problems.into_iter().flatten() {
                    println!("{}", problem.as_str().unwrap_or_default());
                }
                if healthy {
                    println!("healthy");
                }
            }
            if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("keel: health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `keel drill`: exit 0 when the drill passed, 1 when it found loss, corruption, errors or a
/// reservation change (or could not run), 2 on usage errors.
fn drill(args: &DrillArgs) -> ExitCode {
    let options = match args.options() {
        Ok(o) => o,
        Err(why) => return usage(&why),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel drill: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stop = keel::drill::Stop::default();
        let signals = {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    shutdown_signal().await;
                    stop.request();
                }
            })
        };
        let result = keel::drill::run(options, stop).await;
        signals.abort();
        result
    });
    let summary = match result {
        Ok((summary, _)) => summary,
        Err(keel::drill::Fatal::Usage(why)) => return usage(&why),
        Err(e) => {
            eprintln!("keel drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary.render());
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&summary)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(path, text + "\n"));
        if let Err(e) = written {
            eprintln!("keel drill: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One request to the running keel; prints the result (raw JSON with `json`), or the error
/// and a failure status.
fn control(socket: &std::path::Path, command: admin::Command, json: bool) -> ExitCode {
    match client::call(socket, &command) {
        Ok(result) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string())
                );
            } else {
                print!("{}", client::render(&command, &result));
            }
            ExitCode::SUCCESS
        }
        Err(ClientError::Call(e)) if e.code == ErrorCode::Invalid => {
            // The message is the located errors, one `file:line: message` per line.
            eprintln!(
                "keel: {} refused: the configuration is invalid:",
                command.name()
            );
            eprintln!("{}", e.message);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("keel: {}: {e}", command.name());
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("keel: {why}");
    ExitCode::from(2)
}

fn generate(what: Generated) -> std::io::Result<()> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    match what {
        Generated::Man { dir } => {
            cli.build();
            std::fs::create_dir_all(&dir)?;
            write_man_pages(cli, &dir)
        }
        Generated::Completions { shell } => {
            clap_complete::generate(shell, &mut cli, "keel", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Section 8: keel is a daemon and its administration tool, run by root.
fn write_man_pages(command: clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub.clone(), dir)?;
    }
    clap_mangen::Man::new(command)
        .section("8")
        .manual("System Administration")
        .generate_to(dir)
        .map(drop)
}

/// `keel target add --from FILE [--wait]`.
fn bulk_add(socket: &Path, file: &Path, wait: Option<std::time::Duration>) -> ExitCode {
    let targets = match admin::bulk::read_targets(file) {
        Ok(targets) => targets,
        Err(why) => return usage(&why),
    };
    match admin::bulk::add_targets(socket, targets, wait) {
        Ok(summary) => {
            println!("added {} targets", summary.added);
            for line in &summary.refused {
                println!("refused: {line}");
            }
            if wait.is_some() {
                println!(
                    "{} LUNs ready, {} failed, {} still becoming ready",
                    summary.ready,
                    summary.failed.len(),
                    summary.pending
                );
                for line in &summary.failed {
                    println!("failed: {line}");
                }
            }
            if summary.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(store: config::Store) -> anyhow::Result<()> {
    let server = Server::bind(store.config()).await?;
    // The control socket is bound before READY=1: `keel status` works once systemd says
    // keel is up.
    let socket = match admin::socket::ControlListener::bind(&store.config().control).await {
        Ok(socket) => socket,
        // The embedded default is for trying keel out, often as an ordinary user who cannot
        // write /run/keel: serving without the socket beats not serving. A configuration file
        // asked for the socket, so there it stays an error.
        Err(e) if store.main_file().is_none() => {
            tracing::warn!(
                "{e:#}; serving without a control socket (give --config with control_socket \
                 set to a path you can write, or \"\" to turn it off)"
            );
            None
        }
        Err(e) => return Err(e),
    };
    // SIGHUP and the control socket's calls change the configuration, one at a time.
    let control = Control::new(store).with_hangup()?.with_socket(socket);
    server
        .run_controlled(Some(control), shutdown_signal())
        .await
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not at
/// the future's first poll: a SIGTERM that comes right after READY=1 must find them there
/// (the default action would kill keel without its clean shutdown).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                // Without signal handlers, ctrl-c is the only way to stop cleanly.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
