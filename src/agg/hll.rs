//! HyperLogLog for `approx_count_distinct`.
//!
//! - While small, the sketch is the exact set of 64-bit value hashes (so small counts are
//!   exact); past [`SPARSE_MAX`] hashes it becomes 2^14 one-byte registers.
//! - The dense estimate is Otmar Ertl's "improved raw estimator" (*New cardinality
//!   estimation algorithms for HyperLogLog sketches*, 2017), which is unbiased over the
//!   whole range without empirical correction tables. Standard error 1.04/sqrt(2^14) ≈ 0.81%.
//! - Merging takes register maxima (or unions sets), so the result depends only on the set
//!   of hashes folded in, never on the order or the split: every code path agrees.

/// log2 of the register count.
pub const PRECISION: u32 = 14;
pub(crate) const REGISTERS: usize = 1 << PRECISION;
/// Bits of the hash left after the register index.
const Q: u32 = 64 - PRECISION;
/// Up to this many distinct hashes are kept exactly (8 bytes each, below the 16 KiB of a
/// dense sketch).
pub const SPARSE_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hll {
    /// Sorted, distinct hashes.
    Sparse(Vec<u64>),
    Dense(Box<[u8; REGISTERS]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(Vec::new())
    }
}

fn register_of(hash: u64) -> (usize, u8) {
    let index = (hash >> Q) as usize;
    let rest = hash << PRECISION;
    // Leading zeros of the remaining Q bits, plus one; all-zero remainder gives Q + 1.
    let rank = if rest == 0 {
        Q + 1
    } else {
        rest.leading_zeros() + 1
    };
    (index, rank as u8)
}

impl Hll {
    pub fn insert(&mut self, hash: u64) {
        match self {
            Hll::Sparse(hashes) => {
                if let Err(at) = hashes.binary_search(&hash) {
                    hashes.insert(at, hash);
                    if hashes.len() > SPARSE_MAX {
                        self.densify();
                    }
                }
            }
            Hll::Dense(registers) => {
                let (index, rank) = register_of(hash);
                if registers[index] < rank {
                    registers[index] = rank;
                }
            }
        }
    }

    /// Give back the room a sparse sketch keeps for hashes to come.
    pub fn shrink_to_fit(&mut self) {
        if let Hll::Sparse(hashes) = self {
            hashes.shrink_to_fit();
        }
    }

    fn densify(&mut self) {
        if let Hll::Sparse(hashes) = self {
            let mut registers = Box::new([0u8; REGISTERS]);
            for &hash in hashes.iter() {
                let (index, rank) = register_of(hash);
                registers[index] = registers[index].max(rank);
            }
            *self = Hll::Dense(registers);
        }
    }

    pub fn merge(&mut self, other: &Hll) {
        match other {
            Hll::Sparse(theirs) => {
                if let Hll::Sparse(mine) = self {
                    let mut union = Vec::with_capacity(mine.len() + theirs.len());
                    let (mut i, mut j) = (0, 0);
                    while i < mine.len() || j < theirs.len() {
                        let next = match (mine.get(i), theirs.get(j)) {
                            (Some(&a), Some(&b)) if a == b => {
                                i += 1;
                                j += 1;
                                a
                            }
                            (Some(&a), Some(&b)) if a < b => {
                                i += 1;
                                a
                            }
                            (Some(_), Some(&b)) | (None, Some(&b)) => {
                                j += 1;
                                b
                            }
                            (Some(&a), None) => {
                                i += 1;
                                a
                            }
                            (None, None) => unreachable!("loop condition"),
                        };
                        union.push(next);
                    }
                    *mine = union;
                    if mine.len() > SPARSE_MAX {
                        self.densify();
                    }
                } else {
                    for &hash in theirs {
                        self.insert(hash);
                    }
                }
            }
            Hll::Dense(theirs) => {
                self.densify();
                let Hll::Dense(mine) = self else {
                    unreachable!("densified above")
                };
                for (a, &b) in mine.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    /// The estimated number of distinct hashes inserted.
    pub fn estimate(&self) -> u64 {
        match self {
            Hll::Sparse(hashes) => hashes.len() as u64,
            Hll::Dense(registers) => {
                let mut histogram = [0u32; Q as usize + 2];
                for &r in registers.iter() {
                    histogram[r as usize] += 1;
                }
                ertl_estimate(&histogram).round() as u64
            }
        }
    }
}

/// Ertl's improved raw estimator from the register histogram `c[0..=Q+1]`.
fn ertl_estimate(c: &[u32]) -> f64 {
    let m = REGISTERS as f64;
    let q = Q as usize;
    let mut z = m * tau(1.0 - f64::from(c[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(c[k]));
    }
    z += m * sigma(f64::from(c[0]) / m);
    let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
    alpha_inf * m * m / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    /// Measured relative error stays within 2% from 10 to 2 million distinct values, and
    /// small cardinalities are exact.
    #[test]
    fn relative_error_within_two_percent() {
        let mut worst: f64 = 0.0;
        for &n in &[
            10u64, 500, 1_024, 1_025, 2_000, 10_000, 50_000, 200_000, 1_000_000, 2_000_000,
        ] {
            for trial in 0..3u64 {
                let mut sketch = Hll::default();
                for i in 0..n {
                    sketch.insert(hash(i + trial * 10_000_000_000));
                }
                let estimate = sketch.estimate() as f64;
                let error = (estimate - n as f64).abs() / n as f64;
                if n <= SPARSE_MAX as u64 {
                    assert_eq!(estimate as u64, n, "small sets are exact");
                }
                worst = worst.max(error);
                assert!(
                    error <= 0.02,
                    "n={n} trial={trial}: estimate {estimate}, error {error:.4}"
                );
            }
        }
        eprintln!("worst relative error: {worst:.4}");
    }

    /// Merging any split gives exactly the sketch of the whole; duplicates change nothing.
    #[test]
    fn merge_equals_whole() {
        for split in [0u64, 1, 700, 1_500, 5_000] {
            let mut whole = Hll::default();
            let (mut left, mut right) = (Hll::default(), Hll::default());
            for i in 0..5_000u64 {
                whole.insert(hash(i));
                if i < split {
                    left.insert(hash(i))
                } else {
                    right.insert(hash(i))
                }
                right.insert(hash(i / 2));
                whole.insert(hash(i / 2));
            }
            left.merge(&right);
            assert_eq!(left.estimate(), whole.estimate(), "split {split}");
            if let (Hll::Dense(a), Hll::Dense(b)) = (&left, &whole) {
                assert_eq!(a[..], b[..]);
            }
        }
    }
}
