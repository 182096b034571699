# Real nodes of the local cluster (TENANTGATE_REAL_NODES=1): containerd, runc,
# kubelet, kube-proxy and kube-router's firewall in a network namespace of this
# run, with CoreDNS and metrics-server as pods. Sourced by e2e/cluster/up and
# down after e2e/lib/common.sh, with C set; see e2e/cluster/README.md.
# shellcheck shell=bash

REAL_NODES=${TENANTGATE_REAL_NODES:-0}
[[ $REAL_NODES =~ ^[0-9]+$ ]] || die "TENANTGATE_REAL_NODES must be a number, not '$REAL_NODES'"
# Host-global names (network namespace, cgroups, CNI cache files) carry the run's id.
RUN_ID=$(printf '%s' "$TENANTGATE_RUN" | sha256sum | cut -c1-10)
NETNS=tg-$RUN_ID
NETNS_PATH=/run/netns/$NETNS
CNI_NETWORK=tg-$RUN_ID
CGROUP_ROOT=/tenantgate-$RUN_ID
NODE_NAME=real-node-0
# Addresses inside the namespace (private to it, so every run uses the same).
NODE_IP=10.250.0.1
NODE_GW=10.250.0.254 # no one answers there: packets for the outside die in the namespace
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
CLUSTER_DNS=10.96.0.10
N=$C/node
NODE_COMPONENTS=(containerd kubelet kube-proxy kube-router)
CGROUP_HIERARCHIES=(cpu cpuacct cpuset memory devices freezer blkio pids systemd hugetlb net_cls net_prio perf_event rdma misc)
# The kubelet evicts every pod once the disk under its root has less free than
# this. The node shares the host's disk with the builds beside it (a 250 GB disk
# whose 1% is 2.5 GB a cargo build can eat), so the threshold is an absolute
# amount, and node_prepare refuses to start with less than NODE_MIN_FREE_MB.
EVICTION_DISK=256Mi
NODE_MIN_FREE_MB=2048
# Directories the kubelet hard-codes, replaced inside its mount namespace by
# directories of this run (they must exist on the host as mount points).
KUBELET_HOST_DIRS=(/var/lib/kubelet /var/log/containers)

# in_ns COMMAND...: runs COMMAND in the node's network namespace. (Not `ip netns
# exec`: that remounts /sys and hides the cgroup hierarchies.)
in_ns() { nsenter --net="$NETNS_PATH" "$@"; }

node_packages() {
  local missing=()
  [[ -x /usr/sbin/runc ]] || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ipset >/dev/null || missing+=(ipset)
  command -v conntrack >/dev/null || missing+=(conntrack)
  [[ -x /bin/busybox ]] && /bin/busybox --list | grep -qx nc || missing+=(busybox-static)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

# node_prepare: before the API server starts. Creates the namespace and the two
# forwarders that join it to the host's loopback: NODE_IP:APISERVER_PORT inside
# -> the API server on 127.0.0.1, and the API server's egress (kubelets, pods,
# Services) through an HTTP CONNECT proxy on a unix socket.
node_prepare() {
  ((REAL_NODES == 1)) || die "TENANTGATE_REAL_NODES=$REAL_NODES: only 0 or 1 real node is supported"
  # containerd's sockets live under the run dir; a unix socket path has at most 104 bytes.
  local socket=$N/containerd/containerd.sock.ttrpc
  ((${#socket} <= 104)) ||
    die "TENANTGATE_RUN is too long for a real node: $socket would be ${#socket} bytes (unix sockets take 104); use a shorter path"
  local free_mb
  free_mb=$(df -Pm "$C" | awk 'NR == 2 {print $4}')
  ((free_mb >= NODE_MIN_FREE_MB)) ||
    die "a real node needs ${NODE_MIN_FREE_MB} MB free on the disk under $C; it has ${free_mb} MB"
  log "disk under $C: ${free_mb} MB free (pods are evicted below $EVICTION_DISK)"
  node_packages
  NODE_BIN=$("$E2E_DIR/cluster/build" node)
  echo "$NODE_BIN" >"$C/node-bin"
  # The API server's client certificate towards aggregated APIs (metrics-server).
  issue front-proxy-client "/CN=front-proxy-client" "$client_ext"
  mkdir -p "$N"/{logs,cni/net.d,cni/ipam,containerd,kubelet,pod-logs,var-lib-kubelet,log-containers,sysctl,runc}
  if [[ ! -e $NETNS_PATH ]]; then
    ip netns add "$NETNS"
  fi
  in_ns ip link set lo up
  in_ns ip link add eth0 type veth peer name eth0-peer
  in_ns ip addr add "$NODE_IP/24" dev eth0
  in_ns ip link set eth0 up
  in_ns ip link set eth0-peer up
  in_ns ip route add default via "$NODE_GW" dev eth0
  in_ns sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.ipv4.conf.all.route_localnet=1
  start_bg "$N" "$N/logs/apiserver-forward.log" "$N/apiserver-forward.pid" "$NODE_BIN/netns-forward" \
    -netns "$NETNS_PATH" -listen-in "$NODE_IP:$APISERVER_PORT" -dial "127.0.0.1:$APISERVER_PORT" \
    -addr-file "$N/apiserver-forward.addr"
  start_bg "$N" "$N/logs/egress-proxy.log" "$N/egress-proxy.pid" "$NODE_BIN/netns-forward" \
    -netns "$NETNS_PATH" -connect-proxy "$N/egress.sock" -addr-file "$N/egress-proxy.addr"
  wait_for "the namespace's forwarders" 10 test -s "$N/apiserver-forward.addr" -a -s "$N/egress-proxy.addr" ||
    die "netns-forward did not start (see $N/logs)"
  cat >"$C/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $N/egress.sock
EOF
}

# node_apiserver_args: the API server's extra flags with a real node.
node_apiserver_args() {
  printf '%s\n' --egress-selector-config-file "$C/egress-selector.yaml" \
    --kubelet-preferred-address-types InternalIP --advertise-address "$NODE_IP" \
    --requestheader-client-ca-file "$P/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key"
}
# node_kcm_args: kube-controller-manager's extra flags with a real node.
node_kcm_args() {
  printf '%s\n' --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24
  # The HPA acts on a 15 s metric resolution (metrics-server's, addons.yaml); it waits
  # 30 s instead of 5 minutes before scaling down, so a test sees the way down too.
  printf '%s\n' --horizontal-pod-autoscaler-sync-period 10s \
    --horizontal-pod-autoscaler-downscale-stabilization 30s
}

node_kubeconfig() { # node_kubeconfig NAME: like kubeconfig, but to the API server through the namespace
  kubeconfig "$1"
  sed -i "s#server: .*#server: https://$NODE_IP:$APISERVER_PORT#" "$C/$1.kubeconfig"
  mv "$C/$1.kubeconfig" "$N/$1.kubeconfig"
}

# run_node NAME ARGS...: starts NAME in the node's network namespace (see start_bg).
# Its PATH: the node's binaries (containerd's shims), then the system's
# (runc, iptables, ipset, conntrack, mount).
run_node() {
  local name=$1; shift
  PATH=$NODE_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    start_bg "$N" "$N/logs/$name.log" "$N/$name.pid" /usr/bin/nsenter --net="$NETNS_PATH" "$@"
}
await_node() { # await_node NAME TIMEOUT COMMAND...
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  failed_component=node/$name
  until "$@" >/dev/null 2>&1; do
    pidfile_alive "$N/$name.pid" || die "$name exited"
    ((SECONDS < deadline)) || die "$name was not ready after ${timeout}s"
    sleep 0.2
  done
  failed_component=""
}

# node_cgroups: the kubelet's cgroup root, in each cgroup v1 hierarchy (these
# machines), or with the root's controllers delegated on a cgroup2-only host.
node_cgroups() {
  local h d
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    d=/sys/fs/cgroup$CGROUP_ROOT
    mkdir -p "$d"
    for h in $(cat /sys/fs/cgroup/cgroup.subtree_control); do
      echo "+$h" >"$d/cgroup.subtree_control" 2>/dev/null || true
    done
    return 0
  fi
  for h in "${CGROUP_HIERARCHIES[@]}"; do
    [[ -d /sys/fs/cgroup/$h ]] || continue
    d=/sys/fs/cgroup/$h$CGROUP_ROOT
    mkdir -p "$d"
    if [[ $h == cpuset ]]; then
      cat "/sys/fs/cgroup/cpuset/cpuset.cpus" >"$d/cpuset.cpus"
      cat "/sys/fs/cgroup/cpuset/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}

node_containerd() {
  local ctrd=$N/containerd
  mkdir -p "$ctrd"/{root,state}
  cat >"$ctrd/config.toml" <<EOF
version = 3
root = "$ctrd/root"
state = "$ctrd/state"
# Plugins that would write outside this run's directory.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri", "io.containerd.image-verifier.v1.bindir", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$ctrd/containerd.sock"
[ttrpc]
  address = "$ctrd/containerd.sock.ttrpc"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$(node_image pause)"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$ctrd/certs.d"
[plugins."io.containerd.cri.v1.runtime"]
  # This VM's processes lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  # No AppArmor profile of ours is loaded on hosts that have AppArmor.
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = ["$ctrd/cdi"]
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$N/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$N/runc"
        SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
  cat >"$N/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  run_node containerd "$NODE_BIN/containerd" --config "$ctrd/config.toml"
  await_node containerd 30 test -S "$ctrd/containerd.sock"
  await_node containerd 30 "$NODE_BIN/ctr" --address "$ctrd/containerd.sock" version
}

node_ctr() { "$(cat "$C/node-bin")/ctr" --address "$N/containerd/containerd.sock" -n k8s.io "$@"; }

# node_load_images FILE...: imports image archives into the node's containerd.
node_load_images() {
  local f out
  for f in "$@"; do
    # (ctr warns on stderr, every time, that cgroup v1 is deprecated.)
    out=$(node_ctr images import --snapshotter overlayfs "$f" 2>&1) ||
      die "importing $f into $NODE_NAME failed: $out"
  done
}

node_kubelet() {
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client_ext"
  issue kube-proxy "/CN=system:kube-proxy" "$client_ext"
  issue kube-router "/O=system:masters/CN=kube-router" "$client_ext"
  node_kubeconfig kubelet
  node_kubeconfig kube-proxy
  node_kubeconfig kube-router
  printf 'nameserver %s\n' "$NODE_GW" >"$N/resolv.conf"
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
cgroupsPerQOS: true
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$N/containerd/containerd.sock
podLogsDir: $N/pod-logs
resolvConf: $N/resolv.conf
clusterDNS: [$CLUSTER_DNS]
clusterDomain: cluster.local
staticPodPath: ""
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard: {memory.available: "100Mi", nodefs.available: "$EVICTION_DISK", imagefs.available: "$EVICTION_DISK", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 10s
maxPods: 110
podPidsLimit: 4096
registerNode: true
protectKernelDefaults: false
makeIPTablesUtilChains: true
localStorageCapacityIsolation: true
EOF
  # The values the kubelet writes to host-wide sysctls, on files bind-mounted
  # over them inside its own mount namespace (the host's stay as they are).
  local s
  mkdir -p "$N/sysctl/vm" "$N/sysctl/kernel/keys"
  for s in vm/overcommit_memory:1 vm/panic_on_oom:0 kernel/panic:10 kernel/panic_on_oops:1 \
    kernel/keys/root_maxkeys:1000000 kernel/keys/root_maxbytes:25000000; do
    echo "${s#*:}" >"$N/sysctl/${s%%:*}"
  done
  # The kubelet's root dir: a shared mount, so the volumes it mounts there
  # (in its own mount namespace) reach containerd's.
  mountpoint -q "$N/kubelet" || mount --bind "$N/kubelet" "$N/kubelet"
  mount --make-shared "$N/kubelet"
  local d
  for d in "${KUBELET_HOST_DIRS[@]}"; do
    [[ -d $d ]] || { mkdir -p "$d" && echo "$d" >>"$N/created-host-dirs"; }
  done
  cat >"$N/kubelet-ns.sh" <<EOF
#!/bin/sh
# Runs inside the kubelet's mount namespace: makes the mounts below private to
# it (only the kubelet's root dir stays shared), then execs the kubelet.
set -e
mount --make-private /
mount --make-private /proc
$(for s in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
    echo "mount --bind $N/sysctl/$s /proc/sys/$s"
  done)
mount --bind $N/var-lib-kubelet /var/lib/kubelet
mount --bind $N/log-containers /var/log/containers
exec "\$@"
EOF
  chmod +x "$N/kubelet-ns.sh"
  run_node kubelet /usr/bin/unshare -m --propagation unchanged \
    "$N/kubelet-ns.sh" "$NODE_BIN/kubelet" --config "$N/kubelet.yaml" \
    --kubeconfig "$N/kubelet.kubeconfig" --root-dir "$N/kubelet" --cert-dir "$N/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels tenantgate.dev/node=real --v 1
}

node_proxy() {
  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $N/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0: leave the host-wide conntrack table size and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  run_node kube-proxy "$NODE_BIN/kube-proxy" --config "$N/kube-proxy.yaml" --v 1
}

# node_firewall: kube-router identifies its node by name: start it once the
# node is registered.
node_firewall() {
  run_node kube-router "$NODE_BIN/kube-router" --kubeconfig "$N/kube-router.kubeconfig" \
    --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false \
    --run-service-proxy=false --enable-cni=false --health-port 20244 --metrics-port 0 \
    --iptables-sync-period 1m
}

real_nodes_ready() {
  [[ $("${KUBECTL[@]}" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

node_addons() {
  sed -e "s#@COREDNS_IMAGE@#$(node_image coredns)#" -e "s#@METRICS_SERVER_IMAGE@#$(node_image metrics-server)#" \
    -e "s#@CLUSTER_DNS@#$CLUSTER_DNS#" "$E2E_DIR/cluster/addons.yaml" | "${KUBECTL[@]}" apply -f - >/dev/null
}

# node_start: after the control plane is up.
node_start() {
  local t0=$SECONDS
  NODE_BIN=$(cat "$C/node-bin")
  node_cgroups
  node_containerd
  node_load_images "$NODE_BIN"/images/*.tar
  node_kubelet
  node_proxy
  await_node kubelet 60 real_nodes_ready
  date +%s >"$C/node-ready-at"
  node_firewall
  await_node kube-router 30 in_ns curl -sf --max-time 2 http://127.0.0.1:20244/healthz
  await_node kube-proxy 30 in_ns curl -sf --max-time 2 http://127.0.0.1:10256/healthz
  log "node $NODE_NAME Ready $((SECONDS - t0))s after containerd started"
  node_addons
  await_node kubelet 120 "${KUBECTL[@]}" -n kube-system wait --for=condition=Available --timeout=2s deployment/coredns
  log "CoreDNS Available $((SECONDS - t0))s after containerd started"
  # Until metrics.k8s.io answers, the namespace controller cannot finish any
  # namespace deletion (NamespaceDeletionDiscoveryFailure), and the HPA has no
  # data: wait for it (metrics-server is Ready after its first scrape).
  await_node kubelet 180 "${KUBECTL[@]}" wait --for=condition=Available --timeout=2s \
    apiservice/v1beta1.metrics.k8s.io
  log "metrics.k8s.io Available $((SECONDS - t0))s after containerd started"
}

node_healthy() {
  local c
  for c in "${NODE_COMPONENTS[@]}" apiserver-forward egress-proxy; do pidfile_alive "$N/$c.pid" || return 1; done
  real_nodes_ready
}

# node_pids_in_cgroups: the processes in the run's cgroups (the pods').
node_pids_in_cgroups() {
  local d
  for d in /sys/fs/cgroup$CGROUP_ROOT /sys/fs/cgroup/*"$CGROUP_ROOT"; do
    [[ -d $d ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

# node_stop: stops everything of the node by PID and removes what it wrote
# outside the run's directory. Safe to call when nothing runs.
node_stop() {
  local c pid pidf sock shims=() socks=() pids=()
  [[ -d $N ]] || { [[ -e $NETNS_PATH ]] && ip netns del "$NETNS"; return 0; }
  for c in kube-router kube-proxy kubelet; do stop_our_pidfile "$N/$c.pid"; done
  # The containers' ids: libcni's cache files are named NETWORK-ID-IFNAME, a
  # shim's socket /run/containerd/s/<sha256 of ADDRESS/NAMESPACE/SANDBOX-ID>.
  local ids=()
  if pidfile_alive "$N/containerd.pid"; then
    mapfile -t ids < <(node_ctr containers ls -q 2>/dev/null)
  fi
  local task_dir=$N/containerd/state/io.containerd.runtime.v2.task/k8s.io
  [[ -d $task_dir ]] && mapfile -t -O "${#ids[@]}" ids < <(ls "$task_dir")
  # The containerd shims of this run (their command line names its socket) and
  # the unix sockets they listen on under /run/containerd/s.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $N/containerd/containerd.sock" || true); do
    pid_is_ours "$pid" && shims+=("$pid")
  done
  if ((${#shims[@]})); then
    mapfile -t socks < <(ss -xlpn 2>/dev/null | grep -E "pid=($(IFS='|'; echo "${shims[*]}"))," |
      grep -o '/run/containerd/s/[0-9a-f]*' | sort -u)
  fi
  # The pods' processes: whatever runs in the run's cgroups.
  for _ in 1 2 3; do
    mapfile -t pids < <(node_pids_in_cgroups)
    ((${#pids[@]})) || break
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.3
  done
  stop_our_pidfile "$N/containerd.pid"
  for pid in "${shims[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  local id
  for id in "${ids[@]}"; do
    for sock in "$N/containerd/containerd.sock/k8s.io/$id" "$N/containerd/containerd.sock/k8s.io/$id/debug"; do
      socks+=("/run/containerd/s/$(printf '%s' "$sock" | sha256sum | cut -c1-64)")
    done
  done
  for sock in "${socks[@]}"; do rm -f "$sock"; done
  for c in egress-proxy apiserver-forward; do stop_our_pidfile "$N/$c.pid"; done
  for pidf in "$N"/expose/*.pid; do stop_our_pidfile "$pidf"; done
  # Mounts under the run's directory: container root filesystems, volumes,
  # pod network namespaces, the kubelet's root dir.
  local mounts=()
  mapfile -t mounts < <(findmnt -rn -o TARGET | grep -F "$N/" | sort -r)
  for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
  mountpoint -q "$N/kubelet" && umount -l "$N/kubelet"
  rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
  for id in "${ids[@]}"; do rm -f /var/lib/cni/results/*-"$id"-*; done
  rmdir /var/lib/cni/results /var/lib/cni /run/containerd/s /run/containerd 2>/dev/null || true
  # (runc also creates the pods' cgroups in the cgroup2 hierarchy, "unified".)
  local d
  for d in /sys/fs/cgroup$CGROUP_ROOT /sys/fs/cgroup/*"$CGROUP_ROOT"; do
    [[ -d $d ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  [[ -e $NETNS_PATH ]] && ip netns del "$NETNS"
  # Mount points created for the kubelet: removed once no other run's node uses them.
  if [[ -f $N/created-host-dirs ]] && ! ip netns list | grep -q '^tg-'; then
    while read -r d; do rmdir "$d" 2>/dev/null || true; done <"$N/created-host-dirs"
    rmdir /var/lib/kubelet 2>/dev/null || true
  fi
  return 0
}
