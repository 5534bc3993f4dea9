//! Manual pages rendered from the clap definitions, so a page cannot disagree with its program.
//!
//! clap_mangen writes the sections clap knows (NAME, SYNOPSIS, DESCRIPTION, OPTIONS,
//! SUBCOMMANDS); this module adds what only SynOS knows: files, environment, signals, exit
//! statuses, how a stock gRPC client reaches the socket, and cross references.

use std::path::{Path, PathBuf};

use clap::Command;
use clap_mangen::Man;
use roff::{Inline, Roff, bold, italic, roman};

use crate::exit;
use crate::identity::{
    ALL_DAEMONS, CONFIG_DIR, DIRECTORY_VARIABLES, DaemonIdentity, Directories, MODEL_DIR,
    RUNTIME_DIR, STATE_DIR,
};

/// The manual these pages belong to, shown in each page's header.
const MANUAL: &str = "SynOS";

/// A rendered manual page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Its file name, e.g. `synos-memory.8` or `synosctl-memory-recall.1`.
    pub file_name: String,
    /// Its roff source.
    pub source: String,
}

impl Page {
    /// Writes the page into `directory` under its file name.
    pub fn write_to(&self, directory: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(directory)?;
        std::fs::write(directory.join(&self.file_name), &self.source)
    }
}

/// The page of a daemon, section 8: its options from `command`, then its files, environment,
/// signals (`applies_reloads`: whether SIGHUP applies a new configuration or only checks it),
/// exit statuses and how to reach its socket with stock gRPC clients.
pub fn daemon_page(command: &Command, identity: DaemonIdentity, applies_reloads: bool) -> Page {
    let short = identity.short_name;
    let binary = identity.binary;
    let mut extra = Roff::new();

    let installed = Directories::defaults();
    let shown = |path: PathBuf| path.display().to_string();
    section(&mut extra, "FILES");
    definition(
        &mut extra,
        vec![bold(shown(installed.config_file(short)))],
        &format!(
            "The configuration (a conffile; every key is shown there, commented out). Without \
             it {binary} runs on built-in defaults. The directory is ${} when set.",
            CONFIG_DIR.name
        ),
    );
    definition(
        &mut extra,
        vec![bold(shown(installed.state_directory(short)))],
        &format!(
            "State that survives restarts. Under systemd it is the unit's StateDirectory=; \
             otherwise ${}/{short} when that is set.",
            STATE_DIR.name
        ),
    );
    definition(
        &mut extra,
        vec![bold(shown(installed.socket_path(short)))],
        &format!(
            "The gRPC socket, mode 0660, owned by root and group synos. Under systemd, \
             {binary}.socket creates it and starts the service on the first connection; \
             otherwise the daemon binds it itself, in ${} when that is set.",
            RUNTIME_DIR.name
        ),
    );
    definition(
        &mut extra,
        vec![bold(shown(installed.models))],
        &format!(
            "Models shipped by the synos-model-* packages (${} when set).",
            MODEL_DIR.name
        ),
    );

    section(&mut extra, "ENVIRONMENT");
    for variable in DIRECTORY_VARIABLES {
        let meaning = format!(
            "Directory of {}, instead of {}.",
            variable.holds, variable.default
        );
        definition(&mut extra, vec![bold(variable.name)], &meaning);
    }
    definition(
        &mut extra,
        vec![bold("RUST_LOG")],
        "A log filter such as info or debug,h2=info; it wins over the log.filter key.",
    );
    let prefix = identity.env_prefix();
    definition(
        &mut extra,
        vec![bold(format!("{prefix}SECTION__KEY"))],
        &format!(
            "Overrides one configuration key, e.g. {prefix}SERVER__DRAIN_TIMEOUT_MS=1000 for \
             server.drain_timeout_ms; between the file and --set in precedence."
        ),
    );
    definition(
        &mut extra,
        vec![bold(
            "NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS, JOURNAL_STREAM",
        )],
        "Set by systemd: readiness and STATUS= notifications, the watchdog, the socket \
         passed by socket activation, and structured logging to the journal.",
    );

    section(&mut extra, "SIGNALS");
    definition(
        &mut extra,
        vec![bold("SIGTERM"), roman(", "), bold("SIGINT")],
        "Stop accepting calls, finish the ones in flight (up to server.drain_timeout_ms) and \
         exit 0. A second signal exits at once with status 1.",
    );
    definition(
        &mut extra,
        vec![bold("SIGHUP")],
        if applies_reloads {
            "Read and validate the configuration again and apply it without a restart. An \
             invalid one is logged and the running configuration is kept."
        } else {
            "Read and validate the configuration again and log the result; a valid change \
             applies on the next restart. An invalid one is logged and never applied."
        },
    );

    section(&mut extra, "EXIT STATUS");
    for (status, meaning) in [
        (
            exit::OK,
            "Stopped cleanly, or --check-config found the configuration valid.",
        ),
        (
            exit::FAILURE,
            "Stopped by a second stop signal before the drain ended.",
        ),
        (exit::USAGE, "Bad command-line usage."),
        (
            exit::UNAVAILABLE,
            "Another instance already serves the socket.",
        ),
        (exit::SOFTWARE, "An internal error (a bug in SynOS)."),
        (
            exit::CANT_CREATE,
            "A listener could not be created: permissions, a file that is not a socket in the \
             way, a port in use.",
        ),
        (
            exit::CONFIG,
            "The configuration is invalid; the message names the file, the key and the reason. \
             The unit does not restart on it.",
        ),
    ] {
        definition(&mut extra, vec![bold(status.to_string())], meaning);
    }

    section(&mut extra, "GRPC CLIENTS");
    paragraph(
        &mut extra,
        "The socket serves the daemon's own API, grpc.health.v1.Health, server reflection \
         (v1 and v1alpha) and synos.admin.v1.Admin. synosctl(1) is the client for people. \
         Stock gRPC clients (grpcio, grpc-java, grpcurl) send the socket path as the \
         :authority of each call, which this server refuses with RST_STREAM PROTOCOL_ERROR; \
         tell them to send localhost instead:",
    );
    example(
        &mut extra,
        &format!("grpcurl -plaintext -unix -authority localhost /run/synos/{short}.sock list"),
    );
    example(
        &mut extra,
        &format!(
            "grpc.insecure_channel(\"unix:/run/synos/{short}.sock\", \
             options=[(\"grpc.default_authority\", \"localhost\")])"
        ),
    );
    paragraph(
        &mut extra,
        "grpc-go and tonic clients send localhost already and need nothing.",
    );

    let others: Vec<String> = ALL_DAEMONS
        .iter()
        .filter(|(_, other)| *other != binary)
        .map(|(_, other)| format!("{other}(8)"))
        .collect();
    see_also(
        &mut extra,
        &[
            "synosctl(1)".to_owned(),
            others.join(", "),
            format!("{binary}.service, {binary}.socket"),
            "systemd.socket(5), systemd-analyze(1)".to_owned(),
        ],
    );

    render(command, identity.version, "8", &extra)
}

/// The pages of a client with subcommands, section 1: one for `command` with `environment`
/// and `exit_statuses`, and one for each visible subcommand at any depth, named like git's
/// (`synosctl-memory-recall.1`), each pointing back to the top page.
pub fn client_pages(
    command: Command,
    environment: &[(&str, &str)],
    exit_statuses: &[(u8, &str)],
) -> Vec<Page> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let top_name = command.get_name().to_owned();

    let mut top_extra = Roff::new();
    section(&mut top_extra, "ENVIRONMENT");
    for (name, meaning) in environment {
        definition(&mut top_extra, vec![bold(*name)], meaning);
    }
    section(&mut top_extra, "EXIT STATUS");
    for (status, meaning) in exit_statuses {
        definition(&mut top_extra, vec![bold(status.to_string())], meaning);
    }
    let daemons: Vec<String> = ALL_DAEMONS
        .iter()
        .map(|(_, binary)| format!("{binary}(8)"))
        .collect();
    see_also(&mut top_extra, &[daemons.join(", ")]);

    let version = command.get_version().unwrap_or_default().to_owned();
    let mut pages = vec![render(&command, &version, "1", &top_extra)];
    let mut below = Roff::new();
    see_also(&mut below, &[format!("{top_name}(1)")]);
    let mut pending: Vec<Command> = visible_subcommands(&command);
    while let Some(subcommand) = pending.pop() {
        pending.extend(visible_subcommands(&subcommand));
        pages.push(render(&subcommand, &version, "1", &below));
    }
    pages.sort_by(|left, right| left.file_name.cmp(&right.file_name));
    pages
}

fn visible_subcommands(command: &Command) -> Vec<Command> {
    command
        .get_subcommands()
        .filter(|subcommand| !subcommand.is_hide_set())
        .cloned()
        .collect()
}

/// The page clap_mangen renders for `command` (of SynOS `version`), less its VERSION and
/// AUTHORS sections (the header carries the version), with `extra` after the options and
/// subcommands. The date in the header is `$SOURCE_DATE_EPOCH`'s, so packages are
/// reproducible, else today's.
fn render(command: &Command, version: &str, section_number: &str, extra: &Roff) -> Page {
    let man = Man::new(command.clone())
        .section(section_number)
        .date(page_date())
        .manual(MANUAL)
        .source(format!("SynOS {version}"));
    let mut source = Vec::new();
    let written: std::io::Result<()> = (|| {
        man.render_title(&mut source)?;
        man.render_name_section(&mut source)?;
        man.render_synopsis_section(&mut source)?;
        man.render_description_section(&mut source)?;
        if command
            .get_arguments()
            .any(|argument| !argument.is_hide_set())
        {
            man.render_options_section(&mut source)?;
        }
        if command
            .get_subcommands()
            .any(|subcommand| !subcommand.is_hide_set())
        {
            man.render_subcommands_section(&mut source)?;
        }
        Ok(())
    })();
    debug_assert!(written.is_ok(), "writing into a Vec cannot fail");
    let mut source = String::from_utf8_lossy(&source).into_owned();
    // Each clap_mangen section starts with the same apostrophe-handling preamble; keep one.
    let preamble = Roff::new().render();
    let body = source.split_off(preamble.len().min(source.len()));
    source.push_str(&body.replace(&preamble, ""));
    source.push_str(&extra.to_roff());
    Page {
        file_name: man.get_filename(),
        source,
    }
}

/// `YYYY-MM-DD` of `$SOURCE_DATE_EPOCH` (what Debian's build tools set), else of now, in UTC.
fn page_date() -> String {
    let when = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map_or_else(std::time::SystemTime::now, |seconds| {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds)
        });
    let mut date = humantime::format_rfc3339_seconds(when).to_string();
    date.truncate("YYYY-MM-DD".len());
    date
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

/// A tagged paragraph: `term` in the margin, `meaning` indented below it.
fn definition(roff: &mut Roff, term: Vec<Inline>, meaning: &str) {
    roff.control("TP", []);
    roff.text(term);
    roff.text([roman(meaning)]);
}

fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.text([roman(text)]);
}

/// A command line shown verbatim, indented, without filling.
fn example(roff: &mut Roff, text: &str) {
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    roff.text([italic(text)]);
    roff.control("fi", []);
    roff.control("RE", []);
}

fn see_also(roff: &mut Roff, references: &[String]) {
    section(roff, "SEE ALSO");
    roff.text([roman(references.join(", "))]);
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn daemon_command() -> Command {
        Command::new("synos-memory")
            .version("1.2.3")
            .about("Long-term agent memory")
            .arg(
                Arg::new("check-config")
                    .long("check-config")
                    .action(ArgAction::SetTrue)
                    .help("Validate the configuration and exit"),
            )
            .arg(
                Arg::new("manual-page")
                    .long("manual-page")
                    .action(ArgAction::SetTrue)
                    .hide(true),
            )
    }

    const IDENTITY: DaemonIdentity = DaemonIdentity {
        short_name: "memory",
        binary: "synos-memory",
        version: "1.2.3",
    };

    #[test]
    fn a_daemon_page_has_its_options_files_environment_signals_and_exit_statuses() {
        let page = daemon_page(&daemon_command(), IDENTITY, false);
        assert_eq!(page.file_name, "synos-memory.8");
        let source = &page.source;
        assert!(source.starts_with(&Roff::new().render()), "{source}");
        assert_eq!(
            source.matches(".ds Aq").count(),
            2,
            "one preamble: {source}"
        );
        assert!(
            source.contains(&format!(
                ".TH synos-memory 8 {} \"SynOS 1.2.3\" SynOS\n",
                page_date()
            )),
            "{source}"
        );
        for heading in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "FILES",
            "ENVIRONMENT",
            "SIGNALS",
            "\"EXIT STATUS\"",
            "\"GRPC CLIENTS\"",
            "\"SEE ALSO\"",
        ] {
            assert!(
                source.contains(&format!(".SH {heading}\n")),
                "{heading}: {source}"
            );
        }
        assert!(source.contains("check\\-config"), "{source}");
        assert!(
            !source.contains("manual\\-page"),
            "hidden options stay hidden"
        );
        for path in [
            "/etc/synos/memory.toml",
            "/var/lib/synos/memory",
            "/run/synos/memory.sock",
            "/usr/share/synos/models",
        ] {
            assert!(
                source.contains(&format!("\\fB{path}\\fR")),
                "{path}: {source}"
            );
        }
        assert!(source.contains("Directory of the sockets, instead of /run/synos."));
        assert!(source.contains("SYNOS_MEMORY_SECTION__KEY"));
        assert!(source.contains("\\fB78\\fR"), "{source}");
        assert!(source.contains("\\-authority localhost /run/synos/memory.sock"));
        assert!(source.contains("grpc.default_authority"));
        assert!(source.contains("applies on the next restart"), "{source}");
        assert!(source.contains("synos\\-policy(8)") && !source.contains("synos\\-memory(8)"));
    }

    #[test]
    fn reloading_daemons_say_that_sighup_applies_the_configuration() {
        let page = daemon_page(&daemon_command(), IDENTITY, true);
        assert!(page.source.contains("apply it without a restart"));
    }

    #[test]
    fn a_client_gets_a_page_for_every_visible_subcommand() {
        let command = Command::new("synosctl")
            .version("1.2.3")
            .about("Talks to the daemons")
            .subcommand(
                Command::new("memory").about("Long-term memory").subcommand(
                    Command::new("recall")
                        .about("Find memories")
                        .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
                ),
            )
            .subcommand(Command::new("manual").hide(true));
        let pages = client_pages(
            command,
            &[("SYNOS_RUNTIME_DIR", "Where the sockets are.")],
            &[(0, "Success.")],
        );
        let names: Vec<&str> = pages.iter().map(|page| page.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "synosctl-memory-recall.1",
                "synosctl-memory.1",
                "synosctl.1"
            ]
        );
        let recall = &pages[0].source;
        assert!(recall.contains("\\-\\-json"), "{recall}");
        assert!(recall.contains("synosctl(1)"), "{recall}");
        let top = &pages[2].source;
        assert!(top.contains("SYNOS_RUNTIME_DIR") && top.contains(".SH \"EXIT STATUS\""));
        assert!(top.contains("synosctl\\-memory(1)"), "{top}");
    }
}
