#!/usr/bin/env bash
# Builds every SynOS .deb and a local apt repository from the tree, into dist/ (or $1):
# one package per daemon, synos-cli, the model package synos-model-minilm (from the model
# fetched by scripts/fetch-models.sh) and the meta-package synos-ai; then runs lintian on them.
#
#   echo "deb [trusted=yes] file:$PWD/dist ./" > /etc/apt/sources.list.d/synos.list
#   apt-get update && apt-get install synos-ai
source "$(dirname "$0")/lib.sh"

out="${1:-$REPO_ROOT/dist}"
scripts/install-dependencies.sh packaging

say "building release binaries"
cargo build --release --locked --bins
release="$CARGO_TARGET_DIR/release"

say "writing manual pages and shell completions"
version="$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"name":"synos-common","version":"\([^"]*\)".*/\1/p')"
[ -n "$version" ] || die "cannot read the workspace version"
# Pages generated from the programs' own clap definitions, dated like the changelog so the
# packages are reproducible.
SOURCE_DATE_EPOCH="$(dpkg-parsechangelog --file packaging/debian/changelog --show-field Timestamp)"
export SOURCE_DATE_EPOCH
rm -rf "$release/man" "$release/completions"
mkdir -p "$release/man" "$release/completions"
for daemon in llm-router memory hwaccel policy doctor; do
  "$release/synos-$daemon" --manual-page > "$release/man/synos-$daemon.8"
done
"$release/synosctl" manual-pages "$release/man"
gzip -9n "$release/man"/*
"$release/synosctl" completions bash > "$release/completions/synosctl"
"$release/synosctl" completions zsh > "$release/completions/_synosctl"
"$release/synosctl" completions fish > "$release/completions/synosctl.fish"

rm -rf "$out"
mkdir -p "$out"
say "building packages"
for package in synos-llm-router synos-memory synos-hwaccel synos-policy synos-doctor synos-cli; do
  cargo deb --locked --no-build --package "$package" --output "$out" >/dev/null
done

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT

# plain_package NAME [COPYRIGHT]: builds $staging/NAME (DEBIAN/control written by the caller,
# files under usr/) into a .deb with the project's changelog and a copyright file.
plain_package() {
  local root="$staging/$1" copyright="${2:-packaging/debian/copyright}" architecture
  mkdir -p "$root/usr/share/doc/$1"
  gzip -9n < packaging/debian/changelog > "$root/usr/share/doc/$1/changelog.Debian.gz"
  cp "$copyright" "$root/usr/share/doc/$1/copyright"
  find "$root" -type d -exec chmod 755 {} +
  find "$root/usr" -type f -exec chmod 644 {} +
  architecture="$(sed -n 's/^Architecture: //p' "$root/DEBIAN/control")"
  dpkg-deb --root-owner-group --build "$root" "$out/${1}_${version}-1_${architecture}.deb" >/dev/null
}

say "building the model package synos-model-minilm"
models="$(model_directory)/all-MiniLM-L6-v2"
minilm="$staging/synos-model-minilm"
mkdir -p "$minilm/DEBIAN" "$minilm/usr/share/synos/models/all-MiniLM-L6-v2"
for file in config.json tokenizer.json model.safetensors; do
  [ -s "$models/$file" ] || die "$models/$file missing: run scripts/fetch-models.sh"
  cp "$models/$file" "$minilm/usr/share/synos/models/all-MiniLM-L6-v2/"
done
cat > "$minilm/DEBIAN/control" <<EOF
Package: synos-model-minilm
Version: $version-1
Architecture: all
Maintainer: SynOS developers <developers@synos.invalid>
Section: misc
Priority: optional
Installed-Size: $(du -sk "$minilm/usr" | cut -f1)
Description: sentence-embedding model all-MiniLM-L6-v2 for SynOS memory
 The all-MiniLM-L6-v2 sentence-transformers model (384 dimensions) as
 safetensors weights with its tokenizer, in
 /usr/share/synos/models/all-MiniLM-L6-v2. synos-memory runs it in-process
 on the CPU to embed memories, with no network at any time.
EOF
plain_package synos-model-minilm packaging/debian/copyright.minilm

say "building the meta-package synos-ai"
mkdir -p "$staging/synos-ai/DEBIAN"
depends="$(printf 'synos-%s (= %s-1), ' llm-router "$version" memory "$version" hwaccel "$version" \
  policy "$version" doctor "$version" cli "$version")"
cat > "$staging/synos-ai/DEBIAN/control" <<EOF
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
plain_package synos-ai

say "indexing the repository"
(cd "$out" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null > Packages && gzip -9nk Packages)

say "lintian"
lintian --fail-on error,warning --suppress-tags-from-file packaging/debian/lintian-overrides.txt "$out"/*.deb

ls -l "$out"
