//! The verified caller, from the claims that Envoy's `jwt_authn` verified.
//!
//! jwt_authn writes the verified payload to dynamic metadata (which a client cannot set) and
//! forwards it base64url-encoded in a header (which a client could forge when no token was
//! verified). The filter trusts the header only when its `sub` equals the one in metadata.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{Map, Value};

/// Claims copied into every audit record when present.
const STANDARD_CLAIMS: [&str; 7] = ["sub", "email", "groups", "iss", "jti", "client_id", "act"];

/// A caller whose token jwt_authn verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub sub: String,
    /// The whole verified payload.
    pub claims: Map<String, Value>,
}

/// Why there is no verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// No bearer token was sent.
    Missing,
    /// A token was sent but jwt_authn did not verify it (bad signature, expired, wrong issuer
    /// or audience).
    NotVerified,
    /// The forwarded payload is not the one jwt_authn verified: a forged header.
    Mismatch,
}

impl IdentityError {
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Missing => "no bearer token",
            IdentityError::NotVerified => "token not verified",
            IdentityError::Mismatch => "forwarded claims do not match the verified token",
        }
    }
}

impl Identity {
    /// Builds the identity from jwt_authn's outputs: `verified_sub` from dynamic metadata,
    /// `payload_header` the forwarded payload, `has_token` whether an Authorization header was
    /// sent at all.
    pub fn from_jwt_authn(
        verified_sub: Option<&str>,
        payload_header: Option<&str>,
        has_token: bool,
    ) -> Result<Identity, IdentityError> {
        let Some(verified_sub) = verified_sub.filter(|s| !s.is_empty()) else {
            return Err(if has_token {
                IdentityError::NotVerified
            } else {
                IdentityError::Missing
            });
        };
        let claims = payload_header.and_then(decode_payload).unwrap_or_default();
        if claims.get("sub").and_then(Value::as_str) != Some(verified_sub) {
            return Err(IdentityError::Mismatch);
        }
        Ok(Identity {
            sub: verified_sub.to_owned(),
            claims,
        })
    }

    /// The identity as it goes into audit records: the standard claims plus `extra` ones.
    pub fn audit_json(&self, extra: &[String]) -> Value {
        let mut out = Map::new();
        for key in STANDARD_CLAIMS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            if let Some(v) = self.claims.get(key) {
                out.insert(key.to_owned(), v.clone());
            }
        }
        out.insert("sub".to_owned(), self.sub.clone().into());
        Value::Object(out)
    }

    /// Group memberships from the `groups` claim.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.claims
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
}

fn decode_payload(header: &str) -> Option<Map<String, Value>> {
    let trimmed = header.trim();
    let bytes = URL_SAFE_NO_PAD
        .decode(trimmed.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(trimmed))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn verified_identity_carries_claims() {
        let h = header(r#"{"sub":"alice","groups":["payments-admins"],"email":"a@x","aud":"t"}"#);
        let id = Identity::from_jwt_authn(Some("alice"), Some(&h), true).unwrap();
        assert_eq!(id.groups().collect::<Vec<_>>(), ["payments-admins"]);
        let audit = id.audit_json(&[]);
        assert_eq!(audit["email"], "a@x");
        assert!(audit.get("aud").is_none());
    }

    #[test]
    fn no_metadata_means_no_identity_even_with_a_header() {
        let forged = header(r#"{"sub":"mallory"}"#);
        assert_eq!(
            Identity::from_jwt_authn(None, Some(&forged), false),
            Err(IdentityError::Missing)
        );
        assert_eq!(
            Identity::from_jwt_authn(None, None, true),
            Err(IdentityError::NotVerified)
        );
    }

    #[test]
    fn header_must_match_verified_sub() {
        let forged = header(r#"{"sub":"mallory"}"#);
        assert_eq!(
            Identity::from_jwt_authn(Some("alice"), Some(&forged), true),
            Err(IdentityError::Mismatch)
        );
    }
}
