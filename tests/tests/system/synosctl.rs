//! `synosctl` against real daemons: status, per-daemon commands, exit codes and error lines.

use nix::sys::signal::Signal;
use synos_integration_tests::{ALL_DAEMONS, Sandbox, output};

fn synosctl(sandbox: &Sandbox, arguments: &[&str]) -> (i32, String, String) {
    output(sandbox.command("synosctl").args(arguments))
}

#[tokio::test]
async fn status_shows_five_serving_daemons_then_names_the_missing_one() {
    let sandbox = Sandbox::new();
    let mut daemons = sandbox.start_all().await;

    let (code, stdout, stderr) = synosctl(&sandbox, &["status", "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["all_serving"], true);
    let entries = status["daemons"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    for ((short_name, binary), entry) in ALL_DAEMONS.iter().zip(entries) {
        assert_eq!(entry["daemon"], *binary);
        assert_eq!(entry["health"], "SERVING");
        assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(entry["pid"], daemons[short_name].pid());
        assert_eq!(
            entry["socket"],
            sandbox.socket(short_name).display().to_string()
        );
        assert!(entry["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert!(entry["error"].is_null());
    }

    let (code, stdout, _) = synosctl(&sandbox, &["status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("DAEMON")
            && lines[0].contains("HEALTH")
            && lines[0].contains("UPTIME"),
        "{stdout}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.contains(" SERVING "))
            .count(),
        5,
        "{stdout}"
    );

    let mut memory = daemons.remove("memory").unwrap();
    memory.signal(Signal::SIGTERM);
    memory
        .wait_exit(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let (code, stdout, stderr) = synosctl(&sandbox, &["status", "--json"]);
    assert_eq!(code, 1, "must fail when a daemon is down");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["all_serving"], false);
    assert_eq!(status["daemons"][1]["health"], "NOT_RUNNING");
    let expected = format!(
        "synos-memory: not running (no socket at {})",
        sandbox.socket("memory").display()
    );
    assert_eq!(stderr.trim(), expected);
}

#[tokio::test]
async fn per_daemon_commands_print_answers_and_fail_clearly() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = synosctl(&sandbox, &["hw", "info"]);
    assert_eq!(code, 69);
    assert_eq!(
        stderr.trim(),
        format!(
            "synos-hwaccel: not running (no socket at {})",
            sandbox.socket("hwaccel").display()
        )
    );

    let _daemons = sandbox.start_all().await;
    let (code, stdout, stderr) = synosctl(&sandbox, &["hw", "info", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(info["memory"]["total_bytes"].as_u64().unwrap() > 0);

    let (code, stdout, _) = synosctl(&sandbox, &["memory", "stats"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("(writable)"), "{stdout}");

    // With no configuration the router has its built-in local model, not yet loaded.
    let (code, stdout, _) = synosctl(&sandbox, &["llm", "providers", "--json"]);
    assert_eq!(code, 0);
    let providers =
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["providers"].clone();
    assert_eq!(providers.as_array().unwrap().len(), 1, "{providers}");
    assert_eq!(providers[0]["name"], "local");
    assert_eq!(providers[0]["kind"], "local");
    assert_eq!(
        providers[0]["state_reason"],
        "model not loaded (loads on first use)"
    );

    let check = |principal: &str, action: &str| {
        synosctl(
            &sandbox,
            &[
                "policy",
                "check",
                "--principal",
                principal,
                "--action",
                action,
                "--resource",
                "Route::\"default\"",
            ],
        )
    };
    let (code, stdout, _) = check("User::\"alice\"", "llm.chat");
    assert_eq!((code, stdout.trim()), (0, "allow (by users-use-models)"));
    let (code, stdout, _) = synosctl(
        &sandbox,
        &[
            "policy",
            "check",
            "--principal",
            "User::\"alice\"",
            "--action",
            "memory.write:user:bob",
        ],
    );
    assert_eq!((code, stdout.trim()), (1, "deny (no policy permits this)"));
    // A login name is the user; anything else that is no principal is refused, saying why.
    let (code, stdout, _) = check("alice", "llm.chat");
    assert_eq!((code, stdout.trim()), (0, "allow (by users-use-models)"));
    let (code, _, stderr) = check("alice smith", "llm.chat");
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("synos-policy: invalid argument: principal: not a plain name"),
        "{stderr}"
    );

    let (code, stdout, _) = synosctl(&sandbox, &["doctor", "report", "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["state"], "ok");
    assert_eq!(report["daemons"].as_array().unwrap().len(), 4);
}

#[test]
fn usage_errors_exit_2_and_a_closed_pipe_is_not_a_crash() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = synosctl(&sandbox, &["status", "--bogus"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = synosctl(&sandbox, &["--timeout", "-1", "status"]);
    assert_eq!(code, 2, "{stderr}");

    // `synosctl status | true`: stdout closed before anything is written.
    let mut child = sandbox
        .command("synosctl")
        .arg("status")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.code().is_some(), "killed by a signal: {status}");
    assert_ne!(status.code(), Some(101), "panicked");
}

#[test]
fn synosctl_prints_completions_and_refuses_an_unknown_shell() {
    let sandbox = Sandbox::new();
    for (shell, marker) in [
        ("bash", "complete -F _synosctl"),
        ("zsh", "#compdef synosctl"),
        ("fish", "complete -c synosctl"),
    ] {
        let (code, stdout, stderr) = synosctl(&sandbox, &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(stdout.contains(marker), "{shell}: {stdout}");
        assert!(
            stdout.contains("recall"),
            "{shell}: subcommands at depth two"
        );
    }
    let (code, stdout, stderr) = synosctl(&sandbox, &["completions", "tcsh"]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
}

#[test]
fn synosctl_writes_a_manual_page_per_visible_subcommand_or_says_why_it_cannot() {
    let sandbox = Sandbox::new();
    let directory = sandbox.path().join("man");
    let (code, _, stderr) = synosctl(&sandbox, &["manual-pages", directory.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let mut names: Vec<String> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for expected in [
        "synosctl.1",
        "synosctl-status.1",
        "synosctl-memory-recall.1",
        "synosctl-llm-keys-create.1",
        "synosctl-completions.1",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected}: {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|name| name.contains("manual") || name.contains("help")),
        "hidden and help commands get no page: {names:?}"
    );

    // A file where the directory should be: one line naming it, exit 1, nothing panics.
    let in_the_way = sandbox.path().join("not-a-directory");
    std::fs::write(&in_the_way, "").unwrap();
    let (code, _, stderr) = synosctl(&sandbox, &["manual-pages", in_the_way.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("synosctl: cannot write {}/", in_the_way.display()))
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}
