//! `synos.admin.v1.Admin`: the introspection service every daemon serves.

use std::time::{Instant, SystemTime};

use synos_proto::admin::v1::admin_server::Admin;
use synos_proto::admin::v1::{GetInfoRequest, GetInfoResponse};
use tonic::{Request, Response, Status};

use crate::identity::{DaemonIdentity, GIT_REVISION};
use crate::systemd::StatusLine;

/// Answers `GetInfo` from facts fixed at start plus the live status line.
#[derive(Debug, Clone)]
pub struct AdminService {
    identity: DaemonIdentity,
    config_source: String,
    listeners: Vec<String>,
    status: StatusLine,
    started_at: SystemTime,
    started: Instant,
}

impl AdminService {
    /// An admin service for a daemon that starts serving now.
    pub fn new(
        identity: DaemonIdentity,
        config_source: String,
        listeners: Vec<String>,
        status: StatusLine,
    ) -> Self {
        Self {
            identity,
            config_source,
            listeners,
            status,
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
}
