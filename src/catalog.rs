//! Definitions: streams and features, as declared in TOML, validated, and registered.
//!
//! A definition is immutable once applied: re-applying an identical one is a no-op,
//! re-applying a different one under the same name is refused. Every error names the
//! stream or feature and the offending key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::agg::{AggKind, LAST_N_MAX};
use crate::time::{format_duration, parse_duration};
use crate::value::{FieldType, ValueType};

pub mod filter;

/// The longest stream, feature or field name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// The most fields a stream may declare.
pub const FIELDS_MAX: usize = 256;

/// A stream: a named, typed sequence of events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDef {
    pub name: String,
    /// The field holding the entity key.
    pub entity: String,
    /// The field holding the event time.
    pub time: String,
    /// The field holding a unique event id, if the stream has one.
    pub id: Option<String>,
    /// Value fields, sorted by name.
    pub fields: BTreeMap<String, FieldType>,
}

impl StreamDef {
    /// The position of a value field in an event's values (fields are sorted by name).
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.keys().position(|f| f == name)
    }

    pub fn field_types(&self) -> Vec<FieldType> {
        self.fields.values().copied().collect()
    }
}

/// How often a feature's value may change: on every event, or at epoch-aligned periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Freshness {
    Realtime,
    /// A batch feature: its value as of t is its realtime value as of `floor(t/P)*P`.
    Batch {
        period_ms: i64,
    },
}

impl Freshness {
    /// The time at which the realtime value is read for a query as of `t`.
    pub fn effective_time(self, t: i64) -> i64 {
        match self {
            Freshness::Realtime => t,
            Freshness::Batch { period_ms } => t.div_euclid(period_ms) * period_ms,
        }
    }
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Freshness::Realtime => f.write_str("realtime"),
            Freshness::Batch { period_ms } => f.write_str(&format_duration(*period_ms)),
        }
    }
}

/// A feature: one aggregation over one stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureDef {
    pub name: String,
    pub stream: String,
    pub agg: AggKind,
    pub field: Option<String>,
    /// `n` of `last_n`.
    pub n: Option<u32>,
    /// `None`: lifetime.
    pub window_ms: Option<i64>,
    /// The `where` filter, in canonical form.
    pub filter: Option<String>,
    pub freshness: Freshness,
}

/// One definitions file, validated on its own (references are checked by [`Catalog::plan`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub streams: Vec<StreamDef>,
    pub features: Vec<FeatureDef>,
}

/// What a definition error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    File,
    Stream(String),
    Feature(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    pub subject: Subject,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::File => f.write_str("definitions")?,
            Subject::Stream(name) => write!(f, "stream {name:?}")?,
            Subject::Feature(name) => write!(f, "feature {name:?}")?,
        }
        if let Some(key) = &self.key {
            write!(f, ": key {key:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

fn error(subject: &Subject, key: Option<&str>, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        subject: subject.clone(),
        key: key.map(str::to_owned),
        message: message.into(),
    }
}

fn check_name(subject: &Subject, key: &str, name: &str) -> Result<(), DefinitionError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(error(
            subject,
            Some(key),
            format!(
                "{name:?} is not a valid name (letters, digits and _, starting with a letter or _, at most {NAME_BYTES_MAX} bytes)"
            ),
        ));
    }
    Ok(())
}

/// A table's keys, checked against the allowed ones and read with typed accessors.
struct Keys<'a> {
    table: &'a toml::Table,
    subject: Subject,
}

impl<'a> Keys<'a> {
    fn new(
        table: &'a toml::Table,
        subject: Subject,
        allowed: &[&str],
    ) -> Result<Self, DefinitionError> {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(error(
                    &subject,
                    Some(key),
                    format!("unknown key (allowed: {})", allowed.join(", ")),
                ));
            }
        }
        Ok(Keys { table, subject })
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, DefinitionError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(error(
                &self.subject,
                Some(key),
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    fn required(&self, key: &str) -> Result<&'a str, DefinitionError> {
        self.string(key)?
            .ok_or_else(|| error(&self.subject, Some(key), "missing"))
    }
}

/// Parse and validate a definitions file (TOML).
pub fn parse_definitions(text: &str) -> Result<Definitions, DefinitionError> {
    let document: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        error(
            &Subject::File,
            None,
            format!("not valid TOML: {}", e.message()),
        )
    })?;
    let file = Keys::new(&document, Subject::File, &["stream", "feature"])?;
    let tables = |key: &str| -> Result<Vec<&toml::Table>, DefinitionError> {
        match file.table.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_table().ok_or_else(|| {
                        error(&Subject::File, Some(key), format!("use [[{key}]] tables"))
                    })
                })
                .collect(),
            Some(_) => Err(error(
                &Subject::File,
                Some(key),
                format!("use [[{key}]] tables"),
            )),
        }
    };
    let mut definitions = Definitions::default();
    for table in tables("stream")? {
        definitions.streams.push(parse_stream(table)?);
    }
    for table in tables("feature")? {
        definitions.features.push(parse_feature(table)?);
    }
    let mut seen = HashMap::new();
    for name in definitions
        .streams
        .iter()
        .map(|s| (&s.name, "stream"))
        .chain(definitions.features.iter().map(|f| (&f.name, "feature")))
    {
        if let Some(kind) = seen.insert(name.0.clone(), name.1)
            && kind == name.1
        {
            let subject = if kind == "stream" {
                Subject::Stream(name.0.clone())
            } else {
                Subject::Feature(name.0.clone())
            };
            return Err(error(&subject, Some("name"), "defined twice in this file"));
        }
    }
    Ok(definitions)
}

fn name_of(table: &toml::Table, kind: &str) -> Result<String, DefinitionError> {
    match table.get("name") {
        Some(toml::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(error(
            &Subject::File,
            Some("name"),
            format!("a {kind}'s name must be a string"),
        )),
        None => Err(error(
            &Subject::File,
            Some("name"),
            format!("a {kind} has no name"),
        )),
    }
}

fn parse_stream(table: &toml::Table) -> Result<StreamDef, DefinitionError> {
    let name = name_of(table, "stream")?;
    let subject = Subject::Stream(name.clone());
    check_name(&subject, "name", &name)?;
    let keys = Keys::new(
        table,
        subject.clone(),
        &["name", "entity", "time", "id", "fields"],
    )?;
    let entity = keys.required("entity")?.to_owned();
    let time = keys.required("time")?.to_owned();
    let id = keys.string("id")?.map(str::to_owned);
    let mut fields = BTreeMap::new();
    match table.get("fields") {
        None => {}
        Some(toml::Value::Table(declared)) => {
            if declared.len() > FIELDS_MAX {
                return Err(error(
                    &subject,
                    Some("fields"),
                    format!("more than {FIELDS_MAX} fields"),
                ));
            }
            for (field, ty) in declared {
                let key = format!("fields.{field}");
                check_name(&subject, &key, field)?;
                let ty = ty.as_str().and_then(FieldType::parse).ok_or_else(|| {
                    error(
                        &subject,
                        Some(&key),
                        "expected one of \"int\", \"float\", \"string\", \"bool\"",
                    )
                })?;
                fields.insert(field.clone(), ty);
            }
        }
        Some(_) => {
            return Err(error(
                &subject,
                Some("fields"),
                "expected a table of field = \"type\"",
            ));
        }
    }
    for (key, value) in [
        ("entity", Some(&entity)),
        ("time", Some(&time)),
        ("id", id.as_ref()),
    ] {
        let Some(value) = value else { continue };
        check_name(&subject, key, value)?;
        if fields.contains_key(value) {
            return Err(error(
                &subject,
                Some(key),
                format!("{value:?} is also declared in fields; it cannot be both"),
            ));
        }
    }
    if entity == time || Some(&entity) == id.as_ref() || Some(&time) == id.as_ref() {
        return Err(error(
            &subject,
            Some("entity"),
            "entity, time and id must be different fields",
        ));
    }
    Ok(StreamDef {
        name,
        entity,
        time,
        id,
        fields,
    })
}

fn parse_feature(table: &toml::Table) -> Result<FeatureDef, DefinitionError> {
    let name = name_of(table, "feature")?;
    let subject = Subject::Feature(name.clone());
    check_name(&subject, "name", &name)?;
    let keys = Keys::new(
        table,
        subject.clone(),
        &[
            "name",
            "stream",
            "agg",
            "field",
            "n",
            "window",
            "where",
            "freshness",
        ],
    )?;
    let stream = keys.required("stream")?.to_owned();
    let agg_name = keys.required("agg")?;
    let agg = AggKind::parse(agg_name).ok_or_else(|| {
        let names: Vec<_> = AggKind::ALL.iter().map(|k| k.name()).collect();
        error(
            &subject,
            Some("agg"),
            format!(
                "unknown aggregation {agg_name:?} (one of {})",
                names.join(", ")
            ),
        )
    })?;
    let field = keys.string("field")?.map(str::to_owned);
    if field.is_none() && agg.needs_field() {
        return Err(error(
            &subject,
            Some("field"),
            format!("{} needs a field", agg.name()),
        ));
    }
    let n = match table.get("n") {
        None if agg == AggKind::LastN => return Err(error(&subject, Some("n"), "last_n needs n")),
        None => None,
        Some(_) if agg != AggKind::LastN => {
            return Err(error(&subject, Some("n"), "only last_n takes n"));
        }
        Some(toml::Value::Integer(n)) if (1..=i64::from(LAST_N_MAX)).contains(n) => Some(*n as u32),
        Some(_) => {
            return Err(error(
                &subject,
                Some("n"),
                format!("expected an integer from 1 to {LAST_N_MAX}"),
            ));
        }
    };
    let window_ms = keys
        .string("window")?
        .map(|w| parse_duration(w).map_err(|e| error(&subject, Some("window"), e.to_string())))
        .transpose()?;
    let filter = keys
        .string("where")?
        .map(|w| filter::canonical(w).map_err(|e| error(&subject, Some("where"), e)))
        .transpose()?;
    let freshness = match keys.string("freshness")? {
        None | Some("realtime") => Freshness::Realtime,
        Some(p) => Freshness::Batch {
            period_ms: parse_duration(p)
                .map_err(|e| error(&subject, Some("freshness"), format!("{e}, or \"realtime\"")))?,
        },
    };
    Ok(FeatureDef {
        name,
        stream,
        agg,
        field,
        n,
        window_ms,
        filter,
        freshness,
    })
}

/// Everything registered, in the order it was applied. A stream's or feature's id is its
/// index here; ids never change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub streams: Vec<StreamDef>,
    pub features: Vec<FeatureDef>,
}

/// What applying a definitions file changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyPlan {
    pub new_streams: Vec<StreamDef>,
    pub new_features: Vec<FeatureDef>,
    /// Names already registered with an identical definition.
    pub unchanged: Vec<String>,
}

impl ApplyPlan {
    pub fn is_empty(&self) -> bool {
        self.new_streams.is_empty() && self.new_features.is_empty()
    }
}

impl Catalog {
    pub fn stream(&self, name: &str) -> Option<(usize, &StreamDef)> {
        self.streams
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    }

    pub fn feature(&self, name: &str) -> Option<(usize, &FeatureDef)> {
        self.features
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
    }

    /// Check `definitions` against what is registered; returns what would change.
    pub fn plan(&self, definitions: &Definitions) -> Result<ApplyPlan, DefinitionError> {
        let mut plan = ApplyPlan::default();
        for stream in &definitions.streams {
            match self.stream(&stream.name) {
                Some((_, existing)) if existing == stream => {
                    plan.unchanged.push(stream.name.clone())
                }
                Some(_) => {
                    return Err(error(
                        &Subject::Stream(stream.name.clone()),
                        None,
                        "already registered with a different definition; definitions are immutable (use a new name, e.g. with a _v2 suffix)",
                    ));
                }
                None => plan.new_streams.push(stream.clone()),
            }
        }
        for feature in &definitions.features {
            let subject = Subject::Feature(feature.name.clone());
            if self.stream(&feature.name).is_some()
                || plan.new_streams.iter().any(|s| s.name == feature.name)
            {
                return Err(error(&subject, Some("name"), "a stream has this name"));
            }
            let stream = self
                .stream(&feature.stream)
                .map(|(_, s)| s)
                .or_else(|| plan.new_streams.iter().find(|s| s.name == feature.stream))
                .ok_or_else(|| {
                    error(
                        &subject,
                        Some("stream"),
                        format!("unknown stream {:?}", feature.stream),
                    )
                })?;
            check_feature_against(feature, stream, &subject)?;
            match self.feature(&feature.name) {
                Some((_, existing)) if existing == feature => {
                    plan.unchanged.push(feature.name.clone())
                }
                Some(_) => {
                    return Err(error(
                        &subject,
                        None,
                        "already registered with a different definition; definitions are immutable (use a new name, e.g. with a _v2 suffix, or remove the feature first)",
                    ));
                }
                None => plan.new_features.push(feature.clone()),
            }
        }
        Ok(plan)
    }

    /// Register what `plan` adds. The plan must come from `self.plan`.
    pub fn apply(&mut self, plan: &ApplyPlan) {
        self.streams.extend(plan.new_streams.iter().cloned());
        self.features.extend(plan.new_features.iter().cloned());
    }
}

/// Field and `where` references of a feature against its stream's fields.
fn check_feature_against(
    feature: &FeatureDef,
    stream: &StreamDef,
    subject: &Subject,
) -> Result<(), DefinitionError> {
    if let Some(field) = &feature.field {
        let ty = stream.fields.get(field).ok_or_else(|| {
            error(
                subject,
                Some("field"),
                format!("stream {:?} has no field {field:?}", stream.name),
            )
        })?;
        if !feature.agg.accepts(*ty) {
            return Err(error(
                subject,
                Some("field"),
                format!(
                    "{} needs a numeric field; {field:?} is {ty}",
                    feature.agg.name()
                ),
            ));
        }
    }
    if let Some(text) = &feature.filter {
        let expr = filter::parse(text).map_err(|e| error(subject, Some("where"), e))?;
        for (field, op, literal) in expr.comparisons() {
            let ty = stream.fields.get(field).ok_or_else(|| {
                error(
                    subject,
                    Some("where"),
                    format!("stream {:?} has no field {field:?}", stream.name),
                )
            })?;
            use filter::Literal;
            let compatible = match literal {
                Literal::Int(_) | Literal::Float(_) => ty.is_numeric(),
                Literal::Str(_) => *ty == FieldType::String,
                Literal::Bool(_) => *ty == FieldType::Bool,
            };
            if !compatible {
                return Err(error(
                    subject,
                    Some("where"),
                    format!("{field:?} is {ty} and cannot be compared with {literal}"),
                ));
            }
            let _ = op;
        }
    }
    Ok(())
}

impl FeatureDef {
    /// The type of this feature's values.
    pub fn value_type(&self, stream: &StreamDef) -> ValueType {
        let field_type = self
            .field
            .as_ref()
            .and_then(|f| stream.fields.get(f))
            .copied();
        self.agg.result_type(field_type)
    }

    /// Bring a stored `where` text to the current canonical form. Earlier versions stored
    /// it fully parenthesised; read back from the state or the log, it must compare equal
    /// to the same filter applied now. (The current form is never the longer one.)
    pub fn recanonicalize_filter(&mut self) -> Result<(), DefinitionError> {
        if let Some(text) = &mut self.filter {
            let subject = Subject::Feature(self.name.clone());
            *text = filter::parse(text)
                .map_err(|e| error(&subject, Some("where"), e))?
                .to_string();
        }
        Ok(())
    }

    /// A stable content hash of the definition (hex), shown by the registry.
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("definitions serialize");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
    }
}

impl StreamDef {
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("definitions serialize");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[stream]]
name   = "transactions"
entity = "card_id"
time   = "ts"
id     = "txn_id"
[stream.fields]
amount   = "float"
merchant = "string"
approved = "bool"

[[feature]]
name   = "card_txn_count_1h"
stream = "transactions"
agg    = "count"
window = "1h"

[[feature]]
name      = "card_amount_sum_7d"
stream    = "transactions"
agg       = "sum"
field     = "amount"
window    = "7d"
where     = "approved == true"
freshness = "1h"
"#;

    fn plan_error(text: &str) -> String {
        match parse_definitions(text) {
            Err(e) => e.to_string(),
            Ok(defs) => Catalog::default()
                .plan(&defs)
                .map(|_| String::from("ok"))
                .unwrap_or_else(|e| e.to_string()),
        }
    }

    #[test]
    fn example_parses() {
        let defs = parse_definitions(EXAMPLE).unwrap();
        assert_eq!(defs.streams[0].fields.len(), 3);
        assert_eq!(defs.features[1].window_ms, Some(7 * 86_400_000));
        assert_eq!(
            defs.features[1].freshness,
            Freshness::Batch {
                period_ms: 3_600_000
            }
        );
        let plan = Catalog::default().plan(&defs).unwrap();
        assert_eq!((plan.new_streams.len(), plan.new_features.len()), (1, 2));
    }

    /// Every error names its subject and key. Each case: a replacement applied to EXAMPLE,
    /// and the expected message.
    #[test]
    fn errors_name_subject_and_key() {
        let cases = [
            (
                "window = \"1h\"",
                "window = \"1x\"",
                "feature \"card_txn_count_1h\": key \"window\": \"1x\" is not a duration",
            ),
            (
                "agg    = \"count\"",
                "agg = \"median\"",
                "feature \"card_txn_count_1h\": key \"agg\": unknown aggregation \"median\"",
            ),
            (
                "field     = \"amount\"",
                "field = \"amont\"",
                "feature \"card_amount_sum_7d\": key \"field\": stream \"transactions\" has no field \"amont\"",
            ),
            (
                "field     = \"amount\"",
                "field = \"merchant\"",
                "feature \"card_amount_sum_7d\": key \"field\": sum needs a numeric field; \"merchant\" is string",
            ),
            (
                "where     = \"approved == true\"",
                "where = \"approved == 1\"",
                "feature \"card_amount_sum_7d\": key \"where\": \"approved\" is bool and cannot be compared with 1",
            ),
            (
                "where     = \"approved == true\"",
                "where = \"approved = true\"",
                "feature \"card_amount_sum_7d\": key \"where\": unexpected '='",
            ),
            (
                "where     = \"approved == true\"",
                "where = \"city == \\\"x\\\"\"",
                "feature \"card_amount_sum_7d\": key \"where\": stream \"transactions\" has no field \"city\"",
            ),
            (
                "freshness = \"1h\"",
                "freshness = \"hourly\"",
                "feature \"card_amount_sum_7d\": key \"freshness\"",
            ),
            (
                "stream = \"transactions\"\nagg    = \"count\"",
                "stream = \"txns\"\nagg = \"count\"",
                "feature \"card_txn_count_1h\": key \"stream\": unknown stream \"txns\"",
            ),
            (
                "amount   = \"float\"",
                "amount = \"decimal\"",
                "stream \"transactions\": key \"fields.amount\": expected one of",
            ),
            (
                "time   = \"ts\"",
                "tme = \"ts\"",
                "stream \"transactions\": key \"tme\": unknown key",
            ),
            (
                "id     = \"txn_id\"",
                "id = \"amount\"",
                "stream \"transactions\": key \"id\": \"amount\" is also declared in fields",
            ),
            (
                "window = \"1h\"",
                "window = \"1h\"\nn = 3",
                "feature \"card_txn_count_1h\": key \"n\": only last_n takes n",
            ),
            (
                "window = \"1h\"",
                "window = 3600",
                "feature \"card_txn_count_1h\": key \"window\": expected a string, found integer",
            ),
            (
                "name   = \"card_txn_count_1h\"",
                "name = \"card txn\"",
                "feature \"card txn\": key \"name\": \"card txn\" is not a valid name",
            ),
            (
                "name   = \"card_txn_count_1h\"",
                "name = \"card_amount_sum_7d\"",
                "feature \"card_amount_sum_7d\": key \"name\": defined twice",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(EXAMPLE.contains(from), "case setup: {from:?}");
            let message = plan_error(&EXAMPLE.replacen(from, to, 1));
            assert!(
                message.starts_with(expected),
                "{to:?}:\n  got      {message}\n  expected {expected}"
            );
        }
        assert!(
            plan_error(
                "[[feature]]\nname = \"x\"\nstream = \"s\"\nagg = \"last_n\"\nfield = \"f\""
            )
            .contains("last_n needs n")
        );
        assert!(plan_error("this is not toml").starts_with("definitions: not valid TOML"));
        assert!(
            plan_error("[[table]]\nname = \"x\"")
                .starts_with("definitions: key \"table\": unknown key")
        );
    }

    /// Re-applying identical definitions changes nothing; a changed one is refused by name.
    #[test]
    fn definitions_are_immutable() {
        let mut catalog = Catalog::default();
        let defs = parse_definitions(EXAMPLE).unwrap();
        let plan = catalog.plan(&defs).unwrap();
        catalog.apply(&plan);
        let again = catalog.plan(&defs).unwrap();
        assert!(again.is_empty());
        assert_eq!(again.unchanged.len(), 3);
        // Same meaning, different spelling of the filter: still unchanged.
        let respelled = EXAMPLE.replace("approved == true", "(approved==true)");
        assert!(
            catalog
                .plan(&parse_definitions(&respelled).unwrap())
                .unwrap()
                .is_empty()
        );
        let changed = EXAMPLE.replace("window = \"1h\"", "window = \"2h\"");
        let err = catalog
            .plan(&parse_definitions(&changed).unwrap())
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "feature \"card_txn_count_1h\": already registered with a different definition"
            ),
            "{err}"
        );
    }
}
