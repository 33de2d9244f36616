#!/usr/bin/env bash
# End-to-end test of ckpt on the Slurm 24.11 cluster in Docker (this directory): builds the
# images if needed (build.sh), brings up a cluster of its own (compose project ckpt-e2e-PID),
# runs jobs as the non-root user alice, and removes the containers, network and volumes it
# created, pass or fail. The images are kept (build.sh reuses them). Last line
# "docker: N passed, N failed".
#
#   docker/slurm-cluster/e2e.sh
#
# Checks:
#   s. the cluster: Slurm 24.11 on two nodes, unprivileged containers under Docker's default
#      seccomp profile (userfaultfd, clone3, process_vm_readv, kcmp, personality refused in a
#      job: shown, not required), the plugin's options in sbatch --help
#   a. preemption of a one-node batch job: `sbatch --checkpoint-dmtcp` of a script that execs
#      the stateful self-verifying counter (tests/programs/counter.c) in partition low; a high
#      job preempts it; the agent checkpoints it in the grace period and requeues it; it runs
#      again, restored: first tick after the restore > 1 and <= last tick before + 1, every
#      later tick consecutive, tick N and PASS, COMPLETED
#   m. a two-node job: `srun -N2 --ntasks-per-node=1 --checkpoint-dmtcp` (one counter per node,
#      one coordinator for both) in low is preempted by a two-node high job: Slurm SIGTERMs the
#      tasks of a job without a batch script at once and does not requeue it; the runtime turns
#      the SIGTERM into a checkpoint; `srun -N2 --restart-from=DIR` restores each rank on its node
#      from its own image, and both continue to PASS
#   a. also checks that the preempted job ran exactly twice (Restarts=1): on Slurm 24.11 the agent
#      ends the batch step after the checkpoint (scancel --batch --full --signal=KILL) and
#      Slurm's own preemption requeue is the only one (an `scontrol requeue` in the grace period
#      would leave the preemption's mark on the job and requeue it again when its next run ends)
#   and no ckpt-coordinatord / ckpt-slurm outlives its job.
#
# Settings: CKPT_BIN_DIR (passed to build.sh), CKPT_SLURM_IMAGE (use this image, skip build.sh),
# CKPT_DOCKER_PROJECT (compose project name, default ckpt-e2e-PID),
# CKPT_DOCKER_KEEP=1 (leave the cluster up for debugging; remove it with the command printed).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=${CKPT_DOCKER_PROJECT:-ckpt-e2e-$$}
TUSER=alice
PASS=0 FAIL=0 FAILED_NAMES=() FIGURES=() BGPIDS=() UP= WORK=
T_START=$(date +%s.%N)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN{printf "%.1f", b-a}'; }
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
nok()  { FAIL=$((FAIL + 1)); FAILED_NAMES+=("$1"); echo "FAIL - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
info() { echo "#      $*"; }
figure() { FIGURES+=("$*"); info "FIGURE $*"; }
quiet() { "$@" >/dev/null 2>&1; }
compose() { docker-compose -p "$PROJECT" -f "$HERE/docker-compose.yml" "$@"; }

finish() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${BGPIDS[@]}"; do kill "$p" 2>/dev/null; done
    [[ -n $WORK ]] && rm -rf -- "$WORK"
    if [[ -n $UP ]]; then
        if (( FAIL )) || [[ $rc != 0 ]]; then
            echo "# logs of the cluster (tail):"
            compose logs --no-color --tail=25 2>&1 | sed 's/^/#   /'
        fi
        if [[ ${CKPT_DOCKER_KEEP:-} == 1 ]]; then
            echo "# kept: docker-compose -p $PROJECT -f $HERE/docker-compose.yml down -v"
        else
            compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || echo "# docker-compose down failed"
            local left
            left=$( { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
                      docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
                      docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"; } 2>/dev/null)
            if [[ -n $left ]]; then
                FAIL=$((FAIL + 1)); FAILED_NAMES+=("nothing of the cluster left after down")
                echo "# left after down: $left"
            else
                echo "# removed the cluster's containers, network and volumes (project $PROJECT)"
            fi
        fi
    fi
    if (( ${#FIGURES[@]} )); then printf '# figure: %s\n' "${FIGURES[@]}"; fi
    echo "# whole run: $(since "$T_START") s"
    if (( FAIL )); then printf '# failed: %s\n' "${FAILED_NAMES[@]}"; fi
    echo "docker: $PASS passed, $FAIL failed"
    (( FAIL == 0 && rc == 0 )) && exit 0 || exit 1
}
trap finish EXIT
trap 'exit 130' INT TERM

command -v docker-compose >/dev/null || { nok "docker-compose is installed"; exit 1; }

# --- build (reuses the images when their inputs are unchanged) --------------------------------
t=$(now)
if [[ -n ${CKPT_SLURM_IMAGE:-} ]]; then
    IMAGE=$CKPT_SLURM_IMAGE
else
    IMAGE=$("$HERE/build.sh" | tail -1) || { nok "build.sh"; exit 1; }
fi
check "images built or reused: $IMAGE ($(since "$t") s)" docker image inspect "$IMAGE" >/dev/null
figure "build.sh: $(since "$t") s"
export CKPT_SLURM_IMAGE=$IMAGE

# --- bring the cluster up ---------------------------------------------------------------------
t=$(now)
UP=1
compose up -d >/dev/null 2>&1 || { nok "docker-compose up"; exit 1; }
CTLD=$(compose ps -q slurmctld) N1=$(compose ps -q node1) N2=$(compose ps -q node2)
ctl() { docker exec "$CTLD" "$@"; }                                      # root on the controller
as_user() { docker exec -u "$TUSER" -w "/home/$TUSER" "$CTLD" "$@"; }    # alice on the login node
as_user_in() { docker exec -i -u "$TUSER" -w "/home/$TUSER" "$CTLD" "$@"; }   # ... with our stdin
jobfield() { ctl scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
submitted() { sed -n 's/^Submitted batch job //p' <<<"$1"; }
idle() { [[ $(ctl sinfo -h -p low -t idle -o '%D' 2>/dev/null) == 2 ]]; }
deadline=$((SECONDS + 60))
until idle || (( SECONDS > deadline )); do sleep 0.3; done
check "(s) cluster up, both nodes idle ($(since "$t") s)" idle
figure "docker-compose up -> 2 nodes idle: $(since "$t") s"
wait_state() { # JOB STATE TIMEOUT
    local deadline=$((SECONDS + $3))
    until [[ $(jobfield "$1" JobState) == "$2" ]] || (( SECONDS > deadline )); do sleep 0.3; done
    [[ $(jobfield "$1" JobState) == "$2" ]]
}
wait_done() { # JOB TIMEOUT -> final state on stdout
    local deadline=$((SECONDS + $2)) s
    while (( SECONDS <= deadline )); do
        s=$(jobfield "$1" JobState)
        case $s in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) echo "$s"; return 0 ;; esac
        sleep 0.5
    done
    echo "${s:-unknown}"; return 1
}
wait_grep() { # PATTERN FILE TIMEOUT: the file (in alice's home) has a line matching
    local deadline=$((SECONDS + $3))
    until as_user grep -q -- "$1" "$2" 2>/dev/null || (( SECONDS > deadline )); do sleep 0.3; done
    as_user grep -q -- "$1" "$2" 2>/dev/null
}
leftovers() { # ckpt-coordinatord / ckpt-slurm of job $1 on any container
    local c
    for c in "$CTLD" "$N1" "$N2"; do
        docker exec "$c" pgrep -af "/usr/lib/ckpt/(ckpt-coordinatord|ckpt-slurm).*/ckpt/$TUSER/$1( |$)" 2>/dev/null
    done
}
no_leftovers() {
    local deadline=$((SECONDS + 15)) l
    while l=$(leftovers "$1"); [[ -n $l ]] && (( SECONDS < deadline )); do sleep 0.5; done
    [[ -z $l ]] || { echo "$l" | sed 's/^/#      left: /'; return 1; }
}
# verify a restored run: every restore continues at a tick in 2..last+1, consecutive after
verify_restored() { # FILE TICKS LABEL-PREFIX
    awk -v T="$2" -v P="$3" '
        index($0, P) != 1 { next }
        { line = substr($0, length(P) + 1) }
        line ~ /restoring (from|task)/ { restores++; after = 1; next }
        line ~ /^tick [0-9]+$/ {
            n = $NF + 0
            if (after) {
                if (n <= 1 || n > prev + 1) { print "restore " restores ": first tick " n " not in 2.." prev + 1; bad = 1 }
                if (restores == 1) { first = n; before = prev }
                after = 0
            } else if (n != prev + 1) { print "gap " prev " -> " n; bad = 1 }
            prev = n; next
        }
        line == "PASS" { pass = restores > 0 }
        line ~ /^FAIL/ { print "program said: " line; bad = 1 }
        END {
            printf "restores=%d first_after=%d last_before=%d last=%d pass=%d\n", restores, first, before, prev, pass
            if (!restores) { print "no restore line"; bad = 1 }
            if (prev != T || !pass) { print "did not reach tick " T " and PASS"; bad = 1 }
            exit bad
        }' "$1"
}
WORK=$(mktemp -d /tmp/ckpt-docker-e2e.XXXXXX)   # copies of job outputs, for awk on the host

# --- (s) the environment ---------------------------------------------------------------------
ver=$(ctl sinfo --version 2>&1)
check "(s) Slurm 24.11 ($ver)" grep -q '^slurm[-a-z]* 24\.11' <<<"$ver"
sec=$(docker inspect --format '{{.HostConfig.Privileged}} {{.HostConfig.SecurityOpt}} {{.HostConfig.CapAdd}}' "$N1" "$N2" "$CTLD" | sort -u)
check "(s) containers unprivileged, default seccomp, no added capabilities ($sec)" test "$sec" == "false [] []"
out=$(as_user srun -N2 --ntasks-per-node=1 -l bash -c 'echo "$(hostname) $(id -un) $(grep ^Seccomp: /proc/self/status | tr -d "\t")"' 2>/dev/null | sort)
info "srun -N2: $(tr '\n' ';' <<<"$out")"
check "(s) srun -N2 as $TUSER runs one task on each node, under a seccomp filter" \
    test "$out" == "0: node1 $TUSER Seccomp:2"$'\n'"1: node2 $TUSER Seccomp:2"
# what a checkpointer meets in these containers (raw syscalls from python3 ctypes, in a job)
PROBE='import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *a):
    r = libc.syscall(nr, *[ctypes.c_long(x) for x in a]); e = ctypes.get_errno()
    print(name, "ok" if r >= 0 else os.strerror(e).replace(" ", "_"))
call("userfaultfd", 323, 0)
call("clone3", 435, 0, 0)
call("process_vm_readv", 310, os.getppid(), 0, 0, 0, 0, 0)
call("kcmp", 312, os.getpid(), os.getpid(), 0, 0, 0)
call("personality(ADDR_NO_RANDOMIZE)", 135, 0x0040000)'
probe=$(as_user srun -N1 -w node1 python3 -c "$PROBE" 2>&1)
info "syscalls in a job: $(tr '\n' ' ' <<<"$probe")"
refused() { local n; for n in userfaultfd clone3 process_vm_readv kcmp 'personality(ADDR_NO_RANDOMIZE)'; do
    grep -q "^$n " <<<"$probe" && ! grep -q "^$n ok" <<<"$probe" || return 1; done; }
check "(s) in a job userfaultfd, clone3, process_vm_readv, kcmp and personality are refused" refused
check "(s) the ckpt options are in sbatch --help (plugin loaded by 24.11)" bash -c "docker exec '$CTLD' sbatch --help | grep -q -- '--checkpoint-dmtcp'"

# --- (a) one-node batch job: preemption -> checkpoint in the grace period -> requeue -> restore ---
TICKS=1500
as_user_in bash -c "cat >low.sh" <<EOF
#!/bin/bash
#SBATCH --checkpoint-dmtcp
echo "run restart=\${SLURM_RESTART_COUNT:-0} host=\$(hostname) t=\$(date +%s.%N)"
exec /opt/ckpt-tests/counter $TICKS
EOF
out=$(as_user sbatch -p low -N1 -w node1 --exclusive --open-mode=append -o low-%j.out low.sh 2>&1)
JL=$(submitted "$out")
check "(a) low job submitted by $TUSER with sbatch --checkpoint-dmtcp ($out)" test -n "$JL"
wait_state "$JL" RUNNING 60
check "(a) low job $JL running and ticking" wait_grep '^tick 60$' "low-$JL.out" 60
st=$(as_user ckpt status -d "/ckpt/$TUSER/$JL" 2>&1)
echo "$st" | sed 's/^/#      ckpt status: /'
t_high=$(now)
out=$(as_user sbatch -p high -N1 -w node1 --exclusive -o high-%j.out --wrap 'echo high on $(hostname); sleep 5' 2>&1)
JH=$(submitted "$out")
check "(a) high job submitted" test -n "$JH"
t_requeue= t_high_run= t_low_again= t_first_tick= last=
deadline=$((SECONDS + 240))
while (( SECONDS < deadline )); do
    ls=$(jobfield "$JL" JobState); lr=$(jobfield "$JL" Restarts); hs=$(jobfield "$JH" JobState)
    [[ -z $t_requeue && ${lr:-0} -ge 1 ]] && t_requeue=$(now)
    [[ -z $t_high_run && $hs == RUNNING ]] && t_high_run=$(now)
    [[ -n $t_requeue && -z $t_low_again && $ls == RUNNING ]] && t_low_again=$(now)
    if [[ -n $t_low_again && -z $t_first_tick ]] && as_user awk '/restoring from/{r=1;next} r && /^tick /{f=1} END{exit !f}' "low-$JL.out" 2>/dev/null; then t_first_tick=$(now); fi
    if [[ "$ls/$lr/$hs" != "$last" ]]; then info "t+$(since "$t_high") s: low=$ls restarts=${lr:-?} reason=$(jobfield "$JL" Reason) high=$hs"; last="$ls/$lr/$hs"; fi
    [[ -n $t_first_tick ]] && break
    [[ -z $ls || $ls == FAILED || $ls == CANCELLED || $ls == COMPLETED ]] && { info "stopped waiting: low=$ls"; break; }
    sleep 0.5
done
check "(a) the low job was requeued (Restarts=$(jobfield "$JL" Restarts))" test -n "$t_requeue"
check "(a) the high job ran" test -n "$t_high_run"
check "(a) the low job ran again and its program printed ticks after the restore" test -n "$t_first_tick"
st=$(wait_done "$JL" 180)
check "(a) the low job completed after the restore ($st)" test "$st" == COMPLETED
as_user cat "low-$JL.out" >"$WORK/low.out" 2>/dev/null
ctl cat "/ckpt/$TUSER/$JL/ckpt-slurm.log" >"$WORK/low-agent.log" 2>/dev/null
check "(a) the agent saw the preemption and checkpointed in the grace period" \
    grep -q 'preemption: checkpoint generation [0-9]* committed' "$WORK/low-agent.log"
check "(a) the agent ended the batch step after the checkpoint; Slurm 24.11's preemption requeue is the only one" \
    grep -q 'ending the batch step (scancel --batch --full --signal=KILL): Slurm 24\.11' "$WORK/low-agent.log"
n=$(grep -c 'restoring from' "$WORK/low.out")
check "(a) the job ran twice: preempted once, restored once (Restarts=$(jobfield "$JL" Restarts), $n restore(s))" \
    test "$(jobfield "$JL" Restarts)" == 1 -a "$n" == 1
res=$(verify_restored "$WORK/low.out" "$TICKS" "")
info "$(tr '\n' ';' <<<"$res")"
check "(a) restored from its checkpoint: first tick after the restore > 1, consecutive to tick $TICKS, PASS" quiet verify_restored "$WORK/low.out" "$TICKS" ""
check "(a) no coordinator outlives job $JL" no_leftovers "$JL"
echo "# low job output (ticks elided):"; grep -v '^tick ' "$WORK/low.out" | sed 's/^/#      /'
echo "# agent log:"; sed 's/^/#      /' "$WORK/low-agent.log"
ck=$(sed -n 's/.*preemption: checkpoint generation [0-9]* committed in \([0-9.]*\) s.*/\1/p' "$WORK/low-agent.log" | head -1)
figure "one node: checkpoint in the grace period: ${ck:-?} s"
figure "one node: high submitted -> Restarts=1 seen: $( [[ -n $t_requeue ]] && since "$t_high" "$t_requeue" || echo -) s"
figure "one node: high submitted -> high running: $( [[ -n $t_high_run ]] && since "$t_high" "$t_high_run" || echo -) s"
figure "one node: high submitted -> first tick of the restored program: $( [[ -n $t_first_tick ]] && since "$t_high" "$t_first_tick" || echo -) s"

# --- (m) two-node job: preemption -> checkpoint at SIGTERM -> srun --restart-from --------------------
# Slurm sends SIGTERM to the tasks of a job without a batch script as soon as it is selected for
# preemption, and cannot requeue such a job: the runtime turns the SIGTERM into a checkpoint of
# the job (the coordinator waits for it), and the user restores it with srun --restart-from.
MT=1500
as_user bash -c "exec srun -p low -N2 --ntasks-per-node=1 --exclusive --checkpoint-dmtcp -l -J two /opt/ckpt-tests/counter $MT >two1.out 2>&1" &
BGPIDS+=($!); SRUN1=$!
deadline=$((SECONDS + 60))
until [[ $(as_user grep -c ': tick 60$' two1.out 2>/dev/null) == 2 ]] || (( SECONDS > deadline )); do sleep 0.3; done
JM=$(ctl squeue -h -u "$TUSER" -n two -o %i | head -1)
MDIR=/ckpt/$TUSER/$JM
st=$(as_user ckpt status -d "$MDIR" 2>&1)
echo "$st" | sed 's/^/#      ckpt status: /'
check "(m) job $JM: one counter on node1 and one on node2 joined one coordinator" \
    test "$(grep -cE '^ +[0-9]+ +[0-9]+ +node[12] +counter +running' <<<"$st")" == 2 -a "$(grep -oE 'node[12] +counter' <<<"$st" | sort -u | wc -l)" == 2
t_high=$(now)
out=$(as_user sbatch -p high -N2 --exclusive -o high2-%j.out --wrap 'srun hostname; sleep 5' 2>&1)
JH2=$(submitted "$out")
check "(m) two-node high job submitted" test -n "$JH2"
deadline=$((SECONDS + 120))
while kill -0 "$SRUN1" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.3; done
t_end=$(now)
check "(m) the two-node job was preempted ($(jobfield "$JM" JobState))" test "$(jobfield "$JM" JobState)" == PREEMPTED
st=$(wait_done "$JH2" 120)
check "(m) the high job ran on both nodes and completed ($st)" test "$st" == COMPLETED
check "(m) no coordinator outlives job $JM" no_leftovers "$JM"
check "(m) a checkpoint of both ranks was committed when the preemption ended the job" \
    ctl bash -c "ls $MDIR/gen-*/MANIFEST && grep -q 'counter.*counter' <<<\"\$(ckpt list -d $MDIR)\""
ctl cat "$MDIR/ckpt-slurm.log" >"$WORK/two-agent.log" 2>/dev/null
echo "# agent log (checkpoint lines):"; grep -E 'agent pid|committed in|signal' "$WORK/two-agent.log" | sed 's/^/#      /'
gens=$(as_user ckpt list -d "$MDIR" 2>&1); echo "$gens" | sed 's/^/#      ckpt list: /'
t=$(now)
as_user timeout 180 srun -p low -N2 --ntasks-per-node=1 --restart-from="$MDIR" -l /opt/ckpt-tests/counter "$MT" >"$WORK/two2.out" 2>&1; rc=$?
figure "two nodes: srun --restart-from: restore + remaining ticks: $(since "$t") s"
check "(m) srun -N2 --restart-from=$MDIR finished (exit $rc)" test "$rc" == 0
as_user cat two1.out >"$WORK/two1.out" 2>/dev/null
for r in 0 1; do
    { grep "^$r: " "$WORK/two1.out"; grep "^$r: " "$WORK/two2.out"; } >"$WORK/rank$r.out"
    res=$(verify_restored "$WORK/rank$r.out" "$MT" "$r: "); info "rank $r: $(tr '\n' ';' <<<"$res")"
    check "(m) rank $r restored: first tick > 1, consecutive to $MT, PASS" quiet verify_restored "$WORK/rank$r.out" "$MT" "$r: "
    vpid=$(sed -n "s/^$r: counter pid \([0-9]*\) .*/\1/p" "$WORK/two1.out" | head -1)
    check "(m) rank $r restored from its own image (vpid ${vpid:-?})" grep -q "^$r: ckpt\\[$vpid\\]: info: restored from" "$WORK/two2.out"
done
grep -v ': tick ' "$WORK/two2.out" | sed 's/^/#      restart: /' | head -12
check "(m) no coordinator outlives the --restart-from job" no_leftovers "$JM"
figure "two nodes: high submitted -> preempted job ended: $(since "$t_high" "$t_end") s"
