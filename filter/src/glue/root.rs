use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use super::host;
use super::http::TollgateHttp;
use crate::config::FilterConfig;
use crate::mask::Masker;
use crate::policy::Policy;

/// Everything a request needs from the configuration, built once per configuration load.
pub struct Runtime {
    pub config: FilterConfig,
    pub masker: Masker,
    pub policy: Policy,
}

#[derive(Default)]
pub struct TollgateRoot {
    runtime: Option<Rc<Runtime>>,
}

impl Context for TollgateRoot {}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, plugin_configuration_size);
        let loaded = FilterConfig::from_json(&bytes).and_then(|config| {
            let masker = Masker::new(config.mask.clone())
                .map_err(|e| format!("invalid mask configuration: {e}"))?;
            let policy =
                Policy::compile(&config.policy).map_err(|e| format!("invalid policy: {e}"))?;
            Ok(Runtime {
                config,
                masker,
                policy,
            })
        });
        match loaded {
            Ok(runtime) => {
                self.runtime = Some(Rc::new(runtime));
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let runtime = self.runtime.clone()?;
        Some(Box::new(TollgateHttp::new(runtime)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
