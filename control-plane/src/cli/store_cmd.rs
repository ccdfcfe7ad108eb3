//! `tollgate store migrate`: creates or upgrades the PostgreSQL schema.

use std::path::Path;
use std::process::ExitCode;

use crate::store::{pg, Location};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The database: a postgres:// URL (a sled store needs no migration).
    #[arg(long, env = "TOLLGATE_STORE")]
    store: String,
}

pub async fn migrate(home: &Path, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let location = Location::parse(Some(&args.store), home).map_err(anyhow::Error::msg)?;
    let Location::Postgres(url) = &location else {
        anyhow::bail!("a sled store creates itself; `store migrate` is for a postgres:// URL");
    };
    pg::migrate(url).await?;
    println!(
        "tollgate: schema {} ready in {}",
        pg::SCHEMA_VERSION,
        location.display()
    );
    Ok(ExitCode::SUCCESS)
}
