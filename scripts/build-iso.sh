#!/usr/bin/env bash
# Builds the SynOS live ISO: Debian bookworm amd64, hybrid (CD or USB stick), no desktop,
# serial console, hostname synos, with every SynOS package installed from the packages this
# tree builds and all five services enabled. Writes dist/synos-<version>-amd64.iso (or into
# $1) and its .sha256. Needs root (live-build runs debootstrap and chroots).
#
# live-build's work tree and its caches (the bootstrap, downloaded packages) stay in
# ${XDG_CACHE_HOME:-~/.cache}/synos/live-build between runs; deleting it only costs time.
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root: live-build needs it (debootstrap, chroot, mounts)"
out="${1:-$REPO_ROOT/dist}"
out="$(mkdir -p "$out" && cd "$out" && pwd)"
scripts/install-dependencies.sh iso
for tool in lb xorriso; do
  command -v "$tool" >/dev/null || die "$tool is missing after installing the dependencies"
done
started=$(date +%s)

version="$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"synos-common","version":"\([^"]*\)".*/\1/p')"
[ -n "$version" ] || die "cannot read the workspace version"
build="${XDG_CACHE_HOME:-$HOME/.cache}/synos/live-build"
mkdir -p "$build"

packages_into "$build/debs"

# Every mirror, the security ones included, is the one this machine's apt uses: live-build's
# defaults are not reachable from every network (ours among them).
mirror="$(debian_mirror)"
security="$(debian_security_mirror)"
say "live-build config (mirror $mirror, security $security)"
cd "$build"
lb clean >/dev/null 2>&1 || true
rm -rf config auto
lb config \
  --distribution bookworm --archive-areas main --architecture amd64 \
  --mirror-bootstrap "$mirror" --mirror-chroot "$mirror" --mirror-binary "$mirror" \
  --mirror-chroot-security "$security" --mirror-binary-security "$security" \
  --parent-mirror-bootstrap "$mirror" --parent-mirror-chroot "$mirror" --parent-mirror-binary "$mirror" \
  --parent-mirror-chroot-security "$security" --parent-mirror-binary-security "$security" \
  --binary-image iso-hybrid --debian-installer none --memtest none \
  --apt-recommends false --firmware-binary false --firmware-chroot false \
  --linux-flavours amd64 \
  --bootappend-live "boot=live components hostname=synos console=tty0 console=ttyS0,115200n8" \
  --iso-application "SynOS $version" --iso-volume "SynOS $version" \
  --iso-publisher "SynOS; https://github.com/synos" \
  --checksums sha256 --zsync false --cache true >"$build/config.log" 2>&1 ||
  { tail -n 20 "$build/config.log"; die "lb config failed"; }
cp -a "$REPO_ROOT/iso/config/." config/
mkdir -p config/packages.chroot
cp "$build"/debs/*.deb config/packages.chroot/

say "lb build (about 10 minutes from cold; the log is $build/build.log)"
lb build >"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log"; die "lb build failed"; }
[ -s live-image-amd64.hybrid.iso ] || { tail -n 40 "$build/build.log"; die "lb build made no ISO"; }

iso="synos-$version-amd64.iso"
mv live-image-amd64.hybrid.iso "$out/$iso"
(cd "$out" && sha256sum "$iso" >"$iso.sha256")
# The chroot and binary trees are gigabytes; the caches that make the next build fast stay.
lb clean >/dev/null 2>&1 || true
say "$out/$iso: $(du -m "$out/$iso" | cut -f1) MiB, built in $(($(date +%s) - started)) s"
cat "$out/$iso.sha256"
