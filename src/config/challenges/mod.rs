//! `challenges.json`: AccelByte's challenge format, in both generations.
//!
//! - **Type rules** (no `progressMode` or `rotation` anywhere): goal `type`
//!   absolute / increment / daily and `"daily": true`. Parsed strictly:
//!   AccelByte's Go loader ignores misspelt keys, so a typo silently
//!   disables a goal; here an unknown key is an error.
//! - **M5** (any goal with `requirement.progressMode` or `rotation`):
//!   validated with the checks of AccelByte's current loader (progress mode,
//!   rotation type and schedule, a rotation needs a relative goal), which
//!   ignores unknown keys and the M4 fields `type` and `daily`: so do we,
//!   with a warning for each unknown key and for each goal whose meaning
//!   changed (an `"type": "increment"` goal without `progressMode` loads as
//!   absolute, as AccelByte's loader loads it).
//!
//! Every problem is collected and reported at once, one line each, naming
//! the file, challenge, goal and field.

mod fields;
mod m5_goals;
mod typed;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::event::MAX_ID_LEN;
use crate::rules::m5::{self, Rotation, Schedule};
use crate::rules::{Generation, GoalDef, GoalKind, GoalRule, Source};

/// Every problem found in one `challenges.json`.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in {}:\n  - {}", problems.len(), file.display(), problems.join("\n  - "))]
pub struct ChallengesError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

/// A valid challenges file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenges {
    pub generation: Generation,
    pub goals: Vec<GoalDef>,
    /// What the file says that is ignored or means something else than it
    /// may seem to (M5 files only): one line each, to log at start-up.
    pub warnings: Vec<String>,
}

/// Reads and validates a challenges file.
pub fn load(path: &Path) -> Result<Challenges, ChallengesError> {
    let text = std::fs::read_to_string(path).map_err(|e| ChallengesError {
        file: path.to_owned(),
        problems: vec![format!("cannot read the file: {e}")],
    })?;
    parse(&text).map_err(|problems| ChallengesError {
        file: path.to_owned(),
        problems,
    })
}

/// Parses and validates challenges JSON text. Never panics; returns every
/// problem found.
pub fn parse(text: &str) -> Result<Challenges, Vec<String>> {
    let mut root: Value =
        serde_json::from_str(text).map_err(|e| vec![format!("not valid JSON: {e}")])?;
    // Decided on the file as written: a key of M5 set to null, or written
    // in another case, still says the file is AccelByte's current kind.
    let generation = generation_of(&root);
    without_nulls(&mut root);
    let mut v = Validator {
        generation,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let goals = v.root(&root);
    if v.problems.is_empty() {
        Ok(Challenges {
            generation,
            goals,
            warnings: v.warnings,
        })
    } else {
        Err(v.problems)
    }
}

/// Drops every key whose value is `null`: Go's encoding/json, which reads
/// the file upstream, gives such a field its zero value, which for every
/// optional field is what leaving it out means (and a required one is then
/// reported missing).
fn without_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(without_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(without_nulls),
        _ => {}
    }
}

/// M5 when any goal has `requirement.progressMode` or `rotation`.
fn generation_of(root: &Value) -> Generation {
    let goals = root
        .get("challenges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("goals").and_then(Value::as_array))
        .flatten();
    let has = |obj: &Value, key: &str| {
        obj.as_object()
            .is_some_and(|o| o.keys().any(|k| k.eq_ignore_ascii_case(key)))
    };
    let mut m5 = false;
    for goal in goals {
        let requirement = goal
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("requirement"))
            })
            .map(|(_, v)| v);
        m5 |= requirement.is_some_and(|r| has(r, "progressMode")) || has(goal, "rotation");
    }
    if m5 {
        Generation::M5
    } else {
        Generation::Typed
    }
}

const CHALLENGE_KEYS: &[&str] = &["challengeId", "name", "description", "goals"];
const GOAL_KEYS: &[&str] = &[
    "goalId",
    "name",
    "description",
    "type",
    "daily",
    "eventSource",
    "defaultAssigned",
    "requirement",
    "reward",
    "prerequisites",
];
const M5_GOAL_KEYS: &[&str] = &[
    "goalId",
    "name",
    "description",
    "eventSource",
    "defaultAssigned",
    "requirement",
    "reward",
    "prerequisites",
    "rotation",
    // Upstream's `challengeId` field (overwritten by its loader), and the
    // M4 fields it ignores (warned about by meaning, not as unknown keys).
    "challengeId",
    "type",
    "daily",
];
const REQUIREMENT_KEYS: &[&str] = &["statCode", "operator", "targetValue"];
const M5_REQUIREMENT_KEYS: &[&str] = &["statCode", "operator", "targetValue", "progressMode"];
const REWARD_KEYS: &[&str] = &["type", "rewardId", "quantity"];
const ROTATION_KEYS: &[&str] = &["enabled", "type", "schedule", "onExpiry"];
const ON_EXPIRY_KEYS: &[&str] = &["resetProgress", "allowReselection"];

struct Validator {
    generation: Generation,
    problems: Vec<String>,
    warnings: Vec<String>,
}

/// Where a problem is: `challenge "c1", goal "g1", field "requirement.statCode"`.
struct At<'a> {
    challenge: &'a str,
    goal: Option<&'a str>,
}

impl At<'_> {
    fn field(&self, field: &str) -> String {
        match self.goal {
            Some(goal) => format!(
                "challenge {:?}, goal {:?}, field {:?}",
                self.challenge, goal, field
            ),
            None => format!("challenge {:?}, field {:?}", self.challenge, field),
        }
    }
}

impl Validator {
    fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    fn root(&mut self, root: &Value) -> Vec<GoalDef> {
        let Some(obj) = root.as_object() else {
            self.problem("the top level must be an object {\"challenges\": [...]}".into());
            return Vec::new();
        };
        for key in obj.keys().filter(|k| *k != "challenges") {
            let message = format!("unknown top-level key {key:?} (expected only \"challenges\")");
            match self.generation {
                Generation::Typed => self.problem(message),
                Generation::M5 => self.warnings.push(format!("{message}; ignored")),
            }
        }
        let Some(challenges) = obj.get("challenges") else {
            self.problem("missing top-level key \"challenges\"".into());
            return Vec::new();
        };
        let Some(challenges) = challenges.as_array() else {
            self.problem("\"challenges\" must be an array".into());
            return Vec::new();
        };
        if challenges.is_empty() && self.generation == Generation::M5 {
            self.problem("\"challenges\": the file must have at least one challenge".into());
        }

        let mut goals = Vec::new();
        let mut prerequisites: Vec<(String, String, String)> = Vec::new();
        let mut challenge_ids = HashSet::new();
        let mut goal_owner: HashMap<String, String> = HashMap::new();
        for (i, challenge) in challenges.iter().enumerate() {
            let fallback = format!("#{i}");
            let Some(obj) = challenge.as_object() else {
                self.problem(format!("challenge {fallback}: must be an object"));
                continue;
            };
            let id = obj.get("challengeId").and_then(Value::as_str);
            let label = id.filter(|s| !s.is_empty()).unwrap_or(&fallback).to_owned();
            let at = At {
                challenge: &label,
                goal: None,
            };
            self.unknown_keys(obj, CHALLENGE_KEYS, &at, "");
            if let Some(id) = self.id(obj, "challengeId", &at) {
                if !challenge_ids.insert(id.clone()) {
                    self.problem(format!(
                        "{}: duplicate challengeId {id:?}",
                        at.field("challengeId")
                    ));
                }
            }
            match self.generation {
                Generation::Typed => self.string(obj, "name", true, &at),
                Generation::M5 => self.non_empty_string(obj, "name", &at),
            }
            self.string(obj, "description", false, &at);
            let Some(list) = self.array(obj, "goals", true, &at) else {
                continue;
            };
            if list.is_empty() {
                self.problem(format!(
                    "{}: a challenge needs at least one goal",
                    at.field("goals")
                ));
            }
            for (j, goal) in list.iter().enumerate() {
                let goal_fallback = format!("#{j}");
                let Some(gobj) = goal.as_object() else {
                    self.problem(format!(
                        "{}: must be an object",
                        at.field(&format!("goals[{j}]"))
                    ));
                    continue;
                };
                let goal_label = gobj
                    .get("goalId")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&goal_fallback)
                    .to_owned();
                let gat = At {
                    challenge: &label,
                    goal: Some(&goal_label),
                };
                if let Some(goal_id) = gobj.get("goalId").and_then(Value::as_str) {
                    if let Some(owner) = goal_owner.get(goal_id) {
                        self.problem(format!(
                            "{}: duplicate goalId {goal_id:?} (also in challenge {owner:?}); goal ids are the table's key and must be unique across all challenges",
                            gat.field("goalId")
                        ));
                    } else {
                        goal_owner.insert(goal_id.to_owned(), label.clone());
                    }
                }
                for p in self.prerequisites(gobj, &gat) {
                    prerequisites.push((label.clone(), goal_label.clone(), p));
                }
                let def = match self.generation {
                    Generation::Typed => self.typed_goal(gobj, &label, &gat),
                    Generation::M5 => self.m5_goal(gobj, &label, &gat),
                };
                goals.extend(def);
            }
        }
        for (challenge, goal, prereq) in prerequisites {
            if !goal_owner.contains_key(&prereq) {
                let at = At {
                    challenge: &challenge,
                    goal: Some(&goal),
                };
                self.problem(format!(
                    "{}: prerequisite {prereq:?} is not a goalId in this file",
                    at.field("prerequisites")
                ));
            }
        }
        goals
    }
}

#[cfg(test)]
mod tests;
