//! `tollgate keys show` and `tollgate keys rotate`: the checkpoint signing keys.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Map;

use super::records::{OperatorArgs, Source, SourceArgs};
use crate::keys::KeyDir;
use crate::pb;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    source: SourceArgs,
}

pub fn show(home: &Path, _args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let keys = KeyDir::at(home);
    let verifiers = keys.verifiers()?;
    println!(
        "# {} (oldest first; the last signs now)",
        keys.verifiers_path().display()
    );
    for key in verifiers {
        println!("{}", key.encode());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate(
    home: &Path,
    operator: &OperatorArgs,
    args: &RotateArgs,
) -> anyhow::Result<ExitCode> {
    let operator = operator.operator().with_purpose("keys.rotate", None);
    let source = Source::open(home, &args.source, &operator).await?;
    let (key, seq) = match &source {
        Source::Server { client, address } => {
            let answer = client
                .clone()
                .rotate_key(pb::RotateKeyRequest {})
                .await
                .with_context(|| format!("rotating the key at {address}"))?
                .into_inner();
            (answer.verifier_key, answer.seq)
        }
        Source::Store(store) => {
            let mut event = Map::new();
            event.insert("operator".into(), operator.to_json());
            event.insert("via".into(), "store".into());
            let (appended, key) = store.rotate_key(event).await?;
            (key.encode(), appended.seq)
        }
        Source::Reader(_) => {
            anyhow::bail!("cannot rotate the key of a store that cannot be written")
        }
    };
    source.close().await?;
    println!("new checkpoint key {key}");
    println!(
        "recorded as record {seq}; old public keys stay in {}",
        KeyDir::at(home).verifiers_path().display()
    );
    Ok(ExitCode::SUCCESS)
}
