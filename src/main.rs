//! The `rpchub` binary: command line -> configuration -> library calls.

mod cli;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            other => cli::run_client(other).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    eprintln!("rpchub: {}", chain.join(": "));
    ExitCode::FAILURE
}

async fn serve(args: cli::ServeArgs) -> Result<()> {
    let config = args.config()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .context("log filter")?;
    let fmt =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    match config.log_format {
        rpchub::config::LogFormat::Text => {
            fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        rpchub::config::LogFormat::Json => fmt.json().with_current_span(false).init(),
    }
    raise_open_file_limit();
    // Caught from before the listener opens, so a signal during start is a graceful shutdown.
    let mut signals = rpchub::shutdown::signals();
    let running = rpchub::start(config).await?;
    signals.recv().await;
    running.shutdown();
    running.wait().await;
    Ok(())
}

/// Each connection is a file descriptor: take the hard limit as the soft one.
fn raise_open_file_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open-file limit: {e}");
    }
}
