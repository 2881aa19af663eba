//! A page: the events of one leaf tile, sorted by (time, LSN), stored row by row — or, for
//! an entity's unpersisted events, the same rows in arrival order (built by `push` only,
//! read through `into_sorted`; the search methods assume a sorted page).
//!
//! One `Vec<u64>` holds every row as `[time, lsn, cell 0, …, cell n-1, null mask…]`: one
//! allocation per page (rows are added in place), and one cache line per row when folding.
//! A cell is the field's 8 raw bytes (int bits, float bits, string id, 0/1); bit `c` of the
//! null mask words says whether cell `c` is null. The stream's schema says how to read them.

use std::ops::Range;

#[derive(Clone, Debug, Default)]
pub(crate) struct Page {
    data: Vec<u64>,
    columns: usize,
    stride: usize,
}

/// Rows of at most this many words (time, LSN, 30 cells, their null mask) are built on the
/// stack by [`Page::push`]; wider ones word by word.
const ROW_WORDS_INLINE_MAX: usize = CELLS + 30 + 1;
/// The rows an empty page makes room for at its first push: an entity's unpersisted page
/// starts empty after each checkpoint, and growing it one row, two, four... was half the
/// cost of a push.
const PUSH_ROWS_FIRST: usize = 4;

const TIME: usize = 0;
const LSN: usize = 1;
const CELLS: usize = 2;

/// Write a row's words into `row` (all zero, `CELLS + cells.len()` words and the null mask).
#[inline]
fn fill_row(row: &mut [u64], time: i64, lsn: u64, cells: &[Option<u64>]) {
    row[TIME] = time as u64;
    row[LSN] = lsn;
    let masks = CELLS + cells.len();
    for (column, cell) in cells.iter().enumerate() {
        match cell {
            Some(raw) => row[CELLS + column] = *raw,
            None => row[masks + column / 64] |= 1 << (column % 64),
        }
    }
}

impl Page {
    pub(crate) fn new(columns: usize) -> Page {
        Page {
            data: Vec::new(),
            columns,
            stride: CELLS + columns + columns.div_ceil(64),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len() / self.stride
    }

    #[inline]
    pub(crate) fn time(&self, row: usize) -> i64 {
        self.data[row * self.stride + TIME] as i64
    }

    #[inline]
    pub(crate) fn lsn(&self, row: usize) -> u64 {
        self.data[row * self.stride + LSN]
    }

    /// The raw cell, or `None` if null.
    #[inline]
    pub(crate) fn cell(&self, column: usize, row: usize) -> Option<u64> {
        let base = row * self.stride;
        let mask = self.data[base + CELLS + self.columns + column / 64];
        if mask >> (column % 64) & 1 == 1 {
            None
        } else {
            Some(self.data[base + CELLS + column])
        }
    }

    /// The first row whose (time, LSN) is not less than the given one.
    fn lower_bound(&self, time: i64, lsn: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if (self.time(mid), self.lsn(mid)) < (time, lsn) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn position(&self, time: i64, lsn: u64) -> Result<usize, usize> {
        let len = self.len();
        // Events arrive mostly in time order: check the end first.
        if len == 0 || (self.time(len - 1), self.lsn(len - 1)) < (time, lsn) {
            return Err(len);
        }
        let at = self.lower_bound(time, lsn);
        if at < len && self.time(at) == time && self.lsn(at) == lsn {
            Ok(at)
        } else {
            Err(at)
        }
    }

    /// Insert a row; `false` (and no change) if a row with this (time, LSN) exists.
    pub(crate) fn insert(&mut self, time: i64, lsn: u64, cells: &[Option<u64>]) -> bool {
        debug_assert_eq!(cells.len(), self.columns);
        let Err(at) = self.position(time, lsn) else {
            return false;
        };
        let base = at * self.stride;
        // Open a gap of one row at `base` (a no-op move when appending).
        let old_len = self.data.len();
        self.data.resize(old_len + self.stride, 0);
        self.data.copy_within(base..old_len, base + self.stride);
        self.write_row(base, time, lsn, cells);
        true
    }

    /// Fill the row starting at word `base`.
    fn write_row(&mut self, base: usize, time: i64, lsn: u64, cells: &[Option<u64>]) {
        let row = &mut self.data[base..base + self.stride];
        row.fill(0);
        fill_row(row, time, lsn, cells);
    }

    /// Append a row after the others, whatever its (time, LSN): for a page kept in arrival
    /// order (an entity's unpersisted events), which `into_sorted` orders when it is read.
    pub(crate) fn push(&mut self, time: i64, lsn: u64, cells: &[Option<u64>]) {
        debug_assert_eq!(cells.len(), self.columns);
        if self.stride > ROW_WORDS_INLINE_MAX {
            return self.push_wide(time, lsn, cells);
        }
        // The row built on the stack and copied once: each word written once (a replay
        // pushes every event it reads), with one capacity check per row.
        let mut row = [0u64; ROW_WORDS_INLINE_MAX];
        fill_row(&mut row[..self.stride], time, lsn, cells);
        if self.data.capacity() == 0 {
            self.data.reserve_exact(PUSH_ROWS_FIRST * self.stride);
        }
        self.data.extend_from_slice(&row[..self.stride]);
    }

    /// [`Page::push`] for rows too wide for its stack buffer.
    fn push_wide(&mut self, time: i64, lsn: u64, cells: &[Option<u64>]) {
        self.data.reserve(self.stride);
        self.data.push(time as u64);
        self.data.push(lsn);
        self.data.extend(cells.iter().map(|cell| cell.unwrap_or(0)));
        for word in cells.chunks(64) {
            let nulls = word.iter().enumerate();
            let mask = nulls.fold(0u64, |mask, (bit, cell)| {
                mask | u64::from(cell.is_none()) << bit
            });
            self.data.push(mask);
        }
        debug_assert_eq!(self.data.len() % self.stride, 0);
    }

    /// Remove the first `n` rows; the others stay, in order. An emptied page gives back its
    /// memory.
    pub(crate) fn remove_first(&mut self, n: usize) {
        assert!(n <= self.len(), "removing {n} of {} rows", self.len());
        self.data.drain(..n * self.stride);
        if self.data.is_empty() {
            self.data = Vec::new();
        }
    }

    /// The same rows sorted by (time, LSN) (a stable sort: repeats keep their order); the
    /// page itself if it already is (one appender's events mostly arrive in order).
    pub(crate) fn into_sorted(mut self) -> Page {
        self.sort_rows(0..self.len());
        self
    }

    /// Sort `rows` by (time, LSN) in place, stably; the others stay where they are.
    pub(crate) fn sort_rows(&mut self, rows: Range<usize>) {
        let key = |row: usize| (self.time(row), self.lsn(row));
        if (rows.start + 1..rows.end).all(|row| key(row - 1) <= key(row)) {
            return;
        }
        // The keys beside the rows' numbers (a comparison reads no row), in a stable sort,
        // which takes the runs of a page mostly in order as they are.
        let mut order: Vec<(i64, u64, usize)> = rows
            .clone()
            .map(|row| (self.time(row), self.lsn(row), row))
            .collect();
        order.sort_by_key(|&(time, lsn, _)| (time, lsn));
        let mut sorted = Vec::with_capacity(rows.len() * self.stride);
        for (_, _, row) in order {
            sorted.extend_from_slice(&self.data[row * self.stride..(row + 1) * self.stride]);
        }
        self.data[rows.start * self.stride..rows.end * self.stride].copy_from_slice(&sorted);
    }

    /// Drop the spare capacity.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.data.shrink_to_fit();
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data.capacity() * 8
    }

    /// The cells of one row (for moving it to another page).
    pub(crate) fn row_cells(&self, row: usize) -> Vec<Option<u64>> {
        (0..self.columns)
            .map(|column| self.cell(column, row))
            .collect()
    }

    /// The first row with `time >= at` (the page's length if none).
    pub(crate) fn first_row_at_or_after(&self, at: i64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.time(mid) < at {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// [`Page::first_row_after`] by a scan from the first row: for callers that then
    /// read the rows before it.
    pub(crate) fn first_row_after_from_front(&self, at: i64) -> usize {
        let len = self.len();
        let mut row = 0;
        while row < len && self.time(row) <= at {
            row += 1;
        }
        row
    }

    /// [`Page::first_row_at_or_after`] by a scan from the last row: for callers that then
    /// read the rows from it.
    pub(crate) fn first_row_at_or_after_from_back(&self, at: i64) -> usize {
        let mut row = self.len();
        while row > 0 && self.time(row - 1) >= at {
            row -= 1;
        }
        row
    }

    /// The first row with `time > at` (the page's length if none).
    pub(crate) fn first_row_after(&self, at: i64) -> usize {
        match at.checked_add(1) {
            Some(next) => self.first_row_at_or_after(next),
            None => self.len(),
        }
    }

    /// A new page with the rows in `range`.
    pub(crate) fn extract(&self, range: Range<usize>) -> Page {
        Page {
            data: self.data[range.start * self.stride..range.end * self.stride].to_vec(),
            columns: self.columns,
            stride: self.stride,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_rows_sort_and_leave_by_prefix() {
        let mut page = Page::new(2);
        for (time, lsn) in [(5i64, 5u64), (2, 3), (7, 6), (2, 2), (1, 1), (2, 3)] {
            page.push(time, lsn, &[Some(lsn * 10), None]);
        }
        let keys = |page: &Page| -> Vec<(i64, u64, Option<u64>)> {
            (0..page.len())
                .map(|r| (page.time(r), page.lsn(r), page.cell(0, r)))
                .collect()
        };
        let sorted = page.clone().into_sorted();
        assert_eq!(
            keys(&sorted),
            vec![
                (1, 1, Some(10)),
                (2, 2, Some(20)),
                (2, 3, Some(30)),
                (2, 3, Some(30)),
                (5, 5, Some(50)),
                (7, 6, Some(60))
            ]
        );
        assert_eq!(sorted.cell(1, 3), None);
        let data = sorted.data.as_ptr();
        assert_eq!(
            sorted.into_sorted().data.as_ptr(),
            data,
            "a sorted page is kept"
        );
        page.remove_first(4);
        assert_eq!(keys(&page), vec![(1, 1, Some(10)), (2, 3, Some(30))]);
        page.remove_first(2);
        assert_eq!((page.len(), page.heap_bytes()), (0, 0));
    }

    /// A pushed row reads back as the same row inserted, on either side of the stack
    /// buffer's width (30 columns fit, 31 do not) and past one null-mask word.
    #[test]
    fn pushed_rows_equal_inserted_rows_at_every_width() {
        for columns in [1, 6, 29, 30, 31, 64, 65, 70] {
            let row = |i: u64| -> Vec<Option<u64>> {
                (0..columns as u64)
                    .map(|c| (!(c + i).is_multiple_of(3)).then_some(c * 1000 + i))
                    .collect()
            };
            let (mut pushed, mut inserted) = (Page::new(columns), Page::new(columns));
            for i in 0..20u64 {
                pushed.push(i as i64, i, &row(i));
                assert!(inserted.insert(i as i64, i, &row(i)));
            }
            assert_eq!(pushed.data, inserted.data, "{columns} columns");
            for (i, expected) in (0..20).map(|i| (i as usize, row(i))) {
                let read: Vec<_> = (0..columns).map(|c| pushed.cell(c, i)).collect();
                assert_eq!(read, expected, "{columns} columns, row {i}");
            }
        }
    }

    #[test]
    fn rows_stay_sorted_and_cells_round_trip() {
        let mut page = Page::new(70);
        let cells = |i: u64| -> Vec<Option<u64>> {
            (0..70)
                .map(|c| {
                    if (c + i).is_multiple_of(3) {
                        None
                    } else {
                        Some(c * 1000 + i)
                    }
                })
                .collect()
        };
        for (time, lsn) in [(5i64, 1u64), (3, 2), (5, 0), (-1, 9), (5, 3), (3, 2)] {
            page.insert(time, lsn, &cells(lsn));
        }
        let keys: Vec<(i64, u64)> = (0..page.len())
            .map(|r| (page.time(r), page.lsn(r)))
            .collect();
        assert_eq!(
            keys,
            vec![(-1, 9), (3, 2), (5, 0), (5, 1), (5, 3)],
            "sorted, duplicate (3, 2) dropped"
        );
        for row in 0..page.len() {
            let expected = cells(page.lsn(row));
            for (column, cell) in expected.iter().enumerate() {
                assert_eq!(page.cell(column, row), *cell);
            }
        }
        let rows = |lo, hi| page.first_row_at_or_after(lo)..page.first_row_after(hi);
        assert_eq!(rows(3, 5), 1..5);
        assert_eq!(rows(4, 4), 2..2);
        assert_eq!(rows(-5, -1), 0..1);
        assert_eq!(rows(6, i64::MAX), 5..5);
        assert_eq!(rows(i64::MIN, i64::MAX), 0..5);
        for at in -2..7 {
            assert_eq!(
                page.first_row_after_from_front(at),
                page.first_row_after(at)
            );
            assert_eq!(
                page.first_row_at_or_after_from_back(at),
                page.first_row_at_or_after(at)
            );
        }
        assert_eq!(page.extract(1..3).len(), 2);
    }
}
