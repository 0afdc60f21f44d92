//! What the device crates' fuzz harnesses share: a seeded generator and a
//! case runner, on stable Rust and without a dependency.
//!
//! Every harness is a `#[test]` whose name starts with `fuzz_`.
//! Environment:
//!
//! - `VMM_FUZZ_CASES=N`: cases per harness (each has a default that takes
//!   about a second in a debug build);
//! - `VMM_FUZZ_SEED=S`: another seed (each harness prints the one it uses);
//! - `VMM_FUZZ_CASE=C`: replays case `C` alone (a failing case prints the
//!   command). Cases are independent: each has its own generator, a
//!   function of the seed and the case number only.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Runs `case` for every case number (`VMM_FUZZ_CASES`, else
/// `default_cases`) with the generator of (`VMM_FUZZ_SEED`, else
/// `default_seed`, and the case number); a failing case prints how to
/// replay it alone, then fails the test. Returns the number of cases run.
pub fn run_cases(
    name: &str,
    default_seed: u64,
    default_cases: u64,
    case: impl FnMut(&mut Rng),
) -> u64 {
    run_salted_cases(name, 0, default_seed, default_cases, case)
}

/// [`run_cases`] with each generator's seed xored with `salt` (so that
/// harnesses sharing a default seed draw their own streams); the seed
/// printed and taken from `VMM_FUZZ_SEED` is the unsalted one.
pub fn run_salted_cases(
    name: &str,
    salt: u64,
    default_seed: u64,
    default_cases: u64,
    mut case: impl FnMut(&mut Rng),
) -> u64 {
    let seed = env_u64("VMM_FUZZ_SEED").unwrap_or(default_seed);
    let (from, to) = match env_u64("VMM_FUZZ_CASE") {
        Some(c) => (c, c + 1),
        None => (0, env_u64("VMM_FUZZ_CASES").unwrap_or(default_cases)),
    };
    eprintln!("fuzz {name}: seed {seed}, cases {from}..{to}");
    let start = Instant::now();
    for c in from..to {
        let mut rng = Rng::new(seed ^ salt, c);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
            eprintln!(
                "fuzz {name}: case {c} failed; replay it alone with \
                 VMM_FUZZ_SEED={seed} VMM_FUZZ_CASE={c}"
            );
            resume_unwind(panic);
        }
    }
    eprintln!(
        "fuzz {name}: {} cases in {:.2?}",
        to - from,
        start.elapsed()
    );
    to - from
}

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    /// The generator of case `case` under `seed`.
    pub fn new(seed: u64, case: u64) -> Rng {
        // splitmix64 of both, so that every seed and case starts its own
        // stream (xorshift needs a non-zero state).
        let mix = |mut z: u64| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng(mix(seed ^ mix(case)).max(1))
    }

    /// The next 64 random bits. (Not an `Iterator`: it never ends.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn bool(&mut self) -> bool {
        self.next() & 1 == 0
    }

    /// One of `v` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_a_function_of_the_seed_and_its_number() {
        let draw = |seed, case| {
            let mut r = Rng::new(seed, case);
            [r.next(), r.next(), r.next()]
        };
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
        let mut r = Rng::new(0, 0);
        for _ in 0..1000 {
            assert!((5..=9).contains(&r.range(5, 9)));
            assert_eq!(r.below(0), 0);
        }
    }
}
