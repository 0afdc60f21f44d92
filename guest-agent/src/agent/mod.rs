//! The guest side (feature `agent`): what runs inside the microVM.
//!
//! Parsers are pure functions over the bytes of one read (`kmsg`, `oom`,
//! `procfs`, `killcount`).

pub mod killcount;
pub mod kmsg;
pub mod oom;
pub mod procfs;
