//! The log record of an event, encoded and decoded by hand (and the pieces of bincode's
//! encoding other hot records reuse: the persisted row chunks, `engine::chunk`).
//!
//! Every log payload is bincode (storage's `codec`: standard configuration, little-endian,
//! variable-length integers) of a [`LogEntry`](super::LogEntry). Events are nearly every
//! record, and going through serde cost ingest a sixth of its append time (a call per
//! field, a small `memcpy` per byte run) and replay as much again decoding. This module
//! writes and reads the `Event` variant directly, **byte for byte what serde would**:
//!
//! - an unsigned integer is one byte if ≤ 250, else a marker (251, 252, 253) and the value
//!   as u16, u32 or u64, little-endian; a signed one is zigzag-mapped first
//!   (`n ≥ 0 → 2n`, `n < 0 → -2n - 1`);
//! - an enum is its variant's index (unsigned), then its fields in order;
//! - a string is its length (unsigned) and its UTF-8 bytes; an `Option` is a byte 0 or 1,
//!   then the value; a sequence is its length, then its elements; an `f64` is its 8 bytes
//!   little-endian; a `bool` one byte, 0 or 1.
//!
//! Decoding is the fast path only: whatever it does not read itself (another entry kind, a
//! list value, anything malformed) it hands to serde, so every result and every error is
//! serde's. Tests and a fuzz target (`log_record`) hold both directions to serde's.

use fsdb_storage::codec::{self, CodecError};
use fsdb_storage::log::RECORD_BYTES_HARD_MAX;

use super::{LogEntryBorrowed, ValueBorrowed};
use crate::value::{FieldType, Value};

/// Variant indices of `LogEntry` and of `Value` (declaration order).
const ENTRY_EVENT: u64 = 0;
const VALUE_NULL: u64 = 0;
const VALUE_INT: u64 = 1;
const VALUE_FLOAT: u64 = 2;
const VALUE_STRING: u64 = 3;
const VALUE_BOOL: u64 = 4;
const VALUE_LIST: u64 = 5;

/// Markers of a multi-byte unsigned integer; smaller values are their own byte.
const SINGLE_BYTE_MAX: u8 = 250;
const U16_MARK: u8 = 251;
const U32_MARK: u8 = 252;
const U64_MARK: u8 = 253;

/// Append the log record of one event: the bytes `codec::encode_into` gives for
/// `LogEntry::Event { stream, entity, time_ms, id, values }`, without building it.
pub(crate) fn encode_event(
    out: &mut Vec<u8>,
    stream: u32,
    entity: &str,
    time_ms: i64,
    id: Option<&str>,
    values: &[Value],
) {
    put_unsigned(out, ENTRY_EVENT);
    put_unsigned(out, u64::from(stream));
    put_str(out, entity);
    put_signed(out, time_ms);
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            put_str(out, id);
        }
    }
    put_values(out, values);
}

fn put_values(out: &mut Vec<u8>, values: &[Value]) {
    put_unsigned(out, values.len() as u64);
    for value in values {
        match value {
            Value::Null => put_null(out),
            Value::Int(i) => put_int(out, *i),
            Value::Float(f) => put_float(out, *f),
            Value::String(s) => put_string(out, s),
            Value::Bool(b) => put_bool(out, *b),
            Value::List(items) => {
                put_unsigned(out, VALUE_LIST);
                put_values(out, items);
            }
        }
    }
}

/// One `Value` of each kind, as serde encodes it (for encoders of other records holding
/// values, such as the persisted row chunks).
#[inline]
pub(crate) fn put_null(out: &mut Vec<u8>) {
    put_unsigned(out, VALUE_NULL);
}

#[inline]
pub(crate) fn put_int(out: &mut Vec<u8>, i: i64) {
    put_unsigned(out, VALUE_INT);
    put_signed(out, i);
}

#[inline]
pub(crate) fn put_float(out: &mut Vec<u8>, f: f64) {
    put_unsigned(out, VALUE_FLOAT);
    out.extend_from_slice(&f.to_le_bytes());
}

#[inline]
pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    put_unsigned(out, VALUE_STRING);
    put_str(out, s);
}

#[inline]
pub(crate) fn put_bool(out: &mut Vec<u8>, b: bool) {
    put_unsigned(out, VALUE_BOOL);
    out.push(u8::from(b));
}

/// An unsigned integer (also a length, or a variant index). The one-byte form, which most
/// are (tags, lengths, small ints), is inlined at every call; the wider ones are a call.
#[inline(always)]
pub(crate) fn put_unsigned(out: &mut Vec<u8>, n: u64) {
    if n <= u64::from(SINGLE_BYTE_MAX) {
        out.push(n as u8);
    } else {
        put_wide_unsigned(out, n);
    }
}

/// The wider forms of [`put_unsigned`], each written with one copy of a fixed size
/// (pushing the marker, then extending by the bytes, checked the vector's room twice and
/// called `memcpy`).
#[inline(never)]
fn put_wide_unsigned(out: &mut Vec<u8>, n: u64) {
    let [b0, b1, b2, b3, ..] = n.to_le_bytes();
    if n <= u64::from(u16::MAX) {
        out.extend_from_slice(&[U16_MARK, b0, b1]);
    } else if n <= u64::from(u32::MAX) {
        out.extend_from_slice(&[U32_MARK, b0, b1, b2, b3]);
    } else {
        let mut marked = [U64_MARK; 9];
        marked[1..].copy_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&marked);
    }
}

#[inline]
pub(crate) fn put_signed(out: &mut Vec<u8>, n: i64) {
    put_unsigned(out, zigzag(n));
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_unsigned(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Whether a log payload starts as an event record does (its entry's variant index
/// written in one byte). Every other entry starts otherwise; a payload that starts so is
/// an event or malformed.
pub(crate) fn starts_as_event(bytes: &[u8]) -> bool {
    bytes.first() == Some(&(ENTRY_EVENT as u8))
}

/// Decode one log payload, occupying all of `bytes`: what `codec::decode_borrowed` gives,
/// faster for events.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<LogEntryBorrowed<'_>, CodecError> {
    let mut values = Vec::new();
    match decode_entry_into(bytes, &mut values)? {
        Entry::Event(EventHead {
            stream,
            entity,
            time_ms,
            id,
        }) => Ok(LogEntryBorrowed::Event {
            stream,
            entity,
            time_ms,
            id,
            values,
        }),
        Entry::Other(entry) => Ok(entry),
    }
}

/// A decoded log payload, an event's values aside (see [`decode_entry_into`]).
#[derive(Debug)]
pub(crate) enum Entry<'a> {
    Event(EventHead<'a>),
    /// Any other kind of entry.
    Other(LogEntryBorrowed<'a>),
}

/// The fields of an event record but its values.
#[derive(Debug)]
pub(crate) struct EventHead<'a> {
    pub(crate) stream: u32,
    pub(crate) entity: &'a str,
    pub(crate) time_ms: i64,
    pub(crate) id: Option<&'a str>,
}

/// [`decode_entry`], giving an event's values in `values` (cleared first) rather than in
/// a vector of their own: a replay decodes millions of events with one.
pub(crate) fn decode_entry_into<'a>(
    bytes: &'a [u8],
    values: &mut Vec<ValueBorrowed<'a>>,
) -> Result<Entry<'a>, CodecError> {
    values.clear();
    if let Some(head) = decode_event(bytes, values) {
        return Ok(Entry::Event(head));
    }
    values.clear();
    Ok(match codec::decode_borrowed(bytes)? {
        LogEntryBorrowed::Event {
            stream,
            entity,
            time_ms,
            id,
            values: decoded,
        } => {
            values.extend(decoded);
            Entry::Event(EventHead {
                stream,
                entity,
                time_ms,
                id,
            })
        }
        other => Entry::Other(other),
    })
}

/// An event record read by hand, its values pushed to `values`; `None` for anything else
/// (left to serde; `values` may then hold some).
fn decode_event<'a>(bytes: &'a [u8], values: &mut Vec<ValueBorrowed<'a>>) -> Option<EventHead<'a>> {
    let (head, bytes) = decode_event_head(bytes)?;
    let mut reader = Reader { bytes };
    let len = usize::try_from(reader.unsigned()?).ok()?;
    // Every value takes at least a byte: a longer claim is malformed (and must not
    // allocate).
    if len > reader.bytes.len() {
        return None;
    }
    values.reserve(len);
    for _ in 0..len {
        values.push(match reader.variant()? {
            VALUE_NULL => ValueBorrowed::Null,
            VALUE_INT => ValueBorrowed::Int(unzigzag(reader.unsigned()?)),
            VALUE_FLOAT => ValueBorrowed::Float(f64::from_le_bytes(reader.array()?)),
            VALUE_STRING => ValueBorrowed::String(reader.str()?),
            VALUE_BOOL => match reader.byte()? {
                0 => ValueBorrowed::Bool(false),
                1 => ValueBorrowed::Bool(true),
                _ => return None,
            },
            _ => return None, // a list (events carry none), or malformed
        });
    }
    reader.bytes.is_empty().then_some(head)
}

/// The head of an event record read by hand, and the rest of the record: its values as
/// written (their count, then each one). `None` for anything else, or a head this does
/// not read (left to serde: see [`decode_entry_into`]).
pub(crate) fn decode_event_head(bytes: &[u8]) -> Option<(EventHead<'_>, &[u8])> {
    if bytes.len() > RECORD_BYTES_HARD_MAX as usize {
        return None; // serde's size limit applies
    }
    let mut reader = Reader { bytes };
    if reader.variant()? != ENTRY_EVENT {
        return None;
    }
    let stream = reader.u32()?;
    let entity = reader.str()?;
    let time_ms = unzigzag(reader.unsigned()?);
    let id = match reader.byte()? {
        0 => None,
        1 => Some(reader.str()?),
        _ => return None,
    };
    let head = EventHead {
        stream,
        entity,
        time_ms,
        id,
    };
    Some((head, reader.bytes))
}

/// Whether `values`, an event record's values as written ([`decode_event_head`]), are
/// byte for byte what [`put_values`] writes for values of fields of `types`: as many as
/// there are fields, each null or of its field's type, every integer (counts, tags,
/// lengths, ints) in its shortest form, every string UTF-8, nothing after the last.
///
/// What serde writes always is (it writes integers in their shortest form); then a row of
/// these values, as a persisted chunk holds it ([`ChunkView`](crate::engine::chunk)), is
/// these bytes as they are. `false` leaves the record to [`decode_entry_into`] and checks
/// of its own: whether it is malformed, or of other types, or written in a longer form.
pub(crate) fn values_as_put(values: &[u8], types: &[FieldType]) -> bool {
    let mut reader = Reader { bytes: values };
    if reader.shortest_unsigned() != Some(types.len() as u64) {
        return false;
    }
    for field_type in types {
        let fits = match (reader.shortest_unsigned(), field_type) {
            (Some(VALUE_NULL), _) => true,
            (Some(VALUE_INT), FieldType::Int) => reader.shortest_unsigned().is_some(),
            (Some(VALUE_FLOAT), FieldType::Float) => reader.take(8).is_some(),
            (Some(VALUE_STRING), FieldType::String) => reader.shortest_str().is_some(),
            (Some(VALUE_BOOL), FieldType::Bool) => matches!(reader.byte(), Some(0 | 1)),
            _ => false,
        };
        if !fits {
            return false;
        }
    }
    reader.bytes.is_empty()
}

/// Append `values` as [`put_values`] does (a replay's row of an event record written in
/// another form: see [`values_as_put`]).
pub(crate) fn put_borrowed_values(out: &mut Vec<u8>, values: &[ValueBorrowed<'_>]) {
    put_unsigned(out, values.len() as u64);
    for value in values {
        match value {
            ValueBorrowed::Null => put_null(out),
            ValueBorrowed::Int(i) => put_int(out, *i),
            ValueBorrowed::Float(f) => put_float(out, *f),
            ValueBorrowed::String(s) => put_string(out, s),
            ValueBorrowed::Bool(b) => put_bool(out, *b),
            ValueBorrowed::List(items) => {
                put_unsigned(out, VALUE_LIST);
                put_borrowed_values(out, items);
            }
        }
    }
}

/// The unread rest of a record.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// An unsigned integer in any of its forms (serde accepts a value written wider than
    /// it needs; so does this).
    #[inline]
    fn unsigned(&mut self) -> Option<u64> {
        match self.byte()? {
            n @ 0..=SINGLE_BYTE_MAX => Some(u64::from(n)),
            U16_MARK => Some(u64::from(u16::from_le_bytes(self.array()?))),
            U32_MARK => Some(u64::from(u32::from_le_bytes(self.array()?))),
            U64_MARK => Some(u64::from_le_bytes(self.array()?)),
            _ => None,
        }
    }

    /// A `u32`: serde refuses one written as a u64, even a small one.
    #[inline]
    fn u32(&mut self) -> Option<u32> {
        if self.bytes.first() == Some(&U64_MARK) {
            return None;
        }
        u32::try_from(self.unsigned()?).ok()
    }

    /// An enum's variant index (a `u32`).
    #[inline]
    fn variant(&mut self) -> Option<u64> {
        self.u32().map(u64::from)
    }

    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.unsigned()?).ok()?;
        utf8(self.take(len)?)
    }

    /// An unsigned integer in the form [`put_unsigned`] writes it, its shortest; `None`
    /// for any other.
    #[inline]
    fn shortest_unsigned(&mut self) -> Option<u64> {
        let (n, shortest_above) = match self.byte()? {
            n @ 0..=SINGLE_BYTE_MAX => return Some(u64::from(n)),
            U16_MARK => (
                u64::from(u16::from_le_bytes(self.array()?)),
                u64::from(SINGLE_BYTE_MAX),
            ),
            U32_MARK => (
                u64::from(u32::from_le_bytes(self.array()?)),
                u64::from(u16::MAX),
            ),
            U64_MARK => (u64::from_le_bytes(self.array()?), u64::from(u32::MAX)),
            _ => return None,
        };
        (n > shortest_above).then_some(n)
    }

    /// A string whose length is in its shortest form.
    #[inline]
    fn shortest_str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.shortest_unsigned()?).ok()?;
        utf8(self.take(len)?)
    }
}

/// `bytes.is_ascii()`, in words for any length from 8 bytes (the last word overlapping
/// the others) — the standard one goes byte by byte below two words.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let len = bytes.len();
    if len < 8 {
        return bytes.iter().fold(0u8, |high, byte| high | byte) < 0x80;
    }
    let mut high = word(len - 8);
    let mut at = 0;
    while at + 8 < len {
        high |= word(at);
        at += 8;
    }
    high & HIGH_BITS == 0
}

/// `std::str::from_utf8(bytes).ok()`, with a short path for ASCII, which most entity keys,
/// ids and categories are: a replay checks three or four short strings per event, and the
/// general check of a short string costs several instructions a byte where
/// [`is_ascii`] reads a word at a time.
#[inline]
fn utf8(bytes: &[u8]) -> Option<&str> {
    if is_ascii(bytes) {
        #[expect(unsafe_code, reason = "skips a second check of bytes just checked")]
        // SAFETY: a sequence of ASCII bytes is valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// Decode `bytes` both ways and panic on any difference (tests and the `log_record` fuzz
/// target); an event decoded by hand is encoded again, and must give `bytes` back when
/// they are canonical (what serde itself writes for the decoded entry). Also: decoding
/// into a vector that held values gives the same, and an entry that is not an event does
/// not [`starts_as_event`].
pub(crate) fn check_against_serde(bytes: &[u8]) {
    let ours = decode_entry(bytes).map(|e| format!("{e:?}"));
    let serde = codec::decode_borrowed::<LogEntryBorrowed>(bytes);
    if let Ok(entry) = &serde {
        let is_event = matches!(entry, LogEntryBorrowed::Event { .. });
        assert!(
            is_event || !starts_as_event(bytes),
            "{bytes:?} starts as an event"
        );
    }
    let serde = serde.map(|e| format!("{e:?}"));
    let mut reused = vec![ValueBorrowed::Int(7), ValueBorrowed::String("held")];
    let into = decode_entry_into(bytes, &mut reused).map(|entry| match entry {
        Entry::Event(head) => format!("{head:?} {reused:?}"),
        Entry::Other(other) => format!("{other:?}"),
    });
    let mut fresh = Vec::new();
    let expected = decode_entry_into(bytes, &mut fresh).map(|entry| match entry {
        Entry::Event(head) => format!("{head:?} {fresh:?}"),
        Entry::Other(other) => format!("{other:?}"),
    });
    assert_eq!(
        into.map_err(|e| e.to_string()),
        expected.map_err(|e| e.to_string())
    );
    match (ours, serde) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{bytes:?}"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("{bytes:?}: ours {a:?}, serde {b:?}"),
    }
    if let Ok(super::LogEntry::Event {
        stream,
        entity,
        time_ms,
        id,
        values,
    }) = codec::decode::<super::LogEntry>(bytes)
    {
        let mut ours = Vec::new();
        encode_event(&mut ours, stream, &entity, time_ms, id.as_deref(), &values);
        let canonical = codec::encode(&super::LogEntry::Event {
            stream,
            entity,
            time_ms,
            id,
            values,
        })
        .expect("entries encode");
        assert_eq!(ours, canonical, "re-encoding {bytes:?}");
    }
    check_values_as_put(bytes);
}

/// The part of [`check_against_serde`] for [`values_as_put`]: for every list of up to
/// four field types, it holds of an event record's values exactly when they decode, each
/// is null or of its field's type, and they are what [`put_borrowed_values`] writes.
fn check_values_as_put(bytes: &[u8]) {
    const TYPES: [FieldType; 4] = [
        FieldType::Int,
        FieldType::Float,
        FieldType::String,
        FieldType::Bool,
    ];
    let Some((_, written)) = decode_event_head(bytes) else {
        return;
    };
    let mut values = Vec::new();
    let canonical = decode_event(bytes, &mut values).map(|_| {
        let mut canonical = Vec::new();
        put_borrowed_values(&mut canonical, &values);
        canonical
    });
    for fields in 0..=4u32 {
        for combination in 0..TYPES.len().pow(fields) {
            let types: Vec<FieldType> = (0..fields)
                .map(|field| TYPES[combination / TYPES.len().pow(field) % TYPES.len()])
                .collect();
            let expected = canonical.as_deref() == Some(written)
                && values.len() == types.len()
                && values.iter().zip(&types).all(|(v, t)| v.fits(*t));
            assert_eq!(
                values_as_put(written, &types),
                expected,
                "{bytes:?} as {types:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogEntry;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(-0.0),
                Just(f64::INFINITY)
            ]
            .prop_map(Value::Float),
            ".{0,40}".prop_map(Value::String),
            "[a-z]{300}".prop_map(Value::String), // a length past one byte
            any::<bool>().prop_map(Value::Bool),
        ]
    }

    fn interesting_i64() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            -130i64..130,
            Just(i64::MIN),
            Just(i64::MAX),
            (0u32..64).prop_map(|shift| (1i64 << shift) - 1),
            (0u32..64).prop_map(|shift| -(1i64 << shift)),
        ]
    }

    fn serde_bytes(
        stream: u32,
        entity: &str,
        time_ms: i64,
        id: Option<&str>,
        values: &[Value],
    ) -> Vec<u8> {
        let entry = LogEntry::Event {
            stream,
            entity: entity.into(),
            time_ms,
            id: id.map(Into::into),
            values: values.to_vec(),
        };
        codec::encode(&entry).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The hand encoding is serde's, byte for byte; the hand decoding of it is serde's.
        #[test]
        fn event_records_match_serde(
            stream in prop_oneof![any::<u32>(), 0u32..300],
            entity in ".{0,20}",
            time_ms in interesting_i64(),
            id in proptest::option::of(".{0,300}"),
            values in proptest::collection::vec(value(), 0..8),
        ) {
            let mut ours = vec![7u8]; // appends after what is there
            encode_event(&mut ours, stream, &entity, time_ms, id.as_deref(), &values);
            let theirs = serde_bytes(stream, &entity, time_ms, id.as_deref(), &values);
            prop_assert_eq!(&ours[1..], &theirs[..]);
            let fast = format!("{:?}", by_hand(&theirs).expect("an event decodes by hand"));
            let serde: LogEntryBorrowed = codec::decode_borrowed(&theirs).unwrap();
            prop_assert_eq!(fast, format!("{serde:?}"));
        }

        /// Arbitrary bytes, and records with bytes changed, cut or added: the fast path
        /// accepts exactly what serde accepts (or leaves it to serde), with the same result.
        #[test]
        fn malformed_records_decode_as_serde_does(
            values in proptest::collection::vec(value(), 0..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            cut in any::<prop::sample::Index>(),
            noise in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = serde_bytes(1, "card", -3, Some("id"), &values);
            for (at, byte) in &edits {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            let variants = [bytes[..cut.index(bytes.len() + 1)].to_vec(), noise, {
                let mut longer = bytes.clone();
                longer.push(0);
                longer
            }, bytes];
            for bytes in &variants {
                check_against_serde(bytes);
            }
        }
    }

    /// Integers written wider than needed, and every marker: serde reads the first four
    /// kinds and refuses the others; so does the fast path (through serde).
    #[test]
    fn every_integer_form_and_marker() {
        let body = |tag: &[u8]| {
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(tag); // the stream
            bytes.extend_from_slice(&[1, b'e', 4, 0, 0]); // entity "e", time 2, no id, no values
            bytes
        };
        for tag in [
            &[5u8][..],
            &[251, 5, 0],
            &[252, 5, 0, 0, 0],
            &[253, 5, 0, 0, 0, 0, 0, 0, 0],
            &[253, 0, 0, 0, 0, 1, 0, 0, 0], // past u32: the stream id does not fit
            &[254, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[255],
        ] {
            check_against_serde(&body(tag));
        }
        let owned: LogEntry = codec::decode(&body(&[251, 5, 0])).unwrap();
        assert!(matches!(owned, LogEntry::Event { stream: 5, .. }));
    }

    /// The entry the fast path alone decodes, if it does.
    fn by_hand(bytes: &[u8]) -> Option<LogEntryBorrowed<'_>> {
        let mut values = Vec::new();
        let EventHead {
            stream,
            entity,
            time_ms,
            id,
        } = decode_event(bytes, &mut values)?;
        Some(LogEntryBorrowed::Event {
            stream,
            entity,
            time_ms,
            id,
            values,
        })
    }

    /// The ASCII short path agrees with the standard check for every length up to five
    /// words, with one non-ASCII byte (a valid or an invalid sequence) at every place.
    #[test]
    fn utf8_agrees_with_the_standard_check() {
        fn standard(bytes: &[u8]) -> Option<&str> {
            std::str::from_utf8(bytes).ok()
        }
        for len in 0..40 {
            let ascii: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(utf8(&ascii), standard(&ascii));
            assert_eq!(is_ascii(&ascii), ascii.is_ascii());
            for at in 0..len {
                for odd in [&[0x80u8][..], &[0xC3, 0xA9], &[0xFF], &[0x7F]] {
                    let mut bytes = ascii.clone();
                    bytes.splice(at..at + 1, odd.iter().copied());
                    assert_eq!(utf8(&bytes), standard(&bytes), "{bytes:?}");
                    assert_eq!(is_ascii(&bytes), bytes.is_ascii(), "{bytes:?}");
                }
            }
        }
    }

    /// Entries other than events go through serde (and still decode).
    #[test]
    fn other_entries_decode_through_serde() {
        let entry = LogEntry::RemoveFeatures(vec!["a".into(), "b".into()]);
        let bytes = codec::encode(&entry).unwrap();
        assert!(by_hand(&bytes).is_none());
        check_against_serde(&bytes);
        let list = serde_bytes(0, "e", 0, None, &[Value::List(vec![Value::Int(1)])]);
        assert!(by_hand(&list).is_none(), "lists are left to serde");
        check_against_serde(&list);
    }
}
