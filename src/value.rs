//! Field types and values: what events carry and what features return.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The type of a stream field, as declared in the definitions file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Int,
    Float,
    String,
    Bool,
}

impl FieldType {
    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "int" => FieldType::Int,
            "float" => FieldType::Float,
            "string" => FieldType::String,
            "bool" => FieldType::Bool,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::String => "string",
            FieldType::Bool => "bool",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Int | FieldType::Float)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a feature's value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Int,
    Float,
    String,
    Bool,
    List(Box<ValueType>),
}

impl From<FieldType> for ValueType {
    fn from(t: FieldType) -> Self {
        match t {
            FieldType::Int => ValueType::Int,
            FieldType::Float => ValueType::Float,
            FieldType::String => ValueType::String,
            FieldType::Bool => ValueType::Bool,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::List(inner) => write!(f, "list<{inner}>"),
            ValueType::Int => f.write_str("int"),
            ValueType::Float => f.write_str("float"),
            ValueType::String => f.write_str("string"),
            ValueType::Bool => f.write_str("bool"),
        }
    }
}

/// A field value of an event, or a feature value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    String(String),
    Bool(bool),
    List(Vec<Value>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The JSON form. Non-finite floats (only an overflowing float sum can produce one)
    /// become `null`, as JSON has no infinity.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.json()).expect("feature values serialize")
    }

    /// The JSON form, serialized in place (no intermediate `serde_json::Value`).
    pub fn json(&self) -> JsonValue<'_> {
        JsonValue(self)
    }
}

/// A value as JSON (see `Value::to_json`). `Value`'s own `Serialize` is the tagged form of
/// the persisted encoding; this is the plain one users see.
#[derive(Debug)]
pub struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Int(v) => serializer.serialize_i64(*v),
            Value::Float(v) if v.is_finite() => serializer.serialize_f64(*v),
            Value::Float(_) => serializer.serialize_unit(),
            Value::String(v) => serializer.serialize_str(v),
            Value::Bool(v) => serializer.serialize_bool(*v),
            Value::List(items) => serializer.collect_seq(items.iter().map(Value::json)),
        }
    }
}

/// Bitwise equality for floats (so `NaN == NaN` and `0.0 != -0.0`): two values are equal
/// exactly when every consumer would see the same thing. This is the equality the
/// zero-skew tests assert.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}
