#!/usr/bin/env bash
# Create .venv-checkov with checkov (pinned, with its whole tree, by constraints-checkov.txt)
# for the Kubernetes manifest policy test (tests/unit/test_k8s.py). A venv of its own: checkov
# pulls ~100 packages whose versions would fight the project's. Idempotent: does nothing when
# the constraints are unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
CONSTRAINTS=deploy/local/constraints-checkov.txt
stamp=.venv-checkov/.luffy-installed
want=$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv-checkov ..." >&2
[ -x .venv-checkov/bin/python ] || "$PY" -m venv .venv-checkov
.venv-checkov/bin/python -m pip install -q --upgrade pip
.venv-checkov/bin/pip install -q -c "$CONSTRAINTS" "checkov==$(sed -n 's/^checkov==//p' "$CONSTRAINTS")"
echo "$want" > "$stamp"
