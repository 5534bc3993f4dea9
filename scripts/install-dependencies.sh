#!/usr/bin/env bash
# Installs what building and testing SynOS needs beyond the Rust toolchain. Installs nothing
# that is already there; needs root (or sudo) only when it must install a Debian package.
#
#   scripts/install-dependencies.sh              build and test: a C toolchain for linking
#                                                (rustc links through cc) and
#                                                systemd-socket-activate (package systemd)
#   scripts/install-dependencies.sh packaging    also: cargo-deb (pinned), help2man, dpkg-dev,
#                                                lintian, and debootstrap + systemd-nspawn for
#                                                the system test
source "$(dirname "$0")/lib.sh"

# The cargo-deb release the packages are built and tested with.
CARGO_DEB_VERSION=3.8.0

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

# Each program we need, and the Debian package that provides it.
declare -A needed=(
  [cc]=gcc
  [systemd-socket-activate]=systemd
)
if [ "${1:-}" = packaging ]; then
  needed+=(
    [help2man]=help2man
    [dpkg-scanpackages]=dpkg-dev
    [lintian]=lintian
    [debootstrap]=debootstrap
    [systemd-nspawn]=systemd-container
  )
elif [ -n "${1:-}" ]; then
  die "usage: scripts/install-dependencies.sh [packaging]"
fi

missing=()
for program in "${!needed[@]}"; do
  command -v "$program" >/dev/null || [ -x "/usr/bin/$program" ] || [ -x "/usr/sbin/$program" ] ||
    missing+=("${needed[$program]}")
done
if ! [ -e /usr/include/stdio.h ]; then
  missing+=(libc6-dev)
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" = packaging ] && [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  say "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked --quiet --version "$CARGO_DEB_VERSION" cargo-deb
fi
