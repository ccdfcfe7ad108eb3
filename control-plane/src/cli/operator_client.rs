//! The gRPC client side of an operator's command: a channel to the control plane that sends the
//! operator token from `TOLLGATE_TOKEN` with every call.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Code;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Exit code when the control plane refused (not signed in, not allowed, not found, already
/// decided); other failures exit 2.
pub const EXIT_REFUSED: u8 = 1;

/// The control plane an operator command talks to.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The control plane to talk to: host:port (https), or an https:// or http:// URL. The same
    /// setting as `serve --listen` and `make run`.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE",
        default_value = "127.0.0.1:50051"
    )]
    pub server: String,
}

/// Every operator change carries a reason, for the audit record; refused before connecting.
pub fn require_reason(reason: &str) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        anyhow::bail!("--reason must say why");
    }
    Ok(())
}

/// A refusal is printed and exits 1; anything else is an error (exit 2). `precondition` words a
/// failed precondition ("cannot decide"); `service` names what an older control plane may lack.
pub fn refused(
    status: tonic::Status,
    precondition: &str,
    service: &str,
) -> anyhow::Result<ExitCode> {
    let prefix = match status.code() {
        Code::Unauthenticated => "not signed in",
        Code::PermissionDenied => "not allowed",
        Code::FailedPrecondition => precondition,
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid",
        Code::Unimplemented => anyhow::bail!(
            "the control plane does not serve {service} (an older tollgate?): {}",
            status.message()
        ),
        _ => anyhow::bail!("control plane failed: {}", status.message()),
    };
    eprintln!("tollgate: {prefix}: {}", status.message());
    Ok(ExitCode::from(EXIT_REFUSED))
}

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
        .with_context(|| format!("set TOLLGATE_TOKEN to your operator token (for a dev setup: `tollgate dev token --sub you@example.com --groups {group} --aud tollgate-operators`)"))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .context("TOLLGATE_TOKEN is not a valid header value")?;
    let channel = crate::tls::endpoint(server)?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {server}"))?;
    Ok((channel, Bearer(bearer)))
}
