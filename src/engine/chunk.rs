//! Encoding an entity's unpersisted rows as a [`RowChunk`] straight from their page,
//! without materialising `Value`s: written by hand with `event::wire`'s pieces, byte for
//! byte what bincode's serde encoding of the owned `RowChunk` is (a test checks it), so
//! decoding needs nothing special.

use std::ops::Range;

use crate::agg::{StrId, Strings};
use crate::event::wire;
use crate::value::FieldType;

use super::page::Page;

/// Rows per persisted chunk, at most. Bounding the value size bounds what RocksDB reads to
/// position any iterator: a seek reads a whole block, and a value larger than a block is a
/// block of its own (a hot entity's unbounded chunk made every seek near it read megabytes).
pub(crate) const CHUNK_ROWS_MAX: usize = 512;

/// `rows[range]` of a page, encoding as `RowChunk { rows: Vec<(i64, u64, Vec<Value>)> }`.
pub(crate) struct ChunkView<'a> {
    pub(crate) rows: &'a Page,
    pub(crate) range: Range<usize>,
    pub(crate) types: &'a [FieldType],
    pub(crate) strings: &'a dyn Strings,
}

impl ChunkView<'_> {
    /// The chunk's bytes: its one field, the rows (a sequence of `(time, LSN, values)`).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`ChunkView::encode`], appended to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let rows = self.rows;
        // A row takes ~12 bytes for time and LSN and ~6 per cell: one allocation, mostly.
        out.reserve(8 + self.range.len() * (12 + 6 * self.types.len()));
        wire::put_unsigned(out, self.range.len() as u64);
        for row in self.range.clone() {
            wire::put_signed(out, rows.time(row));
            wire::put_unsigned(out, rows.lsn(row));
            wire::put_unsigned(out, self.types.len() as u64);
            for (column, ty) in self.types.iter().enumerate() {
                match (rows.cell(column, row), ty) {
                    (None, _) => wire::put_null(out),
                    (Some(raw), FieldType::Int) => wire::put_int(out, raw as i64),
                    (Some(raw), FieldType::Float) => wire::put_float(out, f64::from_bits(raw)),
                    (Some(raw), FieldType::String) => {
                        wire::put_string(out, self.strings.get(StrId(raw as u32)))
                    }
                    (Some(raw), FieldType::Bool) => wire::put_bool(out, raw != 0),
                }
            }
        }
    }
}

/// Append the chunk of `rows`, each its time, LSN and values as an event record holds them
/// when [`wire::values_as_put`]: the bytes [`ChunkView::encode_into`] gives for the same
/// rows, by copying (a replay's rows, never decoded into cells).
pub(crate) fn encode_rows_as_put<'a>(
    out: &mut Vec<u8>,
    rows: impl ExactSizeIterator<Item = (i64, u64, &'a [u8])>,
) {
    wire::put_unsigned(out, rows.len() as u64);
    for (time, lsn, values) in rows {
        wire::put_signed(out, time);
        wire::put_unsigned(out, lsn);
        out.extend_from_slice(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::strings::StringTable;
    use crate::event::RowChunk;
    use crate::value::Value;

    /// The view encodes exactly like the owned chunk of the same rows.
    #[test]
    fn view_encodes_like_owned_chunk() {
        let strings = StringTable::default();
        let types = [
            FieldType::Float,
            FieldType::String,
            FieldType::Int,
            FieldType::Bool,
        ];
        let mut page = Page::new(types.len());
        let rows: Vec<(i64, u64, Vec<Value>)> = (0..100)
            .map(|i| {
                let values = vec![
                    if i % 7 == 0 {
                        Value::Null
                    } else {
                        Value::Float(i as f64 / 3.0)
                    },
                    // Lengths, times, LSNs and ints of every width.
                    Value::String(format!("s{}", i % 5).repeat(if i % 9 == 0 { 200 } else { 1 })),
                    Value::Int(if i % 4 == 0 {
                        i64::MIN + i
                    } else {
                        -i * 1_000_003
                    }),
                    Value::Bool(i % 2 == 0),
                ];
                let epoch = if i % 3 == 0 { 1_772_000_000_000 } else { 0 };
                (epoch + 1000 - i * 13, i as u64 * 40_000 + 1, values)
            })
            .collect();
        for (time, lsn, values) in &rows {
            let cells: Vec<Option<u64>> = values
                .iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::Float(f) => Some(f.to_bits()),
                    Value::String(s) => Some(u64::from(strings.intern(s).0)),
                    Value::Int(i) => Some(*i as u64),
                    Value::Bool(b) => Some(u64::from(*b)),
                    Value::List(_) => unreachable!(),
                })
                .collect();
            page.insert(*time, *lsn, &cells);
        }
        let view_strings = strings.read();
        // The page keeps rows sorted by (time, LSN): so must the owned chunk compared with.
        let mut rows = rows;
        rows.sort_by_key(|(time, lsn, _)| (*time, *lsn));
        for range in [0..100, 0..0, 17..60, 99..100] {
            let view = ChunkView {
                rows: &page,
                range: range.clone(),
                types: &types,
                strings: &view_strings,
            };
            let owned = RowChunk {
                rows: rows[range].to_vec(),
            };
            assert_eq!(view.encode(), fsdb_storage::codec::encode(&owned).unwrap());
        }
    }

    /// Rows copied from event records encode like the owned chunk of the same rows.
    #[test]
    fn rows_as_put_encode_like_owned_chunk() {
        let types = [
            FieldType::Float,
            FieldType::String,
            FieldType::Int,
            FieldType::Bool,
        ];
        let rows: Vec<(i64, u64, Vec<Value>)> = (0..40)
            .map(|i| {
                let values = vec![
                    Value::Float(i as f64 / 7.0),
                    if i % 5 == 0 {
                        Value::Null
                    } else {
                        Value::String("é".repeat(i as usize * 9))
                    },
                    Value::Int(if i % 2 == 0 { i64::MIN + i } else { i * 70_001 }),
                    Value::Bool(i % 3 == 0),
                ];
                (1_772_000_000_000 - i * 1_000_003, i as u64 * 90_000, values)
            })
            .collect();
        let records: Vec<Vec<u8>> = rows
            .iter()
            .map(|(time, _, values)| {
                let mut record = Vec::new();
                wire::encode_event(&mut record, 3, "e", *time, Some("id"), values);
                record
            })
            .collect();
        let as_put: Vec<&[u8]> = records
            .iter()
            .map(|record| {
                let (_, values) = wire::decode_event_head(record).expect("an event record");
                assert!(wire::values_as_put(values, &types));
                values
            })
            .collect();
        let mut out = Vec::new();
        encode_rows_as_put(
            &mut out,
            (rows.iter().zip(&as_put)).map(|((time, lsn, _), values)| (*time, *lsn, *values)),
        );
        let owned = RowChunk { rows };
        assert_eq!(out, fsdb_storage::codec::encode(&owned).unwrap());
    }
}
