#!/usr/bin/env bash
# Builds every SynOS .deb and a local apt repository from the tree, into dist/ (or $1):
# one package per daemon, synos-cli, and the meta-package synos-ai; then runs lintian on them.
#
#   echo "deb [trusted=yes] file:$PWD/dist ./" > /etc/apt/sources.list.d/synos.list
#   apt-get update && apt-get install synos-ai
source "$(dirname "$0")/lib.sh"

out="${1:-$REPO_ROOT/dist}"
scripts/install-dependencies.sh packaging

say "building release binaries"
cargo build --release --locked --bins
release="$CARGO_TARGET_DIR/release"

say "writing man pages"
mkdir -p "$release/man"
version="$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"synos-common","version":"\([^"]*\)".*/\1/p')"
[ -n "$version" ] || die "cannot read the workspace version"
for daemon in llm-router memory hwaccel policy doctor; do
  help2man --no-info --section 8 --version-string "$version" \
    --name "$(sed -n 's/^description = "\(.*\)"/\1/p' "crates/$daemon/Cargo.toml")" \
    "$release/synos-$daemon" | gzip -9n > "$release/man/synos-$daemon.8.gz"
done
help2man --no-info --section 1 --version-string "$version" \
  --name "command-line client for the SynOS daemons" "$release/synosctl" | gzip -9n > "$release/man/synosctl.1.gz"

rm -rf "$out"
mkdir -p "$out"
say "building packages"
for package in synos-llm-router synos-memory synos-hwaccel synos-policy synos-doctor synos-cli; do
  cargo deb --locked --no-build --package "$package" --output "$out" >/dev/null
done

say "building the meta-package synos-ai"
meta="$(mktemp -d)"
trap 'rm -rf "$meta"' EXIT
mkdir -p "$meta/DEBIAN" "$meta/usr/share/doc/synos-ai"
depends="$(printf 'synos-%s (= %s-1), ' llm-router "$version" memory "$version" hwaccel "$version" \
  policy "$version" doctor "$version" cli "$version")"
cat > "$meta/DEBIAN/control" <<EOF
Package: synos-ai
Version: $version-1
Architecture: all
Maintainer: SynOS developers <developers@synos.invalid>
Section: metapackages
Priority: optional
Depends: ${depends%, }
Description: SynOS AI services (all of them)
 Installs the five SynOS daemons (LLM router, memory, hardware, policy,
 doctor) and synosctl, the client for all of them.
EOF
gzip -9n < packaging/debian/changelog > "$meta/usr/share/doc/synos-ai/changelog.Debian.gz"
cp packaging/debian/copyright "$meta/usr/share/doc/synos-ai/copyright"
find "$meta" -type d -exec chmod 755 {} +
find "$meta/usr" -type f -exec chmod 644 {} +
dpkg-deb --root-owner-group --build "$meta" "$out/synos-ai_${version}-1_all.deb" >/dev/null

say "indexing the repository"
(cd "$out" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null > Packages && gzip -9nk Packages)

say "lintian"
lintian --fail-on error,warning --suppress-tags-from-file packaging/debian/lintian-overrides.txt "$out"/*.deb

ls -l "$out"
