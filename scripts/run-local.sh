#!/usr/bin/env bash
# Builds SynOS and runs all five daemons on built-in defaults (no config, no network, no root)
# in a private directory, shows `synosctl status` and one answer from each daemon, asks one
# question (answered by the local model), then keeps them running until Ctrl-C. With --once (or
# without a terminal) it stops after showing.
source "$(dirname "$0")/lib.sh"

once=false
case "${1:-}" in
  --once) once=true ;;
  "") [ -t 0 ] || once=true ;;
  *) die "usage: scripts/run-local.sh [--once]" ;;
esac

scripts/install-dependencies.sh

say "building (release)"
cargo build --release --locked --bins
bin="$CARGO_TARGET_DIR/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/synos-local.XXXXXX")"
export SYNOS_RUNTIME_DIR="$work/run" SYNOS_STATE_DIR="$work/state" SYNOS_CONFIG_DIR="$work/etc"
# The shipped models, where scripts/fetch-models.sh put them (the packages use /usr/share/synos/models).
SYNOS_MODEL_DIR="$(model_directory)"
export SYNOS_MODEL_DIR
mkdir -p "$SYNOS_RUNTIME_DIR" "$SYNOS_STATE_DIR" "$SYNOS_CONFIG_DIR"

pids=()
stop() {
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
  rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

say "starting the five daemons in $work"
for daemon in llm-router memory hwaccel policy doctor; do
  "$bin/synos-$daemon" 2>"$work/$daemon.log" &
  pids+=($!)
done

synosctl() { "$bin/synosctl" "$@"; }
for _ in $(seq 100); do
  synosctl status >/dev/null 2>&1 && break
  sleep 0.1
done

say "synosctl status"
synosctl status || { tail -n 5 "$work"/*.log >&2; die "not every daemon is serving"; }
say "synosctl llm providers"
synosctl llm providers
say "synosctl hw info"
synosctl hw info
say "synosctl memory remember --scope user:alice --kind preference 'Alice takes her tea green, without sugar'"
synosctl memory remember --scope user:alice --kind preference "Alice takes her tea green, without sugar"
synosctl memory remember --scope user:alice "Alice's flight to Lisbon leaves Friday at 9:40"
say "synosctl memory recall --scope user:alice 'what does she like to drink'"
synosctl memory recall --scope user:alice "what does she like to drink"
say "synosctl memory stats"
synosctl memory stats
say "synosctl policy check --principal 'User::\"alice\"' --action llm.chat --resource 'Route::\"default\"'"
synosctl policy check --principal 'User::"alice"' --action llm.chat --resource 'Route::"default"'
say "synosctl doctor report"
synosctl doctor report
say "synosctl ask --user alice 'What is the capital of France?'"
synosctl ask --user alice --max-tokens 64 "What is the capital of France?"

if $once; then
  exit 0
fi
say "running; in another shell: SYNOS_RUNTIME_DIR=$SYNOS_RUNTIME_DIR $bin/synosctl status"
say "logs in $work/*.log; Ctrl-C stops everything"
wait
