//! The `crius` command: `serve` runs the CRI daemon; `config default` prints
//! the embedded default configuration; `version` prints the version.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crius::config::{Config, DEFAULT_TOML};
use crius::cri::{Cri, server};
use crius::daemon::Daemon;

#[derive(Parser)]
#[command(
    name = "crius",
    version,
    about = "A Kubernetes CRI v1 container runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CRI gRPC server.
    Serve(ServeArgs),
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check or set aside the metadata database.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, commented.
    Default,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Check every page and record of the database (exit 1 when damaged).
    Check(StoreArgs),
    /// Start over: move the database aside (never deleting it); the next
    /// `crius serve` removes every pod and container the lost records
    /// owned. Stop crius first.
    Reset(StoreArgs),
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Configuration file [default: /etc/crius/crius.toml]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Persistent state directory (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file [default: /etc/crius/crius.toml, built-in defaults when absent]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Persistent state directory (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Ephemeral state directory (overrides `state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log level or tracing filter (overrides `log_level`).
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Store { command } => store(command),
        Command::Version => {
            println!("crius {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crius: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.root {
        config.root = v;
    }
    if let Some(v) = args.state {
        config.state = v;
    }
    if let Some(v) = args.log_level {
        config.log_level = v;
    }
    config.validate()?;
    Ok(config)
}

fn store(command: StoreCommand) -> anyhow::Result<()> {
    let (StoreCommand::Check(args) | StoreCommand::Reset(args)) = &command;
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(root) = &args.root {
        config.root = root.clone();
    }
    let path = config.db_path();
    match command {
        StoreCommand::Check(_) => {
            for (table, count) in crius::store::Store::check(&path)? {
                println!("{table}: {count} records");
            }
            println!("{}: ok", path.display());
        }
        StoreCommand::Reset(_) => match crius::store::Store::set_aside(&path)
            .with_context(|| format!("move {} aside", path.display()))?
        {
            Some(to) => println!(
                "moved {} to {}; the next `crius serve` removes the leftovers of the lost records",
                path.display(),
                to.display()
            ),
            None => println!("{}: no database", path.display()),
        },
    }
    Ok(())
}

/// A level and `target=level` directives ("info,crius::image=debug"):
/// `Targets` parses them without EnvFilter's regex engine, which was code
/// resident in every daemon (Cargo.toml, the release profile).
fn log_filter(filter: &str) -> anyhow::Result<Targets> {
    filter
        .parse()
        .with_context(|| format!("invalid log level {filter:?}"))
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => env,
        _ => level.to_string(),
    };
    let filter = log_filter(&filter)?;
    // Colours only on a terminal: logs redirected to a file or the journal
    // stay plain text.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crius::sys::malloc::tune_for_daemon();
    let config = load_config(args)?;
    init_logging(&config.log_level)?;
    for dir in [&config.root, &config.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crius")
        // A pool thread idle for 1 s exits (tokio's default: 10 s): every
        // thread that ran the runtime's worker code keeps 150-190 KiB of
        // stack resident while it lives (README, "The daemon's memory").
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen.clone();
        let listener = server::bind(&listen)?;
        let daemon = Arc::new(Daemon::open(config)?);
        daemon.reconcile().await.context("reconcile")?;
        daemon
            .start_streaming()
            .await
            .context("start the streaming server")?;
        daemon.stats.spawn();
        // Free pages inside the heaps back to the kernel (sys::malloc).
        tokio::spawn(crius::sys::malloc::Trimmer::default().run());
        tracing::info!(socket = %listen.display(), version = env!("CARGO_PKG_VERSION"), "crius serving");
        let containers = daemon.containers.clone();
        server::serve(Cri::new(daemon), listener, &listen, shutdown_signal()?).await;
        // What removals release after their reply (the next start would).
        let settled = containers.settle_removals(None);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), settled).await;
        tracing::info!("crius stopped");
        Ok(())
    })
}

/// Resolves at the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::log_filter;

    #[test]
    fn log_filters_take_a_level_and_per_target_levels() {
        let f = log_filter("info,crius::image=debug").unwrap();
        assert!(f.would_enable("crius::image::pull", &Level::DEBUG));
        assert!(!f.would_enable("crius::cri", &Level::DEBUG));
        assert!(f.would_enable("crius::cri", &Level::INFO));
        let f = log_filter("WARN").unwrap();
        assert!(!f.would_enable("crius::cri", &Level::INFO));
        assert!(f.would_enable("h2", &Level::WARN));
        let e = log_filter("info,crius=loud").unwrap_err();
        assert!(format!("{e:#}").contains("invalid log level"), "{e:#}");
    }
}
