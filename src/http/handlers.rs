//! The endpoints. Bodies are parsed here (not by axum extractors) so that every malformed
//! input gets a precise 4xx; engine calls run on blocking threads.

use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::{AppState, json_response};
use crate::catalog::StreamDef;
use crate::error::Error;
use crate::event::json::{event_from_object_text, events_from_array_text};
use crate::event::{Event, EventLimits, json_time};
use crate::export::{write_csv, write_ndjson, write_parquet};
use crate::spine::{Passthrough, Spine};
use crate::time::parse_timestamp;

type ApiResult = Result<Response, ApiError>;

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_event`, `unknown_feature`.
    code: String,
    message: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AppendResponse {
    accepted: usize,
    duplicates: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct FeatureValues {
    entity: String,
    /// Epoch milliseconds.
    as_of: i64,
    /// Feature name → value (int, float, string, bool, list or null).
    #[schema(value_type = Object)]
    features: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueryResponse {
    as_of: i64,
    rows: Vec<QueryRow>,
}

#[derive(Serialize, ToSchema)]
struct QueryRow {
    entity: String,
    #[schema(value_type = Object)]
    features: serde_json::Map<String, serde_json::Value>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FeaturesParams {
    /// The entity key.
    entity: String,
    /// Comma-separated feature names (default: every feature).
    names: Option<String>,
    /// Epoch milliseconds or RFC 3339 (default: now).
    as_of: Option<String>,
}

impl FeaturesParams {
    /// Parsed by hand, being the hottest request: every key must be known and appear once,
    /// so a misspelt parameter is an error rather than silently ignored.
    pub(crate) fn parse(query: Option<&str>) -> Result<FeaturesParams, ApiError> {
        let invalid = |message: String| ApiError::bad_request("invalid_query", message);
        let (mut entity, mut names, mut as_of) = (None, None, None);
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match &*key {
                "entity" => &mut entity,
                "names" => &mut names,
                "as_of" => &mut as_of,
                other => {
                    return Err(invalid(format!(
                        "unknown query parameter `{other}`, expected `entity`, `names` or `as_of`"
                    )));
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(invalid(format!("query parameter `{key}` given twice")));
            }
        }
        Ok(FeaturesParams {
            entity: entity.ok_or_else(|| invalid("missing query parameter `entity`".into()))?,
            names,
            as_of,
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryRequest {
    entities: Vec<String>,
    features: Vec<String>,
    /// Epoch milliseconds or RFC 3339 (default: now).
    #[schema(value_type = Option<TimeInput>)]
    as_of: Option<serde_json::Value>,
}

/// A time: epoch milliseconds, or an RFC 3339 string (documentation only: parsed by
/// `json_time`).
#[derive(ToSchema, Deserialize)]
#[serde(untagged)]
#[allow(dead_code, reason = "a schema, never constructed")]
enum TimeInput {
    #[schema(title = "epoch milliseconds")]
    Millis(i64),
    #[schema(title = "RFC 3339", format = DateTime)]
    Text(String),
}

/// A spine row: `entity`, `ts`, and any other fields (passed through).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema, never constructed")]
struct SpineRow {
    entity: EntityInput,
    ts: TimeInput,
}

/// An entity key: a non-empty string, or an integer (used as its decimal text).
#[derive(ToSchema, Deserialize)]
#[serde(untagged)]
#[allow(dead_code, reason = "a schema, never constructed")]
enum EntityInput {
    Text(String),
    Integer(i64),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainingSetRequest {
    features: Vec<String>,
    /// Rows with `entity`, `ts` (epoch ms or RFC 3339), and any other fields (passed through).
    #[schema(value_type = Vec<SpineRow>)]
    spine: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ApplyResponse {
    added_streams: Vec<String>,
    added_features: Vec<String>,
    unchanged: Vec<String>,
    /// Added features are computed from their stream's stored events: always `complete`.
    backfill: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `poisoned` (writes refused until restart).
    status: String,
    poisoned: Option<String>,
    checkpoint_error: Option<String>,
    /// The last record written to the log.
    last_lsn: u64,
    /// Every record up to here is durable.
    durable_lsn: u64,
    /// Every record up to here is applied and visible.
    applied_lsn: u64,
}

/// Run blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

fn parse_time(value: &serde_json::Value) -> Result<i64, ApiError> {
    json_time(value).map_err(|e| ApiError::bad_request("invalid_time", format!("as_of: {e}")))
}

/// Append events: a JSON array, or NDJSON with `Content-Type: application/x-ndjson`.
#[utoipa::path(post, path = "/v1/streams/{stream}/events",
    params(("stream" = String, Path, description = "The stream")),
    request_body(description = "Events: a JSON array, or NDJSON (application/x-ndjson)",
        content((Vec<Object> = "application/json"), (String = "application/x-ndjson"))),
    responses(
        (status = 200, description = "Appended and durable", body = AppendResponse),
        (status = 400, description = "Malformed body or invalid event (nothing appended)", body = ErrorBody),
        (status = 404, description = "Unknown stream", body = ErrorBody),
        (status = 413, description = "Body or batch over the limit", body = ErrorBody),
        (status = 503, description = "Writes refused (poisoned) or overloaded", body = ErrorBody),
    ))]
pub(crate) async fn ingest(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    // The path names the resource: an unknown stream is a 404 whatever the body holds.
    let def = state.db.stream_def(&stream).map_err(ApiError::from)?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let metrics = state.metrics.clone();
    let db = state.db.clone();
    // Reading the body is work in proportion to it (up to `body_bytes_max`): on the
    // blocking pool with the append, not on an async worker that lookups wait for.
    let (count, result) = blocking(move || {
        let events = match typed_events(&def, db.event_limits(), &body, ndjson) {
            Some(events) => Batch::Typed(events),
            None => Batch::Json(json_events(&body, ndjson)?),
        };
        if events.is_empty() {
            return Err(ApiError::bad_request(
                "empty_batch",
                "the batch holds no events",
            ));
        }
        let appended = match &events {
            Batch::Typed(events) => db.append(&stream, events),
            Batch::Json(events) => db.append_json(&stream, events),
        };
        Ok((events.len() as u64, appended.map_err(ApiError::from)))
    })
    .await?;
    match result {
        Ok(report) => {
            metrics
                .events_accepted
                .fetch_add(report.accepted as u64, Ordering::Relaxed);
            metrics
                .events_duplicate
                .fetch_add(report.duplicates as u64, Ordering::Relaxed);
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"accepted": report.accepted, "duplicates": report.duplicates}),
            ))
        }
        Err(e) => {
            if e.status.is_client_error() {
                metrics.events_rejected.fetch_add(count, Ordering::Relaxed);
            }
            Err(e)
        }
    }
}

/// An ingest body's events, typed (the fast lane) or as JSON values (the general path).
enum Batch {
    Typed(Vec<Event>),
    Json(Vec<serde_json::Value>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Typed(events) => events.len(),
            Batch::Json(events) => events.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The events of an ingest body read without a JSON object per event
/// ([`crate::event::json`]), or `None` if any of it is not a valid event: the body is then
/// read the general way ([`json_events`], `Db::append_json`), which names the error.
fn typed_events(
    def: &StreamDef,
    limits: &EventLimits,
    body: &[u8],
    ndjson: bool,
) -> Option<Vec<Event>> {
    if !ndjson {
        return events_from_array_text(def, limits, body);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| event_from_object_text(def, limits, line))
        .collect()
}

/// An ingest body's events as JSON values: a JSON array, or NDJSON.
fn json_events(body: &Bytes, ndjson: bool) -> Result<Vec<serde_json::Value>, ApiError> {
    if ndjson {
        let text = std::str::from_utf8(body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("body is not UTF-8: {e}"))
        })?;
        return text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    ApiError::bad_request("invalid_json", format!("line {}: {e}", i + 1))
                        .with("line", i + 1)
                })
            })
            .collect();
    }
    match parse_json::<serde_json::Value>(body)? {
        serde_json::Value::Array(events) => Ok(events),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "expected a JSON array of events (or NDJSON with Content-Type: application/x-ndjson)",
        )),
    }
}

fn feature_names(state: &AppState, names: Option<&str>) -> Vec<String> {
    match names {
        Some(list) if !list.trim().is_empty() => {
            list.split(',').map(|n| n.trim().to_owned()).collect()
        }
        _ => state.db.feature_names(),
    }
}

/// One entity's features, latest or as of a time.
#[utoipa::path(get, path = "/v1/features", params(FeaturesParams),
    responses(
        (status = 200, body = FeatureValues),
        (status = 400, description = "Missing entity, unknown feature, bad time", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn features(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let params = FeaturesParams::parse(query.as_deref())?;
    let as_of = params
        .as_of
        .as_deref()
        .map(|t| {
            parse_timestamp(t)
                .map_err(|e| ApiError::bad_request("invalid_time", format!("as_of: {e}")))
        })
        .transpose()?;
    let names = feature_names(&state, params.names.as_deref());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Answered on the async worker, not the blocking pool: one entity's query is bounded
    // work (docs/ARCHITECTURE.md, "Bounded query work"), microseconds when the entity is
    // resident and one RocksDB prefix read when it is not, which is cheaper than the two
    // thread hand-offs of `spawn_blocking`.
    let row = match as_of {
        Some(t) => state.db.as_of(&params.entity, &names, t),
        None => state.db.latest(&params.entity, &names),
    }?;
    Ok(json_response(StatusCode::OK, &row.json()))
}

/// Many entities' features at one time.
#[utoipa::path(post, path = "/v1/features/query", request_body = QueryRequest,
    responses(
        (status = 200, body = QueryResponse),
        (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn query(State(state): State<AppState>, body: Bytes) -> ApiResult {
    let request: QueryRequest = parse_json(&body)?;
    if request.entities.len() > state.config.query_entities_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_entities",
            format!(
                "at most {} entities per query",
                state.config.query_entities_max
            ),
        ));
    }
    let as_of = request.as_of.as_ref().map(parse_time).transpose()?;
    let db = state.db.clone();
    let rows = blocking(move || {
        let entities: Vec<&str> = request.entities.iter().map(String::as_str).collect();
        let names: Vec<&str> = request.features.iter().map(String::as_str).collect();
        match as_of {
            Some(t) => db.as_of_many(&entities, &names, t),
            None => db.latest_many(&entities, &names),
        }
        .map_err(ApiError::from)
    })
    .await?;
    let as_of = rows
        .first()
        .map_or_else(|| as_of.unwrap_or_default(), |r| r.as_of);
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let json = row.to_json();
            serde_json::json!({"entity": json["entity"], "features": json["features"]})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"as_of": as_of, "rows": rows}),
    ))
}

/// Output formats of training sets, chosen by `Accept`.
type Writer =
    fn(&mut ChannelWriter, &Spine, &crate::TrainingSet) -> Result<(), crate::export::ExportError>;

fn training_format(headers: &HeaderMap) -> (&'static str, Writer) {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/csv") {
        ("text/csv", |out, spine, set| write_csv(out, spine, set))
    } else if accept.contains("parquet") {
        ("application/vnd.apache.parquet", |out, spine, set| {
            write_parquet(out, spine, set)
        })
    } else {
        ("application/x-ndjson", |out, spine, set| {
            write_ndjson(out, spine, set)
        })
    }
}

/// Sends written bytes to the response body in chunks.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

/// A point-in-time training set: each spine row with the features as of its `ts`.
#[utoipa::path(post, path = "/v1/training-set", request_body = TrainingSetRequest,
    responses(
        (status = 200, description = "One row per spine row, in order: NDJSON (default), CSV (Accept: text/csv) or Parquet (Accept: application/vnd.apache.parquet)",
            content((String = "application/x-ndjson"), (String = "text/csv"), (String = "application/vnd.apache.parquet"))),
        (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn training_set(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let request: TrainingSetRequest = parse_json(&body)?;
    if request.spine.len() > state.config.spine_rows_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "spine_too_large",
            format!("at most {} spine rows", state.config.spine_rows_max),
        ));
    }
    // The spine: entity and ts per row, the other fields passed through as text.
    let mut keys = Vec::with_capacity(request.spine.len());
    let mut time_text = Vec::with_capacity(request.spine.len());
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Vec<serde_json::Value>> = Vec::new();
    for (row, object) in request.spine.iter().enumerate() {
        let bad = |message: String| {
            ApiError::bad_request("invalid_spine", format!("spine row {row}: {message}"))
                .with("row", row)
        };
        let entity = match object.get("entity") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_i64() => n.to_string(),
            _ => return Err(bad("missing or invalid \"entity\"".into())),
        };
        let ts = object
            .get("ts")
            .ok_or_else(|| bad("missing \"ts\"".into()))?;
        let t = json_time(ts).map_err(|e| bad(format!("\"ts\": {e}")))?;
        keys.push((entity, t));
        time_text.push(match ts {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        for key in object.keys() {
            if key != "entity" && key != "ts" && !names.contains(key) {
                names.push(key.clone());
                columns.push(vec![serde_json::Value::Null; row]);
            }
        }
        for (column, name) in columns.iter_mut().zip(&names) {
            column.push(object.get(name).cloned().unwrap_or(serde_json::Value::Null));
        }
    }
    let spine = Spine {
        entity_column: "entity".into(),
        time_column: "ts".into(),
        keys,
        time_text,
        passthrough: Passthrough::Json { names, columns },
        skipped: Vec::new(),
    };
    let db = state.db.clone();
    let features = request.features;
    let (spine, set) = blocking(move || {
        let names: Vec<&str> = features.iter().map(String::as_str).collect();
        let set = db
            .training_set(&spine.keys, &names)
            .map_err(ApiError::from)?;
        Ok((spine, set))
    })
    .await?;
    let (content_type, write) = training_format(&headers);
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::new(),
        };
        let result = write(&mut writer, &spine, &set)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| std::io::Write::flush(&mut writer));
        if let Err(e) = result {
            let _ = sender.blocking_send(Err(e));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Registered streams and features.
#[utoipa::path(get, path = "/v1/registry", responses((status = 200, description = "Streams and features with their definitions and status", body = Object)))]
pub(crate) async fn registry(State(state): State<AppState>) -> ApiResult {
    let catalog = state.db.catalog();
    let streams: Vec<serde_json::Value> = catalog
        .streams
        .iter()
        .map(|s| {
            let mut json = serde_json::to_value(s).expect("definitions serialize");
            json["hash"] = s.content_hash().into();
            json
        })
        .collect();
    let features: Vec<serde_json::Value> = catalog
        .features
        .iter()
        .map(|f| {
            let stream = catalog
                .stream(&f.stream)
                .map(|(_, s)| s)
                .expect("features have streams");
            serde_json::json!({
                "name": f.name,
                "stream": f.stream,
                "agg": f.agg.name(),
                "field": f.field,
                "n": f.n,
                "window": f.window_ms.map(crate::time::format_duration),
                "where": f.filter,
                "freshness": f.freshness.to_string(),
                "value_type": f.value_type(stream).to_string(),
                "hash": f.content_hash(),
                "status": "ready",
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"streams": streams, "features": features}),
    ))
}

/// Apply a definitions file: TOML, or the same structure as JSON.
#[utoipa::path(post, path = "/v1/registry",
    request_body(description = "A TOML definitions file (or the same structure as JSON)",
        content((String = "application/toml"), (Object = "application/json"), (String = "text/plain"))),
    responses(
        (status = 200, body = ApplyResponse),
        (status = 400, description = "Invalid or changed definition", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::bad_request("invalid_definition", format!("body is not UTF-8: {e}"))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_definition",
            "the definitions file is empty",
        ));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let toml_text = if is_json {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}"))
        })?;
        let value: toml::Value = toml::Value::try_from(json).map_err(|e| {
            ApiError::bad_request(
                "invalid_definition",
                format!("not a definitions document: {e}"),
            )
        })?;
        toml::to_string(&value).map_err(|e| {
            ApiError::bad_request(
                "invalid_definition",
                format!("not a definitions document: {e}"),
            )
        })?
    } else {
        text.to_owned()
    };
    let db = state.db.clone();
    let report = blocking(move || db.apply(&toml_text).map_err(ApiError::from)).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "added_streams": report.added_streams,
            "added_features": report.added_features,
            "unchanged": report.unchanged,
            "backfill": "complete",
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RemoveResponse {
    /// The feature removed.
    removed: Vec<String>,
}

/// Remove a feature: its definition and state go, and its name may be defined again.
#[utoipa::path(delete, path = "/v1/registry/features/{feature}",
    params(("feature" = String, Path, description = "The feature")),
    responses(
        (status = 200, description = "Removed (durably recorded in the log)", body = RemoveResponse),
        (status = 404, description = "Unknown feature", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn remove_feature(
    State(state): State<AppState>,
    Path(feature): Path<String>,
) -> ApiResult {
    let db = state.db.clone();
    let removed = blocking(move || {
        db.remove_features(&[feature.as_str()])
            .map_err(|e| match e {
                // The path names the resource.
                Error::UnknownFeature(name) => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_feature",
                    format!("unknown feature {name:?}"),
                )
                .with("feature", name),
                e => ApiError::from(e),
            })
    })
    .await?;
    Ok(json_response(StatusCode::OK, &RemoveResponse { removed }))
}

/// Liveness and the writer's state.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health), (status = 503, description = "Writes refused until restart", body = Health)))]
pub(crate) async fn health(State(state): State<AppState>) -> ApiResult {
    let health = state.db.health();
    let status = if health.poisoned.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &serde_json::json!({
            "status": if health.poisoned.is_some() { "poisoned" } else { "ok" },
            "poisoned": health.poisoned,
            "checkpoint_error": health.checkpoint_error,
            "last_lsn": health.last_lsn,
            "durable_lsn": health.durable_lsn,
            "applied_lsn": health.applied_lsn,
        }),
    ))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> ApiResult {
    let text = state.metrics.render(&state.db);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub(crate) async fn openapi() -> ApiResult {
    Ok(json_response(StatusCode::OK, &super::openapi::document()))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see /openapi.json)",
    )
}
