//! M5 goals: `requirement.progressMode`, goal-level `rotation`, and the
//! M4 fields AccelByte's loader ignores (a warning where a goal's meaning
//! changed).

use super::*;

impl Validator {
    /// A goal of an M5 file, with AccelByte's current loader's checks.
    pub(super) fn m5_goal(
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
    pub(super) fn progress_mode(&mut self, obj: &Map<String, Value>, at: &At) -> Option<bool> {
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
    pub(super) fn rotation(
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
    pub(super) fn m4_fields(
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
}
