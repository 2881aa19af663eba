//! Exact sums of `f64` values, rounded once when read.
//!
//! Why: floating-point addition is not associative, so a sum folded event by event, merged
//! from tiles, or swept over a training set would differ in the last bits depending on the
//! path. fsdb promises identical values on every path, so float sums are kept *exactly*
//! (every finite `f64` is an integer multiple of 2^-1074) and rounded to nearest, ties to
//! even, only by [`ExactSum::value`]. The result depends only on the multiset of inputs.
//!
//! Representation: `mantissa * 2^scale` in an `i128` while it fits (the common case: inputs
//! within ~60 binary orders of magnitude of each other), else a 2176-bit fixed-point
//! accumulator with its least significant bit at 2^-1074, wide enough for 2^64 inputs of the
//! largest magnitude.

/// Limbs of the wide accumulator: 1074 fraction bits + 1024 integer bits + 64 bits of
/// headroom for the count of inputs + a sign bit, rounded up to whole limbs.
const WIDE_LIMBS: usize = 34;
const WIDE_LSB_EXP: i32 = -1074;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExactSum(Repr);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Repr {
    /// `mantissa * 2^scale`; `scale` is meaningless while `mantissa == 0`.
    Narrow { mantissa: i128, scale: i32 },
    /// Two's complement, little-endian limbs, value `limbs * 2^-1074`.
    Wide(Box<[u64; WIDE_LIMBS]>),
}

impl Default for ExactSum {
    fn default() -> Self {
        Self::new()
    }
}

/// `x = m * 2^e` with `m` odd (or zero), exactly.
fn decompose(x: f64) -> (i64, i32) {
    debug_assert!(x.is_finite());
    let bits = x.to_bits();
    let exp_field = ((bits >> 52) & 0x7ff) as i32;
    let fraction = (bits & ((1 << 52) - 1)) as i64;
    let (mut m, mut e) = if exp_field == 0 {
        (fraction, WIDE_LSB_EXP)
    } else {
        (fraction | (1 << 52), exp_field - 1075)
    };
    if m == 0 {
        return (0, 0);
    }
    let tz = m.trailing_zeros() as i32;
    m >>= tz;
    e += tz;
    if bits >> 63 == 1 {
        m = -m;
    }
    (m, e)
}

impl ExactSum {
    /// Heap bytes owned (the wide form's limbs).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Narrow { .. } => 0,
            Repr::Wide(_) => std::mem::size_of::<[u64; WIDE_LIMBS]>(),
        }
    }

    pub const fn new() -> Self {
        ExactSum(Repr::Narrow {
            mantissa: 0,
            scale: 0,
        })
    }

    /// Add `x`, which must be finite.
    pub fn add(&mut self, x: f64) {
        let (m, e) = decompose(x);
        if m == 0 {
            return;
        }
        // The common case, in short: a narrow sum whose scale is as fine as `x`'s or finer
        // by fewer than 64 bits, so that `x`'s mantissa (at most 53 bits) shifted onto it
        // fits an `i128` and only the addition can overflow. The same result as
        // `add_scaled`'s general path (`narrow_add`).
        if let Repr::Narrow { mantissa, scale } = &mut self.0
            && *mantissa != 0
            && let Ok(shift @ 0..64) = u32::try_from(e - *scale)
            && let Some(sum) = mantissa.checked_add(i128::from(m) << shift)
        {
            *mantissa = sum;
            return;
        }
        self.add_scaled(i128::from(m), e);
    }

    /// Subtract `x`, which must be finite.
    pub fn sub(&mut self, x: f64) {
        self.add(-x);
    }

    /// Add `m * 2^e`.
    fn add_scaled(&mut self, m: i128, e: i32) {
        if let Repr::Narrow { mantissa, scale } = &mut self.0 {
            if *mantissa == 0 {
                *mantissa = m;
                *scale = e;
                return;
            }
            if let Some((sum, new_scale)) = narrow_add(*mantissa, *scale, m, e) {
                *mantissa = sum;
                *scale = new_scale;
                return;
            }
            self.widen();
        }
        let Repr::Wide(limbs) = &mut self.0 else {
            unreachable!("widened above")
        };
        wide_add_scaled(limbs, m, e);
    }

    fn widen(&mut self) {
        if let Repr::Narrow { mantissa, scale } = self.0 {
            let mut limbs = Box::new([0u64; WIDE_LIMBS]);
            if mantissa != 0 {
                wide_add_scaled(&mut limbs, mantissa, scale);
            }
            self.0 = Repr::Wide(limbs);
        }
    }

    /// Add another exact sum.
    pub fn merge(&mut self, other: &ExactSum) {
        match &other.0 {
            Repr::Narrow { mantissa: 0, .. } => {}
            Repr::Narrow { mantissa, scale } => self.add_scaled(*mantissa, *scale),
            Repr::Wide(theirs) => {
                self.widen();
                let Repr::Wide(mine) = &mut self.0 else {
                    unreachable!("widened above")
                };
                let mut carry = false;
                for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                    let (s1, c1) = a.overflowing_add(*b);
                    let (s2, c2) = s1.overflowing_add(u64::from(carry));
                    *a = s2;
                    carry = c1 || c2;
                }
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        match &self.0 {
            Repr::Narrow { mantissa, .. } => *mantissa == 0,
            Repr::Wide(limbs) => limbs.iter().all(|&l| l == 0),
        }
    }

    /// The sum rounded to the nearest `f64` (ties to even); ±infinity beyond `f64::MAX`.
    pub fn value(&self) -> f64 {
        match &self.0 {
            Repr::Narrow { mantissa, scale } => {
                if *mantissa == 0 {
                    return 0.0;
                }
                round_magnitude(mantissa.unsigned_abs(), 0, *scale, *mantissa < 0)
            }
            Repr::Wide(limbs) => {
                let negative = limbs[WIDE_LIMBS - 1] >> 63 == 1;
                let magnitude = if negative { negate(limbs) } else { **limbs };
                let Some(top) = (0..WIDE_LIMBS).rev().find(|&i| magnitude[i] != 0) else {
                    return 0.0;
                };
                // The top two limbs hold the leading bits; anything below is sticky.
                let high = u128::from(magnitude[top]) << 64
                    | if top > 0 {
                        u128::from(magnitude[top - 1])
                    } else {
                        0
                    };
                let sticky = top > 1 && magnitude[..top - 1].iter().any(|&l| l != 0);
                let scale = WIDE_LSB_EXP + 64 * (top as i32 - 1);
                round_magnitude(high, u64::from(sticky), scale, negative)
            }
        }
    }

    /// The sum as a double-double `hi + lo`, where `hi = value()` and `lo` is the rounded
    /// remainder; exact to about 106 bits. Used to finish variance without cancellation.
    pub fn value_dd(&self) -> (f64, f64) {
        let hi = self.value();
        if !hi.is_finite() {
            return (hi, 0.0);
        }
        let mut rest = self.clone();
        rest.sub(hi);
        (hi, rest.value())
    }
}

/// `a*2^sa + b*2^sb` in the narrow form, or `None` if it does not fit an `i128`.
fn narrow_add(a: i128, sa: i32, b: i128, sb: i32) -> Option<(i128, i32)> {
    let (hi, hi_scale, lo, lo_scale) = if sa >= sb {
        (a, sa, b, sb)
    } else {
        (b, sb, a, sa)
    };
    let shift = u32::try_from(hi_scale - lo_scale).ok()?;
    if shift >= 127 {
        return None;
    }
    // `hi << shift` is exact iff shifting back gives `hi` (a shift, not an i128
    // multiplication with an overflow check, which is a call to a runtime helper).
    let shifted = hi << shift;
    if shifted >> shift != hi {
        return None;
    }
    Some((shifted.checked_add(lo)?, lo_scale))
}

/// Add `m * 2^e` (|m| < 2^127, e >= -1074) to the wide accumulator: add (or subtract) the
/// at most three limbs of `|m| << bit`, then carry (or borrow) only as far as it goes.
fn wide_add_scaled(limbs: &mut [u64; WIDE_LIMBS], m: i128, e: i32) {
    debug_assert!(e >= WIDE_LSB_EXP);
    let offset = (e - WIDE_LSB_EXP) as usize;
    let (limb, bit) = (offset / 64, (offset % 64) as u32);
    let magnitude = m.unsigned_abs();
    let parts = [
        (magnitude << bit) as u64,
        ((magnitude << bit) >> 64) as u64,
        if bit == 0 {
            0
        } else {
            (magnitude >> (128 - bit)) as u64
        },
    ];
    let mut carry = false;
    let mut i = limb;
    for part in parts {
        if i >= WIDE_LIMBS {
            debug_assert_eq!(part, 0, "a finite input fits the accumulator");
            continue;
        }
        let (v, c1, c2) = if m < 0 {
            let (d1, b1) = limbs[i].overflowing_sub(part);
            let (d2, b2) = d1.overflowing_sub(u64::from(carry));
            (d2, b1, b2)
        } else {
            let (s1, c1) = limbs[i].overflowing_add(part);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            (s2, c1, c2)
        };
        limbs[i] = v;
        carry = c1 || c2;
        i += 1;
    }
    while carry && i < WIDE_LIMBS {
        let (v, c) = if m < 0 {
            limbs[i].overflowing_sub(1)
        } else {
            limbs[i].overflowing_add(1)
        };
        limbs[i] = v;
        carry = c;
        i += 1;
    }
}

fn negate(limbs: &[u64; WIDE_LIMBS]) -> [u64; WIDE_LIMBS] {
    let mut out = [0u64; WIDE_LIMBS];
    let mut carry = true;
    for (o, l) in out.iter_mut().zip(limbs) {
        let (s, c) = (!l).overflowing_add(u64::from(carry));
        *o = s;
        carry = c;
    }
    out
}

/// Round `(magnitude + sticky_below) * 2^scale` to the nearest `f64`, where `sticky_below`
/// is 1 if nonzero bits lie below the magnitude's least significant bit.
fn round_magnitude(magnitude: u128, sticky_below: u64, scale: i32, negative: bool) -> f64 {
    debug_assert!(magnitude != 0);
    // Keep the top 64 bits; fold everything below into a sticky bit, so that the single
    // u64 -> f64 conversion (which rounds to nearest, ties to even) rounds correctly.
    let top_bit = 127 - magnitude.leading_zeros() as i32;
    let shift = (top_bit - 63).max(0);
    let kept = (magnitude >> shift) as u64;
    let lost = shift > 0 && magnitude & ((1u128 << shift) - 1) != 0;
    let mut exp = scale + shift;
    let mut top = kept | u64::from(lost) | sticky_below;
    // Results below 2^-1022 are subnormal and round at 2^-1074, not 53 bits below the
    // leading bit. Every input is a multiple of 2^-1074, so such a result is exact and
    // fits: shift it down to units of 2^-1074 losing nothing.
    let leading = exp + 63 - top.leading_zeros() as i32;
    if leading < -1022 && exp < WIDE_LSB_EXP {
        let down = (WIDE_LSB_EXP - exp) as u32;
        debug_assert!(
            down < 64 && top.trailing_zeros() >= down,
            "subnormal sums are exact"
        );
        top >>= down;
        exp = WIDE_LSB_EXP;
    }
    let rounded = top as f64;
    let value = scale_by_pow2(rounded, exp);
    if negative { -value } else { value }
}

/// `x * 2^k`, exact unless the result overflows (then infinity).
fn scale_by_pow2(mut x: f64, mut k: i32) -> f64 {
    let pow2 = |k: i32| f64::from_bits(((k + 1023) as u64) << 52);
    while k > 1000 {
        x *= pow2(1000);
        k -= 1000;
    }
    while k < -1000 {
        // Stay in the normal range while stepping down: the final step is the only one
        // that can produce a subnormal, and by then the value is exact (see above).
        if x.abs() < f64::MIN_POSITIVE * pow2(1000) {
            break;
        }
        x *= pow2(-1000);
        k += 1000;
    }
    while k < -1022 {
        x *= pow2(-1022);
        k += 1022;
    }
    x * pow2(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fsum;
    use proptest::prelude::*;

    /// The narrow sum by multiplication with an overflow check, as the reference.
    fn narrow_add_by_mul(a: i128, sa: i32, b: i128, sb: i32) -> Option<(i128, i32)> {
        let (hi, hs, lo, ls) = if sa >= sb {
            (a, sa, b, sb)
        } else {
            (b, sb, a, sa)
        };
        let shift = u32::try_from(hs - ls).ok().filter(|&s| s < 127)?;
        Some((hi.checked_mul(1i128 << shift)?.checked_add(lo)?, ls))
    }

    /// Shifting with a check gives what multiplying did, at every edge of the range.
    #[test]
    fn narrow_add_fits_exactly_when_multiplying_does() {
        let magnitudes = [
            0,
            1,
            -1,
            3,
            -3,
            i128::MAX,
            i128::MIN,
            i128::MAX >> 1,
            i128::MIN >> 1,
            (i128::MAX >> 1) + 1,
            (i128::MIN >> 1) - 1,
            1 << 60,
            -(1 << 60),
            (1 << 66) - 1,
        ];
        for &a in &magnitudes {
            for &b in &[0i128, 1, -1, i128::MAX, i128::MIN] {
                for shift in [0, 1, 2, 60, 61, 62, 63, 64, 65, 66, 67, 125, 126, 127, 200] {
                    for (sa, sb) in [(shift, 0), (0, shift)] {
                        assert_eq!(
                            narrow_add(a, sa, b, sb),
                            narrow_add_by_mul(a, sa, b, sb),
                            "{a} * 2^{sa} + {b} * 2^{sb}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn heap_bytes_count_the_wide_limbs() {
        let mut sum = ExactSum::new();
        sum.add(1.5);
        assert_eq!(sum.heap_bytes(), 0, "narrow: nothing on the heap");
        sum.add(1e300);
        sum.add(1e-300);
        assert!(matches!(sum.0, Repr::Wide(_)));
        assert_eq!(sum.heap_bytes(), 8 * WIDE_LIMBS);
    }

    fn exact(xs: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        for &x in xs {
            s.add(x);
        }
        s.value()
    }

    fn interesting_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6f64..1e6,
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            (-1e-300f64..1e-300),
            Just(f64::MAX),
            Just(-f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(5e-324),
            Just(-0.0),
            (0i64..1000).prop_map(|c| c as f64 / 100.0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The exact sum rounds to the same value as an independent correctly rounded sum.
        #[test]
        fn matches_correctly_rounded_reference(xs in prop::collection::vec(interesting_f64(), 0..40)) {
            let expected = fsum(&xs);
            let got = exact(&xs);
            // fsum overflows to inf on intermediate overflow; compare only finite references.
            if expected == 0.0 {
                // The exact sum of zeros is +0.0; fsum keeps the sign of negative zeros.
                prop_assert_eq!(got.to_bits(), 0.0f64.to_bits(), "inputs {:?}", xs);
            } else if expected.is_finite() {
                prop_assert_eq!(got.to_bits(), expected.to_bits(), "inputs {:?}", xs);
            }
        }

        /// Any order and any split, merged back, gives the identical bits.
        #[test]
        fn order_and_split_independent(mut xs in prop::collection::vec(interesting_f64(), 0..40), split in 0usize..40, seed: u64) {
            let whole = exact(&xs);
            let split = split.min(xs.len());
            let mut left = ExactSum::new();
            let mut right = ExactSum::new();
            for &x in &xs[..split] { left.add(x); }
            for &x in &xs[split..] { right.add(x); }
            right.merge(&left);
            prop_assert_eq!(right.value().to_bits(), whole.to_bits());
            // A deterministic shuffle.
            let mut state = seed | 1;
            for i in (1..xs.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                xs.swap(i, (state % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(exact(&xs).to_bits(), whole.to_bits());
        }

        /// `add`'s short path leaves the very state the general one does.
        #[test]
        fn add_equals_the_general_path(xs in prop::collection::vec(interesting_f64(), 0..40)) {
            let mut short = ExactSum::new();
            let mut general = ExactSum::new();
            for &x in &xs {
                short.add(x);
                let (m, e) = decompose(x);
                if m != 0 {
                    general.add_scaled(i128::from(m), e);
                }
                prop_assert_eq!(&short, &general, "after {}", x);
            }
        }

        /// Adding then subtracting leaves exactly the original sum.
        #[test]
        fn subtraction_is_exact(xs in prop::collection::vec(interesting_f64(), 0..20), ys in prop::collection::vec(interesting_f64(), 0..20)) {
            let mut s = ExactSum::new();
            for &x in &xs { s.add(x); }
            for &y in &ys { s.add(y); }
            for &y in &ys { s.sub(y); }
            prop_assert_eq!(s.value().to_bits(), exact(&xs).to_bits());
        }
    }

    #[test]
    fn classic_cancellation() {
        assert_eq!(exact(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(exact(&[0.1, 0.2, 0.3, -0.6]), fsum(&[0.1, 0.2, 0.3, -0.6]));
        assert_eq!(exact(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert_eq!(exact(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX);
        assert_eq!(exact(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(exact(&[]), 0.0);
        let (hi, lo) = {
            let mut s = ExactSum::new();
            s.add(1.0);
            s.add(1e-30);
            s.value_dd()
        };
        assert_eq!((hi, lo), (1.0, 1e-30));
    }
}
