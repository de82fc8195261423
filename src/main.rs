//! The `keel` command: serve targets, or check a configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use keel::config;
use keel::server::Server;
use keel::server::control::{ConfigSource, Control};

#[derive(Parser)]
#[command(name = "keel", version, about = "A userspace iSCSI target")]
struct Cli {
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
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("{}: warning: {w}", config.display());
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
                Some(path) => config::load(path),
                None => {
                    eprintln!(
                        "keel: no --config given; serving the embedded default (see `keel serve --help`)"
                    );
                    config::parse(config::EMBEDDED_DEFAULT, "embedded default")
                }
            };
            let loaded_config = match loaded {
                Ok(c) => c,
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
            let source = match config {
                Some(path) => ConfigSource::File(path),
                None => ConfigSource::Embedded,
            };
            match runtime.block_on(serve(loaded_config, source)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keel: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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

async fn serve(config: config::Config, source: ConfigSource) -> anyhow::Result<()> {
    let server = Server::bind(&config).await?;
    // SIGHUP reloads the configuration.
    let control = Control::new(source, config).with_hangup()?;
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
