use std::rc::Rc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use tollgate_proto::pb::{AppendRequest, AppendResponse, ListRevocationsRequest, RevocationList};

use super::channel;
use super::host;
use super::http::TollgateHttp;
use crate::config::FilterConfig;
use crate::exchange::{Runtime, REVOCATIONS_KEY};
use crate::mask::Masker;
use crate::policy::Policy;
use crate::revocation::RevocationSet;

/// The root context's tick: the granularity of a streamed append's timeout.
const TICK_MS: u64 = 100;

pub struct TollgateRoot {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
    /// When the revocation list was last asked for.
    refreshed: Option<SystemTime>,
    /// The revocation list request in flight.
    refreshing: Option<u32>,
    /// Version of the list this worker last stored.
    stored_version: Option<u64>,
    /// The append of the oldest deferred record in flight.
    flushing: Option<u32>,
    /// Envoy asked this root context to finish (its configuration was replaced); it does once
    /// no request waits on its audit stream.
    draining: bool,
}

impl TollgateRoot {
    pub fn new(context_id: u32) -> Self {
        TollgateRoot {
            context_id,
            runtime: None,
            refreshed: None,
            refreshing: None,
            stored_version: None,
            flushing: None,
            draining: false,
        }
    }

    /// A draining root context whose stream has nothing left unanswered tells Envoy it is done;
    /// `true` then.
    fn finish_draining(&mut self) -> bool {
        if !self.draining || channel::waiting(self.context_id) {
            return false;
        }
        channel::forget(self.context_id);
        // Once: Envoy deletes the context after `done`. Handing out answers made a request the
        // effective context; `done` is this one's.
        self.draining = false;
        if hostcalls::set_effective_context(self.context_id).is_ok() {
            let _ = hostcalls::done();
        }
        true
    }

    /// Opens this worker's audit stream when it is not open (a failure is retried next tick).
    fn open_audit_stream(&mut self) {
        let Some(runtime) = &self.runtime else { return };
        if self.draining || !channel::wants_stream(self.context_id) {
            return;
        }
        let cluster = runtime.config.control_plane_target.clone();
        match self.open_grpc_stream(
            &cluster,
            tollgate_proto::service::AUDIT,
            "AppendStream",
            Vec::new(),
        ) {
            Ok(token) => channel::opened(self.context_id, token),
            Err(status) => host::log(
                LogLevel::Warn,
                &format!("tollgate: audit stream to {cluster:?} failed to open: {status:?}"),
            ),
        }
    }

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
    fn on_done(&mut self) -> bool {
        // Requests of the old configuration may still wait for acknowledgements on this
        // root context's stream: it stays until they have them (see `on_tick`).
        let done = !channel::waiting(self.context_id);
        if done {
            channel::forget(self.context_id);
        } else {
            self.draining = true;
        }
        done
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        channel::on_message(self.context_id, token_id, message_size);
        self.finish_draining();
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        channel::on_close(self.context_id, token_id, status_code);
        self.finish_draining();
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if channel::on_callout_response(token_id, status_code, response_size) {
            return;
        }
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
                // Ticks time out streamed appends; the revocation list is asked for on the
                // tick once `revocationRefreshMs` has passed.
                host::set_tick_period(Duration::from_millis(TICK_MS));
                self.runtime = Some(Rc::new(runtime));
                // Defined now so that they are scraped as 0 before the first event.
                super::stats::count(crate::metrics::AUDIT_APPEND_FAILURES, 0);
                super::stats::gauge_add(crate::metrics::APPROVALS_PENDING, 0);
                host::log(LogLevel::Info, "tollgate: configuration loaded");
                // Now rather than at the first tick, so that the first calls use it too.
                self.open_audit_stream();
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
        let now = host::now();
        channel::expire(self.context_id, now);
        if self.finish_draining() {
            return;
        }
        self.open_audit_stream();
        self.flush_fail_open();
        let Some(runtime) = &self.runtime else { return };
        if self.refreshing.is_some() {
            return;
        }
        let every = Duration::from_millis(runtime.config.revocation_refresh_ms.max(100));
        if self
            .refreshed
            .is_some_and(|at| now.duration_since(at).is_ok_and(|since| since < every))
        {
            return;
        }
        self.refreshed = Some(now);
        let config = &runtime.config;
        self.refreshing = host::grpc_call(
            &config.control_plane_target,
            tollgate_proto::service::REVOCATIONS,
            "List",
            &ListRevocationsRequest {}.encode_to_vec(),
            Duration::from_millis(config.audit_timeout_ms),
        );
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let runtime = self.runtime.clone()?;
        Some(Box::new(TollgateHttp::new(
            self.context_id,
            context_id,
            runtime,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
