//! The system tests: the real SynOS binaries on temporary sockets, over real files, real
//! HTTP servers and real sandboxes. One test binary for all of them, so a build links it once.
#![allow(
    clippy::unwrap_used,
    reason = "tests: a failure should panic with its location"
)]

mod apis;
mod ask;
mod daemons;
mod doctor;
mod gate;
mod hwaccel;
mod identity;
mod local_model;
mod memory;
mod policy;
mod router;
mod synosctl;
