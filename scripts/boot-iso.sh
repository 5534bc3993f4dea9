#!/usr/bin/env bash
# Boots the SynOS live ISO headless under qemu (software emulation: KVM is not available on
# these machines), without network, on its serial console, with the live system's self-test
# switched on (synos.selftest on the kernel command line; iso/.../usr/lib/synos-live/selftest):
# all five services and sockets active, synosctl status all SERVING, synosctl ask answered
# offline by the local model, systemd-analyze security scores as in packaging, no failed unit.
# Prints the time from power-on to all services active; on any failure exits non-zero with the
# serial log's tail.
#
#   scripts/boot-iso.sh [ISO]     default: the newest dist/synos-*-amd64.iso
#   SYNOS_SERIAL_LOG=FILE         keep the serial console's whole output there
source "$(dirname "$0")/lib.sh"

iso="${1:-$(ls -t "$REPO_ROOT"/dist/synos-*-amd64.iso 2>/dev/null | head -n 1 || true)}"
[ -n "$iso" ] && [ -s "$iso" ] || die "no ISO${1:+ at $1}: build one with scripts/build-iso.sh"
for tool in qemu-system-x86_64 xorriso; do
  command -v "$tool" >/dev/null || die "$tool is missing: scripts/install-dependencies.sh iso installs it"
done
# Under software emulation everything is slow; these bound a hung boot, not a slow one.
BOOT_LIMIT_S="${SYNOS_BOOT_LIMIT_S:-1200}"

work="$(mktemp -d "${TMPDIR:-/tmp}/synos-boot-iso.XXXXXX")"
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  # SYNOS_SERIAL_LOG=FILE keeps the whole console.
  [ -n "${SYNOS_SERIAL_LOG:-}" ] && cp "$work/serial.log" "$SYNOS_SERIAL_LOG" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Booting the kernel and initrd directly skips the boot menu; the command line is the ISO's
# own (scripts/build-iso.sh --bootappend-live) with the serial console last and the self-test.
xorriso -osirrox on -indev "$iso" -extract /live/vmlinuz "$work/vmlinuz" \
  -extract /live/initrd.img "$work/initrd.img" >"$work/xorriso.log" 2>&1 ||
  { cat "$work/xorriso.log"; die "cannot read the kernel and initrd out of $iso"; }
serial="$work/serial.log"
touch "$serial"
say "booting $(basename "$iso") under qemu (TCG, 2 CPUs, 2 GiB, no network)"
started=$(date +%s.%N)
qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -display none -nic none \
  -serial "file:$serial" -monitor none -no-reboot \
  -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
  -append "boot=live components hostname=synos console=tty0 console=ttyS0,115200n8 synos.selftest" \
  -cdrom "$iso" >"$work/qemu.log" 2>&1 &
qemu_pid=$!

since_power_on() { awk -v s="$started" -v n="$(date +%s.%N)" 'BEGIN { printf "%.0f", n - s }'; }
fail() {
  echo "--- the serial console's last lines:" >&2
  tail -n 60 "$serial" >&2 || true
  cat "$work/qemu.log" >&2
  die "$*"
}
all_active="" login="" result=""
while :; do
  if [ -z "$all_active" ] && grep -aq "SYNOS-SELFTEST all five services active" "$serial"; then
    all_active="$(since_power_on)"
    say "all five services active ${all_active} s after power-on"
  fi
  if [ -z "$login" ] && grep -aq "synos login:" "$serial"; then
    login="$(since_power_on)"
    say "login prompt ${login} s after power-on"
  fi
  result="$(grep -aoE 'SYNOS-SELFTEST (PASSED|FAILED.*)' "$serial" | head -n 1 | tr -d '\r')" || true
  [ -n "$result" ] && break
  kill -0 "$qemu_pid" 2>/dev/null || fail "qemu stopped before the self-test ended"
  [ "$(since_power_on)" -lt "$BOOT_LIMIT_S" ] || fail "no self-test result within $BOOT_LIMIT_S s"
  sleep 1
done
grep -a "SYNOS-SELFTEST" "$serial" | tr -d '\r' | sed 's/^.*SYNOS-SELFTEST /  /'
for _ in $(seq 120); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
[ "$result" = "SYNOS-SELFTEST PASSED" ] || fail "the live system's self-test failed"
say "boot test passed: all services active ${all_active:-?} s after power-on, login prompt at ${login:-?} s, done at $(since_power_on) s"
