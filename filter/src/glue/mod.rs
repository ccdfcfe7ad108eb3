//! Envoy glue: the root context (configuration) and the HTTP context (one per request). Thin by
//! design: every decision is made in the pure modules; this only moves bytes to and from the host.

mod channel;
mod host;
mod http;
mod root;
mod stats;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::TollgateRoot::new(context_id))
    });
}}
