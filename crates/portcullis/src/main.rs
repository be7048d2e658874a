//! portcullis: Linux host firewall and port-scan detector.
//!
//! The binary is thin: it parses the command line, loads the config, wires
//! a packet source to the engine and the engine's events to their outputs.
//!
//! Its modules import one way (`tests/modules.rs` fails on a loop): flags
//! (`cli`) are lowered once into a plan (`plan`); the daemon (`daemon`)
//! builds on the plan, the packet paths (`path`), the packet loop
//! (`packet_loop`) and the kernel thread (`kernel_thread`); shared pieces
//! (`clock`, `control`, `status`, `config`) import none of those.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::control::Request;
use crate::plan::RunPlan;

mod alert_limit;
mod cleanup;
mod cli;
mod client;
mod clock;
mod config;
mod control;
mod daemon;
mod fleet;
mod kernel_thread;
mod lock;
mod lockout;
mod logger;
mod metrics;
mod notify;
mod output;
mod packet_loop;
mod path;
mod peers;
mod plan;
mod reload;
mod replay;
mod requests;
mod state;
mod status;
#[cfg(test)]
mod testing;
mod top;
mod top_view;

fn main() -> ExitCode {
    let args = Cli::parse();
    if let Err(e) = logger::init(args.log_level) {
        eprintln!("portcullis: error: {e}");
        return ExitCode::from(2);
    }
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(2)
        }
    };
    // What the rate limit still holds back.
    log::logger().flush();
    code
}

/// Runs one command.
fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config: path } => {
            let cfg = match config::load(path.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e:#}");
                    return Ok(ExitCode::from(1));
                }
            };
            print!("{}", config::summary(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => daemon::run(&RunPlan::new(&args)?),
        Command::Cleanup => cleanup::run(),
        Command::Status { client } => client::run(&client, Request::Status),
        Command::Bans { client } => client::run(&client, Request::Bans),
        Command::Ban {
            addr,
            duration,
            reason,
            client,
        } => client::run(
            &client,
            Request::Ban {
                addr,
                seconds: duration.map(|d| d.as_secs()),
                reason,
            },
        ),
        Command::Unban { addr, client } => client::run(&client, Request::Unban { addr }),
        Command::Explain {
            addr,
            config: Some(path),
            client,
        } => {
            let cfg = config::load(Some(&path))?;
            let now = clock::now();
            let x = portcullis_engine::explain::explain(
                &cfg.rules,
                cfg.policy.default,
                None,
                addr,
                now,
            );
            if client.json {
                println!("{}", serde_json::to_string_pretty(&x)?);
            } else {
                println!("{x}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            addr,
            config: None,
            client,
        } => client::run(&client, Request::Explain { addr }),
        Command::Top(args) => top::run(&args),
        Command::Schema => {
            let schema = portcullis_engine::config::schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "portcullis", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing manual pages to {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { file, common } => replay::replay_file(&file, &common),
        Command::Demo { save_pcap, common } => replay::demo(save_pcap.as_deref(), &common),
    }
}
