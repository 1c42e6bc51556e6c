# shellcheck shell=bash
# The test cluster's node, sourced by scripts/cluster.sh (`up --node`, `down`): the parts kind
# runs inside its node container, run directly on this machine since no Docker engine exists.
#
#   network      a Linux bridge ($NODE_BRIDGE) carrying the Pod subnet, the node's address
#                ($NODE_IP, the bridge's) and a route for the Service range; IPv4 forwarding and
#                br_netfilter on (Service DNAT between Pods on one bridge needs both); a
#                LORAFLEET-ISOLATION chain first in FORWARD drops anything that would leave or
#                enter the bridge through another interface. Nothing is masqueraded or routed
#                to an outside interface.
#   containerd   v2 from Go modules with Debian's runc; CRI on a socket in the run folder; its
#                content store and snapshots in a cache folder (imported images survive runs);
#                everything else (state, runc root, network namespaces) in the run folder.
#   CNI          Debian's containernetworking-plugins: bridge + host-local IPAM + portmap
#                (+ loopback, which containerd adds itself).
#   kubelet      cgroupfs driver on the cgroup v1 hierarchy (failCgroupV1: false), pods under
#                the /lorafleet cgroup, x509 + webhook authentication, webhook authorization,
#                serving certificate from the test CA, listening on $NODE_IP only.
#   kube-proxy   iptables mode, NodePorts on $NODE_IP only.
#   kube-scheduler, CoreDNS as a Deployment (cluster DNS at $NODE_DNS_IP) and the KubeRay
#                operator as a Deployment in kuberay-system.
#
# Only one node runs on a machine at a time (the bridge, iptables chains and cgroups are
# machine-wide): /run/lorafleet-test-node names the run folder that owns it. `down` (and the
# reaper) undo everything: Pods removed through CRI (CNI teardown), containerd and its shims
# stopped, mounts under the run folder unmounted, iptables rules and chains added by the node
# removed, bridge deleted, cgroups removed, sysctls restored to their earlier values.

NODE_NAME=${LORAFLEET_NODE_NAME:-lorafleet-node}
NODE_BRIDGE=${LORAFLEET_NODE_BRIDGE:-lfbr0}
NODE_POD_CIDR=${LORAFLEET_NODE_POD_CIDR:-10.244.0.0/24}
NODE_IP=${LORAFLEET_NODE_IP:-10.244.0.1}
NODE_SERVICE_CIDR=10.0.0.0/24 # also kube-apiserver's --service-cluster-ip-range
NODE_DNS_IP=10.0.0.10
NODE_CLUSTER_DOMAIN=cluster.local
NODE_CGROUP=lorafleet
NODE_OWNER_FILE=/run/lorafleet-test-node
# Chain-name prefixes of every iptables chain the node's parts create (kube-proxy, kubelet,
# CNI portmap, this script); `down` removes exactly these.
NODE_CHAIN_PREFIXES='KUBE-|CNI-|LORAFLEET-'
# Host settings the node changes, restored by `down` to the values saved at `up`: forwarding
# and br_netfilter (Service traffic between Pods), and the kernel tunables the kubelet sets.
NODE_SYSCTLS=(
  net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
)
node_state_cache=${LORAFLEET_NODE_CACHE:-$HOME/.cache/lorafleet/node}

# ---------------------------------------------------------------------------------------------
# Preflight: packages, privileges, the one-node-per-machine rule.

node_packages() {
  local missing=()
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v findmnt >/dev/null || missing+=(util-linux)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages for the node: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null 2>&1 \
      || { apt-get update -qq > /dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; } \
      || die "could not install ${missing[*]} with apt-get"
  fi
}

node_preflight() {
  [ "$(id -u)" = 0 ] || die "the test node needs root (network namespaces, cgroups, iptables, mounts)"
  [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/pids ] \
    || die "the test node needs the cgroup v1 memory and pids controllers under /sys/fs/cgroup"
  node_packages
  if [ -f "$NODE_OWNER_FILE" ]; then
    local other
    other=$(cat "$NODE_OWNER_FILE")
    if [ "$other" != "$run_dir" ] && node_alive "$other"; then
      die "a test node is already running on this machine (run folder $other); stop it with LORAFLEET_CLUSTER_DIR=$other scripts/cluster.sh down"
    fi
    log "removing what is left of an earlier node (run folder $other)"
    node_teardown "$other"
  fi
  # `down` removes iptables chains by name prefix: refuse to start beside anything else that
  # owns such chains (another Kubernetes, podman's CNI), rather than remove them later.
  local foreign
  foreign=$( { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } \
    | sed -n 's/^:\(\(KUBE\|CNI\|LORAFLEET\)-[^ ]*\).*/\1/p' | sort -u | head -n 5 | tr '\n' ' ')
  if [ -n "$foreign" ]; then
    die "this machine already has iptables chains the test node would remove at 'down' ($foreign...): another Kubernetes or CNI runs here; stop it (or remove them) first"
  fi
  echo "$run_dir" > "$NODE_OWNER_FILE"
}

node_alive() {  # run-folder: whether that run's kubelet or containerd still runs
  local name pid
  for name in kubelet containerd; do
    pid=$(cat "$1/$name.pid" 2>/dev/null || true)
    if pid_alive "$pid" && grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null; then return 0; fi
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# Host network.

node_sysctl_path() { echo "/proc/sys/${1//.//}"; }

node_sysctl_set() {  # key value: set it, remembering the earlier value for `down`
  local path
  path=$(node_sysctl_path "$1")
  [ -e "$path" ] || { log "sysctl $1 does not exist here: not set"; return 0; }
  if ! grep -q "^$1 " "$run_dir/sysctl.saved" 2>/dev/null; then
    echo "$1 $(tr '\t' ' ' < "$path")" >> "$run_dir/sysctl.saved"
  fi
  echo "$2" > "$path"
}

node_sysctl_save_all() {  # the kubelet changes kernel tunables itself: remember them first
  local key path
  for key in "${NODE_SYSCTLS[@]}"; do
    path=$(node_sysctl_path "$key")
    [ -e "$path" ] || continue
    grep -q "^$key " "$run_dir/sysctl.saved" 2>/dev/null \
      || echo "$key $(tr '\t' ' ' < "$path")" >> "$run_dir/sysctl.saved"
  done
}

node_sysctl_restore() {  # run-folder
  local key value
  [ -f "$1/sysctl.saved" ] || return 0
  while read -r key value; do
    echo "$value" > "$(node_sysctl_path "$key")" 2>/dev/null || log "could not restore $key"
  done < "$1/sysctl.saved"
  rm -f "$1/sysctl.saved"
}

node_network_up() {
  node_sysctl_save_all
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # The host reaches Service addresses through the bridge, from the node's own address.
  ip route add "$NODE_SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  node_sysctl_set net.ipv4.ip_forward 1
  node_sysctl_set net.bridge.bridge-nf-call-iptables 1
  # Forwarding is on only for traffic between Pods (and Service DNAT to them): nothing enters
  # or leaves the bridge through another interface.
  iptables -w -N LORAFLEET-ISOLATION
  iptables -w -A LORAFLEET-ISOLATION -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP \
    -m comment --comment "lorafleet test node: Pods never reach outside this machine"
  iptables -w -A LORAFLEET-ISOLATION ! -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j DROP \
    -m comment --comment "lorafleet test node: nothing outside reaches Pods"
  iptables -w -I FORWARD 1 -j LORAFLEET-ISOLATION
}

node_iptables_cleanup() {  # remove every rule and chain named with the node's prefixes
  local cmd table dump
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    for table in filter nat mangle raw; do
      dump=$("$cmd-save" -t "$table" 2>/dev/null) || continue
      grep -qE "($NODE_CHAIN_PREFIXES)" <<< "$dump" || continue
      # Drop the chains' declarations, their rules and every rule that jumps to them, then
      # write the table back in one transaction.
      grep -vE "^:($NODE_CHAIN_PREFIXES)|^-A ($NODE_CHAIN_PREFIXES)|-j ($NODE_CHAIN_PREFIXES)" <<< "$dump" \
        | "$cmd-restore" -w -T "$table" || log "could not clean $cmd table $table"
    done
  done
}

node_network_down() {
  ip link show "$NODE_BRIDGE" > /dev/null 2>&1 && ip link delete "$NODE_BRIDGE"
  node_iptables_cleanup
}

# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfigs (called from gen_certs, inside the pki folder, umask 077).

node_certs() {
  local client='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  sign kubelet-serving "/CN=$NODE_NAME" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth' "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME")"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign kube-scheduler "/CN=system:kube-scheduler" "$client"
  # kube-apiserver -> kubelet (logs, exec, port-forward); bound to system:kubelet-api-admin.
  sign apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "$client"
}

# ---------------------------------------------------------------------------------------------
# containerd.

node_containerd_up() {  # containerd-bin-dir
  local cbin=$1 root=$node_state_cache/containerd state=$run_dir/containerd
  mkdir -p "$root" "$state" "$run_dir/cni/net.d" "$run_dir/cni/ipam"
  chmod 700 "$root" "$state"
  cat > "$run_dir/cni/net.d/10-lorafleet.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "lorafleet",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$run_dir/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat > "$run_dir/containerd.toml" <<TOML
version = 3
root = "$root"
state = "$state"
# NRI would open a socket under /var/run/nri; nothing here uses it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$state/containerd.sock"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # Network namespaces under the state folder: removed with the run, never in /var/run/netns.
    netns_mounts_under_state_dir = true
    enable_unprivileged_ports = true
    enable_unprivileged_icmp = true
    tolerate_missing_hugetlb_controller = true
    # Without CAP_SYS_RESOURCE (as on these machines) nothing may lower its oom_score_adj: the
    # kubelet asks -998 for Pod sandboxes; containerd raises it to its own (kind does the same).
    restrict_oom_score_adj = true
    disable_hugetlb_controller = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$(command -v runc)'
          Root = '$run_dir/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '$run_dir/cni/net.d'
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
TOML
  # The shim (containerd-shim-runc-v2) is found on PATH.
  PATH="$cbin:$PATH" start_bg containerd "$cbin/containerd" --config "$run_dir/containerd.toml"
  CONTAINERD_SOCK=$state/containerd.sock
  wait_for containerd 60 "$cbin/ctr" --address "$CONTAINERD_SOCK" version \
    || { tail -n 30 "$run_dir/containerd.log" >&2; die "containerd did not start (log: $run_dir/containerd.log)"; }
  # Sandboxes and containers an earlier run left in the persistent metadata: removed (with
  # their network teardown) before the kubelet starts.
  "$cbin/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" rmp -af > /dev/null 2>&1 || true
}

node_image_present() {  # ctr image-ref
  "$1" --address "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -qxF "$2"
}

node_load_image() {  # ctr-path image-ref archive: import into the CRI namespace unless present
  local ctr=$1 ref=$2 archive=$3 started=$SECONDS
  if node_image_present "$ctr" "$ref"; then return 0; fi
  [ -f "$archive" ] || die "image archive $archive for $ref does not exist"
  log "importing $ref into containerd ($(du -h "$archive" | cut -f1))"
  "$ctr" --address "$CONTAINERD_SOCK" -n k8s.io images import --local "$archive" >&2 \
    || die "ctr images import $archive failed"
  node_image_present "$ctr" "$ref" || die "$archive does not hold $ref"
  # Pinned: the kubelet's image garbage collection never removes it.
  "$ctr" --address "$CONTAINERD_SOCK" -n k8s.io images label "$ref" io.cri-containerd.pinned=pinned > /dev/null
  log "imported $ref in $((SECONDS - started)) s"
}

# ---------------------------------------------------------------------------------------------
# kubelet, kube-proxy, kube-scheduler.

node_cgroups_up() {
  local ctl
  for ctl in /sys/fs/cgroup/*/; do
    [ "$(basename "$ctl")" = unified ] && continue
    mkdir -p "$ctl$NODE_CGROUP"
    if [ -f "${ctl}cpuset.cpus" ]; then  # a new cpuset cgroup starts empty: inherit the root's
      cat "${ctl}cpuset.cpus" > "$ctl$NODE_CGROUP/cpuset.cpus"
      cat "${ctl}cpuset.mems" > "$ctl$NODE_CGROUP/cpuset.mems"
    fi
  done
}

node_cgroups_down() {
  local ctl
  for ctl in /sys/fs/cgroup/*/; do
    [ -d "$ctl$NODE_CGROUP" ] || continue
    find "$ctl$NODE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$ctl$NODE_CGROUP" ] && log "cgroup $ctl$NODE_CGROUP still holds processes: left in place"
  done
  return 0
}

node_kubelet_up() {  # kube-bin-dir
  local pki=$run_dir/pki
  mkdir -p "$run_dir/kubelet"
  # Pods' resolv.conf: cluster DNS only; no upstream resolver exists for Pods.
  echo "# lorafleet test node: no upstream resolvers" > "$run_dir/node-resolv.conf"
  write_kubeconfig "$run_dir/kubelet.kubeconfig" "system:node:$NODE_NAME" \
    "$pki/kubelet-client.crt" "$pki/kubelet-client.key"
  cat > "$run_dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
failCgroupV1: false
# The kubelet's own -999 needs CAP_SYS_RESOURCE, which these machines lack: keep its own.
oomScoreAdj: 0
failSwapOn: false
clusterDNS: [$NODE_DNS_IP]
clusterDomain: $NODE_CLUSTER_DOMAIN
resolvConf: $run_dir/node-resolv.conf
rotateCertificates: false
serializeImagePulls: false
# Images are imported, never pulled: never garbage-collect them.
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
containerLogMaxSize: 10Mi
syncFrequency: 10s
fileCheckFrequency: 10s
YAML
  start_bg kubelet "$1/kubelet" --config "$run_dir/kubelet.yaml" \
    --kubeconfig "$run_dir/kubelet.kubeconfig" --root-dir "$run_dir/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "lorafleet.io/test-node=true" -v 1
}

node_proxy_up() {  # kube-bin-dir
  local pki=$run_dir/pki
  write_kubeconfig "$run_dir/kube-proxy.kubeconfig" system:kube-proxy "$pki/kube-proxy.crt" "$pki/kube-proxy.key"
  cat > "$run_dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $run_dir/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $NODE_POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# NodePorts answer on the bridge address only, never on this machine's outside interfaces.
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
# Leave the host's conntrack table size and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
# -999 needs CAP_SYS_RESOURCE (see the kubelet's oomScoreAdj).
oomScoreAdj: 0
YAML
  start_bg kube-proxy "$1/kube-proxy" --config "$run_dir/kube-proxy.yaml" -v 1
}

node_scheduler_up() {  # kube-bin-dir
  local pki=$run_dir/pki
  write_kubeconfig "$run_dir/kube-scheduler.kubeconfig" system:kube-scheduler \
    "$pki/kube-scheduler.crt" "$pki/kube-scheduler.key"
  start_bg kube-scheduler "$1/kube-scheduler" --kubeconfig "$run_dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$run_dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$run_dir/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false -v 1
}

# ---------------------------------------------------------------------------------------------
# Cluster add-ons: RBAC for the apiserver's kubelet client, CoreDNS.

node_addons() {  # kubectl kubeconfig
  "$1" --kubeconfig "$2" apply -f - > /dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "lorafleet-test:apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes $NODE_CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        prometheus :9153
        cache 30
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        resources:
          requests: {cpu: 50m, memory: 50Mi}
          limits: {memory: 170Mi}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, initialDelaySeconds: 30}
        securityContext:
          runAsNonRoot: true
          runAsUser: 65532
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $NODE_DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
YAML
}

# The KubeRay operator, as its own manifests deploy it (ray-operator/config/manager and
# config/rbac of the same module the CRDs come from), from a FROM-scratch image of the binary
# built from that module. Leader election off (one replica).
node_kuberay() {  # kubectl kubeconfig
  local rbac
  # KubeRay acts on RayServices only in these namespaces; elsewhere the tests' own status
  # writer (tests/operator) marks RayServices Ready without Ray Pods.
  KUBERAY_WATCH_NAMESPACES=${LORAFLEET_KUBERAY_NAMESPACES:-lorafleet-e2e}
  rbac=$(dirname "$(kuberay_crd_dir)")/../rbac
  "$1" --kubeconfig "$2" create namespace kuberay-system --dry-run=client -o yaml \
    | "$1" --kubeconfig "$2" apply -f - > /dev/null
  "$1" --kubeconfig "$2" apply -f "$rbac/role.yaml" > /dev/null
  "$1" --kubeconfig "$2" apply -f - > /dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: kuberay-operator, namespace: kuberay-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kuberay-operator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kuberay-operator}
subjects: [{kind: ServiceAccount, name: kuberay-operator, namespace: kuberay-system}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kuberay-operator
  namespace: kuberay-system
  labels: {app.kubernetes.io/name: kuberay, app.kubernetes.io/component: kuberay-operator}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector:
    matchLabels: {app.kubernetes.io/name: kuberay, app.kubernetes.io/component: kuberay-operator}
  template:
    metadata:
      labels: {app.kubernetes.io/name: kuberay, app.kubernetes.io/component: kuberay-operator}
    spec:
      serviceAccountName: kuberay-operator
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      terminationGracePeriodSeconds: 10
      containers:
      - name: kuberay-operator
        image: $KUBERAY_IMAGE
        imagePullPolicy: Never
        args: [--metrics-addr=:8080, --health-probe-bind-address=:8082, --enable-leader-election=false, --log-stdout-encoder=console, --watch-namespace=$KUBERAY_WATCH_NAMESPACES]
        ports: [{name: http, containerPort: 8080, protocol: TCP}]
        readinessProbe: {httpGet: {path: /readyz, port: 8082}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /healthz, port: 8082}, initialDelaySeconds: 10, periodSeconds: 5, failureThreshold: 5}
        resources:
          requests: {cpu: 50m, memory: 128Mi}
          limits: {memory: 512Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}
YAML
}

node_wait_ready() {  # kubectl kubeconfig
  local i
  for ((i = 0; i < 300; i++)); do
    if [ "$("$1" --kubeconfig "$2" get node "$NODE_NAME" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; then
      break
    fi
    pid_alive "$(cat "$run_dir/kubelet.pid")" || { tail -n 40 "$run_dir/kubelet.log" >&2; die "kubelet exited (log: $run_dir/kubelet.log)"; }
    sleep 0.5
  done
  [ "$i" -lt 300 ] || { tail -n 40 "$run_dir/kubelet.log" >&2; die "node $NODE_NAME not Ready after 150 s (log: $run_dir/kubelet.log)"; }
  "$1" --kubeconfig "$2" -n kube-system rollout status deployment/coredns --timeout 180s >&2 \
    || { "$1" --kubeconfig "$2" -n kube-system describe pods -l k8s-app=kube-dns >&2; die "CoreDNS did not become ready"; }
  "$1" --kubeconfig "$2" -n kuberay-system rollout status deployment/kuberay-operator --timeout 180s >&2 \
    || { "$1" --kubeconfig "$2" -n kuberay-system describe pods >&2; die "the KubeRay operator did not become ready"; }
}

# ---------------------------------------------------------------------------------------------
# The images the node needs for itself: the Pod sandbox (pause) and CoreDNS, FROM scratch.

node_images() {  # kube-bin-dir coredns-bin-dir kuberay-bin-dir: sets *_IMAGE and *_ARCHIVE
  local out
  # Tagged by the binary's digest: a rebuilt binary is a new image, never a stale one.
  out=$("$here/scripts/image.sh" scratch test-pause "$(sha256sum < "$1/pause" | cut -c1-12)" "$1/pause")
  PAUSE_IMAGE=$(sed -n 's/^IMAGE=//p' <<< "$out")
  PAUSE_ARCHIVE=$(sed -n 's/^ARCHIVE=//p' <<< "$out")
  out=$("$here/scripts/image.sh" scratch test-coredns "$(sha256sum < "$2/coredns" | cut -c1-12)" "$2/coredns")
  COREDNS_IMAGE=$(sed -n 's/^IMAGE=//p' <<< "$out")
  COREDNS_ARCHIVE=$(sed -n 's/^ARCHIVE=//p' <<< "$out")
  out=$("$here/scripts/image.sh" scratch test-kuberay "$(sha256sum < "$3/ray-operator" | cut -c1-12)" "$3/ray-operator")
  KUBERAY_IMAGE=$(sed -n 's/^IMAGE=//p' <<< "$out")
  KUBERAY_ARCHIVE=$(sed -n 's/^ARCHIVE=//p' <<< "$out")
  [ -n "$PAUSE_IMAGE" ] && [ -n "$COREDNS_IMAGE" ] && [ -n "$KUBERAY_IMAGE" ] \
    || die "scripts/image.sh scratch printed no IMAGE="
}

# ---------------------------------------------------------------------------------------------
# Start and stop.

node_up() {  # kubectl kubeconfig kube-bin-dir
  local kubectl=$1 kubeconfig=$2 kbin=$3 cbin dnsbin raybin started=$SECONDS archive ref
  cbin=$(build_containerd)
  dnsbin=$(build_coredns)
  raybin=$(build_kuberay)
  node_images "$kbin" "$dnsbin" "$raybin"
  node_cgroups_up
  node_containerd_up "$cbin"
  node_load_image "$cbin/ctr" "$PAUSE_IMAGE" "$PAUSE_ARCHIVE"
  node_load_image "$cbin/ctr" "$COREDNS_IMAGE" "$COREDNS_ARCHIVE"
  node_load_image "$cbin/ctr" "$KUBERAY_IMAGE" "$KUBERAY_ARCHIVE"
  # More images for the tests (IMAGE=ARCHIVE pairs), e.g. the project's own.
  for archive in ${LORAFLEET_NODE_IMAGES:-}; do
    ref=${archive%%=*}
    node_load_image "$cbin/ctr" "$ref" "${archive#*=}"
  done
  node_addons "$kubectl" "$kubeconfig"
  node_kuberay "$kubectl" "$kubeconfig"
  node_kubelet_up "$kbin"
  node_proxy_up "$kbin"
  node_scheduler_up "$kbin"
  wait_for kube-proxy 60 curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" \
    || { tail -n 30 "$run_dir/kube-proxy.log" >&2; die "kube-proxy did not become healthy"; }
  node_wait_ready "$kubectl" "$kubeconfig"
  printf 'CONTAINERD_SOCK=%s\nCONTAINERD_BIN=%s\n' "$CONTAINERD_SOCK" "$cbin" >> "$run_dir/ports.env"
  log "node $NODE_NAME Ready with CoreDNS and the KubeRay operator in $((SECONDS - started)) s"
}

node_teardown() {  # run-folder: undo everything a node of that run did (safe to repeat)
  local dir=$1 sock cbin pid mnt
  stop_recorded "$dir" kube-scheduler
  stop_recorded "$dir" kubelet
  sock=$dir/containerd/containerd.sock
  cbin=$(sed -n 's/^CONTAINERD_BIN=//p' "$dir/ports.env" 2>/dev/null || true)
  [ -n "$cbin" ] || cbin=$(module_bin containerd "$module_dir/containerd" "$CONTAINERD_VERSION" 2>/dev/null || true)
  if [ -S "$sock" ] && [ -x "$cbin/crictl" ] && node_alive "$dir"; then
    # Every Pod sandbox stopped and removed through CRI: containers killed, CNI DEL run
    # (veth, IP, portmap rules released), network namespaces unmounted.
    timeout 120 "$cbin/crictl" --runtime-endpoint "unix://$sock" --timeout 60s rmp -af > /dev/null 2>&1 \
      || log "crictl rmp failed: killing what is left"
  fi
  stop_recorded "$dir" containerd
  # A containerd of this run not recorded in its pid file (restarted by hand, say).
  for pid in $(pgrep -f "bin/containerd --config $dir/containerd.toml" 2>/dev/null || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Shims outlive containerd by design; any left (and their containers) belong to this run.
  for pid in $(pgrep -f "containerd-shim-runc-v2.*$dir" 2>/dev/null || true) \
    $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $sock" 2>/dev/null || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  stop_recorded "$dir" kube-proxy
  # Mounts under the run folder: rootfs overlays, network namespaces, Pod volumes (tmpfs).
  while IFS= read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | grep -F "$dir/" | sort -r)
  # The machine-wide parts belong to whichever run owns the node now.
  if [ -f "$NODE_OWNER_FILE" ] && [ "$(cat "$NODE_OWNER_FILE")" != "$dir" ]; then
    log "the machine's node now belongs to $(cat "$NODE_OWNER_FILE"): its network is left alone"
    return 0
  fi
  node_network_down
  node_cgroups_down
  node_sysctl_restore "$dir"
  rm -f "$NODE_OWNER_FILE"
}
