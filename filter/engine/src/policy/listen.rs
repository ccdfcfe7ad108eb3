//! The `subscriptions/listen` stream (MCP 2026-07-28) filtered like the lists: a caller hears
//! only of resources it may read. `notifications/resources/updated` for any other resource is
//! dropped, and the server's acknowledgement lists only the readable subscriptions. Events are
//! passed whole, as soon as each is complete.

use serde_json::Value;

use super::{CallContext, Policy};

/// An event larger than this is never completed: the stream is ended instead of passing an
/// event the filter could not judge.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One listen stream's filter: the bytes of an event not yet complete, and what was dropped.
#[derive(Debug, Default)]
pub struct ListenFilter {
    pending: Vec<u8>,
    /// Notifications dropped so far.
    pub dropped: u64,
}

/// An event grew past [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

impl ListenFilter {
    /// The complete events among what has arrived, filtered; the rest waits for more.
    pub fn push(
        &mut self,
        bytes: &[u8],
        policy: &Policy,
        ctx: &CallContext<'_>,
    ) -> Result<Vec<u8>, EventTooLarge> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            out.extend(self.filter_event(event, policy, ctx));
        }
        if self.pending.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(out)
    }

    /// The stream ended: whatever is left, filtered as one event.
    pub fn finish(&mut self, policy: &Policy, ctx: &CallContext<'_>) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() {
            return rest;
        }
        self.filter_event(rest, policy, ctx)
    }

    fn filter_event(&mut self, event: Vec<u8>, policy: &Policy, ctx: &CallContext<'_>) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(&event) else {
            return event;
        };
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let Ok(mut message) = serde_json::from_str::<Value>(&data.join("\n")) else {
            return event;
        };
        let readable = |uri: &str| policy.could_use("resources/read", uri, ctx);
        match message.get("method").and_then(Value::as_str) {
            Some("notifications/resources/updated") => {
                let uri = message
                    .get("params")
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if readable(uri) {
                    event
                } else {
                    self.dropped += 1;
                    Vec::new()
                }
            }
            Some("notifications/subscriptions/acknowledged") => {
                let Some(Value::Array(uris)) =
                    message.pointer_mut("/params/notifications/resourceSubscriptions")
                else {
                    return event;
                };
                let before = uris.len();
                uris.retain(|u| u.as_str().is_some_and(readable));
                if uris.len() == before {
                    return event;
                }
                let ending = if text.ends_with("\r\n\r\n") {
                    "\r\n\r\n"
                } else {
                    "\n\n"
                };
                let mut out = String::new();
                for line in text
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with("data:"))
                {
                    out.push_str(line);
                    out.push('\n');
                }
                out.push_str("data: ");
                out.push_str(&message.to_string());
                out.push_str(ending);
                out.into_bytes()
            }
            _ => event,
        }
    }
}

/// Where the first complete event of `buf` ends (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') => return Some(i + 2),
            (b'\r', b'\n') if buf[i + 2..].starts_with(b"\r\n") => return Some(i + 4),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn policy() -> Policy {
        Policy::from_json(
            br#"{"rules":[{"id":"payments","match":{"resource":"payments://payments/*"},"action":"allow"},
                          {"id":"no-merchants","match":{"resource":"payments://merchants/*"},"action":"deny"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn updates_of_unreadable_resources_are_dropped_and_the_acknowledgement_narrowed() {
        let policy = policy();
        let claims = Map::new();
        let ctx = CallContext::new(&claims, "/mcp", "mcp");
        let ack = r#"data: {"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":{"resourceSubscriptions":["payments://payments/pay_1","payments://merchants/m_1"]}}}"#;
        let ok = r#"data: {"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"payments://payments/pay_1"}}"#;
        let hidden = r#"data: {"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"payments://merchants/m_1"}}"#;
        let stream = format!("{ack}\n\n: keep-alive\n\n{hidden}\n\n{ok}\n\n");
        let mut filter = ListenFilter::default();
        let mut out = Vec::new();
        // Byte by byte: events are judged whole, never by halves.
        for byte in stream.as_bytes() {
            out.extend(filter.push(&[*byte], &policy, &ctx).unwrap());
        }
        out.extend(filter.finish(&policy, &ctx));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("merchants/m_1"), "{text}");
        assert!(
            text.contains(r#""resourceSubscriptions":["payments://payments/pay_1"]"#),
            "{text}"
        );
        assert!(text.contains(": keep-alive\n\n"), "{text}");
        assert!(text.ends_with(&format!("{ok}\n\n")), "{text}");
        assert_eq!(filter.dropped, 1);
    }

    #[test]
    fn an_event_that_never_ends_stops_the_stream() {
        let policy = policy();
        let claims = Map::new();
        let ctx = CallContext::new(&claims, "/mcp", "mcp");
        let mut filter = ListenFilter::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(filter.push(&big, &policy, &ctx), Err(EventTooLarge));
    }
}
