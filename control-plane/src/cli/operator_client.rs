//! The gRPC client side of an operator's command: a channel to the control plane that sends the
//! operator token from `TOLLGATE_TOKEN` with every call.

use std::time::Duration;

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends the operator token with every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Connects to `server` as the operator in `TOLLGATE_TOKEN`; `group` names the group a dev token
/// needs for this command, in the hint shown when the token is missing.
pub async fn connect(server: &str, group: &str) -> anyhow::Result<(Channel, Bearer)> {
    let token = std::env::var("TOLLGATE_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .with_context(|| format!("set TOLLGATE_TOKEN to your operator token (for a dev setup: `tollgate dev token --sub you@example.com --groups {group}`)"))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .context("TOLLGATE_TOKEN is not a valid header value")?;
    let channel = tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("invalid --server {server:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {server}"))?;
    Ok((channel, Bearer(bearer)))
}
