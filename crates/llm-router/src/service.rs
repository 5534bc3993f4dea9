//! `synos.llm.v1.Router` over the configured providers.

use synos_proto::llm::v1::router_server::Router;
use synos_proto::llm::v1::{ListProvidersRequest, ListProvidersResponse, Provider, ProviderState};
use tonic::{Request, Response, Status};

use crate::config::ProviderConfig;

/// The router's gRPC service.
#[derive(Debug)]
pub(crate) struct RouterService {
    providers: Vec<ProviderConfig>,
}

impl RouterService {
    pub(crate) fn new(providers: Vec<ProviderConfig>) -> Self {
        Self { providers }
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn list_providers(
        &self,
        _request: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        // No request has failed yet in this skeleton, so every provider is eligible.
        let providers = self
            .providers
            .iter()
            .map(|provider| Provider {
                name: provider.name.clone(),
                kind: provider.kind.as_str().to_owned(),
                base_url: provider.base_url.clone(),
                state: ProviderState::Available.into(),
            })
            .collect();
        Ok(Response::new(ListProvidersResponse { providers }))
    }
}
