//! Definitions shared by several tests.

/// A stream of integer-valued events keyed by `k`, with ids: what the crash, concurrency
/// and state-damage tests count.
pub const EV_STREAM: &str = r#"
[[stream]]
name = "ev"
entity = "k"
time = "ts"
id = "id"
[stream.fields]
v = "int"
"#;

/// `EV_STREAM` and the given features.
pub fn ev_definitions(features: &str) -> String {
    format!("{EV_STREAM}{features}")
}
