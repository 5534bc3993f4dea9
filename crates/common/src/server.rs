//! The gRPC server every daemon runs: its own services plus health, reflection and admin,
//! on every listener, with readiness after binding and a bounded drain on shutdown; and a
//! daemon's plain HTTP endpoint, when it has one, on a socket systemd passes or it binds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use prometheus_client::registry::Registry;
use synos_proto::admin::v1::admin_server::AdminServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tower::Service;

use crate::admin::AdminService;
use crate::config::{DaemonConfig, Settings};
use crate::listener::{self, ListenError, ListenPlan, Listener};
use crate::systemd::{self, StatusLine};

/// Collects a daemon's services, then serves them with the standard ones until shutdown.
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    not_serving: Vec<&'static str>,
    status: StatusLine,
    metrics: Arc<Registry>,
    other_listeners: Vec<String>,
    http: Option<HttpEndpoint>,
}

/// A plain HTTP endpoint the server runs beside gRPC.
struct HttpEndpoint {
    /// The `FileDescriptorName=` of its socket when systemd passes one.
    fd_name: &'static str,
    /// What to bind otherwise; `None`: only when systemd passes it.
    address: Option<std::net::SocketAddr>,
    app: axum::Router,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GrpcServer")
            .field("service_names", &self.service_names)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// A server whose `STATUS=` and admin summary come from `status`.
    pub fn new(status: StatusLine) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            routes,
            health,
            service_names: Vec::new(),
            not_serving: Vec::new(),
            status,
            metrics: Arc::new(Registry::default()),
            other_listeners: Vec::new(),
            http: None,
        }
    }

    /// Serves `app` over plain HTTP on the TCP socket systemd passes as `fd_name`, else on
    /// `address` (`None`: not without systemd). A bind that fails leaves gRPC serving, with the
    /// reason logged and listed in `Admin.GetInfo`.
    pub fn http(
        mut self,
        fd_name: &'static str,
        address: Option<std::net::SocketAddr>,
        app: axum::Router,
    ) -> Self {
        self.http = Some(HttpEndpoint {
            fd_name,
            address,
            app,
        });
        self
    }

    /// The registry `Admin.GetMetrics` encodes; empty unless the daemon sets one.
    pub fn metrics(mut self, registry: Arc<Registry>) -> Self {
        self.metrics = registry;
        self
    }

    /// Names a listener the daemon serves itself (e.g. "http://127.0.0.1:7311"), so
    /// `Admin.GetInfo` lists it next to the gRPC ones.
    pub fn also_listening(mut self, description: String) -> Self {
        self.other_listeners.push(description);
        self
    }

    /// The health reporter, to mark services NOT_SERVING while a dependency is down.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Adds a generated service; its health is reported SERVING once the server is ready.
    /// Callers apply the request size limit with the generated server's
    /// `max_decoding_message_size(config.settings.server().max_message_bytes)`.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Reports `service_name`, and so the daemon as a whole (""), NOT_SERVING from the start:
    /// for a daemon that runs degraded. Flip it through [`Self::health`] when it recovers.
    pub fn start_not_serving(mut self, service_name: &'static str) -> Self {
        self.not_serving.push(service_name);
        self
    }

    /// Binds (or takes from systemd) the listeners, serves until `shutdown` is cancelled, then
    /// drains in-flight calls for at most `server.drain_timeout_ms`.
    pub async fn serve<S: Settings>(
        self,
        config: &DaemonConfig<S>,
        shutdown: CancellationToken,
    ) -> Result<(), ListenError> {
        let server_config = config.settings.server();
        let plan = ListenPlan {
            socket: config.socket_path(),
            tcp: server_config.tcp_listen,
            set_aside: self.http.iter().map(|http| http.fd_name).collect(),
        };
        let listener::Acquired {
            grpc: listeners,
            set_aside,
        } = listener::acquire(&plan)?;
        let Self {
            mut routes,
            health,
            mut service_names,
            not_serving,
            status,
            metrics,
            mut other_listeners,
            http,
        } = self;
        let mut servers = Vec::new();
        if let Some(http) = http {
            let (description, served) = serve_http(http, set_aside, shutdown.clone()).await;
            other_listeners.push(description);
            servers.extend(served);
        }
        let descriptions: Vec<String> = listeners
            .iter()
            .map(Listener::describe)
            .chain(other_listeners)
            .collect();

        service_names.push(synos_proto::admin::v1::admin_server::SERVICE_NAME);
        let admin = AdminService::new(
            config.identity,
            config.source.to_string(),
            descriptions.clone(),
            status.clone(),
            metrics,
        );
        routes.add_service(
            AdminServer::new(admin).max_decoding_message_size(server_config.max_message_bytes),
        );
        // Both versions: grpcurl and older tools still ask v1alpha.
        // Each version lists itself: a v1 client sees v1, a v1alpha client sees v1alpha.
        let reflection = |reflection_service: &str| {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(synos_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
                .with_service_name(reflection_service);
            for name in &service_names {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        match (
            reflection("grpc.reflection.v1.ServerReflection").build_v1(),
            reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha(),
        ) {
            (Ok(v1), Ok(v1alpha)) => {
                routes.add_service(v1);
                routes.add_service(v1alpha);
            }
            (Err(error), _) | (_, Err(error)) => {
                // Reflection is a convenience; serving without it beats not serving.
                tracing::error!(%error, "reflection unavailable: descriptor set rejected");
            }
        }
        let routes = routes.routes();

        // Statuses first, then the listeners: tonic-health starts "" as SERVING, so a client
        // could otherwise see the daemon SERVING before its own services are registered.
        let initial_status = |serving: bool| {
            if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            }
        };
        for name in &service_names {
            health
                .set_service_status(*name, initial_status(!not_serving.contains(name)))
                .await;
        }
        health
            .set_service_status("", initial_status(not_serving.is_empty()))
            .await;
        servers.extend(listeners.into_iter().map(|listener| {
            tokio::spawn(serve_listener(listener, routes.clone(), shutdown.clone()))
        }));
        tracing::info!(listeners = ?descriptions, config = %config.source, "serving");
        systemd::spawn_watchdog(shutdown.clone());
        systemd::notify_ready(&status.get());

        shutdown.cancelled().await;
        systemd::notify_stopping();
        // Tell watchers first, so clients such as the doctor learn of the stop at once.
        for name in service_names.iter().copied().chain([""]) {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        let drain = Duration::from_millis(server_config.drain_timeout_ms);
        if tokio::time::timeout(drain, join_all(servers))
            .await
            .is_err()
        {
            // Long-lived streams (health Watch) never end on their own; they are cut here.
            tracing::info!(?drain, "drain time over; closing the remaining connections");
        }
        Ok(())
    }
}

/// Starts `http` on its passed socket or its address; how it is listed, and its task.
async fn serve_http(
    http: HttpEndpoint,
    set_aside: Vec<(String, tokio::net::TcpListener)>,
    shutdown: CancellationToken,
) -> (String, Option<tokio::task::JoinHandle<()>>) {
    let passed = set_aside
        .into_iter()
        .find_map(|(name, listener)| (name == http.fd_name).then_some(listener));
    let listener = match (passed, http.address) {
        (Some(listener), _) => listener,
        (None, None) => return ("http: off (no socket passed)".to_owned(), None),
        (None, Some(address)) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(error) => {
                // gRPC still serves: degrade, and say so, rather than refuse to start.
                tracing::error!(%address, %error, "cannot listen for HTTP; that endpoint is off");
                return (format!("http: off ({address}: {error})"), None);
            }
        },
    };
    let description = listener.local_addr().map_or_else(
        |_| "http://?".to_owned(),
        |address| format!("http://{address}"),
    );
    let task = tokio::spawn(serve_http_connections(listener, http.app, shutdown));
    (description, Some(task))
}

/// At most this many HTTP connections are served at once; more wait in the kernel's listen
/// backlog. However many a client opens, the daemon's file descriptors (and with them its
/// gRPC socket) stay its own.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// A request's headers must have arrived this long after the connection opened or the previous
/// response went out, or the connection is closed: idle and trickling clients free their slot.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts and serves HTTP/1.1 connections on `listener` until `shutdown`, within
/// [`MAX_HTTP_CONNECTIONS`] and [`HTTP_HEADER_TIMEOUT`]; then lets the open ones finish their
/// requests, for at most the drain limit. Every daemon's HTTP endpoint is served by this (the
/// doctor's metrics through [`GrpcServer::http`], the router's OpenAI endpoint directly).
pub async fn serve_http_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;

    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors or memory for now: pause rather than spin.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_millis(4500), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at the end of the drain were cut");
    }
}

async fn serve_listener(listener: Listener, routes: Routes, shutdown: CancellationToken) {
    let builder = Server::builder().add_routes(routes);
    let signal = shutdown.cancelled_owned();
    let result = match listener {
        Listener::Unix {
            listener, owned, ..
        } => {
            let result = builder
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal)
                .await;
            drop(owned);
            result
        }
        Listener::Tcp(listener) => {
            let incoming = TcpListenerStream::new(listener);
            builder.serve_with_incoming_shutdown(incoming, signal).await
        }
    };
    if let Err(error) = result {
        tracing::error!(%error, "listener stopped with an error");
    }
}
