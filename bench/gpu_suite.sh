#!/usr/bin/env bash
# One GPU suite: inference (OmniGen-v1 shape vs diffusers), training throughput + MFU, annotator and curation
# batches, the learning proof(s); writes OUT_DIR/gpu_suite.json and OUT_DIR/gpu_suite.md (bench/gpu_suite.py).
#   bash bench/gpu_suite.sh OUT_DIR            # on one GPU, ~6 min, hard budget 9 min
#   bash bench/gpu_suite.sh --smoke OUT_DIR    # every section at tiny size on CPU, ~2 min
# Runs from a bare checkout on a machine with no network: wheels the machine lacks travel in .whl/
# (bench/gpu_wheels.sh), and x2i is not pip-installed but put on the path through a shim (below).
# PYTHON picks the interpreter (default python3).
set -euo pipefail
SUITE_START=$(date +%s)
SMOKE=()
if [ "${1:-}" = "--smoke" ]; then SMOKE=(--smoke); shift; fi
OUT=${1:?usage: bash bench/gpu_suite.sh [--smoke] OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # before the cd below: OUT_DIR is relative to the caller's directory
cd "$(dirname "$0")/.."
REPO=$PWD
# python3 unless PYTHON says otherwise; the GPU machine's torch lives in /opt/torch/.venv, which may not be first
# on PATH there.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if ! python3 -c 'import torch' 2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then
    PYTHON=/opt/torch/.venv/bin/python3
  fi
fi
# Offline hub: every weight here is random and local; a lookup on a machine with no network should fail at once,
# not wait for DNS/connect timeouts.
export PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1 HF_HUB_OFFLINE=1
log() { echo "[$(date +%H:%M:%S)] $*"; }

# Per-run folders (not a fixed /tmp/site): engineers sharing a machine must not overwrite each other's.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/x2i-gpu-suite.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
SITE=$TMP/site
SHIM=$TMP/x2i_pkg

# 1. Wheels from .whl/ (diffusers, controlnet_aux, open_clip, imagehash and what they import). Only those this
# interpreter can take: the binary ones are cp312 (the GPU machine's Python); a CPU smoke run under another
# Python keeps its own installed copies of those.
if compgen -G ".whl/*.whl" >/dev/null; then
  TAG=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  WHEELS=()
  for w in .whl/*.whl; do
    case "$w" in
      *-none-any.whl|*-abi3-*|*-"$TAG"-"$TAG"-*) WHEELS+=("$w") ;;
      *) log "skipping $w (not for $TAG)" ;;
    esac
  done
  log "installing ${#WHEELS[@]} wheels from .whl/ into $SITE"
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${WHEELS[@]}"; then
    # No pip in that venv (uv makes venvs without it): a wheel is a zip of its site-packages files, and none
    # of these needs more than unpacking. A failure here is not fatal either: the sections that need a
    # missing package record the error themselves.
    log "pip install failed; unpacking the wheels into $SITE instead"
    "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$SITE" "${WHEELS[@]}" || log "WARNING: could not unpack the wheels; going on with what the machine has"
  fi
fi

# 2. x2i from the checkout. pyproject maps builders/ annotators/ model/ manifests/ to x2i.builders etc., so the
# repo root alone is not importable as x2i: build an x2i package of symlinks (x2i/* plus those four folders).
mkdir -p "$SHIM/x2i"
for f in "$REPO"/x2i/*; do ln -s "$f" "$SHIM/x2i/"; done
for d in builders annotators model manifests; do ln -s "$REPO/$d" "$SHIM/x2i/$d"; done
# The engine finds builders and annotators through the `x2i.plugins` entry points (pyproject.toml), which an
# installed x2i declares in its dist-info: give the shim the same two lines.
mkdir -p "$SHIM/x2i-0.0.0.dist-info"
printf 'Metadata-Version: 2.1\nName: x2i\nVersion: 0.0.0\n' > "$SHIM/x2i-0.0.0.dist-info/METADATA"
printf '[x2i.plugins]\nannotators = x2i.annotators\nbuilders = x2i.builders\n' > "$SHIM/x2i-0.0.0.dist-info/entry_points.txt"
# The shim first: it must win over any installed x2i (e.g. an editable install of another checkout).
export PYTHONPATH="$SHIM:$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
# (From $TMP: `python -c` puts the cwd first on sys.path, and the checkout's bare x2i/ would win there.)
log "python: $(cd "$TMP" && "$PYTHON" -c 'import sys, x2i; print(sys.executable, sys.version.split()[0], "x2i from", x2i.__path__[0])')"

"$PYTHON" bench/gpu_suite.py "${SMOKE[@]}" --out "$OUT" --start "$SUITE_START" ${X2I_GPU_ONLY:+--only "$X2I_GPU_ONLY"}
