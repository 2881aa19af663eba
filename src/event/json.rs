//! Events read from JSON text without a `serde_json::Value` object per event: the ingest
//! paths' fast lane (`fsdb ingest` of NDJSON, `POST /v1/streams/{stream}/events`).
//!
//! Every value is still parsed as a `serde_json::Value`, by the same parser, so text parses
//! here exactly when it parses as a whole. Of each object only the stream's own keys are
//! kept (the last of a repeated key, as an object keeps it), and the event is made by
//! [`event_from_fields`], the code [`super::event_from_json`] runs. What the object costs
//! instead — a key `String` and an index-map slot hashed with SipHash per field — was a
//! third of an HTTP ingest's CPU.
//!
//! These readers accept exactly what the general path accepts and say nothing about
//! anything else: `None` means "read it the general way", which names the error. The event
//! JSON fuzz target (`testing::check_event_json`) holds the two paths to each other.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

use super::{Event, EventLimits, event_from_fields};
use crate::catalog::StreamDef;

/// The event of the text of one JSON object (an NDJSON line), or `None` if the text is not
/// exactly one object that makes a valid event.
pub(crate) fn event_from_object_text(
    stream: &StreamDef,
    limits: &EventLimits,
    text: &str,
) -> Option<Event> {
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = FieldsOf { stream }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    fields.event(0, stream, limits).ok()
}

/// The events of the text of a JSON array of objects (an HTTP body), or `None` if the text
/// is not exactly such an array or any of its objects is not a valid event.
pub(crate) fn events_from_array_text(
    stream: &StreamDef,
    limits: &EventLimits,
    text: &[u8],
) -> Option<Vec<Event>> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let events = EventsOf { stream, limits }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(events)
}

/// The stream's keys of one object and their values, in the object's order; the names are
/// the stream definition's own (no allocation per key).
struct Fields<'s>(Vec<(&'s str, serde_json::Value)>);

impl<'s> Fields<'s> {
    fn event(
        &self,
        index: usize,
        stream: &StreamDef,
        limits: &EventLimits,
    ) -> Result<Event, super::EventError> {
        let get = |name: &str| {
            self.0
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        event_from_fields(index, stream, get, limits)
    }
}

/// Reads one JSON object into the [`Fields`] of `stream`.
struct FieldsOf<'s> {
    stream: &'s StreamDef,
}

impl<'s> FieldsOf<'s> {
    /// The stream's own name for `key`, if the stream reads that key.
    fn name(&self, key: &str) -> Option<&'s str> {
        let stream = self.stream;
        if key == stream.entity {
            Some(&stream.entity)
        } else if key == stream.time {
            Some(&stream.time)
        } else if stream.id.as_deref() == Some(key) {
            stream.id.as_deref()
        } else {
            stream.fields.get_key_value(key).map(|(k, _)| k.as_str())
        }
    }
}

impl<'de, 's> DeserializeSeed<'de> for FieldsOf<'s> {
    type Value = Fields<'s>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for FieldsOf<'s> {
    type Value = Fields<'s>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(self.stream.fields.len() + 3);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            // Every value is parsed as a `Value`, read or not: skipped ones are checked
            // exactly as the general path checks them.
            let value = map.next_value::<serde_json::Value>()?;
            if let Some(name) = self.name(&key) {
                fields.push((name, value));
            }
        }
        Ok(Fields(fields))
    }
}

/// Reads a JSON array of objects into the events of `stream`; fails on the first object
/// that is not a valid event.
struct EventsOf<'a> {
    stream: &'a StreamDef,
    limits: &'a EventLimits,
}

impl<'de> DeserializeSeed<'de> for EventsOf<'_> {
    type Value = Vec<Event>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsOf<'_> {
    type Value = Vec<Event>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of event objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(fields) = seq.next_element_seed(FieldsOf {
            stream: self.stream,
        })? {
            let event = fields
                .event(events.len(), self.stream, self.limits)
                .map_err(A::Error::custom)?;
            events.push(event);
        }
        Ok(events)
    }
}
