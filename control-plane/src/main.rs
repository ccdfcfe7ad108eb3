//! `tollgate`: the control plane server and the operator's command line.

mod bundle;
mod canonical;
mod chain;
mod cli;
mod clock;
mod issuer;
mod keys;
mod merkle;
mod note;
mod operator;
mod service;
mod store;
mod verify;

use tollgate_proto::pb;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            std::process::ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
