//! Which rules can match a message at all, so deciding does not walk rules written for other
//! tools: a rule naming tools (resources, prompts) by exact name is only tried for those names.
//! Rules with wildcard targets and rules with no target test are always tried. Order is kept.

use std::collections::HashMap;

use super::rules::{Rule, TargetKind, TargetUse};

#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    /// Rules without a tool/resource/prompt test: candidates for every message.
    untargeted: Vec<u32>,
    /// Per target kind (tool, resource, prompt).
    by_kind: [KindIndex; 3],
}

#[derive(Debug, Clone, Default)]
struct KindIndex {
    /// Rules whose globs for this kind are all literal, by each literal.
    exact: HashMap<String, Vec<u32>>,
    /// Rules with a wildcard glob for this kind.
    general: Vec<u32>,
}

fn slot(kind: TargetKind) -> usize {
    match kind {
        TargetKind::Tool => 0,
        TargetKind::Resource => 1,
        TargetKind::Prompt => 2,
    }
}

fn push(list: &mut Vec<u32>, i: u32) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}

impl RuleIndex {
    pub(crate) fn build(rules: &[Rule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if !rule.has_targets() {
                index.untargeted.push(i);
                continue;
            }
            for kind in [TargetKind::Tool, TargetKind::Resource, TargetKind::Prompt] {
                let Some(k) = index.by_kind.get_mut(slot(kind)) else {
                    continue;
                };
                match rule.target_use(kind) {
                    TargetUse::None => {}
                    TargetUse::Wildcard => push(&mut k.general, i),
                    TargetUse::Literals(names) => {
                        for name in names {
                            push(k.exact.entry(name.to_owned()).or_default(), i);
                        }
                    }
                }
            }
        }
        index
    }

    /// The indices of the rules that may match a message with this target, ascending.
    pub(crate) fn candidates(
        &self,
        kind: Option<TargetKind>,
        target: Option<&str>,
    ) -> Candidates<'_> {
        let (exact, general): (&[u32], &[u32]) =
            match (kind.and_then(|k| self.by_kind.get(slot(k))), target) {
                (Some(k), Some(target)) => (
                    k.exact.get(target).map_or(&[][..], Vec::as_slice),
                    &k.general,
                ),
                _ => (&[], &[]),
            };
        Candidates {
            lists: [&self.untargeted, exact, general],
        }
    }
}

/// A merge of three ascending lists.
pub(crate) struct Candidates<'a> {
    lists: [&'a [u32]; 3],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let least = *self.lists.iter().filter_map(|l| l.first()).min()?;
        for list in &mut self.lists {
            if list.first() == Some(&least) {
                *list = list.get(1..).unwrap_or(&[]);
            }
        }
        usize::try_from(least).ok()
    }
}
