use std::rc::Rc;
use std::time::Duration;

use prost::Message as _;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use tollgate_proto::pb::{AppendRequest, AppendResponse, ListRevocationsRequest, RevocationList};

use super::host;
use super::http::TollgateHttp;
use crate::config::FilterConfig;
use crate::exchange::{Runtime, REVOCATIONS_KEY};
use crate::mask::Masker;
use crate::policy::Policy;
use crate::revocation::RevocationSet;

#[derive(Default)]
pub struct TollgateRoot {
    runtime: Option<Rc<Runtime>>,
    /// The revocation list request in flight.
    refreshing: Option<u32>,
    /// Version of the list this worker last stored.
    stored_version: Option<u64>,
    /// The append of the oldest deferred record in flight.
    flushing: Option<u32>,
}

impl TollgateRoot {
    /// Appends the oldest deferred record, if any and none is in flight.
    fn flush_fail_open(&mut self) {
        let Some(runtime) = &self.runtime else { return };
        if self.flushing.is_some() {
            return;
        }
        let message = match runtime.deferred.borrow().front() {
            Some(record) => AppendRequest {
                record_json: record.to_vec(),
                session: None,
            }
            .encode_to_vec(),
            None => return,
        };
        let config = &runtime.config;
        self.flushing = host::grpc_call(
            &config.control_plane_target,
            tollgate_proto::service::AUDIT,
            "Append",
            &message,
            Duration::from_millis(config.audit_timeout_ms),
        );
    }
}

impl Context for TollgateRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.flushing == Some(token_id) {
            self.flushing = None;
            let acked = status_code == 0
                && AppendResponse::decode(host::grpc_response(response_size).as_slice())
                    .is_ok_and(|ack| !ack.chain_hash.is_empty());
            if let (true, Some(runtime)) = (acked, &self.runtime) {
                runtime.deferred.borrow_mut().pop();
                // Drain while the control plane answers; a failure waits for the next tick.
                self.flush_fail_open();
            }
            return;
        }
        if self.refreshing != Some(token_id) {
            return;
        }
        self.refreshing = None;
        let list = (status_code == 0)
            .then(|| RevocationList::decode(host::grpc_response(response_size).as_slice()).ok())
            .flatten();
        let Some(list) = list else {
            // Keep enforcing the last list; the next tick asks again.
            host::log(
                LogLevel::Warn,
                &format!("tollgate: revocation refresh failed (grpc status {status_code})"),
            );
            return;
        };
        if self.stored_version != Some(list.version) {
            host::set_shared_bytes(REVOCATIONS_KEY, &RevocationSet::from_list(&list).to_json());
            self.stored_version = Some(list.version);
        }
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, plugin_configuration_size);
        let loaded = FilterConfig::from_json(&bytes).and_then(|config| {
            // The key comes from the VM's environment (WASI), never the plugin configuration.
            let config = config.with_pan_ref_key(|name| std::env::var(name).ok());
            let masker = Masker::new(config.mask.clone())
                .map_err(|e| format!("invalid mask configuration: {e}"))?;
            let policy =
                Policy::compile(&config.policy).map_err(|e| format!("invalid policy: {e}"))?;
            Ok(Runtime::new(config, masker, policy))
        });
        match loaded {
            Ok(runtime) => {
                let refresh = Duration::from_millis(runtime.config.revocation_refresh_ms.max(100));
                host::set_tick_period(refresh);
                self.runtime = Some(Rc::new(runtime));
                // Defined now so that they are scraped as 0 before the first event.
                super::stats::count(crate::metrics::AUDIT_APPEND_FAILURES, 0);
                super::stats::gauge_add(crate::metrics::APPROVALS_PENDING, 0);
                host::log(LogLevel::Info, "tollgate: configuration loaded");
                true
            }
            Err(error) => {
                // Envoy refuses the configuration; a running filter keeps its last good one.
                host::log(LogLevel::Error, &format!("tollgate: {error}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.flush_fail_open();
        let Some(runtime) = &self.runtime else { return };
        if self.refreshing.is_some() {
            return;
        }
        let config = &runtime.config;
        self.refreshing = host::grpc_call(
            &config.control_plane_target,
            tollgate_proto::service::REVOCATIONS,
            "List",
            &ListRevocationsRequest {}.encode_to_vec(),
            Duration::from_millis(config.audit_timeout_ms),
        );
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let runtime = self.runtime.clone()?;
        Some(Box::new(TollgateHttp::new(runtime)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
