#!/usr/bin/env bash
# Installs what building and testing SynOS needs beyond the Rust toolchain, from Debian's
# archive: a C toolchain for linking (rustc links through cc), and systemd-socket-activate
# (package systemd) for the socket-activation tests.
# Installs nothing that is already there; needs root (or sudo) only when it must install.
source "$(dirname "$0")/lib.sh"

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

# Each program we need, and the Debian package that provides it.
declare -A needed=(
  [cc]=gcc
  [systemd-socket-activate]=systemd
)
missing=()
for program in "${!needed[@]}"; do
  command -v "$program" >/dev/null || [ -x "/usr/bin/$program" ] || missing+=("${needed[$program]}")
done
if ! [ -e /usr/include/stdio.h ]; then
  missing+=(libc6-dev)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

say "installing Debian packages: ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
  sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
