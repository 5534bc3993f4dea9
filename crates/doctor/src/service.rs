//! `synos.doctor.v1.Doctor`: answers from the incident book the watch loop keeps.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use synos_common::caller::Caller;
use synos_proto::doctor::v1::doctor_server::Doctor;
use synos_proto::doctor::v1::{
    ApproveRequest, CheckReport, DaemonReport, DenyRequest, GetReportRequest, GetReportResponse,
    IncidentEvent, ListIncidentsRequest, ListIncidentsResponse, ListPendingRequest,
    ListPendingResponse, OverallState, PendingAction, PendingState, RunCheckRequest,
    WatchIncidentsRequest,
};
use tonic::{Request, Response, Status};

use crate::approvals::{self, Peers};
use crate::checks::{Watched, check_once};
use crate::incidents::SharedBook;

/// Incidents a `ListIncidents` gives when it names no limit.
const DEFAULT_LIMIT: usize = 100;

/// The doctor's gRPC service.
pub(crate) struct DoctorService {
    pub(crate) book: SharedBook,
    pub(crate) watched: Vec<Watched>,
    pub(crate) timeout: Duration,
    pub(crate) peers: Peers,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<IncidentEvent, Status>> + Send>>;

impl DoctorService {
    fn book(&self) -> std::sync::MutexGuard<'_, crate::incidents::Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides pending action `id` for `caller`: authorized by policy as `verb` before the
    /// proposal is claimed (so a caller who will be refused never holds it), then carried out
    /// (approve) or not (deny), and recorded either way. A call dropped after its claim gives the
    /// proposal back.
    async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        verb: &str,
        deny_reason: Option<&str>,
    ) -> Result<PendingAction, Status> {
        let principal = caller.identified()?.to_owned();
        let action = self.book().pending(id)?.action;
        let unaudited = approvals::authorize(
            &self.peers,
            &principal,
            caller.is_administrator(),
            verb,
            action,
        )
        .await
        .inspect_err(|refused| {
            tracing::warn!(pending = %id, %principal, reason = %refused.message(), "decision refused");
        })?;
        let proposal = self.book().claim(id)?;
        let claim = Claim {
            book: &self.book,
            id,
        };
        let (state, mut outcome) = match deny_reason {
            Some(reason) if reason.trim().is_empty() => {
                (PendingState::Denied, "denied, no reason given".to_owned())
            }
            Some(reason) => (PendingState::Denied, format!("denied: {}", reason.trim())),
            None => match approvals::carry_out(&self.peers, &proposal).await {
                Ok(done) => (PendingState::Done, done),
                Err(problem) => (PendingState::Failed, format!("failed: {problem}")),
            },
        };
        if let Some(unaudited) = unaudited {
            outcome = format!("{outcome} ({unaudited})");
        }
        tracing::info!(pending = %id, %principal, %outcome, "decided: {}", proposal.describe());
        let decided = self.book().decide(id, state, &principal, &outcome);
        std::mem::forget(claim);
        decided.ok_or_else(|| Status::internal(format!("pending action {id} vanished")))
    }
}

/// A claimed proposal, given back undecided if the call deciding it is dropped.
struct Claim<'a> {
    book: &'a std::sync::Mutex<crate::incidents::Book>,
    id: &'a str,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(self.id);
    }
}

#[tonic::async_trait]
impl Doctor for DoctorService {
    async fn get_report(
        &self,
        _request: Request<GetReportRequest>,
    ) -> Result<Response<GetReportResponse>, Status> {
        let book = self.book();
        let daemons = self
            .watched
            .iter()
            .map(|daemon| {
                let (health, detail) = book.daemon_health(&daemon.check());
                DaemonReport {
                    name: daemon.binary.to_owned(),
                    socket: daemon.socket.display().to_string(),
                    health: health.into(),
                    detail,
                }
            })
            .collect();
        let open_incidents = book.incidents(true, usize::MAX);
        let survival_reasons = book.survival_reasons();
        Ok(Response::new(GetReportResponse {
            state: if !survival_reasons.is_empty() {
                OverallState::Survival
            } else if open_incidents.is_empty() {
                OverallState::Ok
            } else {
                OverallState::Degraded
            }
            .into(),
            survival_reasons,
            daemons,
            checks: book.check_reports(),
            open_incidents,
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            limit => usize::try_from(limit).unwrap_or(usize::MAX),
        };
        Ok(Response::new(ListIncidentsResponse {
            incidents: self.book().incidents(request.open_only, limit),
        }))
    }

    type WatchIncidentsStream = EventStream;

    async fn watch_incidents(
        &self,
        _request: Request<WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        let events = tokio_stream::wrappers::BroadcastStream::new(self.book().subscribe())
            // A reader too slow to keep up misses events, never the stream: the book has them.
            .filter_map(|event| async move { event.ok().map(Ok) });
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_pending(
        &self,
        request: Request<ListPendingRequest>,
    ) -> Result<Response<ListPendingResponse>, Status> {
        Ok(Response::new(ListPendingResponse {
            actions: self.book().proposals(request.into_inner().include_decided),
        }))
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<PendingAction>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().id;
        self.decide(&caller, &id, "doctor.approve", None)
            .await
            .map(Response::new)
    }

    async fn deny(&self, request: Request<DenyRequest>) -> Result<Response<PendingAction>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        self.decide(&caller, &request.id, "doctor.deny", Some(&request.reason))
            .await
            .map(Response::new)
    }

    async fn run_check(
        &self,
        request: Request<RunCheckRequest>,
    ) -> Result<Response<CheckReport>, Status> {
        let name = request.into_inner().check;
        let Some(daemon) = self.watched.iter().find(|daemon| daemon.check() == name) else {
            let known: Vec<String> = self.watched.iter().map(Watched::check).collect();
            return Err(Status::not_found(format!(
                "no check {name:?}; the checks are {}",
                known.join(", ")
            )));
        };
        let observation = check_once(daemon, self.timeout).await;
        self.book().observe(&observation);
        self.book()
            .check(&name)
            .map(Response::new)
            .ok_or_else(|| Status::internal("the check vanished"))
    }
}
