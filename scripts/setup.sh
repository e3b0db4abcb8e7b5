#!/usr/bin/env bash
# Creates the virtual environment (once), installs torch first, then this project with its extras. Does nothing
# when the settings and pyproject.toml are unchanged since the last successful run (stamp file $VENV/.setup-stamp).
#
#   VENV             the environment's folder (default .venv)
#   TORCH_VERSION    torch version installed first (default 2.13.0); "" keeps whatever torch is there
#   TORCH_INDEX_URL  index torch comes from, e.g. https://download.pytorch.org/whl/cpu for the CPU-only build
#                    (PyPI's Linux torch is the CUDA build, with about 3 GB of NVIDIA libraries)
#   VMAMBA_EXTRAS    extras of the project (default "dev"; "dev,gpu" adds Triton, for CUDA machines and for CI)
#   TRANSFORMERS_VERSION  pin transformers (default: the newest release the project allows; CI also tests the floor)
#   PYTHON           interpreter that creates .venv (default python3, >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
EXTRAS=${VMAMBA_EXTRAS:-dev}
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-}
VENV=${VENV:-.venv}
STAMP=$VENV/.setup-stamp

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV"
fi
pyproject_hash=$("$VENV/bin/python" -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest())")
wanted="torch=$TORCH_VERSION index=$TORCH_INDEX_URL extras=$EXTRAS transformers=$TRANSFORMERS_VERSION pyproject=$pyproject_hash"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
    exit 0
fi
rm -f "$STAMP"
echo "setup: installing into $VENV (the first run downloads torch and the dependencies: a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "$TORCH_VERSION" ]; then
    index_args=()
    if [ -n "$TORCH_INDEX_URL" ]; then
        index_args=(--index-url "$TORCH_INDEX_URL")
    fi
    "$VENV/bin/python" -m pip install -q "${index_args[@]}" "torch==$TORCH_VERSION"
fi
pins=()
if [ -n "$TRANSFORMERS_VERSION" ]; then
    pins=("transformers==$TRANSFORMERS_VERSION")
fi
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]" "${pins[@]}"
echo "$wanted" > "$STAMP"
echo "setup: done"
