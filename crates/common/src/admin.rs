//! `synos.admin.v1.Admin`: the introspection service every daemon serves.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prometheus_client::registry::Registry;

use synos_proto::admin::v1::admin_server::Admin;
use synos_proto::admin::v1::{
    GetInfoRequest, GetInfoResponse, GetMetricsRequest, GetMetricsResponse,
};
use tonic::{Request, Response, Status};

use crate::identity::{DaemonIdentity, GIT_REVISION};
use crate::systemd::StatusLine;

/// Answers `GetInfo` from facts fixed at start plus the live status line, and `GetMetrics`
/// from the daemon's registry.
#[derive(Clone)]
pub struct AdminService {
    identity: DaemonIdentity,
    config_source: String,
    listeners: Vec<String>,
    status: StatusLine,
    metrics: Arc<Registry>,
    started_at: SystemTime,
    started: Instant,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AdminService")
            .field("identity", &self.identity)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl AdminService {
    /// An admin service for a daemon that starts serving now.
    pub fn new(
        identity: DaemonIdentity,
        config_source: String,
        listeners: Vec<String>,
        status: StatusLine,
        metrics: Arc<Registry>,
    ) -> Self {
        Self {
            identity,
            config_source,
            listeners,
            status,
            metrics,
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let uptime = self.started.elapsed();
        Ok(Response::new(GetInfoResponse {
            name: self.identity.binary.to_owned(),
            version: self.identity.version.to_owned(),
            git_revision: GIT_REVISION.to_owned(),
            start_time: Some(prost_types::Timestamp::from(self.started_at)),
            uptime: prost_types::Duration::try_from(uptime).ok(),
            pid: std::process::id(),
            config_source: self.config_source.clone(),
            state_summary: self.status.get(),
            listeners: self.listeners.clone(),
        }))
    }

    async fn get_metrics(
        &self,
        _request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics)
            .map_err(|error| Status::internal(format!("cannot encode the metrics: {error}")))?;
        Ok(Response::new(GetMetricsResponse { text }))
    }
}
