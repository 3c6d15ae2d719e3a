//! Both generations of challenges.json: what loads, and every problem named.

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
    let problems = parse(&file(&[goal("").replace("\"g1\"", &format!("{long:?}"))])).unwrap_err();
    assert!(
        problems[0].contains("the table allows at most 100"),
        "{problems:?}"
    );
}

#[test]
fn ids_with_a_nul_character_are_rejected() {
    let problems = parse(&file(&[goal("").replace("\"g1\"", r#""g\u00001""#)])).unwrap_err();
    assert!(
        problems[0].contains(r#"field "goalId": contains a NUL character"#),
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
            &format!(r#","rotation":{{"enabled":true,"type":"global","schedule":"{schedule}"}}"#),
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
    let text =
        parse(&file(&[m5_goal("g1", r#","progressMode":"absolute""#, "")
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
        text.contains(r#"goal "inc", field "type": "type": "increment" is ignored in an M5 file"#)
            && text.contains("the goal counts as absolute")
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

#[test]
fn null_reads_as_left_out_as_upstreams_json_reads_it() {
    let loaded = parse(&file(&[m5_goal(
        "rel",
        r#","progressMode":"relative""#,
        r#","description":null,"defaultAssigned":null,"prerequisites":null,"rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":null}"#,
    )]))
    .unwrap();
    assert_eq!(loaded.generation, Generation::M5);
    assert_eq!(
        loaded.goals[0].rule,
        GoalRule::M5(m5::Goal {
            relative: true,
            rotation: Some(Rotation {
                schedule: Schedule::Daily,
                reset_progress: false,
                allow_reselection: false
            })
        })
    );
    // A null rotation is no rotation, in a file of M5 (its key says so).
    let loaded = parse(&file(&[m5_goal("plain", "", r#","rotation":null"#)])).unwrap();
    assert_eq!(loaded.generation, Generation::M5);
    assert_eq!(
        loaded.goals[0].rule,
        GoalRule::M5(m5::Goal {
            relative: false,
            rotation: None
        })
    );
    // A required field set to null is missing.
    let problems = parse(&file(&[goal(r#","reward":null"#)])).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(r#"field "reward": is required"#)),
        "{problems:?}"
    );
}

#[test]
fn a_key_in_another_case_is_refused_naming_the_key_upstream_would_read() {
    for (file, key, meant) in [
        (
            file(&[m5_goal("m", r#","progressmode":"relative""#, DAILY)]),
            "requirement.progressmode",
            "progressMode",
        ),
        // The only mark of M5 in another case: still an M5 file, still refused.
        (
            file(&[m5_goal("m", r#","progressmode":"relative""#, "")]),
            "requirement.progressmode",
            "progressMode",
        ),
        (
            file(&[goal(r#","DefaultAssigned":false"#)]),
            "DefaultAssigned",
            "defaultAssigned",
        ),
    ] {
        let problems = parse(&file).unwrap_err();
        let text = problems.join("\n");
        assert!(
            text.contains(&format!(r#"field "{key}": write it as "{meant}""#)),
            "{text}"
        );
    }
}
