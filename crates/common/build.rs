//! Records the git revision the binaries are built from, for `Admin.GetInfo` and `--version`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SYNOS_GIT_REVISION");
    // Packaging builds from a source tarball set the revision explicitly; a checkout asks git.
    let revision = std::env::var("SYNOS_GIT_REVISION")
        .ok()
        .filter(|revision| !revision.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SYNOS_GIT_REVISION={revision}");

    // Rebuild when HEAD moves. Only existing files are named: cargo treats a missing one as
    // always changed, which would rebuild every daemon on every build.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(reference);
        }
        for file in watched {
            let path = Path::new(&git_dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
