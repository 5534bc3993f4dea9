//! Real local users for identity tests: accounts in group `synos` that run `synosctl` and raw
//! gRPC calls against a sandbox's daemons, so the daemons learn who calls from the kernel.
//!
//! Needs root (to create the accounts and switch to them with `runuser`); [`LocalUsers::new`]
//! says so and returns `None` elsewhere.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use crate::{Sandbox, output};

/// The group whose members may use the sockets, as on an installed system.
const GROUP: &str = "synos";

/// Accounts for identity tests, and copies of the client binaries they can run (root's cache is
/// not readable by them).
#[derive(Debug)]
pub struct LocalUsers {
    binaries: tempfile::TempDir,
}

/// One account.
#[derive(Debug, Clone)]
pub struct LocalUser {
    /// The login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
}

/// What a raw call answered: the reply payload, or the status code and message.
pub type CallResult = Result<Vec<u8>, (tonic::Code, String)>;

impl LocalUsers {
    /// `None` (and a note on stderr) unless this process is root.
    pub fn new() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: identity tests create local users and need root");
            return None;
        }
        let binaries = tempfile::Builder::new()
            .prefix("synos-test-binaries-")
            .tempdir()
            .unwrap();
        for name in ["synosctl", "synos-test-call"] {
            let copy = binaries.path().join(name);
            std::fs::copy(crate::binary(name), &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(binaries.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Self { binaries })
    }

    /// The account `name` in group `synos`, created (with the group) when absent.
    pub fn user(&self, name: &str) -> LocalUser {
        if group_id(GROUP).is_none() {
            run(Command::new("groupadd").args(["--system", GROUP]));
        }
        if nix::unistd::User::from_name(name).unwrap().is_none() {
            run(Command::new("useradd").args([
                "-M",
                "-N",
                "-G",
                GROUP,
                "-s",
                "/usr/sbin/nologin",
                name,
            ]));
        }
        let uid = nix::unistd::User::from_name(name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        LocalUser {
            name: name.to_owned(),
            uid,
        }
    }

    /// Lets members of `synos` reach `sandbox`'s sockets, as the packaged socket units do
    /// (mode 0660, group synos): the folders traversable, each socket's group `synos`.
    pub fn open_sockets(&self, sandbox: &Sandbox) {
        for folder in [sandbox.path(), &sandbox.runtime_dir()] {
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let group = group_id(GROUP).unwrap();
        for entry in std::fs::read_dir(sandbox.runtime_dir()).unwrap() {
            let path = entry.unwrap().path();
            if synos_common::identity::is_socket(&path) {
                nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(group))).unwrap();
            }
        }
    }

    /// `synosctl ARGUMENTS` as `user` against `sandbox`: (exit code, stdout, stderr).
    pub async fn synosctl(
        &self,
        sandbox: &Sandbox,
        user: &LocalUser,
        arguments: &[&str],
    ) -> (i32, String, String) {
        let mut command = self.as_user(user, "synosctl");
        command
            .env("SYNOS_RUNTIME_DIR", sandbox.runtime_dir())
            .args(arguments);
        tokio::task::spawn_blocking(move || output(&mut command))
            .await
            .unwrap()
    }

    /// A unary call of `method` with `request` as `user` to the daemon on `socket`.
    pub async fn call<Request: prost::Message>(
        &self,
        user: &LocalUser,
        socket: &Path,
        method: &str,
        request: &Request,
    ) -> CallResult {
        let body = base64::engine::general_purpose::STANDARD.encode(request.encode_to_vec());
        let mut command = self.as_user(user, "synos-test-call");
        command.arg(socket).arg(method).arg(body);
        let (code, stdout, stderr) = tokio::task::spawn_blocking(move || output(&mut command))
            .await
            .unwrap();
        assert_eq!(code, 0, "synos-test-call failed: {stderr}");
        let line = stdout.trim();
        if let Some(reply) = line.strip_prefix("OK ") {
            return Ok(base64::engine::general_purpose::STANDARD
                .decode(reply)
                .unwrap());
        }
        let (code, message) = line
            .strip_prefix("ERR ")
            .and_then(|rest| rest.split_once(' '))
            .unwrap_or_else(|| panic!("unexpected synos-test-call output: {line:?} {stderr}"));
        Err((
            tonic::Code::from(code.parse::<i32>().unwrap()),
            message.to_owned(),
        ))
    }

    /// A command running the copied binary `name` as `user`, through `runuser` (which sets the
    /// account's supplementary groups, synos among them).
    fn as_user(&self, user: &LocalUser, name: &str) -> Command {
        let mut command = Command::new("runuser");
        command
            .args(["-u", &user.name, "--"])
            .arg(self.binary(name))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/");
        command
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.binaries.path().join(name)
    }
}

fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .unwrap()
        .map(|group| group.gid.as_raw())
}

fn run(command: &mut Command) {
    let (code, stdout, stderr) = output(command);
    assert_eq!(code, 0, "{command:?}: {stdout}{stderr}");
}
