//! `tollgate dev init`: create the dev issuer's key and JWKS.

use std::path::Path;
use std::process::ExitCode;

use crate::issuer::{self, DevIssuer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replace an existing key (tokens signed by the old one stop verifying).
    #[arg(long)]
    force: bool,
}

pub fn run(home: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let dev = DevIssuer::at(home);
    let created = dev.ensure(args.force)?;
    println!(
        "{} {}",
        if created { "created" } else { "kept" },
        dev.key_path.display()
    );
    println!("jwks {}", dev.jwks_path.display());
    println!("issuer {}", issuer::ISSUER);
    println!("audience {}", issuer::AUDIENCE);
    println!("kid {}", dev.kid()?);
    Ok(ExitCode::SUCCESS)
}
