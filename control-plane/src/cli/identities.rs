//! `tollgate identities [--inactive 90d]`: who has used the gateway, when first and last, how
//! often, through which clients and workloads: what an access review (PCI DSS 8.2.6) asks for.
//!
//! Read from the `mcp.request` records of the audit chain (`sub`, `identity`, `time`); the read
//! itself is recorded (`controlPlane.auditRead`, purpose `identities`). An identity is an issuer
//! and a subject: the same `sub` from two issuers is two people. Whether a revocation names it
//! comes from the control plane's revocation table.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use super::records::{self, OperatorArgs, Source, SourceArgs};
use crate::clock::{self, Micros};
use crate::operator::Operator;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Only identities not seen for this long (e.g. 90d, 12w, 36h).
    #[arg(long, value_name = "AGE")]
    inactive: Option<String>,
    /// One JSON object per identity per line.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
pub struct Seen {
    first: Option<Micros>,
    last: Option<Micros>,
    calls: u64,
    clients: BTreeSet<String>,
    workloads: BTreeSet<String>,
    acting_for: BTreeSet<String>,
}

fn text<'a>(value: Option<&'a Value>, name: &str) -> Option<&'a str> {
    value
        .and_then(|v| v.get(name))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Seen {
    fn add(&mut self, record: &Value) {
        self.calls += 1;
        let time = text(Some(record), "time")
            .or_else(|| text(Some(record), "receivedAt"))
            .and_then(clock::parse);
        if let Some(time) = time {
            self.first = Some(self.first.map_or(time, |f| f.min(time)));
            self.last = Some(self.last.map_or(time, |l| l.max(time)));
        }
        let identity = record.get("identity");
        if let Some(client) = text(identity, "client_id").or_else(|| text(identity, "azp")) {
            self.clients.insert(client.to_string());
        }
        if let Some(repository) = text(identity, "repository") {
            let mut workload = repository.to_string();
            if let Some(workflow) = text(identity, "workflow") {
                workload.push_str(&format!(" ({workflow})"));
            }
            self.workloads.insert(workload);
        }
        if let Some(actor) = text(identity, "actor") {
            self.acting_for.insert(actor.to_string());
        }
        let mut act = identity.and_then(|i| i.get("act"));
        while let Some(a) = act {
            if let Some(sub) = text(Some(a), "sub") {
                self.acting_for.insert(sub.to_string());
            }
            act = a.get("act");
        }
    }
}

/// The subjects an active revocation names by `sub`, each with its revocation id; `None` when the
/// revocation table could not be read (a store opened read-only).
fn revoked_subjects(state: Option<&Value>) -> Option<BTreeMap<String, String>> {
    let revocations = state?.get("revocations")?.as_object()?;
    Some(
        revocations
            .iter()
            .filter(|(_, entry)| entry.get("liftedAt").is_none_or(Value::is_null))
            .filter(|(_, entry)| entry.get("claim").and_then(Value::as_str) == Some("sub"))
            .filter_map(|(id, entry)| Some((entry.get("value")?.as_str()?.to_string(), id.clone())))
            .collect(),
    )
}

fn stamp(micros: Option<Micros>) -> String {
    micros.map_or_else(|| "-".to_string(), clock::format)
}

fn joined(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "-".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// An inactivity age as `--inactive` and the console take it (90d, 12w, 36h).
pub fn parse_inactive(age: &str) -> Result<Duration, String> {
    humantime::parse_duration(age)
        .map_err(|e| format!("{age:?} is not an age (90d, 12w, 36h): {e}"))
}

/// Everyone who called the gateway, by issuer and subject, and the subjects a revocation names.
pub struct Identities {
    pub seen: BTreeMap<(String, String), Seen>,
    /// Revoked `sub` -> revocation id; `None` when the revocation table could not be read.
    pub revoked: Option<BTreeMap<String, String>>,
}

impl Identities {
    /// Reads every `mcp.request` record of `source` (the read is recorded as `operator`'s),
    /// then the revocation table.
    pub async fn read(source: &mut Source, operator: &Operator) -> anyhow::Result<Self> {
        // Issuer, then subject.
        let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
        source
            .for_each(operator, |stored| {
                let record = records::parse(&stored)?;
                if record.get("event").and_then(Value::as_str) != Some("mcp.request") {
                    return Ok(true);
                }
                let sub = text(Some(&record), "sub")
                    .or_else(|| text(record.get("identity"), "sub"))
                    .unwrap_or("(anonymous)")
                    .to_string();
                let issuer = text(record.get("identity"), "iss")
                    .unwrap_or("-")
                    .to_string();
                seen.entry((issuer, sub)).or_default().add(&record);
                Ok(true)
            })
            .await?;
        let revoked = revoked_subjects(source.state().await?.as_ref());
        Ok(Self { seen, revoked })
    }

    /// The identities to show, the longest unseen first (what a reviewer acts on); with
    /// `inactive`, only those not seen for that long.
    pub fn rows(&self, inactive: Option<Duration>, now: Micros) -> Vec<(&(String, String), &Seen)> {
        let cutoff =
            inactive.map(|d| now.saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)));
        let mut shown: Vec<(&(String, String), &Seen)> = self
            .seen
            .iter()
            .filter(|(_, seen)| match cutoff {
                Some(cutoff) => seen.last.is_none_or(|last| last < cutoff),
                None => true,
            })
            .collect();
        shown.sort_by(|a, b| (a.1.last, a.0).cmp(&(b.1.last, b.0)));
        shown
    }

    /// One identity as `identities --json` prints it.
    pub fn row_json(&self, issuer: &str, sub: &str, seen: &Seen, now: Micros) -> Value {
        let days = seen
            .last
            .map(|last| now.saturating_sub(last) / 86_400_000_000);
        json!({
            "sub": sub,
            "issuer": issuer,
            "revoked": self.revoked.as_ref().map(|map| map.get(sub).cloned()),
            "firstSeen": seen.first.map(clock::format),
            "lastSeen": seen.last.map(clock::format),
            "daysSinceLastSeen": days,
            "calls": seen.calls,
            "clients": seen.clients,
            "workloads": seen.workloads,
            "actingFor": seen.acting_for,
        })
    }
}

pub async fn run(home: &Path, operator: &OperatorArgs, args: &Args) -> anyhow::Result<ExitCode> {
    let inactive: Option<Duration> = args
        .inactive
        .as_deref()
        .map(|age| parse_inactive(age).map_err(|e| anyhow::anyhow!("--inactive {e}")))
        .transpose()?;
    let filter = args.inactive.as_ref().map(|age| json!({"inactive": age}));
    let operator = operator.operator().with_purpose("identities", filter);
    let mut source = Source::open(home, &args.source, &operator).await?;
    let read = Identities::read(&mut source, &operator).await;
    source.close().await?;
    let identities = read?;
    let now = clock::now_micros();
    let shown = identities.rows(inactive, now);
    let revoked = &identities.revoked;
    let revocation = |sub: &str| -> String {
        match revoked {
            Some(map) => map.get(sub).cloned().unwrap_or_else(|| "-".into()),
            None => "?".into(),
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        for ((issuer, sub), seen) in &shown {
            writeln!(out, "{}", identities.row_json(issuer, sub, seen, now))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if shown.is_empty() {
        writeln!(
            out,
            "{}",
            if inactive.is_some() {
                "no inactive identities"
            } else {
                "no identities have called the gateway"
            }
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<32} {:<28} {:<14} {:<27} {:<27} {:>7}  {:<24} {:<32} ACTING FOR",
        "SUB", "ISSUER", "REVOKED", "FIRST SEEN", "LAST SEEN", "CALLS", "CLIENTS", "WORKLOADS"
    )?;
    for ((issuer, sub), seen) in &shown {
        writeln!(
            out,
            "{:<32} {:<28} {:<14} {:<27} {:<27} {:>7}  {:<24} {:<32} {}",
            sub,
            issuer,
            revocation(sub),
            stamp(seen.first),
            stamp(seen.last),
            seen.calls,
            joined(&seen.clients),
            joined(&seen.workloads),
            joined(&seen.acting_for)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
