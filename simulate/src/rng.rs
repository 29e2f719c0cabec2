//! A small seeded random source of our own, so output depends only on the
//! seed and the code here, never on a dependency's version. Each independent
//! part of the generator draws from its own stream, so threads cannot change
//! the output by running in another order.

/// xoshiro256++ seeded through SplitMix64.
#[derive(Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// SplitMix64's finaliser: a good 64-bit mix of one word.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a hash.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Rng {
    /// The stream `stream` of seed `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut x = mix(seed ^ mix(stream));
        let mut s = [0u64; 4];
        for word in &mut s {
            x = mix(x);
            *word = x;
        }
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        let span = (hi - lo + 1) as u64;
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as i64
    }

    /// Uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A Poisson-distributed count with mean `lambda`.
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            // Knuth's multiplication method: exact, fine for small means.
            let limit = (-lambda).exp();
            let mut k = 0u32;
            let mut p = self.f64();
            while p > limit {
                k += 1;
                p *= self.f64();
            }
            k
        } else {
            // Normal approximation with continuity correction.
            let n = lambda + lambda.sqrt() * self.normal();
            n.round().max(0.0) as u32
        }
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// An index drawn with the given weights (need not sum to 1).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.f64() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// A precomputed table for drawing indexes by weight in O(log n).
pub struct Cumulative {
    totals: Vec<f64>,
}

impl Cumulative {
    /// Builds the table from weights.
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        let totals = weights
            .into_iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        Cumulative { totals }
    }

    /// Draws an index.
    pub fn draw(&self, rng: &mut Rng) -> usize {
        let total = self.totals.last().copied().unwrap_or(0.0);
        let x = rng.f64() * total;
        self.totals
            .partition_point(|t| *t <= x)
            .min(self.totals.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::new(7, 1).next_u64(), Rng::new(7, 2).next_u64());
    }

    #[test]
    fn poisson_means_are_right() {
        let mut rng = Rng::new(1, 1);
        for lambda in [0.5, 4.0, 80.0] {
            let n = 20_000;
            let mean = (0..n).map(|_| f64::from(rng.poisson(lambda))).sum::<f64>() / f64::from(n);
            assert!((mean - lambda).abs() / lambda < 0.03, "{lambda}: {mean}");
        }
    }
}
