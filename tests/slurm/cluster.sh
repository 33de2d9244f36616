#!/usr/bin/env bash
# A real Slurm test cluster on one machine, from Debian's packages.
#
#   tests/slurm/cluster.sh up       install what is missing, start munged + slurmctld + N slurmd, wait until idle
#   tests/slurm/cluster.sh down     stop exactly what `up` started and remove everything it created
#   tests/slurm/cluster.sh status   show daemons/nodes; exit 0 only if the cluster is healthy
#   tests/slurm/cluster.sh env      print the exports a test needs:  eval "$(tests/slurm/cluster.sh env)"
#
# Layout: a bridge (ckptbr0, 10.77.0.1/24, controller side, in the host's network namespace) and one
# network namespace per node (ckpt-n1, ckpt-n2, ...; node i has 10.77.0.(10+i) and hostname node<i>),
# connected by veth pairs. slurmctld runs on the host, bound to the bridge address in slurm.conf; each
# slurmd runs in its node's network namespace and in its own UTS namespace (own hostname). Our own
# munged with its own key and socket runs under the state directory; a system munge is never touched.
# Everything `up` creates is recorded in $STATE/created and removed by `down` in reverse order.
#
# Settings (environment):
#   CKPT_SLURM_STATE       state dir (default /run/ckpt-slurm); everything of the cluster lives there
#   CKPT_SLURM_NODES       number of compute nodes (default 2)
#   CKPT_SLURM_NET         first three octets of the private /24 (default 10.77.0)
#   CKPT_SLURM_BRIDGE      bridge name (default ckptbr0)
#   CKPT_SLURM_NODE_PREFIX node name prefix (default node -> node1, node2, ...)
#   CKPT_SLURM_CTLD_PORT   slurmctld port on the host (default 6817)
#   CKPT_SLURM_CPUS        CPUs declared per node (default min(2, nproc))
#   CKPT_SLURM_MEM         RealMemory (MB) declared per node (default 1000)
#   CKPT_SLURM_GRACE       GraceTime of the low partition in s (default 30)
#   CKPT_SLURM_KILLWAIT    KillWait in s (default 5)
#   CKPT_SLURM_MINJOBAGE   MinJobAge in s (default 60)
#   CKPT_SLURM_CRED_EXPIRE munge cred_expire in s; a requeued job waits this + 1 s (default 10)
#   CKPT_SLURM_UP_TIMEOUT  seconds to wait for idle nodes (default 60)
#   CKPT_SLURM_SCHED_PARAMS SchedulerParameters (default sched_interval=5)
#   CKPT_SLURM_KEEP_ON_FAIL=1  leave a failed `up` in place for debugging (default: tear it down)
#   CKPT_PLUGSTACK_LINE    written into plugstack.conf (e.g. "required /path/ckpt_spank.so arg=...")
set -euo pipefail
umask 022

SELF=$(readlink -f "${BASH_SOURCE[0]}")
STATE=${CKPT_SLURM_STATE:-/run/ckpt-slurm}
STATE=${STATE%/}
N=${CKPT_SLURM_NODES:-2}
NET=${CKPT_SLURM_NET:-10.77.0}
BR=${CKPT_SLURM_BRIDGE:-ckptbr0}
NODE_PREFIX=${CKPT_SLURM_NODE_PREFIX:-node}
NS_PREFIX=ckpt-n
CTLD_PORT=${CKPT_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=6818
NPROC=$(nproc 2>/dev/null || echo 1)
CPUS=${CKPT_SLURM_CPUS:-$(( NPROC < 2 ? NPROC : 2 ))}
MEM=${CKPT_SLURM_MEM:-1000}
GRACE=${CKPT_SLURM_GRACE:-30}
KILLWAIT=${CKPT_SLURM_KILLWAIT:-5}
MINJOBAGE=${CKPT_SLURM_MINJOBAGE:-60}
CRED_EXPIRE=${CKPT_SLURM_CRED_EXPIRE:-10}
UP_TIMEOUT=${CKPT_SLURM_UP_TIMEOUT:-60}
# a requeued job becomes eligible cred_expire+1 s later, and then only a periodic scheduler pass starts
# it: the main loop runs every 60 s by default (measured: requeue->running 26-56 s with the defaults,
# 56 s with bf_interval=5 -- backfill did not pick it up -- and 11-12 s with sched_interval=5)
SCHED_PARAMS=${CKPT_SLURM_SCHED_PARAMS:-sched_interval=5}
CTLD_ADDR=$NET.1
MARK="# ckpt-slurm $STATE"        # marks our /etc/hosts lines and iptables rule
RECORD=$STATE/created
OWNER_MARK=$STATE/.ckpt-slurm-state

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

node_name() { echo "$NODE_PREFIX$1"; }
ns_name()   { echo "$NS_PREFIX$1"; }
node_addr() { echo "$NET.$((10 + $1))"; }

validate() {
    [[ $N =~ ^[0-9]+$ ]] && (( N >= 1 && N <= 200 )) || die "CKPT_SLURM_NODES must be 1..200 (got '$N')"
    [[ $NET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "CKPT_SLURM_NET must look like 10.77.0 (got '$NET')"
    [[ $STATE == /* && $STATE != / ]] || die "CKPT_SLURM_STATE must be an absolute path other than / (got '$STATE')"
    (( ${#BR} <= 15 )) || die "bridge name too long: $BR"
}

# ---------------------------------------------------------------------------------------------
# bookkeeping: every created object is recorded *before* it is created, removed in reverse order

record() { printf '%s\n' "$*" >>"$RECORD"; }

# /proc/PID/stat fields after "comm)": 1=state ... 20=starttime
proc_field() { local s f; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; read -ra f <<<"$s"; echo "${f[$2 - 1]}"; }
proc_start() { proc_field "$1" 20; }
# alive = exists, is not a zombie (PID 1 here reaps lazily), and has the recorded start time
proc_alive() {
    local pid=$1 start=${2:-} st
    st=$(proc_field "$pid" 1) || return 1
    [[ $st != Z && $st != X ]] || return 1
    [[ -z $start ]] || [[ $(proc_start "$pid") == "$start" ]]
}

record_pid() { # name pid
    local start; start=$(proc_start "$2") || die "$1 (pid $2) died right after start"
    record "pid $1 $2 $start"
}

# wait for a daemon's pid file, return the pid
wait_pidfile() { # file name timeout
    local f=$1 name=$2 t=${3:-10} pid deadline
    deadline=$(( $(date +%s) + t ))
    while (( $(date +%s) <= deadline )); do
        if [[ -s $f ]]; then pid=$(tr -dc 0-9 <"$f"); if [[ -n $pid ]] && proc_alive "$pid"; then echo "$pid"; return 0; fi; fi
        sleep 0.05
    done
    log "$name did not write a live pid to $f within ${t}s"; return 1
}

kill_wait() { # timeout pid:start ...   SIGTERM, wait, then SIGKILL
    local t=$1; shift
    local p pid start left deadline
    for p in "$@"; do pid=${p%%:*}; start=${p#*:}; proc_alive "$pid" "$start" && kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$(( $(date +%s%N) / 1000000 + t * 1000 ))
    while :; do
        left=()
        for p in "$@"; do pid=${p%%:*}; start=${p#*:}; proc_alive "$pid" "$start" && left+=("$p"); done
        (( ${#left[@]} )) || return 0
        (( $(date +%s%N) / 1000000 < deadline )) || break
        sleep 0.05
    done
    for p in "${left[@]}"; do pid=${p%%:*}; log "pid $pid did not exit on SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; done
    deadline=$(( $(date +%s) + 5 ))
    for p in "${left[@]}"; do pid=${p%%:*}; start=${p#*:}
        while proc_alive "$pid" "$start" && (( $(date +%s) < deadline )); do sleep 0.05; done
    done
}

# pids of every process inside one of our network namespaces (slurmd, slurmstepd, job tasks, ...)
netns_procs() { # ns -> "pid:start" lines
    local pid s
    [[ -e /run/netns/$1 ]] || return 0
    for pid in $(ip netns pids "$1" 2>/dev/null); do s=$(proc_start "$pid") && echo "$pid:$s"; done
}

hosts_remove() {
    grep -qF -- "$MARK" /etc/hosts 2>/dev/null || return 0
    local tmp; tmp=$(mktemp)
    grep -vF -- "$MARK" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts      # rewrite in place: /etc/hosts may be a bind mount (no rename)
    rm -f "$tmp"
}

iptables_rule() { # -I|-D|-C
    iptables -w "$1" FORWARD -i "$BR" -o "$BR" -m comment --comment "ckpt-slurm $STATE" -j ACCEPT 2>/dev/null
}

do_down() {
    local t0; t0=$(now)
    if [[ ! -e $OWNER_MARK ]]; then
        [[ -e /sys/class/net/$BR ]] && log "note: $BR exists but is not recorded under $STATE; leaving it alone"
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX" || true); do
            log "note: netns $ns exists but is not recorded under $STATE; leaving it alone"
        done
        log "down: nothing recorded under $STATE (already down)"
        return 0
    fi
    local lines=() kind a b c i procs=() daemons=()
    mapfile -t lines <"$RECORD" 2>/dev/null || true
    # 1. everything running inside our namespaces (slurmd, slurmstepd, jobs), then host daemons
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r kind a b c <<<"${lines[i]}"
        [[ $kind == netns ]] && mapfile -t -O "${#procs[@]}" procs < <(netns_procs "$a")
    done
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r kind a b c <<<"${lines[i]}"
        [[ $kind == pid && $a == slurmd-* ]] && procs+=("$b:$c")
    done
    (( ${#procs[@]} )) && kill_wait 3 "${procs[@]}"
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r kind a b c <<<"${lines[i]}"
        [[ $kind == pid && $a == slurmctld ]] && kill_wait 5 "$b:$c"
    done
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r kind a b c <<<"${lines[i]}"
        [[ $kind == pid && $a == munged ]] && kill_wait 5 "$b:$c"
    done
    # 2. the rest, newest first
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r kind a b c <<<"${lines[i]}"
        case $kind in
            netns)    [[ -e /run/netns/$a ]] && { ip netns del "$a" || log "could not delete netns $a"; } ;;
            link)     [[ -e /sys/class/net/$a ]] && { ip link del "$a" || log "could not delete link $a"; } ;;
            hosts)    hosts_remove ;;
            iptables) while iptables_rule -C; do iptables_rule -D || break; done ;;
        esac
    done
    rm -rf -- "$STATE"
    log "down: done in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------------------------------------
# installation

install_missing() {
    local need=() c p
    local -A pkg_of=([slurmctld]=slurmctld [slurmd]=slurmd [sinfo]=slurm-client [srun]=slurm-client
                     [munged]=munge [mungekey]=munge [ip]=iproute2 [ss]=iproute2 [nsenter]=util-linux
                     [unshare]=util-linux [flock]=util-linux [runuser]=util-linux [pgrep]=procps)
    for c in "${!pkg_of[@]}"; do
        command -v "$c" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null 2>&1 || need+=("${pkg_of[$c]}")
    done
    (( ${#need[@]} )) || return 0
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
    local t0; t0=$(now)
    log "installing: ${need[*]}"
    # keep package scripts from starting services (slurmctld, slurmd, munge) as a side effect
    local made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, created by ckpt tests/slurm/cluster.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    local rc=0 updated=
    for p in "${need[@]}"; do
        if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then updated=1; break; fi
    done
    [[ -z $updated ]] || DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || rc=$?
    if (( rc == 0 )); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${need[@]}" >&2 || rc=$?
        if (( rc != 0 )) && [[ -z $updated ]]; then   # stale lists (404s): update once and retry
            rc=0; DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || rc=$?
            (( rc )) || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${need[@]}" >&2 || rc=$?
        fi
    fi
    [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
    (( rc == 0 )) || die "apt-get failed (exit $rc) installing ${need[*]}"
    log "installed in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------------------------------------
# up

preflight() {
    local i n problems=()
    [[ -e /sys/class/net/$BR ]] && problems+=("network interface $BR already exists")
    for ((i = 1; i <= N; i++)); do
        [[ -e /run/netns/$(ns_name $i) ]] && problems+=("netns $(ns_name $i) already exists")
        [[ -e /sys/class/net/ckpt-h$i ]] && problems+=("network interface ckpt-h$i already exists")
        n=$(node_name $i)
        if grep -v '^[[:space:]]*#' /etc/hosts | grep -vF -- "$MARK" | grep -qwF -- "$n"; then
            problems+=("/etc/hosts already has an entry for $n")
        fi
    done
    if ip -4 -o addr show | awk '{print $4}' | grep -q "^${NET//./\\.}\."; then
        problems+=("address in $NET.0/24 already configured on this host: $(ip -4 -o addr show | awk -v n="$NET." 'index($4,n)==1{print $2" "$4}' | tr '\n' ' ')")
    fi
    if ip -4 -o route show | awk '{print $1}' | grep -q "^${NET//./\\.}\."; then
        problems+=("a route into $NET.0/24 already exists: $(ip -4 -o route show | grep "^${NET//./\\.}\." | head -3 | tr '\n' ';')")
    fi
    if ss -Hltn "sport = :$CTLD_PORT" 2>/dev/null | grep -q .; then
        problems+=("TCP port $CTLD_PORT is already in use on the host (set CKPT_SLURM_CTLD_PORT)")
    fi
    if (( ${#problems[@]} )); then
        for i in "${problems[@]}"; do log "conflict: $i"; done
        die "refusing to start: something not ours is in the way (see above)"
    fi
}

write_conf() {
    local i ctl_host
    ctl_host=$(hostname -s 2>/dev/null || cat /proc/sys/kernel/hostname)
    ctl_host=${ctl_host%%.*}
    cat >"$STATE/etc/slurm.conf" <<EOF
# generated by tests/slurm/cluster.sh -- ckpt test cluster (Slurm 22.05)
ClusterName=ckpt
SlurmctldHost=$ctl_host($CTLD_ADDR)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.sock,cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=$SCHED_PARAMS
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MailProg=/bin/true
PlugStackConfig=$STATE/etc/plugstack.conf
MinJobAge=$MINJOBAGE
KillWait=$KILLWAIT
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
EOF
    for ((i = 1; i <= N; i++)); do
        echo "NodeName=$(node_name $i) NodeAddr=$(node_addr $i) NodeHostname=$(node_name $i) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
    done >>"$STATE/etc/slurm.conf"
    cat >>"$STATE/etc/slurm.conf" <<EOF
PartitionName=low  Nodes=ALL Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE MaxTime=INFINITE State=UP
PartitionName=high Nodes=ALL Default=NO  PriorityTier=2 PreemptMode=OFF MaxTime=INFINITE State=UP
EOF
    : >"$STATE/etc/plugstack.conf"
    [[ -z ${CKPT_PLUGSTACK_LINE:-} ]] || printf '%s\n' "$CKPT_PLUGSTACK_LINE" >"$STATE/etc/plugstack.conf"
}

write_env() {
    local i nodes=()
    for ((i = 1; i <= N; i++)); do nodes+=("$(node_name $i)"); done
    cat <<EOF
export SLURM_CONF=$STATE/etc/slurm.conf
export CKPT_SLURM_STATE=$STATE
export CKPT_SLURM_NODES=$N
export CKPT_SLURM_NODE_NAMES='${nodes[*]}'
export CKPT_SLURM_NODELIST=$NODE_PREFIX[1-$N]
export CKPT_SLURM_CTLD_ADDR=$CTLD_ADDR
export CKPT_SLURM_MUNGE_SOCKET=$STATE/munge/munge.sock
export CKPT_SLURM_GRACE=$GRACE
export CKPT_SLURM_KILLWAIT=$KILLWAIT
export CKPT_SLURM_CRED_EXPIRE=$CRED_EXPIRE
export CKPT_SLURM_LOGDIR=$STATE/log
EOF
}

show_logs() {
    local f
    for f in "$STATE"/munge/munged.log "$STATE"/log/slurmctld.log "$STATE"/log/slurmd-*.log; do
        [[ -e $f ]] || continue
        echo "----- tail -n 25 $f" >&2
        tail -n 25 "$f" >&2 || true
    done
}

nodes_idle() { # -> number of our nodes in state idle
    SLURM_CONF=$STATE/etc/slurm.conf sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | awk '$2=="idle"' | wc -l
}

healthy() {
    [[ -e $OWNER_MARK && -s $RECORD ]] || return 1
    local kind a b c
    while read -r kind a b c; do
        [[ $kind == pid ]] || continue
        proc_alive "$b" "$c" || return 1
    done <"$RECORD"
    SLURM_CONF=$STATE/etc/slurm.conf scontrol ping 2>/dev/null | grep -q 'is UP'
}

do_up() {
    local t0 i ns host vnode addr pid
    up_ok=
    t0=$(now)
    if [[ -e $OWNER_MARK ]]; then
        if healthy; then log "up: already up (state $STATE)"; return 0; fi
        log "up: found a stale or broken cluster under $STATE; tearing it down first"
        do_down
    elif [[ -e $STATE ]] && [[ -n $(ls -A "$STATE" 2>/dev/null) ]]; then
        die "$STATE exists, is not empty and is not a ckpt-slurm state dir; refusing to use it"
    fi
    install_missing
    preflight

    mkdir -p "$STATE"
    chmod 755 "$STATE"
    echo "ckpt tests/slurm/cluster.sh state, created $(date -Is)" >"$OWNER_MARK"
    : >"$RECORD"
    # from here on, any failure tears down what was created (unless CKPT_SLURM_KEEP_ON_FAIL=1)
    trap 'rc=$?; if [[ -z $up_ok ]]; then log "up failed (exit $rc)"; show_logs; if [[ ${CKPT_SLURM_KEEP_ON_FAIL:-} == 1 ]]; then log "leaving it up for debugging; run: $SELF down"; else do_down; fi; fi' EXIT
    mkdir -p "$STATE"/{etc,munge,run,log,spool/ctld}
    for ((i = 1; i <= N; i++)); do mkdir -p "$STATE/spool/d-$(node_name $i)"; done
    chmod 755 "$STATE/munge"   # clients need o+x on the socket's directory

    # munge: own key, own socket; a system munged (if any) is left alone
    mungekey --create --keyfile="$STATE/munge/munge.key" --bits=1024 2>/dev/null ||
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1 count=1024 status=none
    chmod 600 "$STATE/munge/munge.key"
    munged --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.sock" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed" </dev/null >>"$STATE/munge/munged.out" 2>&1 9<&-
    pid=$(wait_pidfile "$STATE/munge/munged.pid" munged 10)
    record_pid munged "$pid"
    munge -S "$STATE/munge/munge.sock" -n | unmunge -S "$STATE/munge/munge.sock" >/dev/null ||
        die "munge/unmunge round trip through $STATE/munge/munge.sock failed"

    # network: bridge on the host (controller side) + one netns per node
    record "link $BR"
    ip link add "$BR" type bridge
    [[ -w /proc/sys/net/ipv6/conf/$BR/disable_ipv6 ]] && echo 1 >"/proc/sys/net/ipv6/conf/$BR/disable_ipv6"
    ip addr add "$CTLD_ADDR/24" dev "$BR"
    ip link set "$BR" up
    for ((i = 1; i <= N; i++)); do
        ns=$(ns_name $i); host=ckpt-h$i; vnode=ckpt-v$i; addr=$(node_addr $i)
        record "netns $ns"
        ip netns add "$ns"
        record "link $host"
        ip link add "$host" type veth peer name "$vnode"
        [[ -w /proc/sys/net/ipv6/conf/$host/disable_ipv6 ]] && echo 1 >"/proc/sys/net/ipv6/conf/$host/disable_ipv6"
        ip link set "$host" master "$BR"
        ip link set "$host" up
        ip link set "$vnode" netns "$ns"
        ip -n "$ns" link set "$vnode" name eth0
        ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6' 2>/dev/null || true
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
    # br_netfilter + a FORWARD policy of DROP (e.g. Docker's) drops node<->node traffic on the bridge
    if [[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null) == 1 ]] && command -v iptables >/dev/null; then
        if ! iptables_rule -C; then record "iptables forward $BR"; iptables_rule -I || log "warning: could not add an iptables FORWARD accept rule for $BR"; fi
    fi

    # hostnames resolvable everywhere (host and nodes share /etc/hosts)
    record "hosts"
    { for ((i = 1; i <= N; i++)); do printf '%s\t%s\t%s\n' "$(node_addr $i)" "$(node_name $i)" "$MARK"; done; } >>/etc/hosts

    write_conf
    write_env >"$STATE/env"
    export SLURM_CONF=$STATE/etc/slurm.conf

    slurmctld -f "$SLURM_CONF" -c -i </dev/null >>"$STATE/log/slurmctld.out" 2>&1 9<&-
    pid=$(wait_pidfile "$STATE/run/slurmctld.pid" slurmctld 10)
    record_pid slurmctld "$pid"
    for ((i = 1; i <= N; i++)); do
        # nsenter --net, not `ip netns exec`: the latter remounts /sys, hiding /sys/fs/cgroup, and
        # 22.05's slurmd then fails to initialize its cgroup plugin (slurm.md 2e.1)
        nsenter --net="/run/netns/$(ns_name $i)" unshare --uts sh -c \
            'echo "$1" >/proc/sys/kernel/hostname && shift && exec "$@"' sh "$(node_name $i)" \
            slurmd -f "$SLURM_CONF" -N "$(node_name $i)" </dev/null >>"$STATE/log/slurmd-$(node_name $i).out" 2>&1 9<&-
        pid=$(wait_pidfile "$STATE/run/slurmd-$(node_name $i).pid" "slurmd $(node_name $i)" 10)
        record_pid "slurmd-$(node_name $i)" "$pid"
    done

    local deadline=$(( $(date +%s) + UP_TIMEOUT )) idle=0
    while (( (idle = $(nodes_idle)) < N )); do
        if (( $(date +%s) >= deadline )); then
            log "timeout: only $idle of $N nodes idle after ${UP_TIMEOUT}s"
            sinfo -N -l >&2 2>&1 || true
            exit 1
        fi
        sleep 0.1
    done
    up_ok=1
    trap - EXIT
    log "up: $N nodes idle in $(elapsed "$t0") s (state $STATE)"
    sinfo >&2
}

do_status() {
    if [[ ! -e $OWNER_MARK ]]; then echo "down (no state under $STATE)"; return 1; fi
    local kind a b c rc=0
    while read -r kind a b c; do
        case $kind in
            pid) if proc_alive "$b" "$c"; then echo "$a: running (pid $b)"; else echo "$a: NOT running (pid $b)"; rc=1; fi ;;
            netns) [[ -e /run/netns/$a ]] && echo "netns $a: present" || { echo "netns $a: MISSING"; rc=1; } ;;
            link) [[ -e /sys/class/net/$a ]] && echo "link $a: present" || { echo "link $a: MISSING"; rc=1; } ;;
        esac
    done <"$RECORD"
    SLURM_CONF=$STATE/etc/slurm.conf sinfo -N 2>&1 || rc=1
    SLURM_CONF=$STATE/etc/slurm.conf squeue 2>&1 || rc=1
    return $rc
}

main() {
    local cmd=${1:-}
    validate
    case $cmd in
        up|down)
            [[ $(id -u) == 0 ]] || die "$cmd must run as root"
            exec 9<"$SELF"   # serialize up/down; daemons get 9<&- so they never hold the lock
            flock -w 600 9 || die "could not lock $SELF"
            "do_$cmd" ;;
        status) do_status ;;
        env)
            if [[ -s $STATE/env ]]; then cat "$STATE/env"; else log "note: cluster not up; printing the settings \`up' would use"; write_env; fi ;;
        *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
    esac
}

main "$@"
