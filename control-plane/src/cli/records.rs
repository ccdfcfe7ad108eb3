//! Where `tollgate audit` commands read records: the running control plane over gRPC, or, when
//! none answers, the store under `--home` directly (sled allows one process at a time).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::chain::StoredRecord;
use crate::pb;
use crate::store::Reader;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// Control plane to read from; when it cannot be reached, <home>/audit.sled is read directly.
    #[arg(
        long,
        env = "TOLLGATE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
}

/// Calls `each` with every record in sequence order until it returns `false`.
pub async fn for_each(
    home: &Path,
    source: &SourceArgs,
    mut each: impl FnMut(StoredRecord) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(source.server.clone())
        .with_context(|| format!("invalid --server {:?}", source.server))?
        .connect_timeout(CONNECT_TIMEOUT);
    match endpoint.connect().await {
        Ok(channel) => {
            let mut client = pb::audit_client::AuditClient::new(channel);
            let mut stream = client
                .list_records(pb::ListRecordsRequest {
                    from_seq: 0,
                    limit: 0,
                })
                .await
                .with_context(|| format!("listing records from {}", source.server))?
                .into_inner();
            while let Some(record) = stream
                .message()
                .await
                .with_context(|| format!("reading records from {}", source.server))?
            {
                let record = StoredRecord {
                    seq: record.seq,
                    canonical_json: record.canonical_json,
                    chain_hash: record.chain_hash,
                };
                if !each(record)? {
                    break;
                }
            }
        }
        Err(_) => {
            let path = home.join("audit.sled");
            eprintln!(
                "tollgate: no control plane at {}; reading {} directly",
                source.server,
                path.display()
            );
            let reader = Reader::open(&path).with_context(|| {
                "is `tollgate serve` running with this home? then pass its address as --server"
            })?;
            for record in reader.records(0, 0) {
                if !each(record?)? {
                    break;
                }
            }
        }
    }
    Ok(())
}
