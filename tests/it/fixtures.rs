//! Definitions and helpers shared by several tests.

use std::path::Path;

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

/// The count of an `EV_STREAM` entity's events, as feature `n`.
pub const COUNT_N: &str = r#"
[[feature]]
name = "n"
stream = "ev"
agg = "count"
"#;

/// `EV_STREAM` and the given features.
pub fn ev_definitions(features: &str) -> String {
    format!("{EV_STREAM}{features}")
}

/// Copy a directory tree (a data directory), leaving out lock files.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
