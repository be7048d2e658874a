//! portcullis: Linux host firewall and port-scan detector.
//!
//! The binary is thin: it parses the command line, loads the config, wires
//! a packet source to the engine and the engine's events to their outputs.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod config;
mod daemon;
mod notify;
mod output;
mod replay;
mod state;

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
