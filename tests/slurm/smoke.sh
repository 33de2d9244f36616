#!/usr/bin/env bash
# Smoke test of the test cluster (tests/slurm/cluster.sh): brings it up, runs jobs as a non-root
# user, checks partition-priority preemption with requeue, tears it down, checks that nothing is
# left behind, and does a second up/down cycle. Must run as root. Last line: "N passed, N failed".
#
#   tests/slurm/smoke.sh            (honours the CKPT_SLURM_* settings of cluster.sh)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER=$HERE/cluster.sh
TUSER=${CKPT_SLURM_TEST_USER:-ckpttest}
PASS=0 FAIL=0 CREATED_USER= FAILED_NAMES=()
ERRLOG=$(mktemp /tmp/ckpt-slurm-smoke.XXXXXX)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN{printf "%.1f", b-a}'; }
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
nok()  { FAIL=$((FAIL + 1)); FAILED_NAMES+=("$1"); echo "FAIL - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
info() { echo "#      $*"; }

finish() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n ${JOB_LOW:-} ]] && scancel "$JOB_LOW" 2>/dev/null
    [[ -n ${JOB_HIGH:-} ]] && scancel "$JOB_HIGH" 2>/dev/null
    (( FAIL )) && [[ -s $ERRLOG ]] && sed 's/^/# srun stderr: /' "$ERRLOG"
    rm -f "$ERRLOG"
    "$CLUSTER" down >/dev/null 2>&1 || { echo "# cluster.sh down failed"; FAIL=$((FAIL + 1)); }
    if [[ -n $CREATED_USER ]]; then userdel "$TUSER" 2>/dev/null || echo "# could not remove user $TUSER"; fi
    if (( FAIL )); then
        printf '# failed: %s\n' "${FAILED_NAMES[@]}"
    fi
    echo "$PASS passed, $FAIL failed"
    (( FAIL == 0 && rc == 0 )) && exit 0 || exit 1
}
trap finish EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || { echo "smoke.sh must run as root" >&2; FAIL=1; exit 1; }

# --- cluster up (cold or warm; installs what is missing) --------------------------------------
t=$(now)
if "$CLUSTER" up; then ok "cluster up ($(since "$t") s)"; else nok "cluster up"; exit 1; fi
eval "$("$CLUSTER" env)"
read -ra NODES <<<"$CKPT_SLURM_NODE_NAMES"
EXPECTED_NODES=$(printf '%s\n' "${NODES[@]}" | sort | tr '\n' ' ')

# --- test user and a work dir it owns ----------------------------------------------------------
if ! getent passwd "$TUSER" >/dev/null; then
    useradd -M -U -s /bin/bash -d /nonexistent "$TUSER" && CREATED_USER=1
fi
user_exists() { getent passwd "$TUSER" >/dev/null; }
check "test user $TUSER exists" user_exists
WORK=$CKPT_SLURM_STATE/work
mkwork() { mkdir -p "$WORK" && chown "$TUSER:" "$WORK"; }
mkwork
as_user() { (cd "$WORK" && runuser -u "$TUSER" -- "$@"); }
jobfield() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

# --- srun across both nodes --------------------------------------------------------------------
out=$(as_user timeout 60 srun -N"${#NODES[@]}" hostname 2>>"$ERRLOG" | sort | tr '\n' ' ')
check "srun -N${#NODES[@]} hostname shows every node ($out)" test "$out" == "$EXPECTED_NODES"
out=$(as_user timeout 60 srun -N"${#NODES[@]}" id -un 2>>"$ERRLOG" | sort -u | tr '\n' ' ')
check "tasks run as $TUSER ($out)" test "$out" == "$TUSER "
out=$(as_user timeout 60 srun -N1 -w "${NODES[0]}" getent hosts "${NODES[@]}" 2>>"$ERRLOG" | awk '{print $2}' | sort | tr '\n' ' ')
check "node names resolve inside the nodes ($out)" test "$out" == "$EXPECTED_NODES"
out=$(as_user timeout 60 sbatch -W -N"${#NODES[@]}" -o batch-%j.out --wrap 'srun -l hostname' 2>&1)
jid=$(sed -n 's/^Submitted batch job //p' <<<"$out")
check "sbatch -W with an srun step across nodes completes ($(jobfield "$jid" JobState))" test "$(jobfield "$jid" JobState)" == COMPLETED

# --- preemption: a low job running on all nodes is preempted by a high job and requeued --------
cat >"$WORK/low.sh" <<'EOF'
#!/bin/bash
echo "start restart=${SLURM_RESTART_COUNT:-unset} host=$(hostname) t=$(date +%s.%N)"
for s in TERM CONT USR1 USR2 HUP INT; do trap "echo got SIG$s t=\$(date +%s.%N)" $s; done
sleep 3600 & child=$!
while kill -0 $child 2>/dev/null; do wait $child; done
EOF
chmod 755 "$WORK/low.sh"
out=$(as_user sbatch -p low -N"${#NODES[@]}" --exclusive --open-mode=append -o low-%j.out "$WORK/low.sh" 2>&1)
JOB_LOW=$(sed -n 's/^Submitted batch job //p' <<<"$out")
check "low job submitted ($out)" test -n "$JOB_LOW"
deadline=$((SECONDS + 30))
until [[ $(jobfield "$JOB_LOW" JobState) == RUNNING ]] || (( SECONDS > deadline )); do sleep 0.2; done
check "low job $JOB_LOW running on all nodes ($(jobfield "$JOB_LOW" NodeList))" test "$(jobfield "$JOB_LOW" JobState)" == RUNNING
sleep 1

t_high=$(now)
out=$(as_user sbatch -p high -N"${#NODES[@]}" --exclusive -o high-%j.out --wrap 'srun hostname; sleep 5' 2>&1)
JOB_HIGH=$(sed -n 's/^Submitted batch job //p' <<<"$out")
check "high job submitted ($out)" test -n "$JOB_HIGH"
t_preempt= t_requeue= t_high_run= t_high_done= t_low_again= last=
deadline=$((SECONDS + CKPT_SLURM_GRACE + 30 + CKPT_SLURM_KILLWAIT + CKPT_SLURM_CRED_EXPIRE + 90))
while (( SECONDS < deadline )); do
    ls=$(jobfield "$JOB_LOW" JobState); lr=$(jobfield "$JOB_LOW" Restarts); hs=$(jobfield "$JOB_HIGH" JobState)
    [[ -z $t_preempt && $(jobfield "$JOB_LOW" PreemptTime) != None && -n $(jobfield "$JOB_LOW" PreemptTime) ]] && t_preempt=$(now)
    [[ -z $t_requeue && ${lr:-0} -ge 1 ]] && t_requeue=$(now)
    [[ -z $t_high_run && $hs == RUNNING ]] && t_high_run=$(now)
    [[ -z $t_high_done && $hs == COMPLETED ]] && t_high_done=$(now)
    [[ -n $t_requeue && -z $t_low_again && $ls == RUNNING ]] && t_low_again=$(now)
    if [[ "$ls/$lr/$hs" != "$last" ]]; then info "t+$(since "$t_high") s: low=$ls restarts=${lr:-?} reason=$(jobfield "$JOB_LOW" Reason) high=$hs"; last="$ls/$lr/$hs"; fi
    [[ -n $t_low_again ]] && break
    [[ -z $ls || $ls == FAILED || $ls == CANCELLED || $hs == FAILED ]] && { info "giving up: low=$ls high=$hs"; break; }
    sleep 0.25
done
check "low job got a PreemptTime (grace period started)" test -n "$t_preempt"
check "high job ran" test -n "$t_high_run"
check "low job requeued: Restarts=$(jobfield "$JOB_LOW" Restarts)" test "$(jobfield "$JOB_LOW" Restarts)" == 1
check "high job completed ($(jobfield "$JOB_HIGH" JobState))" test "$(jobfield "$JOB_HIGH" JobState)" == COMPLETED
check "low job running again after the high job" test -n "$t_low_again"
sleep 1
check "second run of the low job sees SLURM_RESTART_COUNT=1" grep -q 'start restart=1 ' "$WORK/low-$JOB_LOW.out"
echo "# low job output:"; sed 's/^/#      /' "$WORK/low-$JOB_LOW.out" 2>/dev/null
info "high submitted -> grace started: $( [[ -n $t_preempt ]] && since "$t_high" "$t_preempt" || echo -) s"
info "high submitted -> low requeued (Restarts=1): $( [[ -n $t_requeue ]] && since "$t_high" "$t_requeue" || echo -) s"
info "high submitted -> high running: $( [[ -n $t_high_run ]] && since "$t_high" "$t_high_run" || echo -) s"
info "high submitted -> high completed: $( [[ -n $t_high_done ]] && since "$t_high" "$t_high_done" || echo -) s"
info "high submitted -> low running again: $( [[ -n $t_low_again ]] && since "$t_high" "$t_low_again" || echo -) s"
grep -h 'preempt\|requeue\|Requeu' "$CKPT_SLURM_LOGDIR/slurmctld.log" 2>/dev/null | tail -n 6 | sed 's/^/#      ctld: /'
scancel "$JOB_LOW" 2>/dev/null; JOB_LOW= JOB_HIGH=

# --- down leaves nothing behind ----------------------------------------------------------------
STATE=$CKPT_SLURM_STATE
PIDS=$(awk '$1=="pid"{print $3}' "$STATE/created" | tr '\n' ' ')
t=$(now)
check "cluster down" "$CLUSTER" down
info "down took $(since "$t") s"
left_behind() {
    local bad=0 p st
    for p in $PIDS; do
        st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1) || continue
        [[ $st == Z || -z $st ]] || { echo "#      still running: pid $p ($(cat /proc/$p/comm 2>/dev/null))"; bad=1; }
    done
    ip netns list | grep -q '^ckpt-n' && { echo "#      netns left: $(ip netns list | grep '^ckpt-n' | tr '\n' ' ')"; bad=1; }
    ip -o link show | grep -q "ckptbr0\|ckpt-h" && { echo "#      links left"; bad=1; }
    grep -q '# ckpt-slurm' /etc/hosts && { echo "#      /etc/hosts entries left"; bad=1; }
    iptables -S FORWARD 2>/dev/null | grep -q 'ckpt-slurm' && { echo "#      iptables rule left"; bad=1; }
    [[ -e $STATE ]] && { echo "#      $STATE left"; bad=1; }
    return $bad
}
check "nothing left behind (daemons, netns, bridge, veths, hosts, iptables, state)" left_behind
t=$(now); while pgrep 'slurm|munged' >/dev/null && awk -v e="$(since "$t")" 'BEGIN{exit !(e < 10)}' ; do sleep 0.1; done
info "zombies reaped by PID 1 after $(since "$t") s; pgrep -a slurm/munged: $(pgrep -a 'slurm|munged' | tr '\n' ' ')"

# --- a second up after down ----------------------------------------------------------------------
t=$(now)
if "$CLUSTER" up 2>/dev/null; then ok "second (warm) up ($(since "$t") s)"; else nok "second (warm) up"; fi
mkwork
out=$(as_user timeout 60 srun -N"${#NODES[@]}" hostname 2>>"$ERRLOG" | sort | tr '\n' ' ')
check "srun after the second up ($out)" test "$out" == "$EXPECTED_NODES"
t=$(now); t_up2=$t
"$CLUSTER" up 2>/dev/null
quiet_status() { "$CLUSTER" status >/dev/null 2>&1; }
check "up on a running cluster is a no-op ($(since "$t") s)" quiet_status
PIDS=$(awk '$1=="pid"{print $3}' "$STATE/created" | tr '\n' ' ')
check "second down" "$CLUSTER" down
check "nothing left behind after the second down" left_behind
check "down when already down is a no-op" "$CLUSTER" down
