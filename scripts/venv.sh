#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and prints its path.
#
# The environment lives outside the clone, in ~/.cache/lorafleet/venv/<hash>, keyed by a
# hash of the Python version and the dependency lists in pyproject.toml, so CI runs and
# later sessions reuse the multi-GB install (torch) while a fresh machine still gets there
# with this one command. The package itself is (re)installed in editable mode on every
# call, pointing at the current checkout, which is cheap.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${LORAFLEET_PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py=$cand; break; fi
  done
fi
key=$("$py" - "$here/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
payload = {
    "python": sys.version.split()[0],
    "deps": project["dependencies"],
    "extras": project.get("optional-dependencies", {}),
}
print(hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16])
PY
)
root=${LORAFLEET_VENV_ROOT:-$HOME/.cache/lorafleet/venv}
venv=$root/$key
mkdir -p "$root"
exec 9>"$root/.$key.lock"
flock 9  # one creator at a time; others wait, then reuse
if [ ! -f "$venv/.complete" ]; then
  echo "lorafleet: creating virtual environment $venv (first run downloads torch, ray, ...)" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel >&2
  # Install the dependencies (not the package) first so this slow step is cached.
  deps=$("$py" - "$here/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
for d in project["dependencies"] + project.get("optional-dependencies", {}).get("dev", []):
    print(d)
PY
)
  echo "$deps" > "$venv/requirements.txt"
  "$venv/bin/python" -m pip install --progress-bar off -r "$venv/requirements.txt" >&2
  touch "$venv/.complete"
fi
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$here" >&2
echo "$venv"
