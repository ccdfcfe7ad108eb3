//! Who is reading or administering the audit log, as recorded in the control plane's own
//! records.
//!
//! The CLI sends the OS user, the `--operator` name and the token of `TOLLGATE_TOKEN`. Over gRPC
//! the control plane's access layer has verified that token before the call reaches a service
//! (`crate::access`): records then carry the verified `sub` and groups with `"verified": true`.
//! Read directly from the store (no control plane running), only the claims are known, the
//! token's `sub` read without checking its signature, and records say `"verified": false`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Map, Value};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Request;

const NAME: &str = "tollgate-operator-bin";
const OS_USER: &str = "tollgate-os-user-bin";
const PURPOSE: &str = "tollgate-purpose";
const FILTER: &str = "tollgate-filter-bin";

/// The operator behind a call, as claimed by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operator {
    /// `--operator` / `TOLLGATE_OPERATOR`.
    pub name: Option<String>,
    /// The OS account that ran the command.
    pub os_user: Option<String>,
    /// `sub` of the bearer token, NOT verified.
    pub token_sub: Option<String>,
    /// Where the call came from (gRPC peer address), filled in by the server.
    pub peer: Option<String>,
    /// What the caller said it reads for (verify, export, query, sessions.replay, ...).
    pub purpose: Option<String>,
    /// The caller's filter (command-line selection), as JSON.
    pub filter: Option<Value>,
    /// `sub` and groups of the token, when the control plane verified it.
    pub verified: Option<(String, Vec<String>)>,
}

impl Operator {
    /// The operator running this process: `name` from the command line, the OS user, and the
    /// `sub` of `token` (unverified).
    pub fn local(name: Option<String>, token: Option<&str>) -> Self {
        Self {
            name,
            os_user: os_user(),
            token_sub: token.and_then(unverified_sub),
            ..Self::default()
        }
    }

    /// The control plane itself, acting on its own configuration (retention): `purpose` says
    /// what for; no person is behind it.
    pub fn control_plane(purpose: &str) -> Self {
        Self {
            name: Some("tollgate control plane".into()),
            os_user: os_user(),
            purpose: Some(purpose.to_string()),
            ..Self::default()
        }
    }

    pub fn with_purpose(mut self, purpose: &str, filter: Option<Value>) -> Self {
        self.purpose = Some(purpose.to_string());
        self.filter = filter;
        self
    }

    /// The `operator` object of a record.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (key, value) in [
            ("name", &self.name),
            ("osUser", &self.os_user),
            ("tokenSub", &self.token_sub),
            ("peer", &self.peer),
        ] {
            if let Some(value) = value {
                out.insert(key.into(), value.clone().into());
            }
        }
        match &self.verified {
            Some((sub, groups)) => {
                out.insert("sub".into(), sub.clone().into());
                out.insert("groups".into(), groups.clone().into());
                out.insert("verified".into(), true.into());
            }
            None => {
                out.insert("verified".into(), false.into());
            }
        }
        Value::Object(out)
    }

    /// A `controlPlane.auditRead` record of this operator's read.
    pub fn read_event(&self, via: &str, extra: Map<String, Value>) -> Map<String, Value> {
        let mut event = Map::new();
        event.insert("event".into(), "controlPlane.auditRead".into());
        event.insert(
            "purpose".into(),
            self.purpose
                .clone()
                .unwrap_or_else(|| "unspecified".into())
                .into(),
        );
        event.insert("operator".into(), self.to_json());
        event.insert("via".into(), via.into());
        if let Some(filter) = &self.filter {
            event.insert("filter".into(), filter.clone());
        }
        event.extend(extra);
        event
    }

    /// Adds this operator to an outgoing request's metadata.
    pub fn attach(&self, metadata: &mut MetadataMap, token: Option<&str>) {
        let mut put_bin = |key: &'static str, value: &Option<String>| {
            if let Some(value) = value {
                metadata.insert_bin(key, MetadataValue::from_bytes(value.as_bytes()));
            }
        };
        put_bin(NAME, &self.name);
        put_bin(OS_USER, &self.os_user);
        put_bin(FILTER, &self.filter.as_ref().map(Value::to_string));
        if let Some(purpose) = self.purpose.as_deref().and_then(|p| p.parse().ok()) {
            metadata.insert(PURPOSE, purpose);
        }
        if let Some(token) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
            metadata.insert("authorization", token);
        }
    }

    /// The operator a request claims (the server side of [`Operator::attach`]).
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        let bin = |key: &str| {
            metadata
                .get_bin(key)
                .and_then(|v| v.to_bytes().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        Self {
            name: bin(NAME),
            os_user: bin(OS_USER),
            token_sub: token.and_then(unverified_sub),
            peer: None,
            purpose: metadata
                .get(PURPOSE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            filter: bin(FILTER).and_then(|f| serde_json::from_str(&f).ok()),
            verified: None,
        }
    }
}

/// The operator a request claims, and where it came from.
pub fn of_request<T>(request: &Request<T>) -> Operator {
    let mut operator = Operator::from_metadata(request.metadata());
    operator.peer = request.remote_addr().map(|a| a.to_string());
    operator.verified = request
        .extensions()
        .get::<crate::approvals::auth::VerifiedOperator>()
        .map(|o| (o.sub.clone(), o.groups.clone()));
    operator
}

/// The `sub` claim of a JWT, read WITHOUT verifying the signature.
pub fn unverified_sub(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(payload))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_string)
}

/// The OS account running this process.
fn os_user() -> Option<String> {
    for var in ["USER", "LOGNAME"] {
        if let Ok(user) = std::env::var(var) {
            if !user.is_empty() {
                return Some(user);
            }
        }
    }
    // No environment: the numeric uid from procfs.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    Some(format!("uid {}", uid.split_whitespace().next()?))
}

/// `{"operator": ...}` for records written without a request (server start, stop).
pub fn process_json() -> Value {
    json!({"osUser": os_user(), "pid": std::process::id()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_the_token_sub_is_read_unverified() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice@example.com","exp":1}"#);
        let token = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        let operator = Operator::local(Some("Ålice".into()), Some(&token))
            .with_purpose("verify", Some(json!({"sub": "bob"})));
        assert_eq!(operator.token_sub.as_deref(), Some("alice@example.com"));
        let mut metadata = MetadataMap::new();
        operator.attach(&mut metadata, Some(&token));
        let received = Operator::from_metadata(&metadata);
        assert_eq!(received, operator);
        let json = received.to_json();
        assert_eq!(json["verified"], false);
        assert_eq!(json["name"], "Ålice");
        let event = received.read_event("grpc", Map::new());
        assert_eq!(event["event"], "controlPlane.auditRead");
        assert_eq!(event["purpose"], "verify");
        assert_eq!(event["filter"]["sub"], "bob");
        assert_eq!(unverified_sub("not a token"), None);
    }
}
