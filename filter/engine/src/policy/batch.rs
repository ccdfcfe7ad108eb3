//! JSON-RPC batches: each message decided on its own, then one plan for the whole body.
//!
//! The default, [`BatchMode::WholeBatch`], refuses the whole batch when any message in it is
//! refused: nothing reaches the server, so no half of a batch runs without the other half, and
//! the gateway answers by itself without merging its errors into the server's answer (which may
//! be an SSE stream). [`BatchMode::PerMessage`] forwards the allowed messages and answers the
//! refused ones with their own errors. See `docs/policy.md`.

use serde_json::Value;

use super::{BatchMode, CallContext, Decision, Policy, Verdict};
use crate::jsonrpc::{self, Kind, Message};

/// The verdicts of a batch, in message order, and the mode that turns them into a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDecision {
    pub verdicts: Vec<Verdict>,
    pub mode: BatchMode,
}

/// What to do with a batch request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchPlan {
    /// Every message is allowed: forward the body unchanged.
    ForwardAll,
    /// Forward `body` (the allowed messages only, their bytes unchanged). Each of `errors` is a
    /// JSON-RPC error object for a refused request; add them to the server's answer (see
    /// [`merge_batch_response`]; for an SSE answer, one `data:` event each). If the server
    /// answers 202 with no body (the forwarded part held no request), answer 200 with `errors`
    /// as a JSON array instead.
    Forward {
        body: Vec<u8>,
        forwarded: Vec<usize>,
        errors: Vec<Vec<u8>>,
    },
    /// Forward nothing; answer with `status` and `body`: 200 and a JSON array with one error per
    /// request, or, when the batch holds no request (notifications and responses only), 403
    /// and a single error with `"id": null`.
    Refuse { status: u16, body: Vec<u8> },
}

impl Policy {
    /// Decides each message of a batch on its own.
    pub fn decide_batch(&self, messages: &[Message], ctx: &CallContext<'_>) -> BatchDecision {
        BatchDecision {
            verdicts: messages.iter().map(|m| self.decide(m, ctx)).collect(),
            mode: self.batch_mode,
        }
    }
}

impl BatchDecision {
    pub fn all_allowed(&self) -> bool {
        self.verdicts.iter().all(Verdict::is_allowed)
    }

    /// Turns the verdicts into a plan for the body `raw` (the batch as received; `messages` is
    /// its parse). Approvals count as refusals here: the glue changes a verdict to `Allow` when
    /// it holds a grant for that call before asking for the plan. A missing verdict refuses its
    /// message.
    pub fn plan(&self, messages: &[Message], raw: &[u8]) -> BatchPlan {
        let refused: Vec<usize> = (0..messages.len())
            .filter(|&i| !self.verdicts.get(i).is_some_and(Verdict::is_allowed))
            .collect();
        let Some(&first_refused) = refused.first() else {
            return BatchPlan::ForwardAll;
        };
        match self.mode {
            BatchMode::WholeBatch => {
                let errors: Vec<Vec<u8>> = messages
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.kind == Kind::Request)
                    .map(|(i, m)| {
                        let cause = if refused.contains(&i) {
                            i
                        } else {
                            first_refused
                        };
                        refusal(self.verdicts.get(cause), m.id.as_ref(), i, cause)
                    })
                    .collect();
                refuse_with(errors, || {
                    refusal(
                        self.verdicts.get(first_refused),
                        None,
                        first_refused,
                        first_refused,
                    )
                })
            }
            BatchMode::PerMessage => {
                let errors: Vec<Vec<u8>> = refused
                    .iter()
                    .filter_map(|&i| messages.get(i).map(|m| (i, m)))
                    .filter(|(_, m)| m.kind == Kind::Request)
                    .map(|(i, m)| refusal(self.verdicts.get(i), m.id.as_ref(), i, i))
                    .collect();
                let forwarded: Vec<usize> = (0..messages.len())
                    .filter(|i| !refused.contains(i))
                    .collect();
                if forwarded.is_empty() {
                    return refuse_with(errors, || {
                        refusal(
                            self.verdicts.get(first_refused),
                            None,
                            first_refused,
                            first_refused,
                        )
                    });
                }
                let items = match split_array(raw) {
                    Some(items) if items.len() == messages.len() => items,
                    // The body does not look like what was parsed: never forward a guess.
                    _ => {
                        return BatchPlan::Refuse {
                            status: 400,
                            body: jsonrpc::error_response(
                                None,
                                jsonrpc::INVALID_REQUEST,
                                "invalid request: the batch could not be rewritten",
                                None,
                            ),
                        }
                    }
                };
                let mut body = Vec::with_capacity(raw.len());
                body.push(b'[');
                for (n, &i) in forwarded.iter().enumerate() {
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(items.get(i).copied().unwrap_or(b"null"));
                }
                body.push(b']');
                BatchPlan::Forward {
                    body,
                    forwarded,
                    errors,
                }
            }
        }
    }
}

fn refuse_with(errors: Vec<Vec<u8>>, no_request: impl FnOnce() -> Vec<u8>) -> BatchPlan {
    if errors.is_empty() {
        return BatchPlan::Refuse {
            status: 403,
            body: no_request(),
        };
    }
    BatchPlan::Refuse {
        status: 200,
        body: join_array(&errors),
    }
}

/// The error for message `index`, refused because of message `cause` (itself, or the first
/// refused message of a batch refused whole).
fn refusal(
    cause_verdict: Option<&Verdict>,
    id: Option<&Value>,
    index: usize,
    cause: usize,
) -> Vec<u8> {
    let fallback;
    let verdict = match cause_verdict {
        Some(v) => v,
        None => {
            fallback = Verdict {
                action: Decision::Deny {
                    reason: "no decision for this message".to_owned(),
                },
                rule: None,
                reason: Some("no decision for this message".to_owned()),
            };
            &fallback
        }
    };
    let mut data = verdict.error_data();
    if let Value::Object(map) = &mut data {
        map.insert("batchIndex".to_owned(), index.into());
        if cause != index {
            map.insert("refusedBecauseOf".to_owned(), cause.into());
        }
    }
    let message = if cause == index {
        verdict.error_message()
    } else {
        format!(
            "batch refused because message {cause} was refused: {}",
            verdict.error_message()
        )
    };
    jsonrpc::error_response(id, jsonrpc::GATEWAY_ERROR, &message, Some(data))
}

fn join_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out
}

/// Adds the gateway's errors to the server's answer to a forwarded part of a batch: appended to
/// a JSON array, or to a single object (making it an array); an empty answer (202) becomes the
/// array of errors. An answer that is not JSON is replaced by the errors alone.
pub fn merge_batch_response(upstream: &[u8], errors: &[Vec<u8>]) -> Vec<u8> {
    if errors.is_empty() {
        return upstream.to_vec();
    }
    let trimmed = upstream.trim_ascii();
    if trimmed.is_empty() {
        return join_array(errors);
    }
    match serde_json::from_slice::<Value>(trimmed) {
        Ok(Value::Array(_)) => match split_array(trimmed) {
            Some(items) => {
                let mut all: Vec<Vec<u8>> = items.into_iter().map(<[u8]>::to_vec).collect();
                all.extend(errors.iter().cloned());
                join_array(&all)
            }
            None => join_array(errors),
        },
        Ok(Value::Object(_)) => {
            let mut all = vec![trimmed.to_vec()];
            all.extend(errors.iter().cloned());
            join_array(&all)
        }
        _ => join_array(errors),
    }
}

/// The bytes of each element of a top-level JSON array, unchanged (re-serializing would round
/// large numbers and reorder nothing useful). `None` if `raw` is not an array.
fn split_array(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let raw = raw.trim_ascii();
    let inner = raw.strip_prefix(b"[")?.strip_suffix(b"]")?;
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in inner.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                items.push(inner.get(start..i)?.trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return None;
    }
    let last = inner.get(start..)?.trim_ascii();
    if !last.is_empty() {
        items.push(last);
    } else if !items.is_empty() {
        return None; // trailing comma
    }
    if items.iter().any(|i| i.is_empty()) {
        return None;
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_arrays_keeping_bytes() {
        let raw = br#" [ {"a":"x,]\"}"} , 123456789012345678901234567890, [1,[2]] ] "#;
        let items = split_array(raw).unwrap();
        assert_eq!(
            items,
            vec![
                &br#"{"a":"x,]\"}"}"#[..],
                b"123456789012345678901234567890",
                b"[1,[2]]"
            ]
        );
        assert_eq!(split_array(b"[]").unwrap(), Vec::<&[u8]>::new());
        for bad in [&b"{}"[..], b"[1,]", b"[,1]", b"[1,,2]", b"[\"x]", b"[1]]"] {
            assert!(
                split_array(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn merges_errors_into_answers() {
        let errors = vec![br#"{"e":1}"#.to_vec()];
        assert_eq!(merge_batch_response(b"", &errors), br#"[{"e":1}]"#);
        assert_eq!(
            merge_batch_response(br#"[{"r":1}]"#, &errors),
            br#"[{"r":1},{"e":1}]"#
        );
        assert_eq!(
            merge_batch_response(br#"{"r":1}"#, &errors),
            br#"[{"r":1},{"e":1}]"#
        );
        assert_eq!(merge_batch_response(b"oops", &errors), br#"[{"e":1}]"#);
        assert_eq!(merge_batch_response(b"[1]", &[]), b"[1]");
    }
}
