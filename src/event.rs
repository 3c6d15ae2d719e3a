//! Domain events: the four AGS messages decoded into one [`Event`], validated.
//!
//! Everything a client can get wrong is caught here, before the WAL, and
//! becomes an [`EventError`] that names the field; the ingress layers turn it
//! into `INVALID_ARGUMENT` (gRPC) or a 400 (HTTP). Nothing here panics on any input.

use chrono::DateTime;

use crate::proto::iam::account::v1::{
    GdprRequestDataDeletionResponse, UserAccount, UserLoggedIn, UserThirdPartyLoggedIn,
};
use crate::proto::social::statistic::v1::StatItemUpdated;

/// The longest user, goal, challenge or namespace id the table stores (`VARCHAR(100)`).
pub const MAX_ID_LEN: usize = 100;
/// The longest event id kept for deduplication.
pub const MAX_EVENT_ID_LEN: usize = 256;
/// The longest stat code accepted (it only selects goals; it is not stored).
pub const MAX_STAT_CODE_LEN: usize = 256;
/// Timestamps further ahead of arrival than this are not trusted; arrival
/// time is used (with a warning and `events_bad_timestamp_total`). AGS
/// services stamp events with synchronized server clocks, so a timestamp
/// minutes ahead is a broken clock, and trusting it would cost real events:
/// a type-rules absolute goal skips values older than the newest applied,
/// a daily goal counted for tomorrow skips today, and a deletion's tombstone
/// would drop a returning player's updates until then.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;

/// The AGS event types the service takes (one gRPC service, one HTTP
/// `type` each), as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Login = 0,
    ThirdPartyLogin = 1,
    Stat = 2,
    GdprDeletion = 3,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Login,
        EventType::ThirdPartyLogin,
        EventType::Stat,
        EventType::GdprDeletion,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EventType::Login => "login",
            EventType::ThirdPartyLogin => "third_party_login",
            EventType::Stat => "stat_item_updated",
            EventType::GdprDeletion => "gdpr_deletion",
        }
    }
}

/// One AGS event, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event id (empty when the producer sent none: such events are not deduplicated).
    pub id: String,
    pub namespace: String,
    pub user_id: String,
    /// The event's time in Unix milliseconds: its `timestamp`, else arrival time.
    pub time_ms: i64,
    /// When it arrived (Unix ms): the time its acknowledgement stands for,
    /// which decides an M5 goal's rotation period.
    pub received_ms: i64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Login,
    Stat {
        stat_code: String,
        latest_value: f64,
        inc: f64,
    },
    /// A GDPR data deletion: every row of the user in this namespace goes.
    GdprDeletion,
}

/// Why an event was rejected. Each names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{field} is {len} characters; at most {max} are allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} must be a finite number, got {value}")]
    NotFinite { field: &'static str, value: f64 },
    /// PostgreSQL stores no NUL character in text: such an id, once
    /// acknowledged, could never be flushed.
    #[error("{field} contains a NUL character (\\u0000), which is not allowed")]
    Nul { field: &'static str },
    /// A control character (a line break, an escape): no AGS id has one,
    /// and in a text log line it could forge another line (an audit line).
    #[error("{field} contains a control character ({code}), which is not allowed")]
    Control { field: &'static str, code: String },
}

/// Where an event's time came from, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    Timestamp,
    /// No timestamp was sent.
    Arrival,
    /// A timestamp was sent but could not be used (unparseable or far in the future).
    ArrivalBadTimestamp,
}

/// The envelope fields shared by all three messages.
macro_rules! envelope {
    ($msg:expr) => {
        Envelope {
            id: &$msg.id,
            namespace: &$msg.namespace,
            timestamp: &$msg.timestamp,
            user_id: &$msg.user_id,
        }
    };
}

struct Envelope<'a> {
    id: &'a str,
    namespace: &'a str,
    timestamp: &'a str,
    user_id: &'a str,
}

/// A login: the user is the top-level `user_id` (as the Go handler reads it),
/// else the payload's; the payload itself is optional.
pub fn from_login(msg: &UserLoggedIn, now_ms: i64) -> Result<(Event, TimeSource), EventError> {
    let account = msg.payload.as_ref().and_then(|p| p.user_account.as_ref());
    login(envelope!(msg), account, now_ms)
}

pub fn from_third_party_login(
    msg: &UserThirdPartyLoggedIn,
    now_ms: i64,
) -> Result<(Event, TimeSource), EventError> {
    let account = msg.payload.as_ref().and_then(|p| p.user_account.as_ref());
    login(envelope!(msg), account, now_ms)
}

/// A GDPR data deletion: the user is `payload.deletion_gdpr.user_id`, else the
/// top-level `user_id` (the order AccelByte's handler reads them in).
pub fn from_gdpr_deletion(
    msg: &GdprRequestDataDeletionResponse,
    now_ms: i64,
) -> Result<(Event, TimeSource), EventError> {
    let gdpr = msg.payload.as_ref().and_then(|p| p.deletion_gdpr.as_ref());
    let payload_user = gdpr.map_or("", |g| g.user_id.as_str());
    let user = first_of(
        (payload_user, "payload.deletion_gdpr.user_id"),
        (&msg.user_id, "user_id"),
    );
    // The deletion is for the namespace the filter accepted it for
    // ([`gdpr_namespace`]), the payload's when the envelope has none.
    let env = Envelope {
        namespace: gdpr_namespace(msg),
        ..envelope!(msg)
    };
    build(env, user, EventKind::GdprDeletion, now_ms)
}

/// The namespace a deletion is for: the top-level one, else the payload's.
pub fn gdpr_namespace(msg: &GdprRequestDataDeletionResponse) -> &str {
    if !msg.namespace.is_empty() {
        return &msg.namespace;
    }
    msg.payload
        .as_ref()
        .and_then(|p| p.deletion_gdpr.as_ref())
        .map_or("", |g| g.namespace.as_str())
}

fn login(
    env: Envelope,
    account: Option<&UserAccount>,
    now_ms: i64,
) -> Result<(Event, TimeSource), EventError> {
    let payload_user = account.map_or("", |a| a.user_id.as_str());
    let user = first_of(
        (env.user_id, "user_id"),
        (payload_user, "payload.user_account.user_id"),
    );
    build(env, user, EventKind::Login, now_ms)
}

pub fn from_stat(msg: &StatItemUpdated, now_ms: i64) -> Result<(Event, TimeSource), EventError> {
    let item = msg.payload.as_ref().ok_or(EventError::Missing("payload"))?;
    if item.stat_code.is_empty() {
        return Err(EventError::Missing("payload.stat_code"));
    }
    check_len("payload.stat_code", &item.stat_code, MAX_STAT_CODE_LEN)?;
    check_finite("payload.latest_value", item.latest_value)?;
    check_finite("payload.inc", item.inc)?;
    let user = first_of(
        (&msg.user_id, "user_id"),
        (&item.user_id, "payload.user_id"),
    );
    build(
        envelope!(msg),
        user,
        EventKind::Stat {
            stat_code: item.stat_code.clone(),
            latest_value: item.latest_value,
            inc: item.inc,
        },
        now_ms,
    )
}

/// The first non-empty of two user ids, with the field it came from.
fn first_of<'a>(
    first: (&'a str, &'static str),
    second: (&'a str, &'static str),
) -> (&'a str, &'static str) {
    if first.0.is_empty() {
        second
    } else {
        first
    }
}

fn build(
    env: Envelope,
    (user_id, field): (&str, &'static str),
    kind: EventKind,
    now_ms: i64,
) -> Result<(Event, TimeSource), EventError> {
    if user_id.is_empty() {
        return Err(EventError::Missing("user_id"));
    }
    check_len(field, user_id, MAX_ID_LEN)?;
    check_len("id", env.id, MAX_EVENT_ID_LEN)?;
    check_len("namespace", env.namespace, MAX_ID_LEN)?;
    let (time_ms, source) = event_time(env.timestamp, now_ms);
    Ok((
        Event {
            id: env.id.to_owned(),
            namespace: env.namespace.to_owned(),
            user_id: user_id.to_owned(),
            time_ms,
            received_ms: now_ms,
            kind,
        },
        source,
    ))
}

/// The event's time: its RFC 3339 `timestamp`, else `now_ms`.
pub fn event_time(timestamp: &str, now_ms: i64) -> (i64, TimeSource) {
    if timestamp.is_empty() {
        return (now_ms, TimeSource::Arrival);
    }
    match DateTime::parse_from_rfc3339(timestamp) {
        Ok(t) if t.timestamp_millis() <= now_ms.saturating_add(MAX_CLOCK_SKEW_MS) => {
            (t.timestamp_millis(), TimeSource::Timestamp)
        }
        _ => (now_ms, TimeSource::ArrivalBadTimestamp),
    }
}

/// A stored id: at most `max` characters, no NUL and no other control
/// character.
fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), EventError> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(match c {
            '\0' => EventError::Nul { field },
            c => EventError::Control {
                field,
                code: format!("U+{:04X}", u32::from(c)),
            },
        });
    }
    // Bytes bound the cost cheaply; characters are what VARCHAR(n) counts.
    if value.len() > max && value.chars().count() > max {
        return Err(EventError::TooLong {
            field,
            len: value.chars().count(),
            max,
        });
    }
    Ok(())
}

fn check_finite(field: &'static str, value: f64) -> Result<(), EventError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(EventError::NotFinite { field, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::iam::account::v1::AnonymousSchema19;
    use crate::proto::social::statistic::v1::StatItem;

    const NOW: i64 = 1_700_000_000_000;

    fn stat_msg() -> StatItemUpdated {
        StatItemUpdated {
            payload: Some(StatItem {
                stat_code: "kills".into(),
                user_id: "payload-user".into(),
                latest_value: 4.0,
                inc: 1.0,
                ..Default::default()
            }),
            id: "ev-1".into(),
            namespace: "ns".into(),
            timestamp: "2023-11-14T22:13:20Z".into(),
            user_id: "top-user".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_top_level_user_id_wins_over_the_payload() {
        let (event, source) = from_stat(&stat_msg(), NOW).unwrap();
        assert_eq!(event.user_id, "top-user");
        assert_eq!(event.time_ms, NOW);
        assert_eq!(source, TimeSource::Timestamp);
    }

    #[test]
    fn the_payload_user_id_is_the_fallback() {
        let mut msg = stat_msg();
        msg.user_id.clear();
        assert_eq!(from_stat(&msg, NOW).unwrap().0.user_id, "payload-user");

        let login = UserLoggedIn {
            payload: Some(AnonymousSchema19 {
                user_account: Some(UserAccount {
                    user_id: "acct".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (event, source) = from_login(&login, NOW).unwrap();
        assert_eq!(event.user_id, "acct");
        assert_eq!(event.kind, EventKind::Login);
        assert_eq!(source, TimeSource::Arrival);
    }

    #[test]
    fn each_invalid_field_is_named() {
        let mut m = stat_msg();
        m.payload = None;
        assert_eq!(
            from_stat(&m, NOW).unwrap_err().to_string(),
            "payload is required"
        );

        let mut m = stat_msg();
        m.user_id.clear();
        m.payload.as_mut().unwrap().user_id.clear();
        assert_eq!(
            from_stat(&m, NOW).unwrap_err().to_string(),
            "user_id is required"
        );

        let mut m = stat_msg();
        m.payload.as_mut().unwrap().stat_code.clear();
        assert_eq!(
            from_stat(&m, NOW).unwrap_err().to_string(),
            "payload.stat_code is required"
        );

        let mut m = stat_msg();
        m.user_id = "u".repeat(101);
        assert_eq!(
            from_stat(&m, NOW).unwrap_err().to_string(),
            "user_id is 101 characters; at most 100 are allowed"
        );

        // PostgreSQL stores no NUL in text: such an id could never be flushed.
        for (field, set) in [
            (
                "user_id",
                (|m: &mut StatItemUpdated| m.user_id = "a\0b".into()) as fn(&mut _),
            ),
            ("namespace", |m| m.namespace = "ns\0".into()),
            ("id", |m| m.id = "\0".into()),
        ] {
            let mut m = stat_msg();
            set(&mut m);
            assert_eq!(
                from_stat(&m, NOW).unwrap_err(),
                EventError::Nul { field },
                "{field}"
            );
        }
        let mut m = stat_msg();
        m.user_id = "a\0b".into();
        assert_eq!(
            from_stat(&m, NOW).unwrap_err().to_string(),
            "user_id contains a NUL character (\\u0000), which is not allowed"
        );
        // A line break in an id would forge a line of the text log (an
        // audit line); no AGS id has a control character.
        let mut m = stat_msg();
        m.user_id = "u\naudit=\"gdpr_user_data_deletion\" forged".into();
        assert_eq!(
            from_stat(&m, NOW).unwrap_err().to_string(),
            "user_id contains a control character (U+000A), which is not allowed"
        );
        let mut m = stat_msg();
        m.id = "e\u{1b}[31m".into();
        assert_eq!(
            from_stat(&m, NOW).unwrap_err(),
            EventError::Control {
                field: "id",
                code: "U+001B".into()
            }
        );

        let mut m = stat_msg();
        m.payload.as_mut().unwrap().latest_value = f64::NAN;
        assert!(from_stat(&m, NOW)
            .unwrap_err()
            .to_string()
            .starts_with("payload.latest_value must be a finite number"));

        let mut m = stat_msg();
        m.payload.as_mut().unwrap().inc = f64::NEG_INFINITY;
        assert!(from_stat(&m, NOW)
            .unwrap_err()
            .to_string()
            .starts_with("payload.inc must be a finite number"));

        let login = UserLoggedIn::default();
        assert_eq!(
            from_login(&login, NOW).unwrap_err(),
            EventError::Missing("user_id")
        );
        assert_eq!(
            from_gdpr_deletion(&GdprRequestDataDeletionResponse::default(), NOW).unwrap_err(),
            EventError::Missing("user_id")
        );
    }

    #[test]
    fn a_login_without_a_payload_is_valid_when_the_top_level_user_id_is_set() {
        let login = UserLoggedIn {
            user_id: "top".into(),
            id: "ev".into(),
            ..Default::default()
        };
        let (event, _) = from_login(&login, NOW).unwrap();
        assert_eq!(
            (event.user_id.as_str(), event.kind),
            ("top", EventKind::Login)
        );
        let third = UserThirdPartyLoggedIn {
            user_id: "top".into(),
            ..Default::default()
        };
        assert_eq!(
            from_third_party_login(&third, NOW).unwrap().0.user_id,
            "top"
        );
    }

    #[test]
    fn a_gdpr_deletion_names_its_user_in_the_payload_first_then_at_the_top_level() {
        use crate::proto::iam::account::v1::{
            DeletionGdpr, GdprRequestDataDeletionResponsePayloadData,
        };
        let mut msg = GdprRequestDataDeletionResponse {
            payload: Some(GdprRequestDataDeletionResponsePayloadData {
                deletion_gdpr: Some(DeletionGdpr {
                    user_id: "from-payload".into(),
                    namespace: "payload-ns".into(),
                    ..Default::default()
                }),
            }),
            user_id: "top".into(),
            ..Default::default()
        };
        let (event, _) = from_gdpr_deletion(&msg, NOW).unwrap();
        assert_eq!(event.user_id, "from-payload");
        assert_eq!(event.kind, EventKind::GdprDeletion);
        assert_eq!(gdpr_namespace(&msg), "payload-ns");
        // The deletion is for the namespace it was accepted for: without a
        // top-level one, the payload's (not "", which matches no row).
        assert_eq!(event.namespace, "payload-ns");
        msg.namespace = "top-ns".into();
        assert_eq!(gdpr_namespace(&msg), "top-ns");
        assert_eq!(from_gdpr_deletion(&msg, NOW).unwrap().0.namespace, "top-ns");

        msg.payload
            .as_mut()
            .unwrap()
            .deletion_gdpr
            .as_mut()
            .unwrap()
            .user_id = "p".repeat(101);
        assert_eq!(
            from_gdpr_deletion(&msg, NOW).unwrap_err().to_string(),
            "payload.deletion_gdpr.user_id is 101 characters; at most 100 are allowed"
        );
        msg.payload = None;
        assert_eq!(from_gdpr_deletion(&msg, NOW).unwrap().0.user_id, "top");
    }

    #[test]
    fn a_user_id_of_100_multibyte_characters_fits() {
        let mut m = stat_msg();
        m.user_id = "é".repeat(100);
        assert!(from_stat(&m, NOW).is_ok());
    }

    #[test]
    fn unusable_timestamps_fall_back_to_arrival_time() {
        assert_eq!(
            event_time("yesterday", NOW),
            (NOW, TimeSource::ArrivalBadTimestamp)
        );
        assert_eq!(
            event_time("2999-01-01T00:00:00Z", NOW),
            (NOW, TimeSource::ArrivalBadTimestamp)
        );
        // NOW is 2023-11-14T22:13:20Z: five minutes ahead is trusted, six
        // minutes (or an hour) is a broken clock.
        assert_eq!(
            event_time("2023-11-14T22:18:20Z", NOW),
            (NOW + MAX_CLOCK_SKEW_MS, TimeSource::Timestamp)
        );
        for ahead in ["2023-11-14T22:19:20Z", "2023-11-14T23:13:20Z"] {
            assert_eq!(
                event_time(ahead, NOW),
                (NOW, TimeSource::ArrivalBadTimestamp),
                "{ahead}"
            );
        }
        assert_eq!(event_time("", NOW), (NOW, TimeSource::Arrival));
        assert_eq!(
            event_time("2023-11-14T23:13:20+01:00", NOW),
            (NOW, TimeSource::Timestamp)
        );
    }
}
