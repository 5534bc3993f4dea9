//! Process exit statuses shared by every SynOS binary (BSD `sysexits.h` values).

/// Success.
pub const OK: u8 = 0;
/// A generic failure, e.g. `synosctl status` found a daemon that is not serving.
pub const FAILURE: u8 = 1;
/// Bad command-line usage (clap's own status).
pub const USAGE: u8 = 2;
/// A required service is unavailable: another instance already serves the socket, or a
/// daemon `synosctl` must talk to cannot be reached.
pub const UNAVAILABLE: u8 = 69;
/// An internal error that is a bug in SynOS.
pub const SOFTWARE: u8 = 70;
/// A listener could not be created (permissions, a non-socket file in the way, a busy port).
pub const CANT_CREATE: u8 = 73;
/// The configuration is invalid (`EX_CONFIG`); systemd units treat it as a permanent failure.
pub const CONFIG: u8 = 78;
