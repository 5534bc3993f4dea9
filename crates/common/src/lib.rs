//! The one runtime every SynOS daemon shares: identity (its own, and its callers'), configuration, telemetry, systemd
//! integration, listeners, the gRPC server with its standard services, and error mapping.
//!
//! A daemon's `main` calls [`daemon::main`] with its `run(config, shutdown)` function; `run`
//! builds its gRPC services and hands them to [`server::GrpcServer`]. Clients (synosctl, the
//! doctor, tests) reach daemons through [`client::connect`].

pub mod admin;
pub mod caller;
pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod exit;
pub mod filesystem;
pub mod identity;
pub mod listener;
pub mod manual;
pub mod server;
pub mod systemd;
pub mod telemetry;
pub mod time;
pub mod units;

pub use config::DaemonConfig;
pub use daemon::DaemonError;
pub use error::ServiceError;
pub use identity::DaemonIdentity;
pub use server::GrpcServer;
/// Cancelled once, when the daemon must stop: on SIGTERM/SIGINT, or by a test.
pub use tokio_util::sync::CancellationToken as Shutdown;
