//! Events: validated against their stream, and the log entries that carry them.
//!
//! Validation is all-or-nothing per batch: the first bad event rejects the batch with an
//! error naming the event's index and field, and nothing of the batch is written.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{Definitions, StreamDef};
use crate::time::{TimestampMs, check_range, parse_timestamp};
use crate::value::{FieldType, Value};

pub(crate) mod json;
pub(crate) mod wire;

/// Limits on event content, named with units.
#[derive(Clone, Debug)]
pub struct EventLimits {
    /// Longest entity key, in bytes.
    pub entity_bytes_max: usize,
    /// Longest event id, in bytes.
    pub id_bytes_max: usize,
    /// Longest string field value, in bytes.
    pub string_bytes_max: usize,
    /// Most events in one append.
    pub batch_events_max: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            entity_bytes_max: 256,
            id_bytes_max: 256,
            string_bytes_max: 4096,
            batch_events_max: 100_000,
        }
    }
}

/// An event of a known stream: values in the order of the stream's fields (sorted by name).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub entity: String,
    pub time_ms: TimestampMs,
    pub id: Option<String>,
    pub values: Vec<Value>,
}

/// Why an event was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct EventError {
    /// The event's index in its batch.
    pub index: usize,
    /// The offending field, if one.
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}", self.index)?;
        if let Some(field) = &self.field {
            write!(f, ", field {field:?}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

fn reject(index: usize, field: Option<&str>, reason: impl Into<String>) -> EventError {
    EventError {
        index,
        field: field.map(str::to_owned),
        reason: reason.into(),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a float",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A key (entity or id): a non-empty string or an integer, as a string.
fn key_text(
    index: usize,
    name: &str,
    v: &serde_json::Value,
    bytes_max: usize,
) -> Result<String, EventError> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_i64() => n.to_string(),
        other => {
            return Err(reject(
                index,
                Some(name),
                format!(
                    "expected a string or an integer, found {}",
                    json_type(other)
                ),
            ));
        }
    };
    check_key(index, name, &text, bytes_max)?;
    Ok(text)
}

fn check_key(index: usize, name: &str, text: &str, bytes_max: usize) -> Result<(), EventError> {
    if text.is_empty() {
        return Err(reject(index, Some(name), "is empty"));
    }
    if text.len() > bytes_max {
        return Err(reject(
            index,
            Some(name),
            format!("is {} bytes; the limit is {bytes_max}", text.len()),
        ));
    }
    Ok(())
}

/// Parse a JSON event time: integer epoch milliseconds or an RFC 3339 string.
pub fn json_time(v: &serde_json::Value) -> Result<TimestampMs, String> {
    match v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(ms) => check_range(ms).map_err(|e| e.to_string()),
            None => Err(format!(
                "{n} is not an integer number of epoch milliseconds"
            )),
        },
        serde_json::Value::String(s) => parse_timestamp(s).map_err(|e| e.to_string()),
        other => Err(format!(
            "expected epoch milliseconds or an RFC 3339 string, found {}",
            json_type(other)
        )),
    }
}

fn field_value(
    index: usize,
    name: &str,
    ty: FieldType,
    v: &serde_json::Value,
    limits: &EventLimits,
) -> Result<Value, EventError> {
    let wrong = |v: &serde_json::Value| {
        reject(
            index,
            Some(name),
            format!("expected {ty}, found {}", json_type(v)),
        )
    };
    Ok(match (ty, v) {
        (_, serde_json::Value::Null) => Value::Null,
        (FieldType::Int, serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None if n.is_u64() => {
                return Err(reject(
                    index,
                    Some(name),
                    format!("{n} does not fit a 64-bit signed integer"),
                ));
            }
            None => return Err(wrong(v)),
        },
        (FieldType::Float, serde_json::Value::Number(n)) => {
            let f = n.as_f64().ok_or_else(|| wrong(v))?;
            if !f.is_finite() {
                return Err(reject(
                    index,
                    Some(name),
                    "NaN and infinity are not accepted",
                ));
            }
            Value::Float(f)
        }
        (FieldType::String, serde_json::Value::String(s)) => {
            if s.len() > limits.string_bytes_max {
                return Err(reject(
                    index,
                    Some(name),
                    format!(
                        "string of {} bytes; the limit is {}",
                        s.len(),
                        limits.string_bytes_max
                    ),
                ));
            }
            Value::String(s.clone())
        }
        (FieldType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
        _ => return Err(wrong(v)),
    })
}

/// Validate one JSON event (at `index` of its batch) against `stream`.
pub fn event_from_json(
    index: usize,
    stream: &StreamDef,
    json: &serde_json::Value,
    limits: &EventLimits,
) -> Result<Event, EventError> {
    let serde_json::Value::Object(object) = json else {
        return Err(reject(
            index,
            None,
            format!("expected a JSON object, found {}", json_type(json)),
        ));
    };
    event_from_fields(index, stream, |name| object.get(name), limits)
}

/// [`event_from_json`] of an object given by its lookup: the value of each field name.
pub(crate) fn event_from_fields<'v>(
    index: usize,
    stream: &StreamDef,
    get: impl Fn(&str) -> Option<&'v serde_json::Value>,
    limits: &EventLimits,
) -> Result<Event, EventError> {
    let present = |name: &str| get(name).filter(|v| !v.is_null());
    let entity = present(&stream.entity)
        .ok_or_else(|| reject(index, Some(&stream.entity), "missing entity"))
        .and_then(|v| key_text(index, &stream.entity, v, limits.entity_bytes_max))?;
    let time_ms = present(&stream.time)
        .ok_or_else(|| reject(index, Some(&stream.time), "missing event time"))
        .and_then(|v| json_time(v).map_err(|reason| reject(index, Some(&stream.time), reason)))?;
    let id = match &stream.id {
        Some(field) => present(field)
            .map(|v| key_text(index, field, v, limits.id_bytes_max))
            .transpose()?,
        None => None,
    };
    let mut values = Vec::with_capacity(stream.fields.len());
    for (name, ty) in &stream.fields {
        values.push(match get(name) {
            None => Value::Null,
            Some(v) => field_value(index, name, *ty, v, limits)?,
        });
    }
    Ok(Event {
        entity,
        time_ms,
        id,
        values,
    })
}

/// Check a typed event against `stream` (the library's typed append path).
pub fn check_event(
    index: usize,
    stream: &StreamDef,
    event: &Event,
    limits: &EventLimits,
) -> Result<(), EventError> {
    check_event_typed(index, stream, &stream.field_types(), event, limits)
}

/// [`check_event`], given the stream's field types in order (`StreamDef::field_types`, which
/// the engine keeps): the values are checked against a slice, and a field's name is looked
/// up in the definition only for an error.
pub(crate) fn check_event_typed(
    index: usize,
    stream: &StreamDef,
    field_types: &[FieldType],
    event: &Event,
    limits: &EventLimits,
) -> Result<(), EventError> {
    debug_assert_eq!(field_types.len(), stream.fields.len());
    check_key(
        index,
        &stream.entity,
        &event.entity,
        limits.entity_bytes_max,
    )?;
    check_range(event.time_ms).map_err(|e| reject(index, Some(&stream.time), e.to_string()))?;
    if let Some(id) = &event.id {
        let name = stream
            .id
            .as_deref()
            .ok_or_else(|| reject(index, None, "this stream declares no id field"))?;
        check_key(index, name, id, limits.id_bytes_max)?;
    }
    if event.values.len() != field_types.len() {
        return Err(reject(
            index,
            None,
            format!(
                "{} values for the stream's {} fields",
                event.values.len(),
                stream.fields.len()
            ),
        ));
    }
    let name = |field: usize| stream.fields.keys().nth(field).map(String::as_str);
    for (field, (ty, value)) in field_types.iter().zip(&event.values).enumerate() {
        let ok = match (ty, value) {
            (_, Value::Null)
            | (FieldType::Int, Value::Int(_))
            | (FieldType::Bool, Value::Bool(_)) => true,
            (FieldType::Float, Value::Float(f)) => {
                if !f.is_finite() {
                    return Err(reject(
                        index,
                        name(field),
                        "NaN and infinity are not accepted",
                    ));
                }
                true
            }
            (FieldType::String, Value::String(s)) => {
                if s.len() > limits.string_bytes_max {
                    return Err(reject(
                        index,
                        name(field),
                        format!(
                            "string of {} bytes; the limit is {}",
                            s.len(),
                            limits.string_bytes_max
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        if !ok {
            return Err(reject(
                index,
                name(field),
                format!("expected {ty}, found {value}"),
            ));
        }
    }
    Ok(())
}

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogEntry {
    /// An accepted event of the stream with this id (its index in the catalog).
    Event {
        stream: u32,
        entity: String,
        time_ms: i64,
        id: Option<String>,
        values: Vec<Value>,
    },
    /// Definitions added to the catalog.
    Definitions(Definitions),
    /// Features removed from the catalog, by name.
    RemoveFeatures(Vec<String>),
}

/// A [`LogEntry`] decoded without copying strings (for replay): same variants, same fields.
#[derive(Debug, Deserialize)]
pub(crate) enum LogEntryBorrowed<'a> {
    Event {
        stream: u32,
        #[serde(borrow)]
        entity: &'a str,
        time_ms: i64,
        #[serde(borrow)]
        id: Option<&'a str>,
        #[serde(borrow)]
        values: Vec<ValueBorrowed<'a>>,
    },
    Definitions(Definitions),
    RemoveFeatures(Vec<String>),
}

/// A [`Value`] decoded without copying its string.
#[derive(Debug, Deserialize)]
pub(crate) enum ValueBorrowed<'a> {
    Null,
    Int(i64),
    Float(f64),
    String(&'a str),
    Bool(bool),
    /// Mirrors [`Value`]'s variants, so that the indices match; events carry no lists.
    List(#[serde(borrow)] Vec<ValueBorrowed<'a>>),
}

impl ValueBorrowed<'_> {
    /// Whether a field of type `field_type` holds this value: null, or one of its type.
    pub(crate) fn fits(&self, field_type: FieldType) -> bool {
        matches!(
            (self, field_type),
            (ValueBorrowed::Null, _)
                | (ValueBorrowed::Int(_), FieldType::Int)
                | (ValueBorrowed::Float(_), FieldType::Float)
                | (ValueBorrowed::String(_), FieldType::String)
                | (ValueBorrowed::Bool(_), FieldType::Bool)
        )
    }
}

/// Rows of one entity persisted by one checkpoint: (time, LSN, values in field order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RowChunk {
    pub(crate) rows: Vec<(i64, u64, Vec<Value>)>,
}
