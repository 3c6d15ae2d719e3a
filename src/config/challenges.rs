//! `challenges.json`: AccelByte's challenge format, parsed strictly.
//!
//! AccelByte's Go loader ignores misspelt keys, so a typo silently disables a
//! goal. Here every problem in the file is collected (unknown keys, missing or
//! mistyped fields, duplicate ids, dangling prerequisites) and reported at once,
//! one line per problem, naming the file, challenge, goal and field.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::event::MAX_ID_LEN;
use crate::rules::{GoalDef, GoalKind, Source};

/// Every problem found in one `challenges.json`.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in {}:\n  - {}", problems.len(), file.display(), problems.join("\n  - "))]
pub struct ChallengesError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

/// Reads and validates a challenges file into goal definitions.
pub fn load(path: &Path) -> Result<Vec<GoalDef>, ChallengesError> {
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
pub fn parse(text: &str) -> Result<Vec<GoalDef>, Vec<String>> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| vec![format!("not valid JSON: {e}")])?;
    let mut v = Validator::default();
    let goals = v.root(&root);
    if v.problems.is_empty() {
        Ok(goals)
    } else {
        Err(v.problems)
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
const REQUIREMENT_KEYS: &[&str] = &["statCode", "operator", "targetValue"];
const REWARD_KEYS: &[&str] = &["type", "rewardId", "quantity"];

#[derive(Default)]
struct Validator {
    problems: Vec<String>,
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
            self.problem(format!(
                "unknown top-level key {key:?} (expected only \"challenges\")"
            ));
        }
        let Some(challenges) = obj.get("challenges") else {
            self.problem("missing top-level key \"challenges\"".into());
            return Vec::new();
        };
        let Some(challenges) = challenges.as_array() else {
            self.problem("\"challenges\" must be an array".into());
            return Vec::new();
        };

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
            self.string(obj, "name", true, &at);
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
                if let Some(def) = self.goal(gobj, &label, &gat) {
                    goals.push(def);
                }
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

    fn goal(&mut self, obj: &Map<String, Value>, challenge_id: &str, at: &At) -> Option<GoalDef> {
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
        let daily = self.boolean(obj, "daily", at).unwrap_or(false);
        let default_assigned = self.boolean(obj, "defaultAssigned", at).unwrap_or(true);
        let source = match obj.get("eventSource") {
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
        };
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
            kind,
            source: source?,
            stat_code,
            target: target?,
            default_assigned,
        })
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
        self.unknown_keys(req, REQUIREMENT_KEYS, at, "requirement.");
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
        if source == Some(Source::Statistic) && stat_code.is_none() {
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

    fn unknown_keys(&mut self, obj: &Map<String, Value>, known: &[&str], at: &At, prefix: &str) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            self.problem(format!(
                "{}: unknown key (expected one of: {})",
                at.field(&format!("{prefix}{key}")),
                known.join(", ")
            ));
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

    fn boolean(&mut self, obj: &Map<String, Value>, key: &str, at: &At) -> Option<bool> {
        match obj.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            None => None,
            Some(other) => {
                self.problem(format!(
                    "{}: must be true or false, got {other}",
                    at.field(key)
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
        let goals = parse(&file(&[goal("")])).unwrap();
        assert_eq!(goals.len(), 1);
        assert_eq!(goals[0].kind, GoalKind::Absolute);
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
        .unwrap();
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
        .unwrap();
        let kinds: Vec<_> = goals.iter().map(|g| g.kind).collect();
        assert_eq!(
            kinds,
            [
                GoalKind::DailyIncrement,
                GoalKind::Daily,
                GoalKind::Increment
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
}
