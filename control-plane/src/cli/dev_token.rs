//! `tollgate dev token`: mint a token from the dev issuer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::issuer::{self, DevIssuer, TokenRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subject (`sub`): who the token speaks for.
    #[arg(long)]
    sub: String,
    /// Groups (`groups` claim), comma separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Email (`email` claim).
    #[arg(long)]
    email: Option<String>,
    /// Audience (`aud`).
    #[arg(long, default_value = issuer::AUDIENCE)]
    aud: String,
    /// Lifetime, e.g. 15m, 1h, 30s.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Make a token that expired minutes ago (for tests of rejection).
    #[arg(long)]
    expired: bool,
    /// Extra claim NAME=VALUE, repeatable; VALUE is parsed as JSON if it is JSON, else taken as a
    /// string. Applied last, so it can override standard claims (e.g. iss=https://wrong).
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = issuer::parse_claim)]
    claims: Vec<(String, serde_json::Value)>,
    /// Sign with this PKCS#8 PEM P-256 key instead of the dev issuer's (for tests of
    /// rejection); the header still names the dev issuer's kid unless --kid is given.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// `kid` header to use instead of the dev issuer's.
    #[arg(long)]
    kid: Option<String>,
}

pub fn run(home: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let dev = DevIssuer::at(home);
    if dev.ensure(false)? {
        eprintln!(
            "tollgate: created the dev issuer key {}",
            dev.key_path.display()
        );
    }
    let key = issuer::load_key(args.key.as_deref().unwrap_or(&dev.key_path))?;
    let kid = match &args.kid {
        Some(kid) => kid.clone(),
        None => dev.kid()?,
    };
    let request = TokenRequest {
        sub: args.sub.clone(),
        groups: args
            .groups
            .iter()
            .filter(|g| !g.is_empty())
            .cloned()
            .collect(),
        email: args.email.clone(),
        audience: args.aud.clone(),
        ttl: args.ttl,
        expired: args.expired,
        claims: args.claims.clone(),
    };
    println!("{}", issuer::mint(&key, &kid, &request, SystemTime::now())?);
    Ok(ExitCode::SUCCESS)
}
