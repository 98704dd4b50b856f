//! Bit-exact models of the GCC 12 libstdc++ random-number algorithms the reference FDE draws its matrices with.
//!
//! * [`Mt19937`]: `std::mt19937` (32-bit Mersenne Twister, `init_genrand` seeding).
//! * [`NormalF32`]: `std::normal_distribution<float>(0, 1)`, the Marsaglia polar method computed in `float`,
//!   with the second value of each pair cached for the next call.
//! * [`uniform_int`]: `std::uniform_int_distribution` (Lemire's nearly-divisionless downscaling for ranges below
//!   2^32, libstdc++'s recursive upscaling above).
//! * [`bernoulli_half`]: `std::bernoulli_distribution(0.5)` (`generate_canonical<double, 53>`, two draws).
//!
//! Other standard libraries (libc++, MSVC) draw differently, so these are the reference's numbers only together
//! with libstdc++. The logarithm is the platform `logf` (glibc on Linux), as in the reference build.

const N: usize = 624;
const M: usize = 397;

/// `std::mt19937`: the 32-bit Mersenne Twister MT19937 with the standard seeding.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; N],
    index: usize,
}

impl Mt19937 {
    /// `std::mt19937(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[i] = self.state[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32-bit output (`gen()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// `generate_canonical<float, 24>` applied to one draw `g`: `float(g) / 2^32`. The conversion rounds, so draws
/// of 2^32 - 128 and above give 1.0, which GCC 12 clamps to `nextafter(1.0f, 0.0f)`.
fn canonical_f32(g: u32) -> f32 {
    let u = g as f32 / 4_294_967_296.0f32;
    if u >= 1.0 {
        1.0 - f32::EPSILON / 2.0
    } else {
        u
    }
}

/// `std::normal_distribution<float>(0, 1)` as libstdc++ implements it (polar method with a cached value).
#[derive(Clone, Debug, Default)]
pub struct NormalF32 {
    saved: Option<f32>,
}

impl NormalF32 {
    /// A distribution with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next N(0, 1) sample.
    pub fn sample(&mut self, rng: &mut Mt19937) -> f32 {
        if let Some(saved) = self.saved.take() {
            return saved;
        }
        // `__x = result_type(2.0) * __aurng() - 1.0;`: the product is a float, the subtraction a double
        // (the literal 1.0), rounded back to float on assignment.
        let mut draw = || ((2.0f32 * canonical_f32(rng.next_u32())) as f64 - 1.0) as f32;
        let (x, y, r2) = loop {
            let x = draw();
            let y = draw();
            let r2 = x * x + y * y;
            if r2 <= 1.0 && r2 != 0.0 {
                break (x, y, r2);
            }
        };
        let mult = (-2.0f32 * r2.ln() / r2).sqrt();
        self.saved = Some(x * mult);
        y * mult
    }
}

/// `std::uniform_int_distribution<T>(lo, hi)(rng)` for any unsigned-representable `T` (inclusive bounds), as
/// libstdc++ draws it from a 32-bit engine.
///
/// # Panics
/// If `lo > hi` (undefined behaviour in C++; a programming error here, never reachable from validated configs).
pub fn uniform_int(rng: &mut Mt19937, lo: u64, hi: u64) -> u64 {
    assert!(lo <= hi, "uniform_int: empty range {lo}..={hi}");
    lo + uniform_from_zero(rng, hi - lo)
}

/// Uniform in `0..=urange`.
fn uniform_from_zero(rng: &mut Mt19937, urange: u64) -> u64 {
    const URNG_RANGE: u64 = u32::MAX as u64;
    if urange < URNG_RANGE {
        // Lemire: 64-bit product, 32-bit downscaling (`_S_nd<uint64_t>`).
        let range = (urange + 1) as u32;
        let mut product = rng.next_u32() as u64 * range as u64;
        if (product as u32) < range {
            let threshold = range.wrapping_neg() % range;
            while (product as u32) < threshold {
                product = rng.next_u32() as u64 * range as u64;
            }
        }
        product >> 32
    } else if urange == URNG_RANGE {
        rng.next_u32() as u64
    } else {
        // Upscaling: high * 2^32 + low, retried on overflow or when above the range.
        loop {
            let high = uniform_from_zero(rng, urange / (URNG_RANGE + 1));
            let tmp = high.wrapping_mul(URNG_RANGE + 1);
            let ret = tmp.wrapping_add(rng.next_u32() as u64);
            if ret <= urange && ret >= tmp {
                return ret;
            }
        }
    }
}

/// `std::bernoulli_distribution(0.5)(rng)`: `generate_canonical<double, 53>` (two draws, low word first) `< 0.5`.
pub fn bernoulli_half(rng: &mut Mt19937) -> bool {
    let g1 = rng.next_u32() as f64;
    let g2 = rng.next_u32() as f64;
    let two32 = 4_294_967_296.0f64;
    let mut u = (g1 + g2 * two32) / (two32 * two32);
    if u >= 1.0 {
        u = 1.0 - f64::EPSILON / 2.0;
    }
    u < 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a over the little-endian bytes of each value, as the C++ generator of the hashes below.
    struct Fnv(u64);
    impl Fnv {
        fn add(&mut self, v: u32) {
            for b in v.to_le_bytes() {
                self.0 ^= b as u64;
                self.0 = self.0.wrapping_mul(1_099_511_628_211);
            }
        }
    }
    const FNV_INIT: u64 = 1_469_598_103_934_665_603;

    #[test]
    fn mt19937_matches_the_standard() {
        // The C++ standard requires the 10000th output of a default-constructed std::mt19937 to be 4123659995.
        let mut g = Mt19937::new(5489);
        let last = (0..10_000).map(|_| g.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn normal_golden_from_spec() {
        let mut g = Mt19937::new(42);
        let mut d = NormalF32::new();
        let got: Vec<f32> = (0..6).map(|_| d.sample(&mut g)).collect();
        let want: [f64; 6] = [
            1.22192132,
            -0.516964138,
            0.86963594,
            0.721332669,
            1.58855629,
            1.61821711,
        ];
        for (&a, b) in got.iter().zip(want) {
            assert!((a as f64 - b).abs() <= 1e-7 * b.abs(), "{got:?}");
        }
    }

    #[test]
    fn uniform_bernoulli_golden_from_spec() {
        for (seed, hi, want) in [
            (
                555u32,
                4u64,
                [
                    (3u64, true),
                    (0, false),
                    (3, false),
                    (4, false),
                    (4, true),
                    (0, false),
                ],
            ),
            (
                1234,
                31,
                [
                    (6, false),
                    (26, false),
                    (25, false),
                    (27, true),
                    (8, false),
                    (26, true),
                ],
            ),
        ] {
            let mut g = Mt19937::new(seed);
            for w in want {
                let j = uniform_int(&mut g, 0, hi);
                let s = bernoulli_half(&mut g);
                assert_eq!((j, s), w, "seed {seed}");
            }
        }
    }

    // The hashes below were produced by GCC 12.2 / libstdc++ (Debian 12) with the same draws.

    #[test]
    fn normal_million_draws_match_libstdcxx() {
        let mut g = Mt19937::new(42);
        let mut d = NormalF32::new();
        let mut h = Fnv(FNV_INIT);
        let mut last = 0.0;
        for _ in 0..1_000_000 {
            last = d.sample(&mut g);
            h.add(last.to_bits());
        }
        assert_eq!(h.0, 18_027_728_358_401_151_473);
        assert!((last - -1.277354).abs() < 1e-6);
    }

    #[test]
    fn uniform_ranges_match_libstdcxx() {
        let mut g = Mt19937::new(3);
        let mut h = Fnv(FNV_INIT);
        for r in [
            1u64,
            2,
            3,
            5,
            7,
            16,
            31,
            100,
            1000,
            65_537,
            2_147_483_647,
            3_000_000_000,
            4_294_967_295,
        ] {
            for _ in 0..10_000 {
                h.add(uniform_int(&mut g, 0, r - 1) as u32);
            }
        }
        assert_eq!(h.0, 4_292_928_060_691_109_551);
    }

    #[test]
    fn wide_uniform_ranges_match_libstdcxx() {
        let mut g = Mt19937::new(9);
        let mut h = Fnv(FNV_INIT);
        for _ in 0..1000 {
            let a = uniform_int(&mut g, 5, 5 + (1u64 << 32) - 1);
            let b = uniform_int(&mut g, 0, (1u64 << 40) + 12_345);
            for v in [a, b] {
                h.add(v as u32);
                h.add((v >> 32) as u32);
            }
        }
        assert_eq!(h.0, 15_813_161_880_697_353_823);
    }

    #[test]
    fn bernoulli_matches_libstdcxx() {
        let mut g = Mt19937::new(11);
        let mut h = Fnv(FNV_INIT);
        let mut trues = 0;
        for _ in 0..100_000 {
            let b = bernoulli_half(&mut g);
            trues += b as u32;
            h.add(b as u32);
        }
        assert_eq!((h.0, trues), (12_630_122_245_945_997_922, 50_005));
    }

    #[test]
    fn canonical_float_is_clamped_below_one() {
        assert_eq!(canonical_f32(0), 0.0);
        assert_eq!(canonical_f32(1 << 31), 0.5);
        let below_one = 1.0 - f32::EPSILON / 2.0;
        assert_eq!(below_one, f32::from_bits(1.0f32.to_bits() - 1));
        assert_eq!(canonical_f32(u32::MAX - 384), 1.0 - 512.0 / 4_294_967_296.0);
        assert_eq!(canonical_f32(u32::MAX - 128), below_one); // rounds down: no clamp needed
        assert_eq!(canonical_f32(u32::MAX - 127), below_one);
        assert_eq!(canonical_f32(u32::MAX), below_one);
        let mut g = Mt19937::new(0);
        assert!((canonical_f32(g.next_u32()) as f64 - 0.548813522).abs() < 1e-8);
    }
}
