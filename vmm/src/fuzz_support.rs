//! What the fuzz harnesses of this crate share: a seeded generator (the
//! device crates' own, [`virtio_device::testing::fuzz::Rng`]) and a case
//! runner, on stable Rust and without a dependency (the guest agent's and
//! the device crates' harnesses follow the same convention; this runner
//! also mixes the harness's name into the seed).
//!
//! Every harness is a `#[test]` whose name starts with `fuzz_`, so one
//! filter runs them all: `cargo test -p vmm --lib fuzz_`. Environment:
//!
//! - `VMM_FUZZ_CASES=N`: cases per harness (each has a default that takes
//!   about a second in a debug build);
//! - `VMM_FUZZ_SEED=S`: another seed (each harness prints the one it uses);
//! - `VMM_FUZZ_CASE=C`: replays case `C` alone (a failing case prints the
//!   command). Cases are independent unless a harness says otherwise.

pub(crate) mod json;

use virtio_device::testing::fuzz::run_salted_cases;

const DEFAULT_SEED: u64 = 0x0f22_ed00_5eed;

/// Runs `case` for every case number (`VMM_FUZZ_CASES`, else
/// `default_cases`), each with its own generator; a failing case prints
/// how to replay it alone. Returns the number of cases run. Each harness
/// draws its own stream from the same seed (its name is the salt).
pub(crate) fn run_cases(name: &str, default_cases: u64, case: impl FnMut(&mut Rng)) -> u64 {
    run_salted_cases(name, name_hash(name), DEFAULT_SEED, default_cases, case)
}

/// FNV-1a of `name`.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// xorshift64*, shared with the device crates' harnesses.
pub(crate) use virtio_device::testing::fuzz::Rng;
