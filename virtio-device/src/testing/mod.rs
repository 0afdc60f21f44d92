//! What the device crates' unit tests and fuzz harnesses share (feature
//! `test-utils`), one concept per module:
//! - [`fuzz`]: the seeded generator and the case runner;
//! - [`ring`]: a split queue written by hand, for fuzzed descriptor
//!   tables;
//! - [`memory`]: checking that a device wrote only where it may.

pub mod fuzz;
pub mod memory;
pub mod ring;
