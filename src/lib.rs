//! fsdb: an embedded time-series feature database.
//!
//! One aggregation code path answers "latest", "as of t" and (soon) whole point-in-time
//! training sets, over an append-only event log that is the source of truth. See
//! `README.md` for a tour and `docs/ARCHITECTURE.md` for the map of this crate.
//!
//! ```no_run
//! use fsdb::{Db, Options};
//! # fn main() -> fsdb::Result<()> {
//! let db = Db::open("./fsdb-data", Options::default())?;
//! db.apply(r#"
//!     [[stream]]
//!     name = "transactions"
//!     entity = "card_id"
//!     time = "ts"
//!     [stream.fields]
//!     amount = "float"
//!
//!     [[feature]]
//!     name = "card_amount_sum_1h"
//!     stream = "transactions"
//!     agg = "sum"
//!     field = "amount"
//!     window = "1h"
//! "#)?;
//! let event = serde_json::json!({"card_id": "c42", "ts": "2026-03-01T12:00:00Z", "amount": 12.5});
//! db.append_json("transactions", &[event])?;
//! let row = db.as_of("c42", &["card_amount_sum_1h"], fsdb::time::parse_timestamp("2026-03-01T12:30:00Z")?)?;
//! assert_eq!(row.get("card_amount_sum_1h"), Some(&fsdb::Value::Float(12.5)));
//! # Ok(()) }
//! ```

pub mod agg;
pub mod allocator;
mod arrow_cell;
pub mod catalog;
pub mod cli;
mod engine;
pub mod error;
pub mod event;
pub mod export;
pub mod http;
mod maintenance;
mod query;
pub mod spine;
#[doc(hidden)]
pub mod testing;
pub mod time;
mod training;
pub mod value;
pub mod workload;

pub use engine::entity::QueryStats;
pub use engine::materialize::MaterializeReport;
pub use engine::{AppendReport, ApplyReport, CacheStats, Db, Health, OpenReport, Options};
pub use error::{Error, Result};
pub use event::{Event, EventError, EventLimits};
pub use fsdb_storage::Durability;
pub use maintenance::{ReplayCheck, Stats};
pub use query::FeatureRow;
pub use training::TrainingSet;
pub use value::{FieldType, Value, ValueType};
