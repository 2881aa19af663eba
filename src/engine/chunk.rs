//! Encoding an entity's unpersisted rows as a [`RowChunk`] straight from their page,
//! without materialising `Value`s: a borrowed serde view whose bincode bytes are identical
//! to the owned `RowChunk`'s (a test checks it), so decoding needs nothing special.

use std::ops::Range;

use serde::ser::{Serialize, SerializeStruct, SerializeTuple, Serializer};

use crate::agg::{StrId, Strings};
use crate::value::FieldType;

use super::page::Page;

/// `Value` without ownership: the same variants in the same order, so the same encoding.
#[derive(serde::Serialize)]
enum ValueRef<'a> {
    Null,
    Int(i64),
    Float(f64),
    String(&'a str),
    Bool(bool),
}

/// Rows per persisted chunk, at most. Bounding the value size bounds what RocksDB reads to
/// position any iterator: a seek reads a whole block, and a value larger than a block is a
/// block of its own (a hot entity's unbounded chunk made every seek near it read megabytes).
pub(crate) const CHUNK_ROWS_MAX: usize = 512;

/// `rows[range]` of a page, serializing as `RowChunk { rows: Vec<(i64, u64, Vec<Value>)> }`.
pub(crate) struct ChunkView<'a> {
    pub(crate) rows: &'a Page,
    pub(crate) range: Range<usize>,
    pub(crate) types: &'a [FieldType],
    pub(crate) strings: &'a dyn Strings,
}

struct Rows<'a>(&'a ChunkView<'a>);

struct Row<'a> {
    view: &'a ChunkView<'a>,
    row: usize,
}

struct Cells<'a>(Row<'a>);

impl Serialize for ChunkView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut chunk = serializer.serialize_struct("RowChunk", 1)?;
        chunk.serialize_field("rows", &Rows(self))?;
        chunk.end()
    }
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        serializer.collect_seq(view.range.clone().map(|row| Row { view, row }))
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(3)?;
        tuple.serialize_element(&self.view.rows.time(self.row))?;
        tuple.serialize_element(&self.view.rows.lsn(self.row))?;
        tuple.serialize_element(&Cells(Row {
            view: self.view,
            row: self.row,
        }))?;
        tuple.end()
    }
}

impl Serialize for Cells<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Row { view, row } = self.0;
        serializer.collect_seq(view.types.iter().enumerate().map(|(column, ty)| {
            match view.rows.cell(column, row) {
                None => ValueRef::Null,
                Some(raw) => match ty {
                    FieldType::Int => ValueRef::Int(raw as i64),
                    FieldType::Float => ValueRef::Float(f64::from_bits(raw)),
                    FieldType::String => ValueRef::String(view.strings.get(StrId(raw as u32))),
                    FieldType::Bool => ValueRef::Bool(raw != 0),
                },
            }
        }))
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
                    Value::String(format!("s{}", i % 5)),
                    Value::Int(-i),
                    Value::Bool(i % 2 == 0),
                ];
                (1000 - i * 13, i as u64 + 1, values)
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
            assert_eq!(
                fsdb_storage::codec::encode(&view).unwrap(),
                fsdb_storage::codec::encode(&owned).unwrap()
            );
        }
    }
}
