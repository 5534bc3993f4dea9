//! `synos.doctor.v1.Doctor`: reports from fresh checks.

use std::time::Duration;

use synos_proto::doctor::v1::doctor_server::Doctor;
use synos_proto::doctor::v1::{GetReportRequest, GetReportResponse};
use tonic::{Request, Response, Status};

use crate::checks::{Watched, check_all};

/// The doctor's gRPC service.
#[derive(Debug)]
pub(crate) struct DoctorService {
    watched: Vec<Watched>,
    timeout: Duration,
}

impl DoctorService {
    pub(crate) fn new(watched: Vec<Watched>, timeout: Duration) -> Self {
        Self { watched, timeout }
    }
}

#[tonic::async_trait]
impl Doctor for DoctorService {
    async fn get_report(
        &self,
        _request: Request<GetReportRequest>,
    ) -> Result<Response<GetReportResponse>, Status> {
        let (state, daemons) = check_all(&self.watched, self.timeout).await;
        Ok(Response::new(GetReportResponse {
            state: state.into(),
            daemons,
        }))
    }
}
