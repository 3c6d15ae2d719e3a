//! The field readers both generations share: ids, strings, booleans,
//! arrays, numbers, the requirement and the reward; every problem named
//! with its challenge, goal and field.

use super::*;

impl Validator {
    /// A string field that may be absent (None), else must be a string.
    pub(super) fn optional_string(
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

    pub(super) fn non_empty_string(&mut self, obj: &Map<String, Value>, key: &str, at: &At) {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) => self.problem(format!("{}: must not be empty", at.field(key))),
            None => self.problem(format!("{}: is required", at.field(key))),
            Some(other) => {
                self.problem(format!("{}: must be a string, got {other}", at.field(key)))
            }
        }
    }

    pub(super) fn requirement(
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

    pub(super) fn reward(&mut self, obj: &Map<String, Value>, at: &At) {
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

    pub(super) fn prerequisites(&mut self, obj: &Map<String, Value>, at: &At) -> Vec<String> {
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
    pub(super) fn unknown_keys(
        &mut self,
        obj: &Map<String, Value>,
        known: &[&str],
        at: &At,
        prefix: &str,
    ) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            let field = at.field(&format!("{prefix}{key}"));
            // Go's encoding/json matches keys without regard to case: upstream
            // reads this key as the known one, so ignoring it would change
            // what the goal means here.
            if let Some(meant) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                self.problem(format!(
                    "{field}: write it as \"{meant}\" (AccelByte's loader reads keys without \
                     regard to case and would take it as \"{meant}\"; this handler reads them \
                     exactly)"
                ));
                continue;
            }
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

    /// A required identifier: non-empty, at most [`MAX_ID_LEN`] characters,
    /// no NUL (the database stores none in text).
    pub(super) fn id(&mut self, obj: &Map<String, Value>, key: &str, at: &At) -> Option<String> {
        match obj.get(key) {
            Some(Value::String(s)) if s.is_empty() => {
                self.problem(format!("{}: must not be empty", at.field(key)));
                None
            }
            Some(Value::String(s)) if s.contains('\0') => {
                self.problem(format!(
                    "{}: contains a NUL character (\\u0000), which the table cannot store",
                    at.field(key)
                ));
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

    pub(super) fn string(&mut self, obj: &Map<String, Value>, key: &str, required: bool, at: &At) {
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
    pub(super) fn boolean(
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

    pub(super) fn array<'v>(
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

    pub(super) fn positive_int(
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
