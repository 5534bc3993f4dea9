#!/usr/bin/env bash
# The whole test suite: formatting, lints, generated-code drift, unit and system tests, then the
# packages (lintian) and the packaging system test on a booted Debian (needs root; an
# unprivileged developer can set SYNOS_SKIP_PACKAGING_TEST=1 and says so when reporting).
source "$(dirname "$0")/lib.sh"

scripts/install-dependencies.sh

say "cargo fmt --check"
cargo fmt --all -- --check

# In the release profile, so build scripts (llama.cpp's C++ build above all) run once for the
# lints and the release build together.
say "cargo clippy (all targets, warnings are errors)"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

say "generated gRPC code matches proto/"
scripts/regenerate-proto.sh --check

# One optimised build for everything (see "How the build is arranged" in ARCHITECTURE.md): the
# system tests run the very binaries the packages ship, and the unit tests reuse their
# dependencies instead of compiling the whole tree a second time without optimisation.
say "building the release binaries (the packages ship them, the system tests run them)"
cargo build --release --locked --bins

say "cargo test --release"
cargo test --release --workspace --locked

if [ "${SYNOS_SKIP_PACKAGING_TEST:-}" = 1 ]; then
  say "packaging system test SKIPPED (SYNOS_SKIP_PACKAGING_TEST=1)"
  exit 0
fi
# The packages are built once, for the packaging test and the ISO alike.
packages="$(mktemp -d "${TMPDIR:-/tmp}/synos-debs.XXXXXX")"
trap 'rm -rf "$packages"' EXIT
scripts/build-debs.sh "$packages"
export SYNOS_DEBS="$packages"

say "packages and the system test on a booted Debian"
scripts/system-test.sh

if [ "${SYNOS_SKIP_ISO_TEST:-}" = 1 ]; then
  say "live ISO build and boot test SKIPPED (SYNOS_SKIP_ISO_TEST=1)"
  exit 0
fi
say "the live ISO: built with live-build, booted under qemu, its self-test passed"
iso_directory="$(mktemp -d "${TMPDIR:-/tmp}/synos-iso.XXXXXX")"
trap 'rm -rf "$iso_directory" "$packages"' EXIT
scripts/build-iso.sh "$iso_directory"
scripts/boot-iso.sh "$iso_directory"/synos-*-amd64.iso
