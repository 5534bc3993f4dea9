#!/usr/bin/env bash
# Installs what building and testing SynOS needs beyond the Rust toolchain, from Debian's
# archive: systemd-socket-activate (package systemd) for the socket-activation tests.
# Installs nothing that is already there; needs root (or sudo) only when it must install.
source "$(dirname "$0")/lib.sh"

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

declare -A needed=(
  [/usr/bin/systemd-socket-activate]=systemd
)
missing=()
for file in "${!needed[@]}"; do
  [ -e "$file" ] || missing+=("${needed[$file]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

say "installing Debian packages: ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
  sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
