//! A page: the events of one leaf tile, sorted by (time, LSN), stored by column.
//!
//! Every field is kept as 8 raw bytes (int bits, float bits, string id, 0/1) plus a null
//! flag; the stream's schema says how to read them.

use std::ops::Range;

#[derive(Clone, Debug, Default)]
pub(crate) struct Page {
    pub(crate) times: Vec<i64>,
    pub(crate) lsns: Vec<u64>,
    columns: Vec<Column>,
}

#[derive(Clone, Debug, Default)]
struct Column {
    raw: Vec<u64>,
    null: Vec<bool>,
}

impl Page {
    pub(crate) fn new(columns: usize) -> Page {
        Page {
            times: Vec::new(),
            lsns: Vec::new(),
            columns: vec![Column::default(); columns],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    /// The raw cell, or `None` if null.
    #[inline]
    pub(crate) fn cell(&self, column: usize, row: usize) -> Option<u64> {
        let c = &self.columns[column];
        if c.null[row] { None } else { Some(c.raw[row]) }
    }

    fn position(&self, time: i64, lsn: u64) -> Result<usize, usize> {
        // Events arrive mostly in time order: check the end first.
        match (self.times.last(), self.lsns.last()) {
            (Some(&t), Some(&l)) if (t, l) < (time, lsn) => return Err(self.len()),
            (None, _) | (_, None) => return Err(0),
            _ => {}
        }
        let at = self.times.partition_point(|&t| t < time);
        let end = at + self.times[at..].partition_point(|&t| t == time);
        match self.lsns[at..end].binary_search(&lsn) {
            Ok(i) => Ok(at + i),
            Err(i) => Err(at + i),
        }
    }

    /// The row holding (time, LSN), if any.
    pub(crate) fn find(&self, time: i64, lsn: u64) -> Option<usize> {
        self.position(time, lsn).ok()
    }

    /// Insert a row; `false` (and no change) if a row with this (time, LSN) exists.
    pub(crate) fn insert(&mut self, time: i64, lsn: u64, cells: &[Option<u64>]) -> bool {
        debug_assert_eq!(cells.len(), self.columns.len());
        let Err(at) = self.position(time, lsn) else {
            return false;
        };
        self.times.insert(at, time);
        self.lsns.insert(at, lsn);
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            column.raw.insert(at, cell.unwrap_or(0));
            column.null.insert(at, cell.is_none());
        }
        true
    }

    /// The rows with `lo <= time <= hi`.
    pub(crate) fn rows_between(&self, lo: i64, hi: i64) -> Range<usize> {
        let start = self.times.partition_point(|&t| t < lo);
        let end = self.times.partition_point(|&t| t <= hi);
        start..end.max(start)
    }

    /// Move the rows in `range` into a new page.
    pub(crate) fn extract(&self, range: Range<usize>) -> Page {
        Page {
            times: self.times[range.clone()].to_vec(),
            lsns: self.lsns[range.clone()].to_vec(),
            columns: self
                .columns
                .iter()
                .map(|c| Column {
                    raw: c.raw[range.clone()].to_vec(),
                    null: c.null[range.clone()].to_vec(),
                })
                .collect(),
        }
    }
}
