#!/usr/bin/env bash
# Installs what building and testing SynOS needs beyond the Rust toolchain. Installs nothing
# that is already there; needs root (or sudo) only when it must install a Debian package.
#
#   scripts/install-dependencies.sh              build and test: a C toolchain for linking
#                                                (rustc links through cc), g++, cmake and
#                                                libclang for llama.cpp (the router's
#                                                local model, built from its vendored source),
#                                                systemd-socket-activate (package systemd),
#                                                bubblewrap and prlimit (the policy daemon's
#                                                tool sandbox without systemd), and
#                                                Debian's python3 with a virtual environment of
#                                                the pinned official openai and grpcio clients,
#                                                which the tests run against the daemons
#   scripts/install-dependencies.sh packaging    also: cargo-deb (pinned), dpkg-dev,
#                                                lintian, and debootstrap + systemd-nspawn for
#                                                the system test
#   scripts/install-dependencies.sh iso          what packaging needs, and live-build,
#                                                xorriso and qemu for the live ISO
#   scripts/install-dependencies.sh benchmarks   also: llama.cpp's own server (the pinned
#                                                llama-cpp-python[server], built from source:
#                                                about 10 minutes) for the local model
#                                                benchmark's baseline
source "$(dirname "$0")/lib.sh"

# The cargo-deb release the packages are built and tested with.
CARGO_DEB_VERSION=3.8.0

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

# Each program we need, and the Debian package that provides it.
declare -A needed=(
  [cc]=gcc
  [c++]=g++
  [cmake]=cmake
  [systemd-socket-activate]=systemd
  [python3]=python3
  [bwrap]=bubblewrap
  [prlimit]=util-linux
)
if [ "${1:-}" = packaging ] || [ "${1:-}" = iso ]; then
  needed+=(
    [dpkg-scanpackages]=dpkg-dev
    [lintian]=lintian
    [debootstrap]=debootstrap
    [systemd-nspawn]=systemd-container
  )
fi
if [ "${1:-}" = iso ]; then
  # live-build makes the ISO; xorriso reads the kernel out of it and qemu boots it.
  needed+=(
    [lb]=live-build
    [xorriso]=xorriso
    [qemu-system-x86_64]=qemu-system-x86
  )
elif [ -n "${1:-}" ] && [ "$1" != packaging ] && [ "$1" != benchmarks ]; then
  die "usage: scripts/install-dependencies.sh [packaging|iso|benchmarks]"
fi

missing=()
for program in "${!needed[@]}"; do
  command -v "$program" >/dev/null || [ -x "/usr/bin/$program" ] || [ -x "/usr/sbin/$program" ] ||
    missing+=("${needed[$program]}")
done
if ! [ -e /usr/include/stdio.h ]; then
  missing+=(libc6-dev)
fi
# bindgen (llama.cpp's Rust bindings) loads libclang and needs clang's own headers.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null; then
  missing+=(libclang-dev)
fi
# Debian's python3, whatever else is first on PATH; venv needs ensurepip (python3-venv).
if ! [ -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
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

if { [ "${1:-}" = packaging ] || [ "${1:-}" = iso ]; } && [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  say "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked --quiet --version "$CARGO_DEB_VERSION" cargo-deb
fi

# The official openai and grpcio Python clients, pinned, for the compatibility tests.
python_environment="${XDG_CACHE_HOME:-$HOME/.cache}/synos/python"
requirements="$REPO_ROOT/tests/python/requirements.txt"
if ! [ -x "$python_environment/bin/python" ] ||
  ! cmp -s "$requirements" "$python_environment/requirements.txt"; then
  say "installing the pinned Python clients (openai, grpcio) into $python_environment"
  rm -rf "$python_environment"
  /usr/bin/python3 -m venv "$python_environment"
  "$python_environment/bin/pip" install --quiet --disable-pip-version-check --requirement "$requirements"
  cp "$requirements" "$python_environment/requirements.txt"
fi

# The baseline of the local model benchmark: llama.cpp's server, built for this CPU as pip
# builds it, in its own virtual environment.
LLAMA_CPP_PYTHON_VERSION=0.3.36
if [ "${1:-}" = benchmarks ]; then
  llama_environment="${XDG_CACHE_HOME:-$HOME/.cache}/synos/llama-cpp-server"
  if ! [ -x "$llama_environment/bin/python" ] ||
    [ "$(cat "$llama_environment/version" 2>/dev/null)" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
    say "building llama-cpp-python[server] $LLAMA_CPP_PYTHON_VERSION into $llama_environment (about 10 minutes)"
    rm -rf "$llama_environment"
    /usr/bin/python3 -m venv "$llama_environment"
    "$llama_environment/bin/pip" install --quiet --disable-pip-version-check \
      "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
    echo "$LLAMA_CPP_PYTHON_VERSION" >"$llama_environment/version"
  fi
fi

# The models the daemons ship with (the memory daemon's sentence-embedding model), which the
# tests and run-local.sh use from the cache as the packages install them.
scripts/fetch-models.sh
