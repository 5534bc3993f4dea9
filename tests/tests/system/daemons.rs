//! The contract every daemon keeps, checked on the real binaries over real sockets.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use synos_integration_tests::{ALL_DAEMONS, Sandbox, channel, health, output};
use synos_proto::admin::v1::GetInfoRequest;
use synos_proto::admin::v1::admin_client::AdminClient;
use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The gRPC service each daemon serves besides the standard ones.
fn own_service(short_name: &str) -> &'static str {
    match short_name {
        "llm-router" => "synos.llm.v1.Router",
        "memory" => "synos.memory.v1.Memory",
        "hwaccel" => "synos.hwaccel.v1.Hardware",
        "policy" => "synos.policy.v1.Policy",
        "doctor" => "synos.doctor.v1.Doctor",
        other => panic!("unknown daemon {other}"),
    }
}

async fn reflected_services(socket: &std::path::Path) -> BTreeSet<String> {
    let mut client = ServerReflectionClient::new(channel(socket).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn every_daemon_serves_health_reflection_and_admin() {
    let sandbox = Sandbox::new();
    for (short_name, binary) in ALL_DAEMONS {
        let daemon = sandbox.start(short_name).await;
        let socket = sandbox.socket(short_name);

        let mut health_client = HealthClient::new(channel(&socket).await);
        for service in ["", own_service(short_name), "synos.admin.v1.Admin"] {
            let reply = health_client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await;
            let status = reply
                .unwrap_or_else(|error| panic!("{binary} health of {service:?}: {error}"))
                .into_inner();
            assert_eq!(
                status.status(),
                ServingStatus::Serving,
                "{binary} health of {service:?}"
            );
        }
        let unknown = health_client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await;
        assert_eq!(
            unknown.unwrap_err().code(),
            tonic::Code::NotFound,
            "{binary}"
        );
        let mut watch = health_client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{binary} Watch");

        let services = reflected_services(&socket).await;
        let expected: BTreeSet<String> = [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "synos.admin.v1.Admin",
            own_service(short_name),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(
            services, expected,
            "{binary} reflection must list exactly what it serves"
        );

        let info = AdminClient::new(channel(&socket).await)
            .get_info(GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, binary);
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(!info.git_revision.is_empty());
        assert_eq!(info.pid, daemon.pid());
        assert_eq!(info.config_source, "built-in defaults");
        assert_eq!(info.listeners[0], format!("unix:{}", socket.display()));
        // The router's OpenAI-compatible endpoint and the doctor's metrics endpoint.
        if short_name == "llm-router" || short_name == "doctor" {
            assert_eq!(info.listeners.len(), 2);
            assert!(
                info.listeners[1].starts_with("http://127.0.0.1:"),
                "{:?}",
                info.listeners
            );
        } else {
            assert_eq!(info.listeners.len(), 1);
        }
        assert!(
            info.state_summary.starts_with("serving"),
            "{binary}: {}",
            info.state_summary
        );
        assert!(info.uptime.is_some() && info.start_time.is_some());
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_within_five_seconds() {
    let sandbox = Sandbox::new();
    let mut daemons = sandbox.start_all().await;
    // A health Watch never ends by itself: the drain must not wait for it forever.
    let mut watches = Vec::new();
    for (short_name, _) in ALL_DAEMONS {
        let mut watch = HealthClient::new(channel(&sandbox.socket(short_name)).await)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            watch.next().await.unwrap().unwrap().status(),
            ServingStatus::Serving
        );
        watches.push(watch);
    }

    let started = Instant::now();
    for daemon in daemons.values() {
        daemon.signal(Signal::SIGTERM);
    }
    for ((short_name, binary), watch) in ALL_DAEMONS.iter().zip(&mut watches) {
        // Watchers hear NOT_SERVING before the connection goes.
        let next = tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .unwrap();
        assert_eq!(
            next.unwrap().unwrap().status(),
            ServingStatus::NotServing,
            "{binary}"
        );
        let daemon = daemons.get_mut(short_name).unwrap();
        let remaining = Duration::from_secs(5).saturating_sub(started.elapsed());
        let status = daemon.wait_exit(remaining).await;
        let status = status.unwrap_or_else(|| {
            panic!(
                "{binary} still running 5 s after SIGTERM:\n{}",
                daemon.log()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{binary} exit status; log:\n{}",
            daemon.log()
        );
        assert!(
            !sandbox.socket(short_name).exists(),
            "{binary} left its socket behind"
        );
    }
}

/// Receives datagrams on a notify socket until one contains `wanted` or time runs out.
fn receive_until(notify: &UnixDatagram, wanted: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        notify
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(length) = notify.recv(&mut buffer) else {
            break;
        };
        let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
        let done = message.lines().any(|line| line == wanted);
        seen.push(message);
        if done {
            return seen;
        }
    }
    panic!("no {wanted} within {timeout:?}; received {seen:?}");
}

#[tokio::test]
async fn notify_socket_gets_ready_status_watchdog_and_stopping() {
    let sandbox = Sandbox::new();
    let notify_path = sandbox.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut command = sandbox.command("synos-memory");
    command
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000");
    let mut daemon = sandbox.spawn("memory", command);

    let before_ready = receive_until(&notify, "READY=1", Duration::from_secs(15));
    // READY=1 means served: a connection must succeed the moment it arrives.
    assert!(
        std::os::unix::net::UnixStream::connect(sandbox.socket("memory")).is_ok(),
        "READY=1 before the socket was bound"
    );
    assert!(
        before_ready
            .last()
            .unwrap()
            .lines()
            .any(|line| line.starts_with("STATUS=serving")),
        "READY=1 without a STATUS= summary: {before_ready:?}"
    );
    // The watchdog runs at half of WATCHDOG_USEC: several pings within half a second.
    let started = Instant::now();
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(2));
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "watchdog pings too slow: {:?}",
        started.elapsed()
    );

    daemon.signal(Signal::SIGTERM);
    receive_until(&notify, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap()
            .code(),
        Some(0)
    );
}

#[tokio::test]
async fn socket_activation_serves_the_listener_systemd_passes() {
    let activate = std::path::Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "systemd-socket-activate missing: scripts/install-dependencies.sh installs Debian's systemd package"
    );
    let sandbox = Sandbox::new();
    let activated = sandbox.path().join("activated.sock");
    let mut command = std::process::Command::new(activate);
    command
        .arg("--listen")
        .arg(&activated)
        .arg("--fdname=memory.sock")
        .args([
            "-E",
            "SYNOS_RUNTIME_DIR",
            "-E",
            "SYNOS_CONFIG_DIR",
            "-E",
            "SYNOS_STATE_DIR",
            "-E",
            "RUST_LOG",
        ])
        .arg(synos_integration_tests::binary("synos-memory"))
        .env("SYNOS_RUNTIME_DIR", sandbox.runtime_dir())
        .env("SYNOS_CONFIG_DIR", sandbox.config_dir())
        .env("SYNOS_STATE_DIR", sandbox.state_dir())
        .env("RUST_LOG", "info");
    let mut daemon = sandbox.spawn("memory", command);
    // The first connection makes systemd-socket-activate exec the daemon with LISTEN_FDS.
    daemon.wait_serving(&activated).await;

    let info = AdminClient::new(channel(&activated).await)
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "synos-memory");
    assert_eq!(
        info.listeners,
        vec![format!("unix:{}", activated.display())]
    );
    assert!(
        !sandbox.socket("memory").exists(),
        "bound its own socket despite socket activation"
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap()
            .code(),
        Some(0),
        "{}",
        daemon.log()
    );
    // The socket belongs to systemd, which keeps it to activate the next start.
    assert!(
        synos_common::identity::is_socket(&activated),
        "removed a socket it did not create"
    );
}

#[tokio::test]
async fn invalid_configuration_exits_78_naming_source_and_key() {
    let sandbox = Sandbox::new();
    for (short_name, binary) in ALL_DAEMONS {
        sandbox.write_config(short_name, "[server]\nmax_mesage_bytes = 10\n");
        let (code, _, stderr) = output(&mut sandbox.command(binary));
        assert_eq!(code, 78, "{binary}: {stderr}");
        let file = sandbox.config_dir().join(format!("{short_name}.toml"));
        assert!(
            stderr.contains(&format!(
                "{}: key `server.max_mesage_bytes`: unknown key",
                file.display()
            )),
            "{binary}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    }

    sandbox.write_config("memory", "[server]\nmax_message_bytes = \"lots\"\n");
    let (code, _, stderr) = output(sandbox.command("synos-memory").arg("--check-config"));
    assert_eq!(code, 78);
    assert!(
        stderr.contains(
            "key `server.max_message_bytes`: expected a non-negative integer, found a string"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("lots"), "echoed the value: {stderr}");

    sandbox.write_config("memory", "[server\n");
    let (code, _, stderr) = output(sandbox.command("synos-memory").arg("--check-config"));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("memory.toml: syntax error at line 1"),
        "{stderr}"
    );

    sandbox.write_config("memory", "");
    let (code, _, stderr) = output(
        sandbox
            .command("synos-memory")
            .arg("--check-config")
            .env("SYNOS_MEMORY_SERVER__TCP_LISTEN", "192.0.2.1:80"),
    );
    assert_eq!(code, 78);
    assert!(stderr.contains("environment variable SYNOS_MEMORY_SERVER__TCP_LISTEN: key `server.tcp_listen`: must be a loopback"), "{stderr}");

    sandbox.write_config("doctor", "");
    let (code, _, stderr) = output(sandbox.command("synos-doctor").args([
        "--check-config",
        "--set",
        "watch.daemons=[\"doctor\"]",
    ]));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("command line: key `watch.daemons.0`"),
        "{stderr}"
    );

    let (code, _, stderr) = output(sandbox.command("synos-memory").args([
        "--check-config",
        "--config",
        "/nonexistent/memory.toml",
    ]));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("/nonexistent/memory.toml: cannot read"),
        "{stderr}"
    );

    let (code, _, stderr) = output(sandbox.command("synos-memory").arg("--check-config"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
}

#[tokio::test]
async fn a_second_instance_refuses_to_steal_a_live_socket() {
    let sandbox = Sandbox::new();
    let first = sandbox.start("policy").await;
    let mut second = sandbox.spawn("policy", sandbox.command("synos-policy"));
    let status = second
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("second instance kept running");
    assert_eq!(status.code(), Some(69), "{}", second.log());
    assert!(
        second.log().contains("another instance is already serving"),
        "{}",
        second.log()
    );
    assert_eq!(
        health(&sandbox.socket("policy")).await,
        Some(ServingStatus::Serving),
        "first instance disturbed"
    );

    // After a crash the socket file stays; the next start must replace it.
    first.signal(Signal::SIGKILL);
    drop(first);
    assert!(synos_common::identity::is_socket(&sandbox.socket("policy")));
    let _restarted = sandbox.start("policy").await;

    // Something that is not a socket is never removed.
    let occupied = sandbox.path().join("occupied.sock");
    std::fs::write(&occupied, "keep me").unwrap();
    let (code, _, stderr) = output(
        sandbox
            .command("synos-memory")
            .arg("--socket")
            .arg(&occupied),
    );
    assert_eq!(code, 73, "{stderr}");
    assert!(
        stderr.contains("is not a socket; refusing to remove it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&occupied).unwrap(), "keep me");
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_daemon_survives() {
    use synos_proto::policy::v1::AuthorizeRequest;
    use synos_proto::policy::v1::policy_client::PolicyClient;
    let sandbox = Sandbox::new();
    let _daemon = sandbox
        .start_with_args("policy", &["--set", "server.max_message_bytes=1024"])
        .await;
    let mut policy = PolicyClient::new(channel(&sandbox.socket("policy")).await);
    let huge = AuthorizeRequest {
        principal: "x".repeat(4096),
        action: "llm.chat".into(),
        resource: "Route::\"r\"".into(),
    };
    let error = policy.authorize(huge).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error}");

    let fine = AuthorizeRequest {
        principal: "User::\"alice\"".into(),
        action: "llm.chat".into(),
        resource: "Route::\"r\"".into(),
    };
    assert!(
        policy.authorize(fine).await.is_ok(),
        "daemon broken after an oversized request"
    );
}

#[tokio::test]
async fn loopback_tcp_listener_serves_the_same_services() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox
        .start_with_args("hwaccel", &["--set", "server.tcp_listen=\"127.0.0.1:0\""])
        .await;
    let info = AdminClient::new(channel(&sandbox.socket("hwaccel")).await)
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let tcp = info
        .listeners
        .iter()
        .find_map(|listener| listener.strip_prefix("tcp:"))
        .expect("no TCP listener")
        .to_owned();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{tcp}")).unwrap();
    let mut health_client = HealthClient::new(endpoint.connect().await.unwrap());
    let reply = health_client
        .check(HealthCheckRequest {
            service: "synos.hwaccel.v1.Hardware".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
}

#[tokio::test]
async fn sighup_rechecks_the_configuration_without_stopping() {
    let sandbox = Sandbox::new();
    let daemon = sandbox.start("memory").await;
    sandbox.write_config("memory", "[server]\nbogus = 1\n");
    daemon.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("new configuration rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(daemon.log().contains("server.bogus"), "{}", daemon.log());
    assert_eq!(
        health(&sandbox.socket("memory")).await,
        Some(ServingStatus::Serving)
    );
}

#[tokio::test]
async fn every_binary_reports_its_version_and_git_revision() {
    let sandbox = Sandbox::new();
    for binary in ALL_DAEMONS
        .iter()
        .map(|(_, binary)| *binary)
        .chain(["synosctl"])
    {
        let (code, stdout, _) = output(sandbox.command(binary).arg("-V"));
        assert_eq!(
            (code, stdout.trim()),
            (
                0,
                format!("{binary} {}", env!("CARGO_PKG_VERSION")).as_str()
            )
        );
        let (code, stdout, _) = output(sandbox.command(binary).arg("--version"));
        let prefix = format!("{binary} {} (git ", env!("CARGO_PKG_VERSION"));
        assert!(
            code == 0 && stdout.starts_with(&prefix),
            "{binary}: {stdout}"
        );
    }
}

#[test]
fn shipped_default_configurations_are_valid() {
    let sandbox = Sandbox::new();
    let shipped = synos_integration_tests::repository_path("packaging/config");
    for (short_name, binary) in ALL_DAEMONS {
        let file = shipped.join(format!("{short_name}.toml"));
        let (code, _, stderr) = output(
            sandbox
                .command(binary)
                .arg("--check-config")
                .arg("--config")
                .arg(&file),
        );
        assert_eq!(code, 0, "{}: {stderr}", file.display());
        assert!(
            stderr.contains(&format!("configuration is valid ({})", file.display())),
            "{stderr}"
        );
    }
}

/// The packages build the manual pages on a build machine whatever its /etc/synos holds, so
/// `--manual-page` must neither read nor need a configuration: a broken file changes nothing.
#[test]
fn every_daemon_prints_its_manual_page_even_beside_a_broken_configuration() {
    let sandbox = Sandbox::new();
    for (short_name, binary) in ALL_DAEMONS {
        sandbox.write_config(short_name, "this is [not toml\n");
        let (code, page, stderr) = output(sandbox.command(binary).arg("--manual-page"));
        assert_eq!(code, 0, "{binary}: {stderr}");
        assert!(stderr.is_empty(), "{binary}: {stderr}");
        assert!(
            page.contains(&format!(".TH {binary} 8 ")),
            "{binary}: {page}"
        );
        // roff writes a hyphen as \-; read the text as man shows it.
        let text = page.replace("\\-", "-");
        assert!(text.contains("--check-config"), "{binary}: {page}");
        assert!(
            text.contains(&format!(
                "-authority localhost /run/synos/{short_name}.sock list"
            )),
            "{binary}: {page}"
        );
        assert!(
            !text.contains("manual-page"),
            "{binary}: the flag is hidden"
        );
        // The broken file is really there: the daemon itself refuses it.
        let (code, _, _) = output(sandbox.command(binary).arg("--check-config"));
        assert_eq!(code, 78, "{binary}");
    }
}
