//! A KVM microVM monitor for hosts that overcommit memory.
//!
//! One process runs one microVM ([`vm::Vm`]); its legacy devices live in
//! [`devices`]. The tiny test guest that boots by default is
//! [`guest_image::TINY_GUEST`].

pub mod api;
pub mod config_file;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod daemon_api;
#[cfg(test)]
mod daemon_api_fuzz;
pub mod devices;
#[cfg(test)]
mod fuzz_support;
pub mod guest_image;
pub mod host;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod oom;
pub mod seccomp;
pub mod size;
pub mod utc;
pub mod vm;
