//! JSON events into AGS messages, and every bad field named.
use super::*;
use serde_json::json;

#[test]
fn each_type_becomes_its_ags_message() {
    let login =
        parse_event(&json!({"type":"login","id":"e1","userId":"u","namespace":"ns"})).unwrap();
    assert!(
        matches!(&login, Message::Login(m) if m.user_id == "u" && m.id == "e1" && m.payload.is_none())
    );
    let stat = parse_event(
        &json!({"type":"stat","id":"e2","userId":"u","namespace":"ns",
        "statCode":"kills","latestValue":7,"inc":2.5,"timestamp":"2026-01-01T00:00:00Z"}),
    )
    .unwrap();
    let Message::Stat(m) = stat else {
        panic!("{stat:?}")
    };
    let item = m.payload.unwrap();
    assert_eq!(
        (item.stat_code.as_str(), item.latest_value, item.inc),
        ("kills", 7.0, 2.5)
    );
    assert_eq!(m.timestamp, "2026-01-01T00:00:00Z");
    let gdpr = parse_event(&json!({"type":"gdprDeletion","id":"e3","userId":"u","namespace":"ns"}))
        .unwrap();
    assert!(matches!(&gdpr, Message::GdprDeletion(m)
        if m.payload.as_ref().unwrap().deletion_gdpr.as_ref().unwrap().user_id == "u"));
    assert!(matches!(
        parse_event(&json!({"type":"thirdPartyLogin","userId":"u","namespace":"ns"})).unwrap(),
        Message::ThirdPartyLogin(_)
    ));
}

#[test]
fn every_bad_field_is_named() {
    let errors = parse_event(&json!({"type":"stat","userId":7,"namespace":"ns",
        "statCode":"kills","latestValue":"lots","extra":true}))
    .unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["extra", "userId", "latestValue"], "{errors:?}");
    assert!(errors[2]
        .message
        .contains("must be a number, got the string \"lots\""));

    let errors = parse_event(&json!({"type":"weekly"})).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["type", "namespace"], "{errors:?}");

    let errors = parse_event(&json!({"type":"login","namespace":"ns","inc":1})).unwrap_err();
    assert_eq!(
        errors,
        [field_error("inc", "only a stat event has this field")]
    );
    assert_eq!(
        parse_event(&json!([1])).unwrap_err()[0].message,
        "an event must be a JSON object"
    );
}

#[test]
fn validation_errors_name_the_json_field() {
    assert_eq!(
        event_error(&EventError::Missing("payload.stat_code")).field,
        "statCode"
    );
    assert_eq!(event_error(&EventError::Missing("user_id")).field, "userId");
    let long = event_error(&EventError::TooLong {
        field: "payload.deletion_gdpr.user_id",
        len: 101,
        max: 100,
    });
    assert_eq!(
        (long.field.as_str(), long.message.as_str()),
        ("userId", "is 101 characters; at most 100 are allowed")
    );
    let nul = event_error(&EventError::Nul { field: "namespace" });
    assert_eq!(
        (nul.field.as_str(), nul.message.as_str()),
        (
            "namespace",
            "contains a NUL character (\\u0000), which is not allowed"
        )
    );
}
