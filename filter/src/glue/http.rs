//! The HTTP context: proxy-wasm's callbacks, handed to [`Exchange`] with Envoy as its host.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::channel;
use super::host::EnvoyHost;
use crate::exchange::{Exchange, Flow, Runtime};

/// One request; its exchange is shared with the root context, which hands it the answers of the
/// audit stream (`channel`).
pub struct TollgateHttp {
    context_id: u32,
    exchange: Rc<RefCell<Exchange<EnvoyHost>>>,
}

impl TollgateHttp {
    pub fn new(root_id: u32, context_id: u32, runtime: Rc<Runtime>) -> Self {
        let exchange = Rc::new(RefCell::new(Exchange::new(
            EnvoyHost {
                root_id,
                context_id,
            },
            runtime,
        )));
        channel::register(context_id, Rc::clone(&exchange));
        TollgateHttp {
            context_id,
            exchange,
        }
    }
}

impl Drop for TollgateHttp {
    fn drop(&mut self) {
        channel::unregister(self.context_id);
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Context for TollgateHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.exchange
            .borrow_mut()
            .on_grpc_call_response(token_id, status_code, response_size);
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if super::host::request_header("x-tollgate-fault").as_deref() == Some("panic") {
            #[allow(clippy::panic)]
            {
                panic!("tollgate: injected fault");
            }
        }
        action(self.exchange.borrow_mut().on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.exchange
                .borrow_mut()
                .on_request_body(body_size, end_of_stream),
        )
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.exchange.borrow_mut().on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(
            self.exchange
                .borrow_mut()
                .on_response_headers(end_of_stream),
        )
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.exchange
                .borrow_mut()
                .on_response_body(body_size, end_of_stream),
        )
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.exchange.borrow_mut().on_response_trailers())
    }

    fn on_log(&mut self) {
        self.exchange.borrow_mut().on_log();
    }
}
