#!/usr/bin/env bash
# The whole test suite: formatting, lints, generated-code drift, unit and system tests.
source "$(dirname "$0")/lib.sh"

scripts/install-dependencies.sh

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "generated gRPC code matches proto/"
scripts/regenerate-proto.sh --check

say "building the binaries the system tests run"
cargo build --bins --locked

say "cargo test"
cargo test --workspace --locked
