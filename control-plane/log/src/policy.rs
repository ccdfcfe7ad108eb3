//! Witness policies (C2SP `tlog-policy`, the format Sigsum uses): which logs a verifier trusts,
//! which witnesses, and how many witness cosignatures make a checkpoint count.
//!
//! ```text
//! # comment
//! log <vkey> [<url>]
//! witness <name> <vkey> [<url>]
//! group <name> <k|all|any> <name>...
//! quorum <name|none>
//! ```
//!
//! Items are separated by spaces or tabs. A group or the quorum may only name witnesses and
//! groups defined on earlier lines (so there are no cycles), each at most once; witnesses and
//! groups share one namespace, in which `none` is reserved. There is exactly one quorum line. A
//! log's key name is its checkpoints' origin. The URLs mean what the application makes of them:
//! the control plane sends its checkpoints to the witness URLs (tlog-witness submission
//! prefixes); a verifier ignores them.

use std::fmt::Write as _;

use crate::note::{self, Checkpoint, NoteError, NoteVerifier};
use crate::witness::{CosignatureError, CosignatureVerifier};

/// A log the policy trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLog {
    pub key: NoteVerifier,
    pub url: Option<String>,
}

/// A witness the policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWitness {
    /// Its name in the policy (not necessarily its key's name).
    pub name: String,
    pub key: CosignatureVerifier,
    /// Its tlog-witness submission prefix, if the policy gives one.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Witness(usize),
    /// Index into `groups`; only ever an earlier group than the one naming it.
    Group(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    threshold: usize,
    members: Vec<Member>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    logs: Vec<PolicyLog>,
    witnesses: Vec<PolicyWitness>,
    groups: Vec<Group>,
    /// `None`: `quorum none`.
    quorum: Option<Member>,
}

/// What a checkpoint that satisfies the policy was found to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Satisfied {
    /// The policy's log key that signed it.
    pub log: NoteVerifier,
    pub checkpoint: Checkpoint,
    /// Policy names of the witnesses whose cosignatures verified, in policy order.
    pub witnesses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("the policy has no quorum line")]
    NoQuorum,
    #[error("not signed by a log of the policy: {0}")]
    Log(NoteError),
    #[error(
        "the checkpoint's origin {origin:?} is not the name of the log key that signed it ({key})"
    )]
    Origin { origin: String, key: String },
    #[error(transparent)]
    Checkpoint(NoteError),
    #[error("witness {witness}: {error}")]
    Cosignature {
        witness: String,
        error: CosignatureError,
    },
    #[error(
        "quorum not met: {have} of the {need} cosignatures the policy requires ({rule}); \
         verified: {verified}"
    )]
    Quorum {
        have: usize,
        need: usize,
        rule: String,
        verified: String,
    },
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut policy = Self {
            logs: Vec::new(),
            witnesses: Vec::new(),
            groups: Vec::new(),
            quorum: None,
        };
        let mut quorum_seen = false;
        for (index, line) in text.split('\n').enumerate() {
            let syntax = |message: String| PolicyError::Syntax {
                line: index + 1,
                message,
            };
            if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
                return Err(syntax(format!("control character {c:?}")));
            }
            let items: Vec<&str> = line
                .split([' ', '\t'])
                .filter(|item| !item.is_empty())
                .take_while(|item| !item.starts_with('#'))
                .collect();
            let Some((&keyword, args)) = items.split_first() else {
                continue;
            };
            match keyword {
                "log" => policy.add_log(args).map_err(syntax)?,
                "witness" => policy.add_witness(args).map_err(syntax)?,
                "group" => policy.add_group(args).map_err(syntax)?,
                "quorum" => {
                    if quorum_seen {
                        return Err(syntax("a second quorum line".into()));
                    }
                    let [name] = args else {
                        return Err(syntax("expected quorum <name>".into()));
                    };
                    policy.quorum = match *name {
                        "none" => None,
                        name => Some(policy.member(name).map_err(syntax)?),
                    };
                    quorum_seen = true;
                }
                other => return Err(syntax(format!("unknown keyword {other:?}"))),
            }
        }
        if !quorum_seen {
            return Err(PolicyError::NoQuorum);
        }
        Ok(policy)
    }

    fn add_log(&mut self, args: &[&str]) -> Result<(), String> {
        let (key, url) = match args {
            [key] => (key, None),
            [key, url] => (key, Some(url.to_string())),
            _ => return Err("expected log <vkey> [<url>]".into()),
        };
        let key = NoteVerifier::parse(key).map_err(|e| format!("log key: {e}"))?;
        // Two vkeys are the same log when they wrap the same public key, whatever their names.
        let public = |k: &NoteVerifier| k.encode().splitn(3, '+').nth(2).map(str::to_owned);
        if self.logs.iter().any(|l| public(&l.key) == public(&key)) {
            return Err(format!("log key {} is listed twice", key.label()));
        }
        self.logs.push(PolicyLog { key, url });
        Ok(())
    }

    fn add_witness(&mut self, args: &[&str]) -> Result<(), String> {
        let (name, key, url) = match args {
            [name, key] => (name, key, None),
            [name, key, url] => (name, key, Some(url.to_string())),
            _ => return Err("expected witness <name> <vkey> [<url>]".into()),
        };
        self.check_new_name(name)?;
        let key =
            CosignatureVerifier::parse(key).map_err(|e| format!("witness {name}'s key: {e}"))?;
        if let Some(other) = self
            .witnesses
            .iter()
            .find(|w| w.key.public_key() == key.public_key())
        {
            return Err(format!(
                "witness {name} has the key of witness {}",
                other.name
            ));
        }
        self.witnesses.push(PolicyWitness {
            name: name.to_string(),
            key,
            url,
        });
        Ok(())
    }

    fn add_group(&mut self, args: &[&str]) -> Result<(), String> {
        let [name, threshold, names @ ..] = args else {
            return Err("expected group <name> <k|all|any> <name>...".into());
        };
        self.check_new_name(name)?;
        if names.is_empty() {
            return Err(format!("group {name} has no member"));
        }
        let mut members = Vec::with_capacity(names.len());
        for member in names {
            let member = self.member(member)?;
            if members.contains(&member) {
                return Err(format!("group {name} lists a member twice"));
            }
            members.push(member);
        }
        let threshold = match *threshold {
            "all" => members.len(),
            "any" => 1,
            k => Some(k)
                .filter(|k| k.bytes().all(|b| b.is_ascii_digit()) && !k.starts_with('0'))
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| (1..=members.len()).contains(k))
                .ok_or_else(|| {
                    format!(
                        "group {name}: threshold must be all, any or 1 to {}",
                        members.len()
                    )
                })?,
        };
        self.groups.push(Group {
            name: name.to_string(),
            threshold,
            members,
        });
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<(), String> {
        if name == "none" {
            return Err("the name none is reserved".into());
        }
        if self.member(name).is_ok() {
            return Err(format!("{name} is already defined"));
        }
        Ok(())
    }

    fn member(&self, name: &str) -> Result<Member, String> {
        if let Some(i) = self.witnesses.iter().position(|w| w.name == name) {
            return Ok(Member::Witness(i));
        }
        if let Some(i) = self.groups.iter().position(|g| g.name == name) {
            return Ok(Member::Group(i));
        }
        Err(format!("{name} is not defined on an earlier line"))
    }

    /// The logs the policy trusts.
    pub fn logs(&self) -> &[PolicyLog] {
        &self.logs
    }

    /// Every witness the policy names, in policy order.
    pub fn witnesses(&self) -> &[PolicyWitness] {
        &self.witnesses
    }

    /// Whether the quorum asks for any cosignature at all (not `quorum none`).
    pub fn requires_cosignatures(&self) -> bool {
        self.quorum.is_some()
    }

    /// Checks `note`: signed by one of the policy's logs (the key named as the origin), a
    /// well-formed checkpoint, no invalid cosignature from a policy witness, and the quorum met.
    pub fn check(&self, note: &str) -> Result<Satisfied, PolicyError> {
        let keys: Vec<NoteVerifier> = self.logs.iter().map(|l| l.key.clone()).collect();
        let opened = note::open(note, &keys).map_err(PolicyError::Log)?;
        let checkpoint = Checkpoint::parse(&opened.text).map_err(PolicyError::Checkpoint)?;
        if checkpoint.origin != opened.signer.name {
            return Err(PolicyError::Origin {
                origin: checkpoint.origin,
                key: opened.signer.label(),
            });
        }
        let witnesses = self.cosigners(note)?;
        self.check_quorum(&witnesses)?;
        Ok(Satisfied {
            log: opened.signer,
            checkpoint,
            witnesses,
        })
    }

    /// Policy names of the witnesses whose cosignatures in `note` verify (the log's signature
    /// is not looked at). A cosignature line of a policy witness that does not verify is an
    /// error, as C2SP signed-note requires; lines of other keys are ignored.
    pub fn cosigners(&self, note: &str) -> Result<Vec<String>, PolicyError> {
        let mut names = Vec::new();
        for witness in &self.witnesses {
            match witness.key.verify(note) {
                Ok(_) => names.push(witness.name.clone()),
                Err(CosignatureError::Missing(_)) => {}
                Err(error) => {
                    return Err(PolicyError::Cosignature {
                        witness: witness.name.clone(),
                        error,
                    })
                }
            }
        }
        Ok(names)
    }

    /// Whether cosignatures by the witnesses named `cosigners` (policy names) meet the quorum;
    /// the error says how many more it takes and who did cosign.
    pub fn check_quorum<S: AsRef<str>>(&self, cosigners: &[S]) -> Result<(), PolicyError> {
        let Some(quorum) = self.quorum else {
            return Ok(());
        };
        let cosigned: Vec<bool> = self
            .witnesses
            .iter()
            .map(|w| cosigners.iter().any(|c| c.as_ref() == w.name))
            .collect();
        // Groups only name earlier groups, so one pass in definition order evaluates them all.
        let mut group_met = Vec::with_capacity(self.groups.len());
        let mut group_need = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let met = |m: &Member| match *m {
                Member::Witness(i) => cosigned[i],
                Member::Group(g) => group_met[g],
            };
            let mut needs: Vec<usize> = group
                .members
                .iter()
                .map(|m| match *m {
                    Member::Witness(_) => 1,
                    Member::Group(g) => group_need[g],
                })
                .collect();
            needs.sort_unstable();
            let satisfied = group.members.iter().filter(|m| met(m)).count() >= group.threshold;
            group_met.push(satisfied);
            group_need.push(needs.iter().take(group.threshold).sum());
        }
        let (met, need) = match quorum {
            Member::Witness(i) => (cosigned[i], 1),
            Member::Group(g) => (group_met[g], group_need[g]),
        };
        if met {
            return Ok(());
        }
        let reachable = self.reachable(quorum);
        let have = (0..self.witnesses.len())
            .filter(|&i| cosigned[i] && reachable[i])
            .count();
        let verified: Vec<&str> = self
            .witnesses
            .iter()
            .zip(&cosigned)
            .filter(|(_, c)| **c)
            .map(|(w, _)| w.name.as_str())
            .collect();
        Err(PolicyError::Quorum {
            have,
            need,
            rule: self.describe(quorum, 2),
            verified: if verified.is_empty() {
                "none".into()
            } else {
                verified.join(", ")
            },
        })
    }

    /// Which witnesses can count towards `member`.
    fn reachable(&self, member: Member) -> Vec<bool> {
        let mut reachable = vec![false; self.witnesses.len()];
        let mut pending = vec![member];
        while let Some(member) = pending.pop() {
            match member {
                Member::Witness(i) => reachable[i] = true,
                Member::Group(g) => pending.extend(&self.groups[g].members),
            }
        }
        reachable
    }

    /// The quorum rule in words, nested groups spelled out `depth` levels deep.
    fn describe(&self, member: Member, depth: usize) -> String {
        match member {
            Member::Witness(i) => format!("witness {}", self.witnesses[i].name),
            Member::Group(g) => format!("group {}: {}", self.groups[g].name, self.rule(g, depth)),
        }
    }

    fn rule(&self, group: usize, depth: usize) -> String {
        let group = &self.groups[group];
        let mut text = format!("{} of ", group.threshold);
        for (n, member) in group.members.iter().enumerate() {
            if n > 0 {
                text.push_str(", ");
            }
            match *member {
                Member::Witness(i) => text.push_str(&self.witnesses[i].name),
                Member::Group(g) if depth > 1 => {
                    let _ = write!(
                        text,
                        "{} ({})",
                        self.groups[g].name,
                        self.rule(g, depth - 1)
                    );
                }
                Member::Group(g) => text.push_str(&self.groups[g].name),
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::NoteSigner;
    use crate::witness::{add_signatures, CosignatureSigner};

    struct Fixture {
        log: NoteSigner,
        witnesses: Vec<CosignatureSigner>,
    }

    impl Fixture {
        fn new(witnesses: usize) -> Self {
            Self {
                log: NoteSigner::generate("tollgate.test/audit").unwrap(),
                witnesses: (0..witnesses)
                    .map(|i| CosignatureSigner::generate(&format!("witness.test/w{i}")).unwrap())
                    .collect(),
            }
        }

        fn body() -> String {
            Checkpoint {
                origin: "tollgate.test/audit".into(),
                size: 42,
                root: [7; 32],
                chain_head: [9; 32],
                time: "2025-01-31T12:00:00.000001Z".into(),
            }
            .text()
        }

        /// The checkpoint signed by the log and cosigned by the witnesses numbered `by`.
        fn note(&self, by: &[usize]) -> String {
            let body = Self::body();
            let mut note = self.log.sign(&body);
            for &i in by {
                let line = self.witnesses[i].cosign(&body, 1_700_000_000).unwrap();
                note = add_signatures(&note, &line).unwrap();
            }
            note
        }

        /// `log` and `witness w<i>` lines, then `rules`.
        fn policy(&self, rules: &str) -> Policy {
            let mut text = format!("log {} https://log.test/\n", self.log.verifier().encode());
            for (i, w) in self.witnesses.iter().enumerate() {
                text.push_str(&format!(
                    "witness w{i} {}   http://127.0.0.1:{}\n",
                    w.verifier().encode(),
                    9480 + i
                ));
            }
            text.push_str(rules);
            Policy::parse(&text).unwrap()
        }
    }

    #[test]
    fn parses_the_example_policy_and_exposes_keys_and_urls() {
        let f = Fixture::new(3);
        let policy = f.policy(
            "# two of three, and then some\n\
             \tgroup g 2 w0 w1 w2   # trailing comment\n\
             \n\
             quorum g\n",
        );
        assert_eq!(policy.logs().len(), 1);
        assert_eq!(policy.logs()[0].key, f.log.verifier());
        assert_eq!(policy.logs()[0].url.as_deref(), Some("https://log.test/"));
        let names: Vec<&str> = policy.witnesses().iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["w0", "w1", "w2"]);
        assert_eq!(policy.witnesses()[1].key, f.witnesses[1].verifier());
        assert_eq!(
            policy.witnesses()[2].url.as_deref(),
            Some("http://127.0.0.1:9482")
        );
        assert!(policy.requires_cosignatures());
        assert!(!f.policy("quorum none\n").requires_cosignatures());
    }

    #[test]
    fn a_checkpoint_with_its_quorum_is_satisfied() {
        let f = Fixture::new(3);
        let policy = f.policy("group g 2 w0 w1 w2\nquorum g\n");
        let satisfied = policy.check(&f.note(&[0, 2])).unwrap();
        assert_eq!(satisfied.log, f.log.verifier());
        assert_eq!(satisfied.checkpoint.size, 42);
        assert_eq!(satisfied.witnesses, ["w0", "w2"]);
        // Cosignature lines of witnesses the policy does not know are ignored.
        let stranger = CosignatureSigner::generate("witness.test/w9").unwrap();
        let extra = stranger.cosign(&Fixture::body(), 1).unwrap();
        let note = add_signatures(&f.note(&[0, 1]), &extra).unwrap();
        assert_eq!(policy.check(&note).unwrap().witnesses, ["w0", "w1"]);
        // quorum none: the log's signature alone.
        assert!(f.policy("quorum none\n").check(&f.note(&[])).is_ok());
    }

    #[test]
    fn too_few_cosignatures_say_how_many_and_whose() {
        let f = Fixture::new(2);
        let policy = f.policy("group g 2 w0 w1\nquorum g\n");
        let error = policy.check(&f.note(&[0])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "quorum not met: 1 of the 2 cosignatures the policy requires (group g: 2 of w0, w1); \
             verified: w0"
        );
        let error = f.policy("quorum w1\n").check(&f.note(&[])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "quorum not met: 0 of the 1 cosignatures the policy requires (witness w1); \
             verified: none"
        );
    }

    #[test]
    fn nested_groups_count_as_the_spec_says() {
        let f = Fixture::new(5);
        let policy =
            f.policy("group x 2 w0 w1 w2\ngroup y any w3 w4\ngroup both all x y\nquorum both\n");
        assert!(policy.check(&f.note(&[0, 1, 4])).is_ok());
        let error = policy.check(&f.note(&[0, 1])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "quorum not met: 2 of the 3 cosignatures the policy requires (group both: 2 of \
             x (2 of w0, w1, w2), y (1 of w3, w4)); verified: w0, w1"
        );
        assert!(policy.check(&f.note(&[0, 3, 4])).is_err());
        assert!(policy.check_quorum(&["w1", "w2", "w3"]).is_ok());
        assert!(policy.check_quorum::<&str>(&[]).is_err());
    }

    #[test]
    fn a_bad_cosignature_by_a_policy_witness_rejects_the_note() {
        let f = Fixture::new(2);
        let policy = f.policy("group g any w0 w1\nquorum g\n");
        // w1's line over another checkpoint, pasted onto this one.
        let other = Fixture::body().replace("\n42\n", "\n43\n");
        let forged = f.witnesses[1].cosign(&other, 1).unwrap();
        let note = add_signatures(&f.note(&[0]), &forged).unwrap();
        let error = policy.check(&note).unwrap_err();
        assert!(
            matches!(&error, PolicyError::Cosignature { witness, error: CosignatureError::BadSignature(_) } if witness == "w1"),
            "{error}"
        );
    }

    #[test]
    fn the_log_must_be_one_of_the_policy_and_named_as_the_origin() {
        let f = Fixture::new(1);
        let policy = f.policy("quorum w0\n");
        let other = NoteSigner::generate("tollgate.test/audit").unwrap();
        let note = other.sign(&Fixture::body());
        assert!(matches!(
            policy.check(&note),
            Err(PolicyError::Log(NoteError::NoTrustedSignature))
        ));
        let misnamed = NoteSigner::generate("another.test/log").unwrap();
        let text = format!("log {}\nquorum none\n", misnamed.verifier().encode());
        let error = Policy::parse(&text)
            .unwrap()
            .check(&misnamed.sign(&Fixture::body()))
            .unwrap_err();
        assert!(matches!(error, PolicyError::Origin { .. }), "{error}");
        // A policy without logs trusts no checkpoint.
        let text = format!(
            "witness w {}\nquorum w\n",
            f.witnesses[0].verifier().encode()
        );
        assert!(Policy::parse(&text).unwrap().check(&f.note(&[0])).is_err());
    }

    #[test]
    fn malformed_policies_are_refused_with_their_line() {
        let f = Fixture::new(2);
        let (w0, w1) = (
            f.witnesses[0].verifier().encode(),
            f.witnesses[1].verifier().encode(),
        );
        let log = f.log.verifier().encode();
        let cases = [
            (
                format!("witness a {w0}\nwitness a {w1}\nquorum a\n"),
                2,
                "already defined",
            ),
            (
                format!("witness a {w0}\nwitness b {w0}\nquorum a\n"),
                2,
                "has the key of",
            ),
            (
                format!("log {log}\nlog {log}\nquorum none\n"),
                2,
                "listed twice",
            ),
            (
                format!("witness a {w0}\ngroup a any a\nquorum a\n"),
                2,
                "already defined",
            ),
            (
                format!("witness a {w0}\ngroup g any b\nquorum a\n"),
                2,
                "not defined",
            ),
            (
                format!("witness a {w0}\ngroup g any\nquorum a\n"),
                2,
                "no member",
            ),
            (
                format!("witness a {w0}\ngroup g 0 a\nquorum a\n"),
                2,
                "threshold",
            ),
            (
                format!("witness a {w0}\ngroup g 2 a\nquorum a\n"),
                2,
                "threshold",
            ),
            (
                format!("witness a {w0}\ngroup g any a a\nquorum a\n"),
                2,
                "twice",
            ),
            (
                format!("witness a {w0}\nquorum a\nquorum a\n"),
                3,
                "second quorum",
            ),
            (format!("witness none {w0}\nquorum none\n"), 1, "reserved"),
            (
                format!("quorum g\ngroup g any a\nwitness a {w0}\n"),
                1,
                "not defined",
            ),
            (format!("witness a {log}\nquorum a\n"), 1, "0x04"),
            (format!("log {w0}\nquorum none\n"), 1, "log key"),
            (
                "witnesses a b\nquorum none\n".to_string(),
                1,
                "unknown keyword",
            ),
            ("quorum none\r\n".to_string(), 1, "control character"),
        ];
        for (text, line, message) in cases {
            match Policy::parse(&text) {
                Err(PolicyError::Syntax {
                    line: l,
                    message: m,
                }) => {
                    assert_eq!(l, line, "{text}: {m}");
                    assert!(m.contains(message), "{text}: {m}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            Policy::parse(&format!("witness a {w0}\n")),
            Err(PolicyError::NoQuorum)
        );
    }
}
