//! rfa's one seeded generator: SplitMix64 (Steele, Lea & Flood 2014), the same numbers on every
//! machine, backend and thread count, so that a seed names a run. Shuffles, splits, adapter and
//! head initialisation and sampling all draw from it. No dependencies: every crate may use it.

/// SplitMix64: a 64-bit state advanced by a constant and mixed on output.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, on a grid of 2⁻⁵³.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `(0, 1)`: the grid of [`SplitMix64::next_unit`] shifted by half a step, so that
    /// `ln` of it is finite (Box–Muller).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth caring about at these sizes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_unit() * n as f64) as usize % n.max(1)
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_the_reference_sequence() {
        // The first outputs for seed 1234567 of the reference implementation (Vigna's
        // splitmix64.c).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, [6457827717110365317, 3203168211198807973, 9817491932198370423]);
    }

    proptest! {
        #[test]
        fn draws_stay_in_range(seed: u64, n in 1usize..10_000) {
            let mut r = SplitMix64::new(seed);
            let u = r.next_unit();
            prop_assert!((0.0..1.0).contains(&u));
            let o = r.next_open01();
            prop_assert!(o > 0.0 && o < 1.0);
            prop_assert!(r.below(n) < n);
        }

        #[test]
        fn a_shuffle_is_a_permutation_and_a_seed_repeats_it(seed: u64, n in 0usize..200) {
            let mut a: Vec<usize> = (0..n).collect();
            SplitMix64::new(seed).shuffle(&mut a);
            let mut b: Vec<usize> = (0..n).collect();
            SplitMix64::new(seed).shuffle(&mut b);
            prop_assert_eq!(&a, &b);
            a.sort_unstable();
            prop_assert_eq!(a, (0..n).collect::<Vec<_>>());
        }
    }
}
