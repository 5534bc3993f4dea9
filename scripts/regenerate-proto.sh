#!/usr/bin/env bash
# Regenerates crates/proto/src/generated from proto/ ("--check": fail if it is out of date).
set -euo pipefail
cd "$(dirname "$0")/.."
# --release: the generator shares its dependencies (prost, bytes…) with the release build that
# scripts/test.sh makes next, instead of building them once more unoptimised.
exec cargo run --release --locked --quiet -p synos-proto-codegen -- "$@"
