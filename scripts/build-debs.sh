#!/usr/bin/env bash
# Builds every SynOS .deb and a local apt repository from the tree, into dist/ (or $1):
# one package per daemon, synos-cli, the model packages synos-model-minilm and
# synos-model-smollm2 (from the models fetched by scripts/fetch-models.sh) and the meta-package synos-ai; then runs lintian on them.
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

# plain_package NAME [COPYRIGHT [DPKG-DEB OPTIONS...]]: builds $staging/NAME (DEBIAN/control
# written by the caller, files under usr/) into a .deb with the project's changelog and a
# copyright file.
plain_package() {
  local name=$1 copyright="${2:-packaging/debian/copyright}" architecture
  local root="$staging/$name"
  shift $(($# < 2 ? $# : 2))
  mkdir -p "$root/usr/share/doc/$name"
  gzip -9n < packaging/debian/changelog > "$root/usr/share/doc/$name/changelog.Debian.gz"
  cp "$copyright" "$root/usr/share/doc/$name/copyright"
  find "$root" -type d -exec chmod 755 {} +
  find "$root/usr" -type f -exec chmod 644 {} +
  architecture="$(sed -n 's/^Architecture: //p' "$root/DEBIAN/control")"
  dpkg-deb --root-owner-group "$@" --build "$root" "$out/${name}_${version}-1_${architecture}.deb" >/dev/null
}

# model_package NAME MODEL DESCRIPTION FILE...: a data-only package of the fetched MODEL's
# FILEs in /usr/share/synos/models/MODEL, its copyright in packaging/debian/copyright.NAME
# without the synos-model- prefix. DESCRIPTION is the control file's, synopsis first.
# Weights barely compress (xz saves 2.5% of a GGUF in 56 s here, gzip 6% in 3 s): gzip.
model_package() {
  local name=$1 model=$2 description=$3 file source root
  shift 3
  say "building the model package $name"
  source="$(model_directory)/$model"
  root="$staging/$name"
  mkdir -p "$root/DEBIAN" "$root/usr/share/synos/models/$model"
  for file in "$@"; do
    [ -s "$source/$file" ] || die "$source/$file missing: run scripts/fetch-models.sh"
    cp "$source/$file" "$root/usr/share/synos/models/$model/"
  done
  cat > "$root/DEBIAN/control" <<EOF
Package: $name
Version: $version-1
Architecture: all
Maintainer: SynOS developers <developers@synos.invalid>
Section: misc
Priority: optional
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Description: $description
EOF
  plain_package "$name" "packaging/debian/copyright.${name#synos-model-}" -Zgzip
}

model_package synos-model-minilm all-MiniLM-L6-v2 "sentence-embedding model all-MiniLM-L6-v2 for SynOS memory and policy
 The all-MiniLM-L6-v2 sentence-transformers model (384 dimensions) as
 safetensors weights with its tokenizer, in
 /usr/share/synos/models/all-MiniLM-L6-v2. synos-memory runs it in-process
 on the CPU to embed memories, with no network at any time. The package also
 holds the model's distilled token table, with which synos-policy compares
 prompts to known attacks in well under a millisecond." \
  config.json tokenizer.json model.safetensors static-embeddings.safetensors
model_package synos-model-smollm2 SmolLM2-135M-Instruct "local chat model SmolLM2-135M-Instruct for the SynOS LLM router
 SmolLM2-135M-Instruct quantised to Q4_1 as one GGUF file (tokenizer and chat
 template in its metadata), in /usr/share/synos/models/SmolLM2-135M-Instruct.
 The router's local provider runs it in-process on the CPU: the last resort
 of every route, which answers with no network and no API key." \
  SmolLM2-135M-Instruct.Q4_1.gguf

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
