//! HTTP JSON ingest on the HTTP port: `POST /v1/events` (one event) and
//! `POST /v1/events/batch` (a JSON array of at most [`MAX_BATCH`]).
//!
//! An event mirrors the AGS events:
//! `{"type": "login" | "thirdPartyLogin" | "stat" | "gdprDeletion", "id",
//! "userId", "namespace", "timestamp"?, "statCode"?, "latestValue"?, "inc"?}`.
//! It is turned into the AGS wire message of its type and goes through exactly
//! the path a gRPC call takes ([`crate::ingest`]): the same validation, dedup
//! by `id`, and a 2xx only once its records are fsync'd in the WAL.
//!
//! Answers: 200 `{"outcome": …}`; 400 `{"errors": [{"field", "message"}]}`
//! naming every bad field (a wrong type, an unknown field, truncated JSON);
//! 404 while HTTP ingest is closed and 401 without an accepted bearer token
//! ([`crate::http::access`], checked before the body is read); 413 for a body
//! over `HTTP_MAX_BODY_BYTES`; 429 with `Retry-After` over the client's rate;
//! 503 with `Retry-After` when the event cannot be made durable now (the WAL
//! is full, the service is starting or stopping). A batch answers per item (200 when every item was accepted,
//! else 207), items in the order sent.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::event::{self, EventError};
use crate::http::access::{Access, Client, RateLimit};
use crate::ingest::{EventType, IngestError, Ingress, Outcome};
use crate::metrics::{failure, Metrics};
use crate::proto::iam::account::v1::{
    DeletionGdpr, GdprRequestDataDeletionResponse, GdprRequestDataDeletionResponsePayloadData,
    UserLoggedIn, UserThirdPartyLoggedIn,
};
use crate::proto::social::statistic::v1::{StatItem, StatItemUpdated};

/// The most events one batch may hold.
pub const MAX_BATCH: usize = 100;
/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: u32 = 1;

const FIELDS: &[&str] = &[
    "type",
    "id",
    "userId",
    "namespace",
    "timestamp",
    "statCode",
    "latestValue",
    "inc",
];

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A JSON event turned into its AGS wire message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Login(UserLoggedIn),
    ThirdPartyLogin(UserThirdPartyLoggedIn),
    Stat(StatItemUpdated),
    GdprDeletion(GdprRequestDataDeletionResponse),
}

impl Message {
    fn kind(&self) -> EventType {
        match self {
            Message::Login(_) => EventType::Login,
            Message::ThirdPartyLogin(_) => EventType::ThirdPartyLogin,
            Message::Stat(_) => EventType::Stat,
            Message::GdprDeletion(_) => EventType::GdprDeletion,
        }
    }

    /// The namespace the event claims, as the gRPC path reads it.
    fn namespace(&self) -> &str {
        match self {
            Message::Login(m) => &m.namespace,
            Message::ThirdPartyLogin(m) => &m.namespace,
            Message::Stat(m) => &m.namespace,
            Message::GdprDeletion(m) => event::gdpr_namespace(m),
        }
    }

    /// The same validation a gRPC call of this type gets.
    fn parse(&self, now_ms: i64) -> Result<(event::Event, event::TimeSource), EventError> {
        match self {
            Message::Login(m) => event::from_login(m, now_ms),
            Message::ThirdPartyLogin(m) => event::from_third_party_login(m, now_ms),
            Message::Stat(m) => event::from_stat(m, now_ms),
            Message::GdprDeletion(m) => event::from_gdpr_deletion(m, now_ms),
        }
    }
}

/// Reads the fields of one JSON event; every problem is reported.
pub fn parse_event(value: &Value) -> Result<Message, Vec<FieldError>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![field_error("", "an event must be a JSON object")]);
    };
    let mut errors = Vec::new();
    for key in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        errors.push(field_error(
            key,
            format!("unknown field (expected: {})", FIELDS.join(", ")),
        ));
    }
    let kind = match text(obj, "type", &mut errors) {
        None if !obj.contains_key("type") => {
            errors.push(field_error(
                "type",
                "is required: login, thirdPartyLogin, stat or gdprDeletion",
            ));
            None
        }
        None => None,
        Some(t) => match t.as_str() {
            "login" | "thirdPartyLogin" | "stat" | "gdprDeletion" => Some(t),
            other => {
                errors.push(field_error(
                    "type",
                    format!("must be login, thirdPartyLogin, stat or gdprDeletion, got {other:?}"),
                ));
                None
            }
        },
    };
    let id = text(obj, "id", &mut errors).unwrap_or_default();
    let user_id = text(obj, "userId", &mut errors).unwrap_or_default();
    let namespace = text(obj, "namespace", &mut errors);
    if namespace.is_none() && !obj.contains_key("namespace") {
        errors.push(field_error("namespace", "is required"));
    }
    let namespace = namespace.unwrap_or_default();
    let timestamp = text(obj, "timestamp", &mut errors).unwrap_or_default();
    let stat_code = text(obj, "statCode", &mut errors);
    let latest_value = number(obj, "latestValue", &mut errors);
    let inc = number(obj, "inc", &mut errors);
    let Some(kind) = kind else {
        return Err(errors);
    };
    if kind != "stat" {
        for (field, present) in [
            ("statCode", stat_code.is_some()),
            ("latestValue", latest_value.is_some()),
            ("inc", inc.is_some()),
        ] {
            if present {
                errors.push(field_error(field, "only a stat event has this field"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(match kind.as_str() {
        "login" => Message::Login(UserLoggedIn {
            id,
            namespace,
            timestamp,
            user_id,
            name: "userLoggedIn".into(),
            ..Default::default()
        }),
        "thirdPartyLogin" => Message::ThirdPartyLogin(UserThirdPartyLoggedIn {
            id,
            namespace,
            timestamp,
            user_id,
            name: "userThirdPartyLoggedIn".into(),
            ..Default::default()
        }),
        "stat" => Message::Stat(StatItemUpdated {
            payload: Some(StatItem {
                stat_code: stat_code.unwrap_or_default(),
                user_id: user_id.clone(),
                namespace: namespace.clone(),
                latest_value: latest_value.unwrap_or(0.0),
                inc: inc.unwrap_or(0.0),
                ..Default::default()
            }),
            id,
            namespace,
            timestamp,
            user_id,
            name: "statItemUpdated".into(),
            ..Default::default()
        }),
        _ => Message::GdprDeletion(GdprRequestDataDeletionResponse {
            payload: Some(GdprRequestDataDeletionResponsePayloadData {
                deletion_gdpr: Some(DeletionGdpr {
                    user_id,
                    namespace: namespace.clone(),
                    ..Default::default()
                }),
            }),
            id,
            namespace,
            timestamp,
            name: "gdprRequestDataDeletionResponse".into(),
            ..Default::default()
        }),
    })
}

fn text(obj: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(field_error(
                field,
                format!("must be a string, got {}", kind_of(other)),
            ));
            None
        }
    }
}

fn number(obj: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            errors.push(field_error(
                field,
                format!("must be a number, got {}", kind_of(other)),
            ));
            None
        }
    }
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The JSON name of a field an [`EventError`] names (they name the wire fields).
fn json_field(wire: &str) -> &'static str {
    match wire {
        "payload.stat_code" => "statCode",
        "payload.latest_value" => "latestValue",
        "payload.inc" => "inc",
        "id" => "id",
        "namespace" => "namespace",
        _ => "userId",
    }
}

fn event_error(e: &EventError) -> FieldError {
    let (wire, message) = match e {
        EventError::Missing(f) => (*f, "is required".to_owned()),
        EventError::TooLong { field, len, max } => (
            *field,
            format!("is {len} characters; at most {max} are allowed"),
        ),
        EventError::NotFinite { field, value } => {
            (*field, format!("must be a finite number, got {value}"))
        }
        EventError::Nul { field } => (
            *field,
            "contains a NUL character (\\u0000), which is not allowed".to_owned(),
        ),
        EventError::Control { field, code } => (
            *field,
            format!("contains a control character ({code}), which is not allowed"),
        ),
    };
    field_error(json_field(wire), message)
}

/// What one event came to, as a batch item or a whole answer.
#[derive(Debug, Serialize)]
struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Answer {
    fn accepted(outcome: Outcome) -> Answer {
        Answer {
            index: None,
            status: 200,
            outcome: Some(outcome.as_str()),
            errors: Vec::new(),
            error: None,
        }
    }

    fn invalid(errors: Vec<FieldError>) -> Answer {
        Answer {
            index: None,
            status: 400,
            outcome: None,
            errors,
            error: None,
        }
    }

    fn failed(status: u16, error: String) -> Answer {
        Answer {
            index: None,
            status,
            outcome: None,
            errors: Vec::new(),
            error: Some(error),
        }
    }

    fn unavailable(error: String) -> Answer {
        Answer::failed(503, error)
    }
}

/// One event through the ingestion path. A body refused before it
/// reaches the path is counted here; the path counts its own refusals.
async fn ingest(ingress: &Ingress, metrics: &Metrics, value: &Value) -> Answer {
    let message = match parse_event(value) {
        Ok(m) => m,
        Err(errors) => {
            refused(metrics, failure::INVALID);
            return Answer::invalid(errors);
        }
    };
    let result = ingress
        .ingest(message.kind(), message.namespace(), |now| {
            message.parse(now)
        })
        .await;
    match result {
        Ok(outcome) => Answer::accepted(outcome),
        Err(IngestError::Invalid(e)) => Answer::invalid(vec![event_error(&e)]),
        Err(IngestError::Unavailable(e)) => Answer::unavailable(e.to_string()),
        Err(e @ IngestError::Internal(_)) => Answer::failed(500, e.to_string()),
    }
}

/// Failed token checks an address may make a second, and at once, before
/// it gets 429 whatever it sends (a caller whose token was rotated out
/// stays well under it; guessing a 16-byte token does not end).
pub const FAILED_GUESSES_RATE: u32 = 5;
pub const FAILED_GUESSES_BURST: u32 = 50;

/// What the ingest handlers share.
#[derive(Clone)]
pub struct IngestState {
    pub gate: std::sync::Arc<crate::ingest::Gate>,
    pub access: Access,
    /// `HTTP_INGEST_RATE` / `HTTP_INGEST_BURST`; none when the rate is 0.
    pub limit: Option<std::sync::Arc<RateLimit>>,
    /// Wrong or missing tokens per address ([`FAILED_GUESSES_RATE`] a
    /// second, [`FAILED_GUESSES_BURST`] at once).
    pub failed_guesses: std::sync::Arc<RateLimit>,
    pub metrics: std::sync::Arc<Metrics>,
}

/// A request refused before it reached the ingestion path, counted as the
/// path counts its refusals (`events_failed_total{reason}`) and as received
/// (`events_total{event="http_refused"}`: its type was not read), so that
/// refusals never outnumber what was received.
fn refused(metrics: &Metrics, reason: &str) {
    metrics
        .events
        .with_label_values(&[crate::metrics::HTTP_REFUSED])
        .inc();
    metrics.events_failed.with_label_values(&[reason]).inc();
}

fn respond(status: StatusCode, body: &impl Serialize, retry: bool) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

fn error_body(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}

/// Who may write, checked before the body is read: 404 while HTTP ingest
/// is closed, 401 without an accepted bearer token. Marks the request with
/// the [`Client`] its events count against.
pub async fn guard(State(state): State<IngestState>, mut request: Request, next: Next) -> Response {
    let client = match &state.access {
        Access::Closed => {
            refused(&state.metrics, failure::UNAUTHORIZED);
            return respond(
                StatusCode::NOT_FOUND,
                &error_body(
                    "HTTP ingest is closed on this service: set HTTP_INGEST_TOKEN_FILE (or \
                     HTTP_INGEST_TOKEN) to accept writes with a bearer token, or \
                     HTTP_INGEST_OPEN=true on a trusted network (docs/SECURITY.md)",
                ),
                false,
            );
        }
        Access::Open { .. } => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            Client::Address(peer)
        }
        Access::Tokens(tokens) => {
            // An address whose guesses keep failing is not heard for a
            // while, right or wrong: guessing a token takes forever.
            let peer = Client::Address(
                request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
            );
            let now = std::time::Instant::now();
            if let Err(wait) = state.failed_guesses.holds_one(&peer, now) {
                return too_many(
                    &state.metrics,
                    wait,
                    "too many requests with a wrong or missing bearer token from this address",
                );
            }
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given.and_then(|g| tokens.find(g)) {
                Some(token) => Client::Token(token),
                None => {
                    let _ = state.failed_guesses.take(&peer, 1, now);
                    refused(&state.metrics, failure::UNAUTHORIZED);
                    let mut response = respond(
                        StatusCode::UNAUTHORIZED,
                        &error_body(
                            "a valid bearer token is required (Authorization: Bearer <token>, \
                             a token of HTTP_INGEST_TOKEN or HTTP_INGEST_TOKEN_FILE)",
                        ),
                        false,
                    );
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return response;
                }
            }
        }
    };
    // A client already over its rate is refused before its body is read
    // and parsed (a batch then takes what it holds, after the parse).
    if let Some(limit) = &state.limit {
        if let Err(wait) = limit.holds_one(&client, std::time::Instant::now()) {
            return too_many(
                &state.metrics,
                wait,
                "over this client's HTTP ingest rate (HTTP_INGEST_RATE events/s, HTTP_INGEST_BURST at once)",
            );
        }
    }
    request.extensions_mut().insert(client);
    next.run(request).await
}

/// The body limit, the gate and the JSON body, common to both endpoints.
fn admit(
    state: &IngestState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Ingress, Value), Box<Response>> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let too_large = status == StatusCode::PAYLOAD_TOO_LARGE;
            refused(
                &state.metrics,
                if too_large {
                    failure::TOO_LARGE
                } else {
                    failure::INVALID
                },
            );
            let message = if too_large {
                "the body is larger than HTTP_MAX_BODY_BYTES; send smaller batches".to_owned()
            } else {
                rejection.body_text()
            };
            return Err(Box::new(respond(status, &error_body(&message), false)));
        }
    };
    let Some(ingress) = state.gate.get() else {
        refused(&state.metrics, failure::UNAVAILABLE);
        return Err(Box::new(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &error_body("the service is not serving (starting up or shutting down); retry later"),
            true,
        )));
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(value) => Ok((ingress, value)),
        Err(e) => Err(Box::new({
            refused(&state.metrics, failure::INVALID);
            respond(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "errors": [field_error("", format!("the body is not valid JSON: {e}"))] }),
                false,
            )
        })),
    }
}

/// Takes `events` from the client's bucket: 429 with `Retry-After` when it
/// holds fewer.
fn within_rate(state: &IngestState, client: &Client, events: usize) -> Result<(), Box<Response>> {
    let Some(limit) = &state.limit else {
        return Ok(());
    };
    let Err(wait) = limit.take(client, events, std::time::Instant::now()) else {
        return Ok(());
    };
    Err(Box::new(too_many(
        &state.metrics,
        wait,
        "over this client's HTTP ingest rate (HTTP_INGEST_RATE events/s, HTTP_INGEST_BURST at once)",
    )))
}

/// 429 with `Retry-After`, counted as `rate_limited`.
fn too_many(metrics: &Metrics, wait: std::time::Duration, why: &str) -> Response {
    refused(metrics, failure::RATE_LIMITED);
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = respond(
        StatusCode::TOO_MANY_REQUESTS,
        &error_body(&format!("{why}; retry after {seconds} s")),
        false,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The ingest routes behind [`guard`]; bodies over `max_body_bytes` get 413.
pub fn router(state: IngestState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/events", post(post_event))
        .route("/v1/events/batch", post(post_batch))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// `POST /v1/events`.
pub async fn post_event(
    State(state): State<IngestState>,
    Extension(client): Extension<Client>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ingress, value) = match admit(&state, body) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    if let Err(response) = within_rate(&state, &client, 1) {
        return *response;
    }
    let answer = ingest(&ingress, &state.metrics, &value).await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(status, &answer, answer.status == 503)
}

/// `POST /v1/events/batch`.
pub async fn post_batch(
    State(state): State<IngestState>,
    Extension(client): Extension<Client>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (ingress, value) = match admit(&state, body) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let Value::Array(items) = value else {
        refused(&state.metrics, failure::INVALID);
        return respond(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "errors": [field_error("", "a batch must be a JSON array of events")] }),
            false,
        );
    };
    if items.len() > MAX_BATCH {
        refused(&state.metrics, failure::INVALID);
        return respond(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "errors": [field_error("", format!("a batch holds at most {MAX_BATCH} events, got {}", items.len()))] }),
            false,
        );
    }
    if let Err(response) = within_rate(&state, &client, items.len()) {
        return *response;
    }
    // Concurrently, so the whole batch shares the WAL's group commits.
    let answers = futures_util::future::join_all(
        items
            .iter()
            .map(|item| ingest(&ingress, &state.metrics, item)),
    )
    .await;
    let answers: Vec<Answer> = answers
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            a.index = Some(i);
            a
        })
        .collect();
    let all_ok = answers.iter().all(|a| a.status == 200);
    let retry = answers.iter().any(|a| a.status == 503);
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    respond(status, &serde_json::json!({ "results": answers }), retry)
}

#[cfg(test)]
mod tests;
