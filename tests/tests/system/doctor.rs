//! The doctor against real daemons: a death is an incident within 2 s, a return recovers it,
//! a flapping daemon stays one incident, history survives the doctor's restart (and a full
//! disk under its own database), and synosctl shows it all.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use synos_integration_tests::{Sandbox, SmallFileSystem, channel, router_provider, status_line};
use synos_proto::doctor::v1::doctor_client::DoctorClient;
use synos_proto::doctor::v1::{
    DaemonHealth, GetReportRequest, GetReportResponse, IncidentEvent, IncidentEventKind,
    IncidentState, ListIncidentsRequest, OverallState, RunCheckRequest, WatchIncidentsRequest,
};
use synos_proto::llm::v1::ProviderState;
use synos_proto::llm::v1::router_client::RouterClient;
use tonic::Code;
use tonic::Streaming;
use tonic::transport::Channel;

async fn doctor(sandbox: &Sandbox) -> DoctorClient<Channel> {
    DoctorClient::new(channel(&sandbox.socket("doctor")).await)
}

/// The doctor's report now.
async fn current_report(doctor: &mut DoctorClient<Channel>) -> GetReportResponse {
    doctor
        .get_report(GetReportRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The packaged Cedar policies in the sandbox's policy.d, and a site rule `file` holding `rule`.
fn shipped_policies_and(sandbox: &Sandbox, file: &str, rule: &str) {
    let policies = sandbox.config_dir().join("policy.d");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        synos_integration_tests::repository_path("packaging/policy/00-defaults.cedar"),
        policies.join("00-defaults.cedar"),
    )
    .unwrap();
    std::fs::write(policies.join(file), rule).unwrap();
}

/// Waits up to `within` for the doctor to see every watched daemon serving.
async fn all_serving(doctor: &mut DoctorClient<Channel>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let report = current_report(doctor).await;
        // Only the daemons: a nearly full disk on the test machine is not this test's business.
        if report
            .daemons
            .iter()
            .all(|daemon| daemon.health() == DaemonHealth::Serving)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_event(events: &mut Streaming<IncidentEvent>, within: Duration) -> IncidentEvent {
    tokio::time::timeout(within, events.message())
        .await
        .expect("an incident event in time")
        .unwrap()
        .expect("the stream is open")
}

#[tokio::test]
async fn a_death_is_an_incident_within_2_s_and_a_flapping_daemon_stays_one_incident() {
    let sandbox = Sandbox::new();
    let mut daemons = sandbox.start_all().await;
    let mut doctor = doctor(&sandbox).await;
    all_serving(&mut doctor, Duration::from_secs(5)).await;
    let report = current_report(&mut doctor).await;
    let names: Vec<&str> = report
        .checks
        .iter()
        .map(|check| check.name.as_str())
        .collect();
    let state = sandbox.state_dir();
    let runtime = sandbox.runtime_dir();
    let mut expected = vec![
        "daemon:synos-hwaccel".to_owned(),
        "daemon:synos-llm-router".to_owned(),
        "daemon:synos-memory".to_owned(),
        "daemon:synos-policy".to_owned(),
        format!("disk:{}", runtime.display()),
        format!("disk:{}", state.display()),
        "disk:/var/log".to_owned(),
        "hwaccel:tier".to_owned(),
        "memory".to_owned(),
    ];
    if std::path::Path::new("/proc/pressure/memory").exists() {
        expected.push("pressure:memory".to_owned());
    }
    assert_eq!(names, expected);
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();

    let killed = Instant::now();
    daemons["memory"].signal(Signal::SIGKILL);
    let opened = next_event(&mut events, Duration::from_secs(2)).await;
    let detection = killed.elapsed();
    assert_eq!(opened.kind(), IncidentEventKind::Opened);
    let incident = opened.incident.unwrap();
    assert_eq!(incident.check, "daemon:synos-memory");
    assert!(detection < Duration::from_secs(2), "{detection:?}");
    let report = current_report(&mut doctor).await;
    assert_eq!(report.state(), OverallState::Degraded);
    assert_eq!(report.open_incidents.len(), 1);
    let memory = report
        .daemons
        .iter()
        .find(|daemon| daemon.name == "synos-memory")
        .unwrap();
    assert_eq!(
        memory.health(),
        DaemonHealth::Unreachable,
        "{}",
        memory.detail
    );
    let (code, stdout, _) = sandbox.synosctl(&["doctor", "report"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("state: degraded") && stdout.contains(&incident.id),
        "{stdout}"
    );

    // Back: recovered. Down again at once: the same incident, a second time.
    daemons.insert("memory", sandbox.start("memory").await);
    let recovered = next_event(&mut events, Duration::from_secs(5)).await;
    assert_eq!(recovered.kind(), IncidentEventKind::Recovered);
    assert_eq!(recovered.incident.as_ref().unwrap().id, incident.id);
    daemons["memory"].signal(Signal::SIGKILL);
    let reopened = next_event(&mut events, Duration::from_secs(2)).await;
    assert_eq!(reopened.kind(), IncidentEventKind::Reopened);
    let reopened = reopened.incident.unwrap();
    assert_eq!(
        (reopened.id.as_str(), reopened.occurrences),
        (incident.id.as_str(), 2)
    );
    let all = doctor
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(all.len(), 1, "{all:?}");

    let (code, stdout, _) = sandbox.synosctl(&["doctor", "incidents", "--json"]).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["id"], incident.id.as_str());
    assert_eq!(listed[0]["state"], "open");
    assert_eq!(listed[0]["occurrences"], 2);
}

/// Stops the doctor, starts it again, and lists the incidents the new one knows.
async fn restart_doctor(
    sandbox: &Sandbox,
    mut running: synos_integration_tests::Daemon,
) -> (
    synos_integration_tests::Daemon,
    Vec<synos_proto::doctor::v1::Incident>,
) {
    running.signal(Signal::SIGTERM);
    running.wait_exit(Duration::from_secs(5)).await.unwrap();
    let restarted = sandbox.start("doctor").await;
    let kept = doctor(sandbox)
        .await
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    (restarted, kept)
}

#[tokio::test]
async fn history_survives_the_doctors_restart_and_run_check_counts() {
    let sandbox = Sandbox::new();
    sandbox.write_config("doctor", "[watch]\ndaemons = [\"memory\"]\n");
    let mut memory = sandbox.start("memory").await;
    let doctor_daemon = sandbox.start("doctor").await;
    let mut doctor_client = doctor(&sandbox).await;
    all_serving(&mut doctor_client, Duration::from_secs(5)).await;
    memory.signal(Signal::SIGKILL);
    memory.wait_exit(Duration::from_secs(5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let incident = loop {
        let open = doctor_client
            .list_incidents(ListIncidentsRequest {
                open_only: true,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .incidents;
        if let Some(incident) = open.into_iter().next() {
            break incident;
        }
        assert!(Instant::now() < deadline, "no incident within 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The writer needs a moment after the event; then the doctor goes down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_doctor_daemon, kept) = restart_doctor(&sandbox, doctor_daemon).await;
    let mut doctor_client = doctor(&sandbox).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].id.as_str(), kept[0].state()),
        (incident.id.as_str(), IncidentState::Open)
    );
    // What was seen before the restart is kept; the new doctor may add what it sees since.
    assert!(kept[0].evidence.starts_with(&incident.evidence), "{kept:?}");

    // The daemon comes back: the incident from before the restart is the one that recovers.
    let _memory = sandbox.start("memory").await;
    let check = doctor_client
        .run_check(RunCheckRequest {
            check: "daemon:synos-memory".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.consecutive_successes >= 1, "{check:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = doctor_client
            .list_incidents(ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .incidents;
        assert_eq!(after.len(), 1, "{after:?}");
        if after[0].state() == IncidentState::Recovered {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {after:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let unknown = doctor_client
        .run_check(RunCheckRequest {
            check: "daemon:synos-nothing".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("daemon:synos-memory"),
        "{}",
        unknown.message()
    );
}

#[tokio::test]
async fn a_full_disk_is_an_incident_and_survival_mode_until_space_returns() {
    let sandbox = Sandbox::new();
    let disk = SmallFileSystem::mount(sandbox.path().join("small"), "1m");
    sandbox.write_config(
        "doctor",
        &format!(
            "[watch]\ndaemons = []\ninterval_ms = 200\n\n[resources]\npaths = [\"{}\"]\n",
            disk.0.display()
        ),
    );
    let _doctor = sandbox.start("doctor").await;
    let mut doctor = doctor(&sandbox).await;
    let check = format!("disk:{}", disk.0.display());
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    std::fs::write(disk.0.join("ballast"), vec![0_u8; 1000 * 1024]).unwrap();
    let opened = next_event(&mut events, Duration::from_secs(3)).await;
    assert_eq!(opened.kind(), IncidentEventKind::Opened);
    let incident = opened.incident.unwrap();
    assert_eq!(incident.check, check);
    assert!(
        incident.evidence[0].contains("% used (")
            && incident.evidence[0].contains("free of 1.0 MiB"),
        "{:?}",
        incident.evidence
    );
    // A critical resource is survival mode, until it recovers.
    let report = current_report(&mut doctor).await;
    assert_eq!(report.state(), OverallState::Survival);
    assert!(
        report.survival_reasons[0].starts_with(&format!("{check} critical: ")),
        "{:?}",
        report.survival_reasons
    );
    std::fs::remove_file(disk.0.join("ballast")).unwrap();
    let recovered = next_event(&mut events, Duration::from_secs(3)).await;
    assert_eq!(recovered.kind(), IncidentEventKind::Recovered);
    assert_eq!(recovered.incident.unwrap().id, incident.id);
    let report = current_report(&mut doctor).await;
    assert!(
        report.survival_reasons.is_empty(),
        "{:?}",
        report.survival_reasons
    );
    assert_ne!(report.state(), OverallState::Survival);
}

#[tokio::test]
async fn a_full_disk_gets_its_cache_emptied_oldest_first_and_recovers() {
    let sandbox = Sandbox::new();
    let disk = SmallFileSystem::mount(sandbox.path().join("small"), "1m");
    let cache = disk.0.join("cache");
    std::fs::create_dir_all(cache.join("router")).unwrap();
    // A file outside the cache on the same disk, which must stay.
    std::fs::write(disk.0.join("kept"), vec![1_u8; 200 * 1024]).unwrap();
    sandbox.write_config(
        "doctor",
        &format!(
            "[watch]\ndaemons = []\ninterval_ms = 200\n\n[resources]\npaths = [\"{}\"]\n\
             disk_used_percent = 80.0\n\n[repairs]\nclean_directories = [\"{}\"]\n",
            disk.0.display(),
            cache.display()
        ),
    );
    let _doctor = sandbox.start("doctor").await;
    let mut doctor = doctor(&sandbox).await;
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    // Four files of 200 KiB, each older than the next: with the kept one, about 98 % of 1 MiB.
    for (index, name) in ["oldest", "older", "newer", "newest"].iter().enumerate() {
        let path = cache.join("router").join(name);
        let _ = std::fs::write(&path, vec![0_u8; 200 * 1024]);
        let age = Duration::from_secs(3600 * (4 - index as u64));
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }
    let opened = event_of_kind(
        &mut events,
        IncidentEventKind::Opened,
        Duration::from_secs(3),
    )
    .await;
    let incident = opened.incident.unwrap();
    assert_eq!(incident.check, format!("disk:{}", disk.0.display()));
    let recovered = event_of_kind(
        &mut events,
        IncidentEventKind::Recovered,
        Duration::from_secs(5),
    )
    .await;
    let recovered = recovered.incident.unwrap();
    assert_eq!(recovered.id, incident.id);
    // Below 75 % (the limit less the margin) once the two oldest are gone: the rest stay.
    assert!(!cache.join("router/oldest").exists());
    assert!(!cache.join("router/older").exists());
    assert!(cache.join("router/newer").exists() && cache.join("router/newest").exists());
    assert!(disk.0.join("kept").exists() && cache.join("router").is_dir());
    // No policy daemon here, and the record says so.
    assert!(
        recovered
            .actions
            .iter()
            .any(|action| action.contains(&format!(
                "removed 2 files (400.0 KiB) from {}; now ",
                cache.display()
            )) && action.contains("(unaudited: the policy daemon was unreachable")),
        "{:?}",
        recovered.actions
    );
}

/// A router over one remote provider, a stand-in that answers 503 to everything, and a doctor
/// watching it every 200 ms with `doctor_extra` configuration; nothing started yet.
async fn failing_provider(
    doctor_extra: &str,
) -> (synos_integration_tests::stand_in::StandIn, Sandbox) {
    use synos_integration_tests::stand_in::{Behaviour, StandIn};
    let remote = StandIn::start("remote").await;
    remote.script([], Behaviour::Status(503, None));
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "llm-router",
        &(remote.provider_block("remote", "")
            + "\n[[route]]\nname = \"default\"\nretries = 0\nlast_resort = \"\"\n\
               chain = [{ provider = \"remote\", model = \"m\" }]\n"),
    );
    sandbox.write_config(
        "doctor",
        &format!("[watch]\ndaemons = [\"llm-router\"]\ninterval_ms = 200\n{doctor_extra}"),
    );
    (remote, sandbox)
}

/// A one-line chat request.
fn hello() -> synos_proto::llm::v1::ChatRequest {
    use synos_proto::llm::v1::{ChatMessage, ChatRequest};
    ChatRequest {
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: "Hello?".to_owned(),
        }],
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn a_provider_outage_is_cooled_in_the_router_and_is_survival_mode() {
    let (_remote, sandbox) = failing_provider("").await;
    let _router = sandbox.start("llm-router").await;
    let _doctor = sandbox.start("doctor").await;
    let mut doctor = doctor(&sandbox).await;
    all_serving(&mut doctor, Duration::from_secs(5)).await;
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut router = RouterClient::new(channel(&sandbox.socket("llm-router")).await);
    let refused = router.chat(hello()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());

    let opened = next_event(&mut events, Duration::from_secs(3)).await;
    assert_eq!(opened.kind(), IncidentEventKind::Opened);
    let incident = opened.incident.unwrap();
    assert_eq!(incident.check, "provider:remote");
    // The doctor's repair: cooled for its 300 s, not the router's own 5 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    let acted = loop {
        let listed = doctor
            .list_incidents(ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .incidents;
        if let Some(found) = listed.into_iter().find(|found| !found.actions.is_empty()) {
            break found;
        }
        assert!(Instant::now() < deadline, "no action recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // No policy daemon here to audit it, and the record says so.
    assert!(
        acted.actions[0].contains(
            "told the router to cool remote for 300 s (unaudited: the policy daemon was unreachable"
        ),
        "{:?}",
        acted.actions
    );
    let remote_state = router_provider(&mut router, "remote").await;
    assert_eq!(remote_state.state(), ProviderState::CoolingDown);
    let remaining = remote_state.cooldown_remaining.unwrap().seconds;
    assert!(remaining > 200, "cooled for {remaining} s only");

    let report = current_report(&mut doctor).await;
    assert_eq!(report.state(), OverallState::Survival);
    assert_eq!(
        report.survival_reasons,
        ["every remote LLM provider is down (1): only the local model answers"]
    );
    let (code, stdout, _) = sandbox.synosctl(&["doctor", "report"]).await;
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with("state: survival\nsurvival: every remote LLM provider is down"),
        "{stdout}"
    );
    // synosctl status says it too (and fails: three daemons are not running here).
    let (code, stdout, _) = sandbox.synosctl(&["status"]).await;
    assert_eq!(code, 1);
    assert!(
        stdout.contains("SURVIVAL MODE: every remote LLM provider is down (1)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_repair_that_policy_forbids_is_recorded_and_not_carried_out() {
    let (_remote, sandbox) = failing_provider("").await;
    shipped_policies_and(
        &sandbox,
        "50-no-cooling.cedar",
        "@id(\"no-cooling\")\nforbid (principal, action == Action::\"doctor.repair\", \
         resource == System::\"cool-provider:remote\");\n",
    );
    let _policy = sandbox.start("policy").await;
    let _router = sandbox.start("llm-router").await;
    let _doctor = sandbox.start("doctor").await;
    let mut doctor = doctor(&sandbox).await;
    all_serving(&mut doctor, Duration::from_secs(5)).await;
    let mut router = RouterClient::new(channel(&sandbox.socket("llm-router")).await);
    let refused = router.chat(hello()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    let deadline = Instant::now() + Duration::from_secs(5);
    let acted = loop {
        let listed = doctor
            .list_incidents(ListIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .incidents;
        if let Some(found) = listed.into_iter().find(|found| !found.actions.is_empty()) {
            break found;
        }
        assert!(Instant::now() < deadline, "no action recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(acted.check, "provider:remote");
    assert!(
        acted.actions[0].ends_with(
            "did not cool remote: policy does not allow Service::\"synos-doctor\" to \
             cool-provider remote (no-cooling)"
        ),
        "{:?}",
        acted.actions
    );
    // Only the router's own short cool, never the doctor's 300 s.
    let remote = router_provider(&mut router, "remote").await;
    if remote.state() == ProviderState::CoolingDown {
        let remaining = remote.cooldown_remaining.unwrap().seconds;
        assert!(remaining < 60, "cooled for {remaining} s");
    }
}

#[tokio::test]
async fn a_full_state_disk_loses_no_incident_and_does_not_stop_the_watch() {
    let sandbox = Sandbox::new();
    // The doctor's own state directory is the disk that fills: the incident about the full
    // disk is the one that cannot be written.
    let state = SmallFileSystem::mount(sandbox.state_dir(), "2m");
    sandbox.write_config(
        "doctor",
        &format!(
            "[watch]\ndaemons = []\ninterval_ms = 200\n\n[resources]\npaths = [\"{}\"]\n",
            state.0.display()
        ),
    );
    let doctor_daemon = sandbox.start("doctor").await;
    let mut doctor_client = doctor(&sandbox).await;
    let mut events = doctor_client
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    // Fill it to the last block: the write stops at ENOSPC, which is the point.
    let ballast = state.0.join("ballast");
    let _ = std::fs::write(&ballast, vec![0_u8; 4 * 1024 * 1024]);

    let opened = next_event(&mut events, Duration::from_secs(3)).await;
    assert_eq!(opened.kind(), IncidentEventKind::Opened);
    let incident = opened.incident.unwrap();
    assert_eq!(incident.check, format!("disk:{}", state.0.display()));
    // Still served while it cannot be written, and STATUS= says what is unwritten.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = status_line(&sandbox.socket("doctor")).await;
        if status.contains("not yet written") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "STATUS= does not say the incident is unwritten: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = current_report(&mut doctor_client).await;
    assert!(
        report
            .open_incidents
            .iter()
            .any(|open| open.id == incident.id),
        "{report:?}"
    );

    // Space returns: the incident recovers, and everything is written.
    std::fs::remove_file(&ballast).unwrap();
    let recovered = next_event(&mut events, Duration::from_secs(3)).await;
    assert_eq!(recovered.kind(), IncidentEventKind::Recovered);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = status_line(&sandbox.socket("doctor")).await;
        if !status.contains("not yet written") {
            break;
        }
        assert!(Instant::now() < deadline, "still unwritten: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_doctor_daemon, kept) = restart_doctor(&sandbox, doctor_daemon).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0].id.as_str(), kept[0].state()),
        (incident.id.as_str(), IncidentState::Recovered)
    );
}

/// Waits up to `within` for `kind` on the doctor's incident stream, skipping other events.
async fn event_of_kind(
    events: &mut Streaming<IncidentEvent>,
    kind: IncidentEventKind,
    within: Duration,
) -> IncidentEvent {
    let deadline = Instant::now() + within;
    loop {
        let event = next_event(events, deadline.saturating_duration_since(Instant::now())).await;
        if event.kind() == kind {
            return event;
        }
    }
}

/// The doctor's pending actions as `synosctl doctor pending --json` prints them.
async fn pending_json(sandbox: &Sandbox, all: bool) -> Vec<serde_json::Value> {
    let mut arguments = vec!["doctor", "pending", "--json"];
    if all {
        arguments.push("--all");
    }
    let (code, stdout, stderr) = sandbox.synosctl(&arguments).await;
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// A provider that fails, is cooled, recovers when the cool ends, and fails again (the cool
/// did not help): its incident's reopening.
async fn fail_again(
    router: &mut RouterClient<Channel>,
    events: &mut Streaming<IncidentEvent>,
) -> IncidentEvent {
    let refused = router.chat(hello()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    event_of_kind(events, IncidentEventKind::Recovered, Duration::from_secs(5)).await;
    let refused = router.chat(hello()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    event_of_kind(events, IncidentEventKind::Reopened, Duration::from_secs(5)).await
}

#[tokio::test]
async fn a_provider_failing_again_is_proposed_for_draining_and_an_operator_decides() {
    use synos_proto::policy::v1::QueryAuditRequest;
    use synos_proto::policy::v1::policy_client::PolicyClient;
    // Cooled for a second only, so the provider recovers and can fail again.
    let (_remote, sandbox) = failing_provider("\n[repairs]\ncool_for_s = 1\n").await;
    // The shipped policies, and a site rule that nobody may approve draining: a refused
    // approval must leave the action pending.
    shipped_policies_and(
        &sandbox,
        "50-no-draining.cedar",
        "@id(\"no-draining\")\nforbid (principal, action == Action::\"doctor.approve\", \
         resource == System::\"drain-provider\");\n",
    );
    let mut policy = sandbox.start("policy").await;
    let _router = sandbox.start("llm-router").await;
    let _doctor = sandbox.start("doctor").await;
    let mut doctor = doctor(&sandbox).await;
    all_serving(&mut doctor, Duration::from_secs(5)).await;
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut router = RouterClient::new(channel(&sandbox.socket("llm-router")).await);
    let reopened = fail_again(&mut router, &mut events).await.incident.unwrap();
    assert_eq!(reopened.check, "provider:remote");
    let proposed = loop {
        let pending = pending_json(&sandbox, false).await;
        if let Some(first) = pending.into_iter().next() {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&proposed["action"], &proposed["target"], &proposed["state"]),
        (
            &"drain-provider".into(),
            &"remote".into(),
            &"pending".into()
        )
    );
    assert_eq!(proposed["incident"], reopened.id.as_str());
    let first_id = proposed["id"].as_str().unwrap().to_owned();

    let (code, _, stderr) = sandbox.synosctl(&["doctor", "approve", &first_id]).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("User::\"root\" may not doctor.approve:drain-provider"),
        "{stderr}"
    );
    assert_eq!(pending_json(&sandbox, false).await[0]["state"], "pending");

    // Denied, with policy's word (and audit): nothing happens to the provider.
    let (code, stdout, stderr) = sandbox
        .synosctl(&[
            "doctor",
            "deny",
            &first_id,
            "--reason",
            "the network is being moved",
        ])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "drain-provider remote: denied: the network is being moved"
    );
    let (code, _, stderr) = sandbox.synosctl(&["doctor", "approve", &first_id]).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("already decided: denied by User::\"root\""),
        "{stderr}"
    );
    let (code, _, stderr) = sandbox.synosctl(&["doctor", "approve", "no-such-id"]).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no pending action \"no-such-id\""),
        "{stderr}"
    );
    assert_ne!(
        router_provider(&mut router, "remote").await.state(),
        ProviderState::Drained
    );
    let mut policy_client = PolicyClient::new(channel(&sandbox.socket("policy")).await);
    let records = policy_client
        .query_audit(QueryAuditRequest {
            limit: 100,
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    // The doctor's own cooling was authorized and audited as the doctor, allowed by the
    // shipped policy.
    let repairs: Vec<(&str, &str, &str)> = records
        .iter()
        .filter(|record| record.action == "doctor.repair")
        .map(|record| {
            (
                record.principal.as_str(),
                record.resource.as_str(),
                record.outcome.as_str(),
            )
        })
        .collect();
    assert!(!repairs.is_empty(), "{records:?}");
    assert!(
        repairs.iter().all(|repair| *repair
            == (
                "Service::\"synos-doctor\"",
                "System::\"cool-provider:remote\"",
                "allow"
            )),
        "{repairs:?}"
    );
    let audited: Vec<(String, String, String)> = records
        .into_iter()
        .filter(|record| {
            record.action.starts_with("doctor.approve") || record.action.starts_with("doctor.deny")
        })
        .map(|record| (record.principal, record.action, record.outcome))
        .collect();
    assert_eq!(
        audited,
        [
            (
                "User::\"root\"".to_owned(),
                "doctor.approve:drain-provider".to_owned(),
                "deny".to_owned()
            ),
            (
                "User::\"root\"".to_owned(),
                "doctor.deny:drain-provider".to_owned(),
                "allow".to_owned()
            )
        ]
    );

    // Again, and approved by root while policy is down: carried out, and said to be unaudited.
    policy.signal(Signal::SIGTERM);
    policy.wait_exit(Duration::from_secs(10)).await.unwrap();
    fail_again(&mut router, &mut events).await;
    let second = loop {
        let pending = pending_json(&sandbox, false).await;
        if let Some(first) = pending.into_iter().next() {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id);
    let (code, stdout, stderr) = sandbox.synosctl(&["doctor", "approve", &second_id]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("drain-provider remote: told the router to drain remote")
            && stdout.contains("unaudited: the policy daemon was unreachable"),
        "{stdout}"
    );
    assert_eq!(
        router_provider(&mut router, "remote").await.state(),
        ProviderState::Drained
    );
    assert!(pending_json(&sandbox, false).await.is_empty());
    let decided = pending_json(&sandbox, true).await;
    let states: Vec<(&str, &str)> = decided
        .iter()
        .map(|action| {
            (
                action["state"].as_str().unwrap(),
                action["decided_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("denied", "User::\"root\""), ("done", "User::\"root\"")]
    );
    let incident = doctor
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents
        .into_iter()
        .find(|incident| incident.id == reopened.id)
        .unwrap();
    assert!(
        incident
            .actions
            .iter()
            .any(|line| line.contains("drain provider remote approved by User::\"root\"")),
        "{:?}",
        incident.actions
    );

    // The operator puts it back with synosctl once the network is fixed.
    let (code, stdout, stderr) = sandbox
        .synosctl(&["llm", "provider", "restore", "remote"])
        .await;
    assert_eq!(
        (code, stdout.as_str()),
        (0, "remote: available\n"),
        "{stderr}"
    );
    assert_eq!(
        router_provider(&mut router, "remote").await.state(),
        ProviderState::Available
    );
    let (code, stdout, stderr) = sandbox
        .synosctl(&[
            "llm", "provider", "cool", "remote", "--for", "90s", "--json",
        ])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let cooled: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(cooled["state"], "cooling_down", "{cooled}");
    assert!(
        cooled["cooldown_remaining_ms"].as_u64().unwrap() > 85_000,
        "{cooled}"
    );
    let (code, _, stderr) = sandbox
        .synosctl(&["llm", "provider", "drain", "no-such-provider"])
        .await;
    assert_eq!(
        (code, stderr.trim()),
        (
            1,
            "synos-llm-router: not found: no provider \"no-such-provider\""
        )
    );
    let (code, _, stderr) = sandbox
        .synosctl(&["llm", "provider", "cool", "remote", "--for", "soon"])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("e.g. 30d"), "{stderr}");
}

#[tokio::test]
async fn one_scrape_target_serves_the_doctors_and_every_reachable_daemons_metrics() {
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "doctor",
        "[watch]\ndaemons = [\"memory\", \"hwaccel\"]\ninterval_ms = 200\n",
    );
    let _memory = sandbox.start("memory").await;
    let _doctor = sandbox.start("doctor").await;
    let base = synos_integration_tests::http_listener(&sandbox.socket("doctor"))
        .await
        .expect("the doctor lists its metrics endpoint");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    // hwaccel is not running: its incident opens, and its metrics are missing from the scrape.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
        );
        let text = response.text().await.unwrap();
        if text.contains("synos_doctor_open_incidents 1\n") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for expected in [
        "synos_doctor_scrape_up{daemon=\"synos-memory\"} 1\n",
        "synos_doctor_scrape_up{daemon=\"synos-hwaccel\"} 0\n",
        "synos_doctor_check_failing{check=\"daemon:synos-hwaccel\"} 1\n",
        "synos_doctor_check_failing{check=\"daemon:synos-memory\"} 0\n",
        "synos_doctor_survival_mode 0\n",
        "# TYPE synos_memory_",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let missing = reqwest::get(format!("{base}/nothing")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_lower_hwaccel_tier_is_an_incident_until_the_tier_is_back() {
    let sandbox = Sandbox::new();
    // Thresholds that make any machine full, then minimal: the tier is decided when hwaccel
    // starts, so a machine that loses memory shows as a restart with a lower tier.
    let full = "[tiers]\nminimal_below_bytes = 1\nfull_from_bytes = 1\nfull_min_cpus = 1\n";
    let minimal = "[tiers]\nminimal_below_bytes = 1152921504606846976\n\
                   full_from_bytes = 1152921504606846976\n";
    sandbox.write_config("hwaccel", full);
    sandbox.write_config(
        "doctor",
        "[watch]\ndaemons = [\"hwaccel\"]\ninterval_ms = 200\n",
    );
    let mut hwaccel = sandbox.start("hwaccel").await;
    let _doctor = sandbox.start("doctor").await;
    let mut doctor = doctor(&sandbox).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = current_report(&mut doctor).await;
        let tier = report
            .checks
            .iter()
            .find(|check| check.name == "hwaccel:tier");
        if tier.is_some_and(|tier| tier.consecutive_successes > 0) {
            assert_eq!(tier.unwrap().detail, "tier full");
            break;
        }
        assert!(Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let restart_hwaccel = async |running: &mut synos_integration_tests::Daemon, config| {
        running.signal(Signal::SIGTERM);
        running.wait_exit(Duration::from_secs(5)).await.unwrap();
        sandbox.write_config("hwaccel", config);
        *running = sandbox.start("hwaccel").await;
    };
    restart_hwaccel(&mut hwaccel, minimal).await;
    let opened = loop {
        let event = event_of_kind(
            &mut events,
            IncidentEventKind::Opened,
            Duration::from_secs(5),
        )
        .await
        .incident
        .unwrap();
        if event.check == "hwaccel:tier" {
            break event;
        }
    };
    assert!(
        opened.evidence[0].contains("tier minimal, down from full: "),
        "{:?}",
        opened.evidence
    );
    restart_hwaccel(&mut hwaccel, full).await;
    loop {
        let event = event_of_kind(
            &mut events,
            IncidentEventKind::Recovered,
            Duration::from_secs(5),
        )
        .await
        .incident
        .unwrap();
        if event.check == "hwaccel:tier" {
            assert_eq!(event.id, opened.id);
            break;
        }
    }
}
