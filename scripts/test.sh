#!/usr/bin/env bash
# The whole test suite: formatting, lints, generated-code drift, unit and system tests, then the
# packages (lintian) and the packaging system test on a booted Debian (needs root; an
# unprivileged developer can set SYNOS_SKIP_PACKAGING_TEST=1 and says so when reporting).
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

if [ "${SYNOS_SKIP_PACKAGING_TEST:-}" = 1 ]; then
  say "packaging system test SKIPPED (SYNOS_SKIP_PACKAGING_TEST=1)"
  exit 0
fi
say "packages and the system test on a booted Debian"
scripts/system-test.sh
