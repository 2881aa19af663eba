//! Arrow cells as fsdb values: the JSON value an event field takes (for `fsdb ingest` of
//! Parquet: the same values an NDJSON line would carry, so one validation serves every
//! format), and timestamps as epoch milliseconds (also for Parquet spines).

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, TimeUnit};
use serde_json::Value as Json;

const DAY_MS: i64 = 86_400_000;

/// Integers stay integers, floats floats (NaN and infinities are refused, as in CSV),
/// timestamps and dates become epoch milliseconds (sub-millisecond digits
/// floored, as for RFC 3339 text), strings stay strings. Other types are an error naming
/// the type.
pub(crate) fn arrow_cell_json(array: &ArrayRef, i: usize) -> Result<Json, String> {
    if array.is_null(i) {
        return Ok(Json::Null);
    }
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).into(),
        DataType::Utf8View => array.as_string_view().value(i).into(),
        DataType::Boolean => array.as_boolean().value(i).into(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(i);
            i64::try_from(v)
                .map_err(|_| format!("{v} is beyond the 64-bit signed integer range"))?
                .into()
        }
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(i)))?,
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i))?,
        DataType::Timestamp(unit, _) => timestamp_ms(array, *unit, i).into(),
        DataType::Date32 => {
            (i64::from(array.as_primitive::<Date32Type>().value(i)) * DAY_MS).into()
        }
        DataType::Date64 => array.as_primitive::<Date64Type>().value(i).into(),
        other => return Err(format!("Parquet type {other} is not supported")),
    })
}

/// A non-null cell of a `Timestamp(unit, _)` array as epoch milliseconds (finer digits
/// floored, as for RFC 3339 text).
pub(crate) fn timestamp_ms(array: &ArrayRef, unit: TimeUnit, i: usize) -> i64 {
    match unit {
        TimeUnit::Second => array
            .as_primitive::<TimestampSecondType>()
            .value(i)
            .saturating_mul(1000),
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(i),
        TimeUnit::Microsecond => array
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
            .div_euclid(1000),
        TimeUnit::Nanosecond => array
            .as_primitive::<TimestampNanosecondType>()
            .value(i)
            .div_euclid(1_000_000),
    }
}

fn float(v: f64) -> Result<Json, String> {
    serde_json::Number::from_f64(v)
        .map(Json::Number)
        .ok_or_else(|| "NaN and infinity are not accepted".to_owned())
}
