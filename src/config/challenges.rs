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
    let root: Value =
        serde_json::from_str(text).map_err(|e| vec![format!("not valid JSON: {e}")])?;
    let generation = generation_of(&root);
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

/// M5 when any goal has `requirement.progressMode` or `rotation`.
fn generation_of(root: &Value) -> Generation {
    let goals = root
        .get("challenges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("goals").and_then(Value::as_array))
        .flatten();
    let mut m5 = false;
    for goal in goals {
        let has = |key: &str| goal.get(key).is_some();
        let mode = goal
            .get("requirement")
            .and_then(|r| r.get("progressMode"))
            .is_some();
        m5 |= mode || has("rotation");
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

    fn typed_goal(
        &mut self,
        obj: &Map<String, Value>,
        challenge_id: &str,
        at: &At,
    ) -> Option<GoalDef> {
        self.unknown_keys(obj, GOAL_KEYS, at, "");
        let goal_id = self.id(obj, "goalId", at);
        self.string(obj, "name", true, at);
        self.string(obj, "description", false, at);
        let goal_type = match obj.get("type") {
            None | Some(Value::Null) => Some("absolute"),
            Some(Value::String(s)) if ["absolute", "increment", "daily"].contains(&s.as_str()) => {
                Some(s.as_str())
            }
            Some(other) => {
                self.problem(format!(
                    "{}: must be \"absolute\", \"increment\" or \"daily\", got {other}",
                    at.field("type")
                ));
                None
            }
        };
        let daily = self.boolean(obj, "daily", "", at).unwrap_or(false);
        let default_assigned = self.boolean(obj, "defaultAssigned", "", at).unwrap_or(true);
        let source = self.event_source(obj, at);
        let (stat_code, target) = self.requirement(obj, source, at);
        self.reward(obj, at);

        let kind = match (goal_type?, daily) {
            ("absolute", false) => GoalKind::Absolute,
            ("increment", false) => GoalKind::Increment,
            ("increment", true) => GoalKind::DailyIncrement,
            ("daily", false) => GoalKind::Daily,
            (other, true) => {
                self.problem(format!(
                    "{}: \"daily\": true is only valid with \"type\": \"increment\" (this goal is {other:?})",
                    at.field("daily")
                ));
                return None;
            }
            _ => unreachable!("goal type was checked above"),
        };
        if kind == GoalKind::Absolute && source == Some(Source::Login) {
            self.problem(format!(
                "{}: an absolute goal takes its value from a statistic, so it needs \"eventSource\": \"statistic\" (use \"increment\" to count logins)",
                at.field("type")
            ));
            return None;
        }
        Some(GoalDef {
            challenge_id: challenge_id.to_owned(),
            goal_id: goal_id?,
            rule: GoalRule::Typed(kind),
            source: source?,
            stat_code,
            target: target?,
            default_assigned,
        })
    }

    fn event_source(&mut self, obj: &Map<String, Value>, at: &At) -> Option<Source> {
        match obj.get("eventSource") {
            Some(Value::String(s)) if s == "login" => Some(Source::Login),
            Some(Value::String(s)) if s == "statistic" => Some(Source::Statistic),
            None => {
                self.problem(format!(
                    "{}: is required (\"login\" or \"statistic\")",
                    at.field("eventSource")
                ));
                None
            }
            Some(other) => {
                self.problem(format!(
                    "{}: must be \"login\" or \"statistic\", got {other}",
                    at.field("eventSource")
                ));
                None
            }
        }
    }

    /// A goal of an M5 file, with AccelByte's current loader's checks.
    fn m5_goal(
        &mut self,
        obj: &Map<String, Value>,
        challenge_id: &str,
        at: &At,
    ) -> Option<GoalDef> {
        self.unknown_keys(obj, M5_GOAL_KEYS, at, "");
        let goal_id = self.id(obj, "goalId", at);
        self.non_empty_string(obj, "name", at);
        self.string(obj, "description", false, at);
        let default_assigned = self
            .boolean(obj, "defaultAssigned", "", at)
            .unwrap_or(false);
        let source = self.event_source(obj, at);
        let (stat_code, target) = self.requirement(obj, source, at);
        self.reward(obj, at);
        let relative = self.progress_mode(obj, at);
        let rotation = self.rotation(obj, relative, at);
        if let (Some(relative), Ok(rotation)) = (relative, rotation) {
            self.m4_fields(obj, relative, rotation, at);
        }
        Some(GoalDef {
            challenge_id: challenge_id.to_owned(),
            goal_id: goal_id?,
            rule: GoalRule::M5(m5::Goal {
                relative: relative?,
                rotation: rotation.ok()?,
            }),
            source: source?,
            stat_code,
            target: target?,
            default_assigned,
        })
    }

    /// `requirement.progressMode`: "absolute" (also when empty or absent,
    /// as AccelByte's loader defaults it) or "relative". Some(true): relative.
    fn progress_mode(&mut self, obj: &Map<String, Value>, at: &At) -> Option<bool> {
        let Some(req) = obj.get("requirement").and_then(Value::as_object) else {
            return Some(false); // reported by `requirement`
        };
        match req.get("progressMode") {
            None | Some(Value::Null) => Some(false),
            Some(Value::String(s)) if s.is_empty() || s == "absolute" => Some(false),
            Some(Value::String(s)) if s == "relative" => Some(true),
            Some(other) => {
                self.problem(format!(
                    "{}: invalid progressMode {other} (must be \"absolute\" or \"relative\")",
                    at.field("requirement.progressMode")
                ));
                None
            }
        }
    }

    /// The goal's `rotation`: Ok(None) when absent or not enabled (its other
    /// fields then are not checked, as upstream); Err when invalid.
    fn rotation(
        &mut self,
        obj: &Map<String, Value>,
        relative: Option<bool>,
        at: &At,
    ) -> Result<Option<Rotation>, ()> {
        let Some(value) = obj.get("rotation") else {
            return Ok(None);
        };
        if value.is_null() {
            return Ok(None);
        }
        let Some(rot) = value.as_object() else {
            self.problem(format!(
                "{}: must be an object, got {value}",
                at.field("rotation")
            ));
            return Err(());
        };
        self.unknown_keys(rot, ROTATION_KEYS, at, "rotation.");
        let before = self.problems.len();
        let enabled = self
            .boolean(rot, "enabled", "rotation.", at)
            .unwrap_or(false);
        let kind = self.optional_string(rot, "type", "rotation.", at);
        let schedule = self.optional_string(rot, "schedule", "rotation.", at);
        let (reset_progress, allow_reselection) = match rot.get("onExpiry") {
            None | Some(Value::Null) => (false, false),
            Some(Value::Object(on)) => {
                self.unknown_keys(on, ON_EXPIRY_KEYS, at, "rotation.onExpiry.");
                let flag = |v: &mut Validator, key: &str| match on.get(key) {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        v.problem(format!(
                            "{}: must be true or false, got {other}",
                            at.field(&format!("rotation.onExpiry.{key}"))
                        ));
                        false
                    }
                };
                (flag(self, "resetProgress"), flag(self, "allowReselection"))
            }
            Some(other) => {
                self.problem(format!(
                    "{}: must be an object, got {other}",
                    at.field("rotation.onExpiry")
                ));
                (false, false)
            }
        };
        if !enabled {
            return if self.problems.len() == before {
                Ok(None)
            } else {
                Err(())
            };
        }
        if kind.as_deref() != Some("global") {
            self.problem(format!(
                "{}: invalid rotation type {:?} (only \"global\" is supported)",
                at.field("rotation.type"),
                kind.unwrap_or_default()
            ));
        }
        let schedule = match schedule.as_deref() {
            Some("daily") => Some(Schedule::Daily),
            Some("weekly") => Some(Schedule::Weekly),
            Some("monthly") => Some(Schedule::Monthly),
            other => {
                self.problem(format!(
                    "{}: invalid rotation schedule {:?} (must be \"daily\", \"weekly\" or \"monthly\")",
                    at.field("rotation.schedule"),
                    other.unwrap_or_default()
                ));
                None
            }
        };
        if relative == Some(false) {
            self.problem(format!(
                "{}: rotation requires progressMode \"relative\", got \"absolute\"",
                at.field("rotation.enabled")
            ));
        }
        match schedule {
            Some(schedule) if self.problems.len() == before => Ok(Some(Rotation {
                schedule,
                reset_progress,
                allow_reselection,
            })),
            _ => Err(()),
        }
    }

    /// The M4 fields `type` and `daily` in an M5 file: ignored, as
    /// AccelByte's loader ignores them; a warning when they describe
    /// something else than the goal now does.
    fn m4_fields(
        &mut self,
        obj: &Map<String, Value>,
        relative: bool,
        rotation: Option<Rotation>,
        at: &At,
    ) {
        let goal_type = obj.get("type").and_then(Value::as_str);
        let daily = obj.get("daily").and_then(Value::as_bool) == Some(true);
        let is_daily_rotation = rotation.is_some_and(|r| r.schedule == Schedule::Daily);
        let meant = match (goal_type, daily) {
            (Some("daily"), _) | (Some("increment"), true) | (_, true) => {
                (!(relative && is_daily_rotation)).then_some(
                    "\"progressMode\": \"relative\" with a daily \"rotation\" (and a targetValue of 1 for a once-a-day goal)",
                )
            }
            (Some("increment"), false) => (!relative).then_some("\"progressMode\": \"relative\""),
            (Some("absolute"), false) => relative.then_some("\"progressMode\": \"absolute\""),
            _ => None,
        };
        let Some(meant) = meant else {
            return;
        };
        let what = match (goal_type, daily) {
            (Some(t), true) => format!("\"type\": {t:?} and \"daily\": true are ignored in an M5 file, as AccelByte's loader ignores them"),
            (Some(t), false) => format!("\"type\": {t:?} is ignored in an M5 file, as AccelByte's loader ignores it"),
            (None, _) => "\"daily\": true is ignored in an M5 file, as AccelByte's loader ignores it".to_owned(),
        };
        let now = match (relative, rotation) {
            (false, _) => {
                "absolute (progress is the stat value, or the number of logins)".to_owned()
            }
            (true, None) => "relative without rotation".to_owned(),
            (true, Some(r)) => format!("relative with a {} rotation", r.schedule.as_str()),
        };
        self.warnings.push(format!(
            "{}: {what}: the goal counts as {now}; for the old meaning use {meant}",
            at.field(if goal_type.is_some() { "type" } else { "daily" })
        ));
    }

    /// A string field that may be absent (None), else must be a string.
    fn optional_string(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        prefix: &str,
        at: &At,
    ) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(format!(
                    "{}: must be a string, got {other}",
                    at.field(&format!("{prefix}{key}"))
                ));
                None
            }
        }
    }

    fn non_empty_string(&mut self, obj: &Map<String, Value>, key: &str, at: &At) {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) => self.problem(format!("{}: must not be empty", at.field(key))),
            None => self.problem(format!("{}: is required", at.field(key))),
            Some(other) => {
                self.problem(format!("{}: must be a string, got {other}", at.field(key)))
            }
        }
    }

    fn requirement(
        &mut self,
        obj: &Map<String, Value>,
        source: Option<Source>,
        at: &At,
    ) -> (Option<String>, Option<i32>) {
        let Some(req) = obj.get("requirement") else {
            self.problem(format!("{}: is required", at.field("requirement")));
            return (None, None);
        };
        let Some(req) = req.as_object() else {
            self.problem(format!("{}: must be an object", at.field("requirement")));
            return (None, None);
        };
        let keys = match self.generation {
            Generation::Typed => REQUIREMENT_KEYS,
            Generation::M5 => M5_REQUIREMENT_KEYS,
        };
        self.unknown_keys(req, keys, at, "requirement.");
        let stat_code = match req.get("statCode") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(format!(
                    "{}: must be a string, got {other}",
                    at.field("requirement.statCode")
                ));
                None
            }
        };
        let stat_code = stat_code.filter(|s| !s.is_empty());
        if self.generation == Generation::M5 && stat_code.is_none() {
            self.problem(format!(
                "{}: is required (a login goal counts logins under its stat code)",
                at.field("requirement.statCode")
            ));
        } else if source == Some(Source::Statistic) && stat_code.is_none() {
            self.problem(format!(
                "{}: is required for a goal with \"eventSource\": \"statistic\"",
                at.field("requirement.statCode")
            ));
        }
        match req.get("operator") {
            Some(Value::String(s)) if s == ">=" => {}
            None => self.problem(format!(
                "{}: is required (\">=\")",
                at.field("requirement.operator")
            )),
            Some(other) => self.problem(format!(
                "{}: only \">=\" is supported, got {other}",
                at.field("requirement.operator")
            )),
        }
        let target = self.positive_int(req, "targetValue", at, "requirement.");
        (stat_code, target)
    }

    fn reward(&mut self, obj: &Map<String, Value>, at: &At) {
        let Some(reward) = obj.get("reward") else {
            self.problem(format!("{}: is required", at.field("reward")));
            return;
        };
        let Some(reward) = reward.as_object() else {
            self.problem(format!("{}: must be an object", at.field("reward")));
            return;
        };
        self.unknown_keys(reward, REWARD_KEYS, at, "reward.");
        match reward.get("type") {
            Some(Value::String(s)) if s == "ITEM" || s == "WALLET" => {}
            None => self.problem(format!(
                "{}: is required (\"ITEM\" or \"WALLET\")",
                at.field("reward.type")
            )),
            Some(other) => self.problem(format!(
                "{}: must be \"ITEM\" or \"WALLET\", got {other}",
                at.field("reward.type")
            )),
        }
        match reward.get("rewardId") {
            Some(Value::String(s)) if !s.is_empty() => {}
            None => self.problem(format!("{}: is required", at.field("reward.rewardId"))),
            Some(other) => self.problem(format!(
                "{}: must be a non-empty string, got {other}",
                at.field("reward.rewardId")
            )),
        }
        self.positive_int(reward, "quantity", at, "reward.");
    }

    fn prerequisites(&mut self, obj: &Map<String, Value>, at: &At) -> Vec<String> {
        let Some(list) = self.array(obj, "prerequisites", false, at) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            match p.as_str() {
                Some(s) if !s.is_empty() => out.push(s.to_owned()),
                _ => self.problem(format!(
                    "{}: must be a non-empty goalId string, got {p}",
                    at.field(&format!("prerequisites[{i}]"))
                )),
            }
        }
        out
    }

    /// An unknown key: an error in a type-rules file; in an M5 file a
    /// warning, as AccelByte's loader ignores it.
    fn unknown_keys(&mut self, obj: &Map<String, Value>, known: &[&str], at: &At, prefix: &str) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            let field = at.field(&format!("{prefix}{key}"));
            match self.generation {
                Generation::Typed => self.problem(format!(
                    "{field}: unknown key (expected one of: {})",
                    known.join(", ")
                )),
                Generation::M5 => self.warnings.push(format!(
                    "{field}: unknown key, ignored (as AccelByte's loader ignores it; known keys: {})",
                    known.join(", ")
                )),
            }
        }
    }

    /// A required identifier: non-empty, at most [`MAX_ID_LEN`] characters.
    fn id(&mut self, obj: &Map<String, Value>, key: &str, at: &At) -> Option<String> {
        match obj.get(key) {
            Some(Value::String(s)) if s.is_empty() => {
                self.problem(format!("{}: must not be empty", at.field(key)));
                None
            }
            Some(Value::String(s)) if s.chars().count() > MAX_ID_LEN => {
                self.problem(format!(
                    "{}: is {} characters; the table allows at most {MAX_ID_LEN}",
                    at.field(key),
                    s.chars().count()
                ));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            None => {
                self.problem(format!("{}: is required", at.field(key)));
                None
            }
            Some(other) => {
                self.problem(format!("{}: must be a string, got {other}", at.field(key)));
                None
            }
        }
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str, required: bool, at: &At) {
        match obj.get(key) {
            Some(Value::String(_)) => {}
            None if !required => {}
            None => self.problem(format!("{}: is required", at.field(key))),
            Some(other) => {
                self.problem(format!("{}: must be a string, got {other}", at.field(key)))
            }
        }
    }

    /// `prefix` names the object the key is in (`"rotation."`), for the message.
    fn boolean(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        prefix: &str,
        at: &At,
    ) -> Option<bool> {
        match obj.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            None => None,
            Some(other) => {
                self.problem(format!(
                    "{}: must be true or false, got {other}",
                    at.field(&format!("{prefix}{key}"))
                ));
                None
            }
        }
    }

    fn array<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        key: &str,
        required: bool,
        at: &At,
    ) -> Option<&'v Vec<Value>> {
        match obj.get(key) {
            Some(Value::Array(list)) => Some(list),
            None if !required => None,
            None => {
                self.problem(format!("{}: is required", at.field(key)));
                None
            }
            Some(other) => {
                self.problem(format!("{}: must be an array, got {other}", at.field(key)));
                None
            }
        }
    }

    fn positive_int(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        at: &At,
        prefix: &str,
    ) -> Option<i32> {
        let field = at.field(&format!("{prefix}{key}"));
        match obj.get(key) {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v > 0 && v <= i64::from(i32::MAX) => Some(v as i32),
                _ => {
                    self.problem(format!(
                        "{field}: must be a whole number from 1 to {}, got {n}",
                        i32::MAX
                    ));
                    None
                }
            },
            None => {
                self.problem(format!("{field}: is required"));
                None
            }
            Some(other) => {
                self.problem(format!("{field}: must be a whole number, got {other}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal(extra: &str) -> String {
        format!(
            r#"{{"goalId":"g1","name":"G","eventSource":"statistic","requirement":{{"statCode":"kills","operator":">=","targetValue":5}},"reward":{{"type":"ITEM","rewardId":"sword","quantity":1}}{extra}}}"#
        )
    }

    fn file(goals: &[String]) -> String {
        format!(
            r#"{{"challenges":[{{"challengeId":"c1","name":"C","goals":[{}]}}]}}"#,
            goals.join(",")
        )
    }

    #[test]
    fn a_valid_file_yields_goal_definitions_with_absolute_as_the_default_type() {
        let loaded = parse(&file(&[goal("")])).unwrap();
        assert_eq!(loaded.generation, Generation::Typed);
        let goals = loaded.goals;
        assert_eq!(goals.len(), 1);
        assert_eq!(goals[0].rule, GoalRule::Typed(GoalKind::Absolute));
        assert_eq!(goals[0].target, 5);
        assert_eq!(goals[0].stat_code.as_deref(), Some("kills"));
    }

    #[test]
    fn default_assigned_is_true_when_absent_and_read_when_given() {
        let goals = parse(&file(&[
            goal("").replace("g1", "a"),
            goal(r#","defaultAssigned":false"#).replace("g1", "b"),
            goal(r#","defaultAssigned":true"#).replace("g1", "c"),
        ]))
        .unwrap()
        .goals;
        let assigned: Vec<_> = goals.iter().map(|g| g.default_assigned).collect();
        assert_eq!(assigned, [true, false, true]);
        let problems = parse(&file(&[goal(r#","defaultAssigned":"no""#)])).unwrap_err();
        assert!(
            problems[0].contains(r#"field "defaultAssigned": must be true or false, got "no""#),
            "{problems:?}"
        );
    }

    #[test]
    fn daily_increment_and_daily_types_are_recognised() {
        let goals = parse(&file(&[
            goal(r#","type":"increment","daily":true"#).replace("g1", "a"),
            goal(r#","type":"daily""#).replace("g1", "b"),
            goal(r#","type":"increment""#).replace("g1", "c"),
        ]))
        .unwrap()
        .goals;
        let kinds: Vec<_> = goals.iter().map(|g| g.rule).collect();
        assert_eq!(
            kinds,
            [
                GoalRule::Typed(GoalKind::DailyIncrement),
                GoalRule::Typed(GoalKind::Daily),
                GoalRule::Typed(GoalKind::Increment)
            ]
        );
    }

    #[test]
    fn a_misspelt_key_is_reported_with_challenge_goal_and_field() {
        let problems = parse(&file(&[goal(r#","prerequisite":[]"#)])).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(r#"challenge "c1", goal "g1", field "prerequisite": unknown key"#),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let bad = r#"{"challenges":[{"challengeId":"c1","name":"C","goals":[
            {"goalId":"g1","name":"G","eventSource":"statistic","type":"absolute","daily":true,
             "requirement":{"operator":">","targetValue":0},"reward":{"type":"GOLD","rewardId":"","quantity":1.5},
             "prerequisites":["nope"]},
            {"goalId":"g1","name":"G2","eventSource":"login","type":"increment","requirement":{"operator":">=","targetValue":1},
             "reward":{"type":"ITEM","rewardId":"x","quantity":1}}]}]}"#;
        let problems = parse(bad).unwrap_err();
        let text = problems.join("\n");
        for needle in [
            r#"field "requirement.statCode": is required for a goal with "eventSource": "statistic""#,
            r#"field "requirement.operator": only ">=" is supported"#,
            r#"field "requirement.targetValue": must be a whole number from 1"#,
            r#"field "reward.type": must be "ITEM" or "WALLET""#,
            r#"field "reward.rewardId": must be a non-empty string"#,
            r#"field "reward.quantity": must be a whole number"#,
            r#"field "daily": "daily": true is only valid with "type": "increment""#,
            r#"duplicate goalId "g1""#,
            r#"prerequisite "nope" is not a goalId"#,
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn mistyped_missing_and_unknown_values_are_reported() {
        let bad = r#"{"challenges":[{"challengeId":"c1","name":5,"goals":[
            {"name":"G","eventSource":"statistic","type":"absolute",
             "requirement":{"statCode":"k","operator":">=","targetValue":"5"},"reward":{"type":"ITEM","rewardId":"x","quantity":1}},
            {"goalId":"g2","name":"G","eventSource":"stats","type":"weekly",
             "requirement":{"statCode":"k","operator":">=","targetValue":5},"reward":{"type":"ITEM","rewardId":"x","quantity":1}}]}]}"#;
        let text = parse(bad).unwrap_err().join("\n");
        for needle in [
            r#"challenge "c1", field "name": must be a string, got 5"#,
            r##"challenge "c1", goal "#0", field "goalId": is required"##,
            r#"field "requirement.targetValue": must be a whole number, got "5""#,
            r#"goal "g2", field "type": must be "absolute", "increment" or "daily", got "weekly""#,
            r#"goal "g2", field "eventSource": must be "login" or "statistic", got "stats""#,
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn duplicate_challenge_ids_and_bad_top_level_are_reported() {
        let two = r#"{"challenges":[{"challengeId":"c","name":"A","goals":[]},{"challengeId":"c","name":"B","goals":[]}],"extra":1}"#;
        let text = parse(two).unwrap_err().join("\n");
        assert!(text.contains(r#"duplicate challengeId "c""#), "{text}");
        assert!(text.contains(r#"unknown top-level key "extra""#), "{text}");
        assert!(text.contains("at least one goal"), "{text}");
        assert!(parse("[]").unwrap_err()[0].contains("top level must be an object"));
        assert!(parse("{").unwrap_err()[0].contains("not valid JSON"));
    }

    #[test]
    fn ids_longer_than_the_table_allows_are_rejected() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let problems =
            parse(&file(&[goal("").replace("\"g1\"", &format!("{long:?}"))])).unwrap_err();
        assert!(
            problems[0].contains("the table allows at most 100"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_absolute_login_goal_is_rejected_with_a_hint() {
        let g = goal("").replace("statistic", "login");
        let problems = parse(&file(&[g])).unwrap_err();
        assert!(
            problems[0].contains("needs \"eventSource\": \"statistic\""),
            "{problems:?}"
        );
    }

    #[test]
    fn load_names_the_file_in_its_error() {
        let err = load(Path::new("/definitely/not/here.json")).unwrap_err();
        assert!(err.to_string().contains("/definitely/not/here.json"));
        assert!(err.to_string().contains("cannot read the file"));
    }

    /// An M5 goal with `extra` JSON fields appended.
    fn m5_goal(id: &str, requirement_extra: &str, extra: &str) -> String {
        format!(
            r#"{{"goalId":"{id}","name":"G","eventSource":"statistic","requirement":{{"statCode":"kills","operator":">=","targetValue":10{requirement_extra}}},"reward":{{"type":"ITEM","rewardId":"sword","quantity":1}}{extra}}}"#
        )
    }

    const DAILY: &str = r#","rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":true,"allowReselection":true}}"#;

    #[test]
    fn a_file_with_progress_mode_or_rotation_is_m5_and_loads_with_upstreams_defaults() {
        let loaded = parse(&file(&[
            m5_goal("rel", r#","progressMode":"relative""#, DAILY),
            m5_goal("abs", r#","progressMode":"""#, ""),
            m5_goal("plain", "", ""),
        ]))
        .unwrap();
        assert_eq!(loaded.generation, Generation::M5);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let rules: Vec<_> = loaded.goals.iter().map(|g| g.rule).collect();
        assert_eq!(
            rules,
            [
                GoalRule::M5(m5::Goal {
                    relative: true,
                    rotation: Some(Rotation {
                        schedule: Schedule::Daily,
                        reset_progress: true,
                        allow_reselection: true
                    })
                }),
                GoalRule::M5(m5::Goal {
                    relative: false,
                    rotation: None
                }),
                GoalRule::M5(m5::Goal {
                    relative: false,
                    rotation: None
                }),
            ]
        );
        // defaultAssigned left out means false in an M5 file (true with the type rules).
        assert!(loaded.goals.iter().all(|g| !g.default_assigned));
        // A disabled rotation alone makes the file M5, with any mode.
        let disabled = parse(&file(&[m5_goal(
            "g1",
            "",
            r#","rotation":{"enabled":false,"schedule":"hourly"}"#,
        )]))
        .unwrap();
        assert_eq!(disabled.generation, Generation::M5);
        assert_eq!(
            disabled.goals[0].rule,
            GoalRule::M5(m5::Goal {
                relative: false,
                rotation: None
            })
        );
        // onExpiry left out: both flags false, as Go's zero values.
        let bare = parse(&file(&[m5_goal(
            "g1",
            r#","progressMode":"relative""#,
            r#","rotation":{"enabled":true,"type":"global","schedule":"weekly"}"#,
        )]))
        .unwrap();
        assert_eq!(
            bare.goals[0].rule,
            GoalRule::M5(m5::Goal {
                relative: true,
                rotation: Some(Rotation {
                    schedule: Schedule::Weekly,
                    reset_progress: false,
                    allow_reselection: false
                })
            })
        );
    }

    #[test]
    fn m5_files_are_checked_as_upstream_checks_them_each_problem_named() {
        let bad = |requirement: &str, extra: &str| {
            parse(&file(&[m5_goal("g1", requirement, extra)]))
                .unwrap_err()
                .join("\n")
        };
        for mode in ["increment", "daily", "unknown", "ABSOLUTE"] {
            let text = bad(&format!(r#","progressMode":"{mode}""#), "");
            assert!(
                text.contains(&format!(
                    r#"goal "g1", field "requirement.progressMode": invalid progressMode "{mode}""#
                )),
                "{text}"
            );
        }
        for schedule in ["hourly", "DAILY", ""] {
            let text = bad(
                r#","progressMode":"relative""#,
                &format!(
                    r#","rotation":{{"enabled":true,"type":"global","schedule":"{schedule}"}}"#
                ),
            );
            assert!(
                text.contains(&format!(
                    r#"field "rotation.schedule": invalid rotation schedule "{schedule}""#
                )),
                "{text}"
            );
        }
        for kind in ["per_user", "GLOBAL", ""] {
            let text = bad(
                r#","progressMode":"relative""#,
                &format!(r#","rotation":{{"enabled":true,"type":"{kind}","schedule":"daily"}}"#),
            );
            assert!(
                text.contains(&format!(
                    r#"field "rotation.type": invalid rotation type "{kind}""#
                )),
                "{text}"
            );
        }
        let text = bad(r#","progressMode":"absolute""#, DAILY);
        assert!(
            text.contains(r#"rotation requires progressMode "relative", got "absolute""#),
            "{text}"
        );
        let text = bad("", DAILY);
        assert!(
            text.contains(r#"rotation requires progressMode "relative""#),
            "an absent mode is absolute: {text}"
        );
        let text = bad(
            r#","progressMode":"relative""#,
            r#","rotation":{"enabled":"yes"}"#,
        );
        assert!(
            text.contains(r#"field "rotation.enabled": must be true or false, got "yes""#),
            "{text}"
        );
        // A login goal needs a stat code too: logins count under it.
        let login = file(&[m5_goal("g1", r#","progressMode":"absolute""#, "")
            .replace("statistic", "login")
            .replace(r#""statCode":"kills","#, "")]);
        let text = parse(&login).unwrap_err().join("\n");
        assert!(
            text.contains(r#"field "requirement.statCode": is required"#),
            "{text}"
        );
        // An empty name, no challenges, a bad target.
        let text = parse(&file(&[m5_goal("g1", r#","progressMode":"absolute""#, "")
            .replace(r#""name":"G""#, r#""name":"""#)]))
        .unwrap_err()
        .join("\n");
        assert!(
            text.contains(r#"goal "g1", field "name": must not be empty"#),
            "{text}"
        );
        let text = parse(&file(&[m5_goal("g1", r#","progressMode":"absolute""#, "")
            .replace(r#""targetValue":10"#, r#""targetValue":0"#)]))
        .unwrap_err()
        .join("\n");
        assert!(
            text.contains("field \"requirement.targetValue\": must be a whole number from 1"),
            "{text}"
        );
    }

    #[test]
    fn m5_files_warn_about_unknown_keys_and_goals_whose_meaning_changed_and_still_load() {
        let loaded = parse(&file(&[
            m5_goal("inc", "", r#","type":"increment","color":"red""#),
            m5_goal(
                "daily",
                r#","progressMode":"absolute""#,
                r#","type":"daily""#,
            ),
            m5_goal(
                "same",
                r#","progressMode":"absolute""#,
                r#","type":"absolute""#,
            ),
            m5_goal(
                "moved",
                r#","progressMode":"relative""#,
                &format!(r#","type":"daily"{DAILY}"#),
            ),
        ]))
        .unwrap();
        let text = loaded.warnings.join("\n");
        assert_eq!(loaded.warnings.len(), 3, "{text}");
        assert!(
            text.contains(r#"goal "inc", field "color": unknown key, ignored"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"goal "inc", field "type": "type": "increment" is ignored in an M5 file"#
            ) && text.contains("the goal counts as absolute")
                && text.contains(r#"use "progressMode": "relative""#),
            "{text}"
        );
        assert!(
            text.contains(r#"goal "daily", field "type": "type": "daily" is ignored"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"goal "same""#) && !text.contains(r#"goal "moved""#),
            "{text}"
        );
        assert_eq!(
            loaded.goals[0].rule,
            GoalRule::M5(m5::Goal {
                relative: false,
                rotation: None
            })
        );
    }

    #[test]
    fn the_shipped_configs_load_one_of_each_generation() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let typed = load(&root.join("challenges.json")).unwrap();
        assert_eq!(typed.generation, Generation::Typed);
        let m5 = load(&root.join("challenges.m5.json")).unwrap();
        assert_eq!(m5.generation, Generation::M5);
        assert!(m5.warnings.is_empty(), "{:?}", m5.warnings);
        assert!(m5.goals.iter().any(|g| matches!(
            g.rule,
            GoalRule::M5(m5::Goal {
                relative: true,
                rotation: Some(Rotation {
                    schedule: Schedule::Daily,
                    ..
                })
            })
        )));
    }
}
