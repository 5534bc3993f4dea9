//! `synos.policy.v1.Policy` over the authorizer.

use synos_common::ServiceError;
use synos_proto::policy::v1::policy_server::Policy;
use synos_proto::policy::v1::{AuthorizeRequest, AuthorizeResponse, Decision};
use tonic::{Request, Response, Status};

use crate::authorizer::{Authorizer, PolicyError};

/// The policy daemon's gRPC service.
#[derive(Debug)]
pub(crate) struct PolicyService {
    authorizer: Authorizer,
}

impl PolicyService {
    pub(crate) fn new(authorizer: Authorizer) -> Self {
        Self { authorizer }
    }
}

impl From<PolicyError> for ServiceError {
    fn from(error: PolicyError) -> Self {
        match error {
            PolicyError::InvalidRequest { .. } => ServiceError::invalid_argument(error.to_string()),
            PolicyError::InvalidPolicy { .. } => {
                ServiceError::internal("evaluating policies", &error)
            }
        }
    }
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let request = request.into_inner();
        let decision = self
            .authorizer
            .authorize(&request.principal, &request.action, &request.resource)
            .map_err(ServiceError::from)?;
        tracing::debug!(action = %request.action, allowed = decision.allowed, "authorization decided");
        Ok(Response::new(AuthorizeResponse {
            decision: if decision.allowed {
                Decision::Allow
            } else {
                Decision::Deny
            }
            .into(),
            determining_policies: decision.determining_policies,
            errors: decision.errors,
        }))
    }
}
