//! `synos.hwaccel.v1.Hardware`: answers from what was detected at start and from the sampler's
//! latest sample, and keeps the lease book.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt as _};
use synos_common::ServiceError;
use synos_common::caller::Caller;
use synos_proto::hwaccel::v1::hardware_server::Hardware;
use synos_proto::hwaccel::v1::{
    AcquireAcceleratorRequest, GetSystemInfoRequest, GetSystemInfoResponse, GetTierRequest,
    GetTierResponse, GetUtilizationRequest, Lease, ListLeasesRequest, ListLeasesResponse,
    ReleaseLeaseRequest, ReleaseLeaseResponse, RenewLeaseRequest, Utilization,
    WatchUtilizationRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config::LeasesConfig;
use synos_common::time::now_unix_ms;

use crate::leases::{LeaseBook, LeaseError};

/// The hardware daemon's gRPC service.
pub(crate) struct HardwareService {
    pub(crate) info: Arc<GetSystemInfoResponse>,
    pub(crate) tier: GetTierResponse,
    pub(crate) utilization: watch::Receiver<Arc<Utilization>>,
    pub(crate) leases: Arc<Mutex<LeaseBook>>,
    pub(crate) lease_settings: LeasesConfig,
}

/// Runs `change` on the lease book on a blocking thread: a change is written and synced to
/// disk before it is answered.
pub(crate) async fn with_leases<Answer: Send + 'static>(
    leases: &Arc<Mutex<LeaseBook>>,
    change: impl FnOnce(&mut LeaseBook) -> Result<Answer, LeaseError> + Send + 'static,
) -> Result<Answer, Status> {
    let leases = Arc::clone(leases);
    tokio::task::spawn_blocking(move || {
        let mut book = leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut book)
    })
    .await
    .map_err(|error| Status::from(ServiceError::internal("the lease book failed", &error)))?
    .map_err(|error| Status::from(ServiceError::from(error)))
}

/// Whose leases `caller` may renew and release: its own (`Some`), or any (`None`) for those who
/// may act for others (root, a SynOS service, the daemon's own account).
fn lease_holder(caller: &Caller) -> Result<Option<String>, Status> {
    let own = caller.identified()?;
    Ok((!caller.may_act_for_others()).then(|| own.to_owned()))
}

type UtilizationStream = Pin<Box<dyn Stream<Item = Result<Utilization, Status>> + Send>>;

#[tonic::async_trait]
impl Hardware for HardwareService {
    async fn get_system_info(
        &self,
        _request: Request<GetSystemInfoRequest>,
    ) -> Result<Response<GetSystemInfoResponse>, Status> {
        Ok(Response::new((*self.info).clone()))
    }

    async fn get_tier(
        &self,
        _request: Request<GetTierRequest>,
    ) -> Result<Response<GetTierResponse>, Status> {
        Ok(Response::new(self.tier.clone()))
    }

    async fn get_utilization(
        &self,
        _request: Request<GetUtilizationRequest>,
    ) -> Result<Response<Utilization>, Status> {
        Ok(Response::new((**self.utilization.borrow()).clone()))
    }

    type WatchUtilizationStream = UtilizationStream;

    async fn watch_utilization(
        &self,
        _request: Request<WatchUtilizationRequest>,
    ) -> Result<Response<Self::WatchUtilizationStream>, Status> {
        // The latest sample at once, then each new one; a slow reader skips to the newest.
        let samples = tokio_stream::wrappers::WatchStream::new(self.utilization.clone())
            .map(|sample| Ok((*sample).clone()));
        Ok(Response::new(Box::pin(samples)))
    }

    async fn acquire_accelerator(
        &self,
        request: Request<AcquireAcceleratorRequest>,
    ) -> Result<Response<Lease>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        // The holder is who the socket says calls (or whom a service or root acquires for).
        request.holder = caller.acting_as(&request.holder)?;
        let info = Arc::clone(&self.info);
        let settings = self.lease_settings.clone();
        let lease = with_leases(&self.leases, move |book| {
            book.acquire(&request, &info.accelerators, &settings, now_unix_ms())
        })
        .await?;
        tracing::info!(lease = %lease.id, accelerator = %lease.accelerator_id, holder = %lease.holder, memory_bytes = lease.memory_bytes, "lease granted");
        Ok(Response::new(lease))
    }

    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        let holder = lease_holder(&Caller::of(&request))?;
        let request = request.into_inner();
        let settings = self.lease_settings.clone();
        let lease = with_leases(&self.leases, move |book| {
            book.renew(
                &request.lease_id,
                holder.as_deref(),
                request.ttl_seconds,
                &settings,
                now_unix_ms(),
            )
        })
        .await?;
        Ok(Response::new(lease))
    }

    async fn release_lease(
        &self,
        request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        let holder = lease_holder(&Caller::of(&request))?;
        let id = request.into_inner().lease_id;
        let released = with_leases(&self.leases, move |book| {
            book.release(&id, holder.as_deref(), now_unix_ms())
        })
        .await?;
        tracing::info!(lease = %released.id, holder = %released.holder, "lease released");
        Ok(Response::new(ReleaseLeaseResponse {}))
    }

    async fn list_leases(
        &self,
        _request: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesResponse>, Status> {
        let leases = with_leases(&self.leases, |book| Ok(book.list(now_unix_ms()))).await?;
        Ok(Response::new(ListLeasesResponse { leases }))
    }
}
