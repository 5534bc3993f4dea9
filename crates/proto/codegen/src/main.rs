//! Regenerates the checked-in Rust code and descriptor set from `proto/` (pure Rust, no `protoc`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use prost::Message as _;

/// Every schema file, relative to the workspace's `proto/` folder.
const SCHEMAS: &[&str] = &[
    "synos/admin/v1/admin.proto",
    "synos/llm/v1/router.proto",
    "synos/memory/v1/memory.proto",
    "synos/hwaccel/v1/hwaccel.proto",
    "synos/policy/v1/policy.proto",
    "synos/doctor/v1/doctor.proto",
];

fn main() -> ExitCode {
    let check_only = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("synos-proto-codegen: unknown argument {other:?} (usage: [--check])");
            return ExitCode::from(2);
        }
    };
    match run(check_only) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("synos-proto-codegen: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Generates into a scratch folder, then either compares with or replaces the checked-in files.
/// Returns whether the checked-in files are (now) up to date.
fn run(check_only: bool) -> Result<bool, Box<dyn std::error::Error>> {
    // At run time, from `cargo run`: checkouts sharing a build cache share this binary, so a
    // path baked in at compile time may name another checkout.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..");
    let proto_root = crate_dir.join("../../proto");
    let checked_in = crate_dir.join("src/generated");
    let scratch = tempdir(&crate_dir)?;

    let descriptors = protox::compile(SCHEMAS, [&proto_root])?;
    std::fs::write(
        scratch.join("descriptor_set.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .out_dir(&scratch)
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;

    let drift = differing_files(&scratch, &checked_in)?;
    if check_only {
        std::fs::remove_dir_all(&scratch)?;
        if drift.is_empty() {
            return Ok(true);
        }
        eprintln!(
            "synos-proto-codegen: generated code is out of date with proto/ ({}); \
             run scripts/regenerate-proto.sh and commit the result",
            drift.join(", ")
        );
        return Ok(false);
    }
    if checked_in.exists() {
        std::fs::remove_dir_all(&checked_in)?;
    }
    std::fs::rename(&scratch, &checked_in)?;
    for file in &drift {
        eprintln!("synos-proto-codegen: updated {file}");
    }
    Ok(true)
}

fn tempdir(crate_dir: &Path) -> std::io::Result<PathBuf> {
    let path = crate_dir.join(format!("src/.generated-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// Names of files that differ between, or exist in only one of, the two folders.
fn differing_files(fresh: &Path, existing: &Path) -> std::io::Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for dir in [fresh, existing] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries {
                names.insert(entry?.file_name().to_string_lossy().into_owned());
            }
        }
    }
    Ok(names
        .into_iter()
        .filter(|name| {
            std::fs::read(fresh.join(name)).ok() != std::fs::read(existing.join(name)).ok()
        })
        .collect())
}
