//! The guest side (feature `agent`): what runs inside the microVM.
//!
//! Parsers are pure functions over the bytes of one read (`kmsg`, `oom`,
//! `procfs`, `killcount`); `outbox` and `link` are the reliable delivery;
//! `run` is the single-threaded poll loop; `sys` the few system calls.

pub mod cgroups;
pub mod config;
pub mod killcount;
pub mod kmsg;
pub mod link;
pub mod oom;
pub mod outbox;
pub mod procfs;
pub mod run;
pub mod sys;
pub mod wire;
