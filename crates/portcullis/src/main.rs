//! portcullis: Linux host firewall and port-scan detector.
//!
//! The binary is thin: it parses the command line, loads the config, wires
//! a packet source to the engine and the engine's events to their outputs.

use std::process::ExitCode;

use clap::Parser;

mod cleanup;
mod cli;
mod client;
mod config;
mod control;
mod daemon;
mod inline;
mod kernel_thread;
mod lockout;
mod metrics;
mod monitor;
mod notify;
mod output;
mod peers;
mod replay;
mod state;
mod status;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
