//! The type rules' goals (`type`, `daily`, `eventSource`), read strictly.

use super::*;

impl Validator {
    pub(super) fn typed_goal(
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

    pub(super) fn event_source(&mut self, obj: &Map<String, Value>, at: &At) -> Option<Source> {
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
}
