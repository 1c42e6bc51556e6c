#!/usr/bin/env bash
# Installs everything the tests need (virtual environment, Go-built control plane) and runs
# them: lint, fast unit tests first, integration tests after. Extra args go to pytest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=$("$here/scripts/venv.sh")
export PATH="$venv/bin:$PATH"
export LORAFLEET_VENV="$venv"  # scripts/cluster.sh takes kubectl from it
# The shared venv's editable install points at whichever checkout ran venv.sh last; make this
# checkout's sources win for the tests and for the console scripts they start.
export PYTHONPATH="$here/operator:$here/serving${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# Never reach a real hub from tests; fixtures point HF_ENDPOINT at the local mirror.
export HF_HUB_DISABLE_TELEMETRY=1
export RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false

echo "== ruff"
ruff check .
ruff format --check . || { echo "ruff format: run 'ruff format .'"; exit 1; }
echo "== import contracts (lint-imports; pyproject.toml [tool.importlinter])"
lint-imports
echo "== types (mypy --strict; pyproject.toml [tool.mypy])"
mypy  # the files listed in [tool.mypy]

# The project's image (buildah; network- and disk-bound) builds while the Go modules of the
# test cluster compile (CPU-bound); both are cached, keyed by their inputs.
logs=${LORAFLEET_BUILD_LOGS:-$HOME/.cache/lorafleet/logs}
mkdir -p "$logs"
echo "== building the project's image in the background (log: $logs/image-build.log)"
started=$SECONDS
"$here/scripts/image.sh" build > "$logs/image-build.log" 2>&1 &
image_pid=$!
echo "== building the test cluster: control plane, node, CoreDNS, KubeRay (cached after the first build)"
"$here/scripts/cluster.sh" build
echo "   cluster binaries ready after $((SECONDS - started)) s"
if ! wait "$image_pid"; then
  tail -n 40 "$logs/image-build.log"
  echo "scripts/image.sh build failed (log: $logs/image-build.log)"
  exit 1
fi
echo "   image ready after $((SECONDS - started)) s: $(grep '^IMAGE=' "$logs/image-build.log" | cut -d= -f2-)"

if [ "$#" -gt 0 ]; then
  exec python -m pytest "$@"
fi
run_phase() {  # pytest exits 5 when a phase selects no test; that is not a failure here
  local rc=0
  python -m pytest -q -m "$1" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}
echo "== unit tests"
run_phase "not integration"
echo "== integration tests"
run_phase "integration"
