# Shared by the scripts in this folder: strict mode, messages, and the build cache location.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# Builds go to a cache outside the clone, so a fresh clone (CI's) reuses earlier builds.
# An empty cache only costs time. Set CARGO_TARGET_DIR to choose another place.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/synos/target}"

if [ -t 2 ]; then
  say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
  say() { printf '==> %s\n' "$*" >&2; }
fi
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Where development runs and tests find the shipped models (what /usr/share/synos/models is
# for the packages); scripts/fetch-models.sh fills it.
model_directory() { printf '%s\n' "${SYNOS_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/synos/models}"; }

# The Debian mirror this machine's apt uses, and its security mirror: the only ones these
# machines reach (deb.debian.org's defaults otherwise).
debian_mirror() {
  local found
  found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')" || true
  printf '%s\n' "${found:-http://deb.debian.org/debian}"
}
debian_security_mirror() {
  local found
  found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian-security/?( |$)' | head -n 1 | tr -d ' ')" || true
  printf '%s\n' "${found:-$(debian_mirror | sed 's|/debian/\{0,1\}$|/debian-security|')}"
}

# packages_into DIR: the packages and their local repository in DIR, built by
# scripts/build-debs.sh, or copied from $SYNOS_DEBS when a caller built them already (test.sh
# builds once for the packaging test and the ISO).
packages_into() {
  local directory=$1
  if [ -n "${SYNOS_DEBS:-}" ]; then
    [ -s "$SYNOS_DEBS/Packages" ] || die "SYNOS_DEBS=$SYNOS_DEBS holds no repository from scripts/build-debs.sh"
    say "packages from $SYNOS_DEBS"
    rm -rf "$directory"
    mkdir -p "$directory"
    cp "$SYNOS_DEBS"/* "$directory/"
  else
    scripts/build-debs.sh "$directory"
  fi
}
