//! What the device crates' unit tests and fuzz harnesses share (feature
//! `test-utils`), one concept per module:
//! - [`fuzz`]: the seeded generator and the case runner;
//! - [`driver`]: a driver's side of queues on real split queues in guest
//!   memory (virtio-queue's `MockSplitQueue`), an allocator for its
//!   buffers, and an interrupt that records;
//! - [`ring`]: a split queue written by hand, for fuzzed descriptor
//!   tables;
//! - [`memory`]: checking that a device wrote only where it may.

pub mod driver;
pub mod fuzz;
pub mod memory;
pub mod ring;
