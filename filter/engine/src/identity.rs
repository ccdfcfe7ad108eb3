//! The verified caller, from the claims that Envoy's `jwt_authn` verified.
//!
//! jwt_authn writes the verified payload to dynamic metadata (which a client cannot set) and
//! forwards it base64url-encoded in a header (which a client could forge when no token was
//! verified). The filter trusts the header only when its `sub` equals the one in metadata.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::policy::glob::Glob;

/// Claims copied into every audit record when present.
const STANDARD_CLAIMS: [&str; 7] = ["sub", "email", "groups", "iss", "jti", "client_id", "act"];

/// How deep an `act` chain is followed: deeper nesting in a hostile token is ignored.
const MAX_ACT_DEPTH: usize = 32;

/// The subjects of an RFC 8693 `act` claim: the current actor, then each prior actor of its
/// nested `act`s (every party the token acts through).
pub fn act_subjects(act: Option<&Value>) -> impl Iterator<Item = &str> {
    std::iter::successors(act, |claim| claim.get("act"))
        .take(MAX_ACT_DEPTH)
        .filter_map(|claim| claim.get("sub").and_then(Value::as_str))
}

/// A caller whose token jwt_authn verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub sub: String,
    /// The whole verified payload.
    pub claims: Map<String, Value>,
    /// For a service account: the person answerable for its calls (see [`ServiceAccounts`]).
    pub accountable: Option<Accountable>,
}

/// The person answerable for a service account's call, and how the gateway knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accountable {
    pub sub: String,
    /// The claim that named them (`act.sub`, `actor`, ...), or `owner` for the control plane's
    /// service account -> owner mapping.
    pub via: String,
}

/// Which callers are service accounts, and who answers for them (the `serviceAccounts` field
/// of the plugin configuration). A caller is a service account when its `sub` matches one of
/// `subs` or one of its claims matches `claims`. Its accountable person is the first of
/// `accountableClaims` the token carries, else the owner the control plane maps it to.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccounts {
    /// `sub` globs naming service accounts (e.g. `svc-*`, `repo:acme/*`).
    #[serde(default)]
    pub subs: Vec<String>,
    /// Claim name -> value glob: a token carrying a matching claim is a service account (e.g.
    /// `{"repository": "*"}` for every CI workload token).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Claims naming the person behind a service account's token, tried in order; a dotted
    /// name reads inside an object (`act.sub`: the RFC 8693 token-exchange actor).
    #[serde(default = "default_accountable_claims")]
    pub accountable_claims: Vec<String>,
    /// Refuse (403, audited) a service account's call that names no accountable person, by
    /// claim or by the control plane's owner mapping. On by default: a shared account nobody
    /// answers for is what an offboarded contractor's CI job hides behind.
    #[serde(default = "default_true")]
    pub require_accountable: bool,
    #[serde(skip)]
    compiled: Option<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    subs: Vec<Glob>,
    claims: Vec<(String, Glob)>,
}

fn default_accountable_claims() -> Vec<String> {
    vec!["act.sub".to_owned(), "actor".to_owned()]
}
fn default_true() -> bool {
    true
}

impl Default for ServiceAccounts {
    fn default() -> Self {
        ServiceAccounts {
            subs: Vec::new(),
            claims: BTreeMap::new(),
            accountable_claims: default_accountable_claims(),
            require_accountable: true,
            compiled: None,
        }
    }
}

impl ServiceAccounts {
    /// Compiles the globs; called once when the configuration is loaded.
    pub fn compile(&mut self) -> Result<(), String> {
        let subs = self
            .subs
            .iter()
            .map(|p| Glob::new(p).map_err(|e| format!("serviceAccounts.subs {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let claims = self
            .claims
            .iter()
            .map(|(claim, p)| {
                Glob::new(p)
                    .map(|g| (claim.clone(), g))
                    .map_err(|e| format!("serviceAccounts.claims.{claim} {p:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        if self.accountable_claims.iter().any(|c| c.trim().is_empty()) {
            return Err("serviceAccounts.accountableClaims: empty claim name".to_owned());
        }
        self.compiled = Some(Compiled { subs, claims });
        Ok(())
    }

    /// Whether `identity` is a service account.
    pub fn covers(&self, identity: &Identity) -> bool {
        let Some(compiled) = &self.compiled else {
            return false;
        };
        compiled.subs.iter().any(|g| g.matches(&identity.sub))
            || compiled.claims.iter().any(|(claim, glob)| {
                claim_texts(identity.claims.get(claim))
                    .iter()
                    .any(|v| glob.matches(v))
            })
    }

    /// The person answerable for a service account's call: a claim of its token first, then
    /// the control plane's `owners` mapping (service account `sub` -> person).
    pub fn accountable(
        &self,
        identity: &Identity,
        owners: &BTreeMap<String, String>,
    ) -> Option<Accountable> {
        for path in &self.accountable_claims {
            let mut value = Some(&Value::Object(identity.claims.clone()));
            let mut found = None;
            for part in path.split('.') {
                found = value.and_then(|v| v.get(part)).cloned();
                value = found.as_ref();
                if value.is_none() {
                    break;
                }
            }
            if let Some(Value::String(sub)) = found {
                if !sub.is_empty() && sub != identity.sub {
                    return Some(Accountable {
                        sub,
                        via: path.clone(),
                    });
                }
            }
        }
        owners.get(&identity.sub).map(|owner| Accountable {
            sub: owner.clone(),
            via: "owner".to_owned(),
        })
    }
}

/// A claim's values as text: a string, number or boolean, or each of those in an array.
fn claim_texts(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(Value::Bool(b)) => vec![b.to_string()],
        Some(Value::Array(items)) => items.iter().flat_map(|i| claim_texts(Some(i))).collect(),
        _ => Vec::new(),
    }
}

/// Why there is no verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// No bearer token was sent.
    Missing,
    /// A token was sent but jwt_authn did not verify it; why, when jwt_authn said
    /// (`failed_status_in_metadata`).
    NotVerified(Option<TokenProblem>),
    /// The forwarded payload is not the one jwt_authn verified: a forged header.
    Mismatch,
}

impl IdentityError {
    pub fn reason(&self) -> String {
        match self {
            IdentityError::Missing => "no bearer token".into(),
            IdentityError::NotVerified(None) => "token not verified".into(),
            IdentityError::NotVerified(Some(problem)) => {
                format!("token not verified: {}", problem.describe())
            }
            IdentityError::Mismatch => "forwarded claims do not match the verified token".into(),
        }
    }
}

/// Why jwt_authn refused a token, from the message it leaves in dynamic metadata (its
/// `failed_status_in_metadata`): what a caller needs to fix it, and nothing of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Expired,
    NotYetValid,
    Audience,
    Issuer,
    Signature,
    Malformed,
    Other,
}

impl TokenProblem {
    /// The problem jwt_authn's status message names (its wording, by the words that differ).
    pub fn from_jwt_authn_message(message: &str) -> Self {
        let message = message.to_ascii_lowercase();
        let has = |word: &str| message.contains(word);
        if has("expired") {
            Self::Expired
        } else if has("not yet valid") {
            Self::NotYetValid
        } else if has("audience") {
            Self::Audience
        } else if has("issuer") {
            Self::Issuer
        } else if has("verification fail") || has("kid") || has("alg") {
            Self::Signature
        } else if has("form of header") || has("base64") || has("parse") || has("missing") {
            Self::Malformed
        } else {
            Self::Other
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not valid yet (nbf)",
            Self::Audience => "issued for another audience",
            Self::Issuer => "from an issuer this gateway does not trust",
            Self::Signature => "signature does not verify with the issuer's keys",
            Self::Malformed => "malformed",
            Self::Other => "refused by the token check",
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
        Self::from_jwt_authn_or_why(verified_sub, payload_header, has_token, None)
    }

    /// [`Self::from_jwt_authn`], with jwt_authn's failure message when it left one.
    pub fn from_jwt_authn_or_why(
        verified_sub: Option<&str>,
        payload_header: Option<&str>,
        has_token: bool,
        failure: Option<&str>,
    ) -> Result<Identity, IdentityError> {
        let Some(verified_sub) = verified_sub.filter(|s| !s.is_empty()) else {
            return Err(if has_token {
                IdentityError::NotVerified(failure.map(TokenProblem::from_jwt_authn_message))
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
            accountable: None,
        })
    }

    /// Who a session is bound to: the issuer and subject of the verified token (the same `sub`
    /// from two issuers is two identities).
    pub fn session_subject(&self) -> String {
        let issuer = self.claims.get("iss").and_then(Value::as_str).unwrap_or("");
        Value::from(vec![issuer, self.sub.as_str()]).to_string()
    }

    /// The identity as it goes into audit records: the standard claims plus `extra` ones, each
    /// number I-JSON cannot carry as its decimal text ([`crate::ijson::exact_numbers`]).
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
        if let Some(accountable) = &self.accountable {
            out.insert(
                "accountable".to_owned(),
                serde_json::json!({"sub": accountable.sub, "via": accountable.via}),
            );
        }
        let mut out = Value::Object(out);
        // A claim the IdP signed as a number beyond 2^53 is recorded as its digits: the control
        // plane would refuse the record, and with it every call of this caller.
        crate::ijson::exact_numbers(&mut out);
        out
    }

    /// Whether a revocation of `claim` = `value` stops this caller. A revoked `sub` also stops
    /// every token acting for it (`act.sub` at any depth, a CI token's `actor`) and the service
    /// accounts it answers for; `client_id` also matches `azp`, which some issuers use instead.
    pub fn is_named_by(&self, claim: &str, value: &str) -> bool {
        let claim_is = |name: &str| claim_equals(self.claims.get(name), value);
        match claim {
            "sub" => {
                self.sub == value
                    || self.accountable.as_ref().is_some_and(|a| a.sub == value)
                    || act_subjects(self.claims.get("act")).any(|sub| sub == value)
                    || claim_is("actor")
            }
            "client_id" => claim_is("client_id") || claim_is("azp"),
            other => claim_is(other),
        }
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

/// A claim equals `value` when it is that string (or number), or an array holding it.
fn claim_equals(claim: Option<&Value>, value: &str) -> bool {
    match claim {
        Some(Value::String(s)) => s == value,
        Some(Value::Number(n)) => n.to_string() == value,
        Some(Value::Bool(b)) => b.to_string() == value,
        Some(Value::Array(items)) => items.iter().any(|item| claim_equals(Some(item), value)),
        _ => false,
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
    fn claims_beyond_2_pow_53_are_recorded_as_their_digits() {
        let h = header(
            r#"{"sub":"alice","client_id":12345678901234567890,"act":{"sub":"bot","n":1e300},"jti":7}"#,
        );
        let id = Identity::from_jwt_authn(Some("alice"), Some(&h), true).unwrap();
        let audit = id.audit_json(&[]);
        assert_eq!(audit["client_id"], "12345678901234567890");
        assert_eq!(
            audit["act"],
            serde_json::json!({"sub": "bot", "n": "1e+300"})
        );
        assert_eq!(audit["jti"], 7);
        // The claims themselves are as verified (policy and revocations read them).
        assert_eq!(id.claims["client_id"], 12345678901234567890u64);
        assert!(id.is_named_by("client_id", "12345678901234567890"));
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
            Err(IdentityError::NotVerified(None))
        );
    }

    #[test]
    fn jwt_authn_failure_messages_name_what_to_fix() {
        for (message, problem) in [
            ("Jwt is expired", TokenProblem::Expired),
            ("Jwt not yet valid", TokenProblem::NotYetValid),
            ("Audiences in Jwt are not allowed", TokenProblem::Audience),
            ("Jwt issuer is not configured", TokenProblem::Issuer),
            ("Jwt verification fails", TokenProblem::Signature),
            (
                "Jwks doesn't have key to match kid or alg from Jwt",
                TokenProblem::Signature,
            ),
            (
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
                TokenProblem::Malformed,
            ),
            ("something new", TokenProblem::Other),
        ] {
            assert_eq!(
                TokenProblem::from_jwt_authn_message(message),
                problem,
                "{message}"
            );
        }
        let error =
            Identity::from_jwt_authn_or_why(None, None, true, Some("Jwt is expired")).unwrap_err();
        assert_eq!(error.reason(), "token not verified: expired");
        // Without a token there is nothing to explain, whatever the metadata says.
        assert_eq!(
            Identity::from_jwt_authn_or_why(None, None, false, Some("Jwt is expired")),
            Err(IdentityError::Missing)
        );
    }

    fn identity(claims: Value) -> Identity {
        let claims = claims.as_object().cloned().unwrap_or_default();
        Identity {
            sub: claims["sub"].as_str().unwrap_or_default().to_owned(),
            claims,
            accountable: None,
        }
    }

    fn service_accounts(json: &str) -> ServiceAccounts {
        let mut rules: ServiceAccounts = serde_json::from_str(json).unwrap();
        rules.compile().unwrap();
        rules
    }

    #[test]
    fn service_accounts_are_named_by_sub_or_by_claim() {
        let rules = service_accounts(r#"{"subs":["svc-*"],"claims":{"repository":"acme/*"}}"#);
        assert!(rules.covers(&identity(serde_json::json!({"sub":"svc-deploy"}))));
        assert!(rules.covers(&identity(
            serde_json::json!({"sub":"repo:acme/payments:ref:main","repository":"acme/payments"})
        )));
        assert!(!rules.covers(&identity(serde_json::json!({"sub":"alice@example.com"}))));
        assert!(!rules.covers(&identity(
            serde_json::json!({"sub":"x","repository":"other/payments"})
        )));
        assert!(!ServiceAccounts::default().covers(&identity(serde_json::json!({"sub":"svc-a"}))));
    }

    #[test]
    fn the_accountable_person_comes_from_act_then_actor_then_the_owner_mapping() {
        let rules = service_accounts(r#"{"subs":["svc-*"]}"#);
        let owners: BTreeMap<String, String> =
            [("svc-deploy".to_owned(), "dana@example.com".to_owned())].into();
        let exchanged = identity(
            serde_json::json!({"sub":"svc-deploy","act":{"sub":"erin@example.com"},"actor":"carol"}),
        );
        assert_eq!(
            rules.accountable(&exchanged, &owners),
            Some(Accountable {
                sub: "erin@example.com".into(),
                via: "act.sub".into()
            })
        );
        let ci = identity(serde_json::json!({"sub":"svc-deploy","actor":"carol"}));
        assert_eq!(rules.accountable(&ci, &owners).unwrap().via, "actor");
        let bare = identity(serde_json::json!({"sub":"svc-deploy"}));
        assert_eq!(
            rules.accountable(&bare, &owners),
            Some(Accountable {
                sub: "dana@example.com".into(),
                via: "owner".into()
            })
        );
        assert_eq!(rules.accountable(&bare, &BTreeMap::new()), None);
        // A token naming itself as its actor names nobody new.
        let selfish = identity(serde_json::json!({"sub":"svc-x","actor":"svc-x"}));
        assert_eq!(rules.accountable(&selfish, &BTreeMap::new()), None);
    }

    #[test]
    fn a_bad_service_account_glob_is_refused() {
        let mut rules: ServiceAccounts = serde_json::from_str(r#"{"subs":["svc-["]}"#).unwrap();
        assert!(rules.compile().unwrap_err().contains("svc-["));
    }

    #[test]
    fn the_record_names_the_accountable_person() {
        let mut id = identity(serde_json::json!({"sub":"svc-deploy"}));
        id.accountable = Some(Accountable {
            sub: "dana".into(),
            via: "owner".into(),
        });
        assert_eq!(
            id.audit_json(&[])["accountable"],
            serde_json::json!({"sub":"dana","via":"owner"})
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
