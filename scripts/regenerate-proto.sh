#!/usr/bin/env bash
# Regenerates crates/proto/src/generated from proto/ ("--check": fail if it is out of date).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p synos-proto-codegen -- "$@"
