#!/usr/bin/env bash
# End-to-end tests of the SPANK plugin (spank-plugin/) on the real test cluster (cluster.sh):
# jobs run as the non-root user ckpttest, with ckpt installed in a private bin dir and the plugin
# in plugstack.conf. Must run as root. Always tears the cluster down; last line "N passed, N failed".
#
#   cargo build --release --workspace && sudo tests/slurm/e2e.sh
#
# Checks:
#   b. a job without --checkpoint-dmtcp is untouched (no LD_PRELOAD / CKPT_* in its tasks); one
#      with it gets the runtime (positive control)
#   c. a broken plugstack.conf argument is refused with a message naming it (sbatch and srun);
#      a bad --checkpoint-dmtcp / --restart-from value is refused at submission
#   a. preemption: a low-partition batch job whose script execs a stateful self-verifying counter
#      is preempted by a high job, checkpointed in the grace period, requeued, restored from its
#      checkpoint (first tick after the restore > 1, no tick from 1 again) and ends with PASS
#   d. srun --restart-from: an srun step of 2 tasks is checkpointed, the job ends, a new srun
#      restores both tasks by rank from the directory and they finish with PASS
#   q. plain `scontrol requeue`: the runtime holds the SIGTERM, the job is checkpointed first,
#      and the requeued job continues from that checkpoint (not from an older one or from zero)
#   m. a 2-node srun step: the task on the second node reaches the coordinator over TCP; checkpointed,
#      the job ends, srun --restart-from restores both ranks on swapped nodes, each from its own image
#   u. another user cannot checkpoint the job (directory, TCP with its own secret) or signal it
#   s. a batch script running two srun steps, requeued (ckpt-slurm requeue) during the second: the script
#      is restored (not rerun), srun is executed again and its new step restores the old step's tasks
#      by rank; the first step is not rerun; the script goes on with srun's status
#   p. a 2-node batch job whose srun step spans both nodes, preempted: checkpointed in the grace period
#      (the tasks' SIGTERM holds the job stopped until the agent requeued it), restored on 2 nodes
#   w. walltime: a job with --time=2 is checkpointed walltime_margin before its limit, requeued
#      and restored (CKPT_E2E_WALLTIME=0 skips it)
#   and after every job: no ckpt-coordinatord / ckpt-slurm agent outlives its job.
#
# Settings: CKPT_BIN_DIR (default target/release), CKPT_SLURM_* (cluster.sh),
# CKPT_E2E_KEEP=1 keeps the install dir for debugging.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLUSTER=$HERE/cluster.sh
TUSER=${CKPT_SLURM_TEST_USER:-ckpttest}
BUILD=${CKPT_BIN_DIR:-$ROOT/target/release}
PASS=0 FAIL=0 CREATED_USER= FAILED_NAMES=() JOBS=() BGPIDS=()
FIGURES=()

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN{printf "%.1f", b-a}'; }
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
nok()  { FAIL=$((FAIL + 1)); FAILED_NAMES+=("$1"); echo "FAIL - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
info() { echo "#      $*"; }
figure() { FIGURES+=("$*"); info "FIGURE $*"; }

[[ $(id -u) == 0 ]] || { echo "e2e.sh must run as root" >&2; echo "0 passed, 1 failed"; exit 1; }
for f in ckpt ckpt-coordinatord libckpt.so ckpt-slurm libspank_ckpt.so; do
    [[ -e $BUILD/$f ]] || { echo "missing $BUILD/$f: run cargo build --release --workspace" >&2; echo "0 passed, 1 failed"; exit 1; }
done

# Private install dir (readable by the test user; ckpt_dir lives under it).
INST=$(mktemp -d /var/tmp/ckpt-slurm-e2e.XXXXXX)
chmod 755 "$INST"
mkdir -p "$INST/bin" "$INST/ckpt"
chmod 1777 "$INST/ckpt"
for f in ckpt ckpt-coordinatord libckpt.so ckpt-slurm; do cp "$BUILD/$f" "$INST/bin/$f"; done
cp "$BUILD/libspank_ckpt.so" "$INST/bin/spank_ckpt.so"
chmod 755 "$INST"/bin/*
PLUG_ARGS="ckpt_dir=$INST/ckpt/%u/%j bin_dir=$INST/bin keep=2 poll=2s walltime_margin=75s log_level=info"
export CKPT_PLUGSTACK_LINE="required $INST/bin/spank_ckpt.so $PLUG_ARGS"

finish() {
    local rc=$?
    trap - EXIT INT TERM
    local j p
    for j in "${JOBS[@]}"; do scancel "$j" 2>/dev/null; done
    for p in "${BGPIDS[@]}"; do kill "$p" 2>/dev/null; done
    "$CLUSTER" down >/dev/null 2>&1 || { echo "# cluster.sh down failed"; FAIL=$((FAIL + 1)); }
    # anything of ours still running (it should not be: the cluster is down) is a failure
    local left
    left=$(pgrep -af "$INST" 2>/dev/null | grep -v "pgrep" || true)
    if [[ -n $left ]]; then
        echo "# processes left after down:"; echo "$left" | sed 's/^/#   /'
        pkill -KILL -f "$INST/bin/" 2>/dev/null
        FAIL=$((FAIL + 1)); FAILED_NAMES+=("nothing of ours left after down")
    fi
    if [[ -n $CREATED_USER ]]; then userdel "$TUSER" 2>/dev/null || echo "# could not remove user $TUSER"; fi
    if [[ ${CKPT_E2E_KEEP:-} == 1 ]]; then echo "# kept $INST"; else rm -rf -- "$INST"; fi
    if (( ${#FIGURES[@]} )); then printf '# figure: %s\n' "${FIGURES[@]}"; fi
    if (( FAIL )); then printf '# failed: %s\n' "${FAILED_NAMES[@]}"; fi
    echo "$PASS passed, $FAIL failed"
    (( FAIL == 0 && rc == 0 )) && exit 0 || exit 1
}
trap finish EXIT
trap 'exit 130' INT TERM

t=$(now)
if "$CLUSTER" up; then ok "cluster up with the plugin in plugstack.conf ($(since "$t") s)"; else nok "cluster up"; exit 1; fi
eval "$("$CLUSTER" env)"
PLUGSTACK=$CKPT_SLURM_STATE/etc/plugstack.conf
read -ra NODES <<<"$CKPT_SLURM_NODE_NAMES"

if ! getent passwd "$TUSER" >/dev/null; then
    useradd -M -U -s /bin/bash -d /nonexistent "$TUSER" && CREATED_USER=1
fi
WORK=$CKPT_SLURM_STATE/work
mkdir -p "$WORK" && chown "$TUSER:" "$WORK"
as_user() { (cd "$WORK" && runuser -u "$TUSER" -- "$@"); }
jobfield() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
submitted() { sed -n 's/^Submitted batch job //p' <<<"$1"; }
wait_state() { # JOB STATE TIMEOUT
    local deadline=$((SECONDS + $3))
    until [[ $(jobfield "$1" JobState) == "$2" ]] || (( SECONDS > deadline )); do sleep 0.2; done
    [[ $(jobfield "$1" JobState) == "$2" ]]
}
wait_done() { # JOB TIMEOUT -> final state on stdout
    local deadline=$((SECONDS + $2)) s
    while (( SECONDS <= deadline )); do
        s=$(jobfield "$1" JobState)
        case $s in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) echo "$s"; return 0 ;; esac
        sleep 0.3
    done
    echo "${s:-unknown}"; return 1
}
# our coordinators/agents still running for job $1 (their command lines hold the job's dir)
leftovers() { pgrep -af "$INST/(bin/ckpt-coordinatord|bin/ckpt-slurm).*$INST/ckpt/$TUSER/$1( |$)" | grep -v pgrep || true; }
no_leftovers() {
    local deadline=$((SECONDS + 10)) l
    while l=$(leftovers "$1"); [[ -n $l ]] && (( SECONDS < deadline )); do sleep 0.2; done
    [[ -z $l ]] || { echo "$l" | sed 's/^/#      left: /'; return 1; }
}

# the stateful self-verifying test program (tests/programs/counter.c)
gcc -O2 -Wall -o "$WORK/counter" "$ROOT/tests/programs/counter.c" || { nok "compile counter"; exit 1; }
chmod 755 "$WORK/counter"

# --- (b) a job without the flag is untouched; with it, the runtime is injected --------------------
out=$(as_user sbatch -W -o plain-%j.out --wrap 'env; srun env | sed "s/^/step: /"' 2>&1)
j=$(submitted "$out"); JOBS+=("$j")
f=$WORK/plain-$j.out
check "(b) job without --checkpoint-dmtcp completed ($(jobfield "$j" JobState))" test "$(jobfield "$j" JobState)" == COMPLETED
untouched() { [[ -s $f ]] && grep -q '^SLURM_JOB_ID=' "$f" && grep -q '^step: SLURM_STEP_ID=' "$f" && ! grep -Eq '^(step: )?(LD_PRELOAD|CKPT_DIR|CKPT_SOCKET|CKPT_BIN|CKPT_RESTART|CKPT_LOG)=' "$f"; }
check "(b) no LD_PRELOAD and no CKPT_* in its batch step and srun step" untouched
check "(b) no checkpoint directory made for it" test ! -e "$INST/ckpt/$TUSER/$j"
out=$(as_user sbatch -W --checkpoint-dmtcp -o flag-%j.out --wrap 'env; srun env | sed "s/^/step: /"' 2>&1)
j=$(submitted "$out"); JOBS+=("$j")
f=$WORK/flag-$j.out
injected() {
    grep -q "^LD_PRELOAD=$INST/bin/libckpt.so" "$f" && grep -q "^CKPT_DIR=$INST/ckpt/$TUSER/$j\$" "$f" &&
    grep -q "^CKPT_SOCKET=$INST/ckpt/$TUSER/$j/coordinator.sock\$" "$f" && grep -q "^CKPT_BIN=$INST/bin/ckpt\$" "$f" &&
    grep -q "^step: LD_PRELOAD=$INST/bin/libckpt.so\$" "$f" && grep -q "^step: CKPT_DIR=$INST/ckpt/$TUSER/$j\$" "$f" &&
    ! grep -q '^CKPT_RESTART=' "$f"
}
check "(b) control: with --checkpoint-dmtcp the batch step and the srun step get the runtime (job $j)" injected
[[ -e $f ]] && ! injected && sed 's/^/#      /' "$f" | grep -E 'LD_PRELOAD|CKPT|error' | head
check "(b) control: the job's checkpoint directory is the user's, mode 0700" \
    test "$(stat -c '%U %a' "$INST/ckpt/$TUSER/$j" 2>/dev/null)" == "$TUSER 700"
check "(b) control: no coordinator outlives job $j" no_leftovers "$j"

# --- (c) broken configuration and bad values are refused with a clear message ---------------------
cp "$PLUGSTACK" "$PLUGSTACK.good"
echo "required $INST/bin/spank_ckpt.so $PLUG_ARGS colour=blue" >"$PLUGSTACK"
out=$(as_user sbatch -o never-%j.out --wrap true 2>&1); rc=$?
info "sbatch said: $(tr '\n' ' ' <<<"$out")"
check "(c) sbatch refused with a broken plugstack.conf argument (exit $rc)" test "$rc" != 0 -a -z "$(submitted "$out")"
check "(c) the message names the argument" grep -q 'unknown plugstack.conf argument "colour"' <<<"$out"
out=$(as_user timeout 60 srun -N1 true 2>&1); rc=$?
check "(c) srun refused too (exit $rc) naming the argument" grep -q 'unknown plugstack.conf argument "colour"' <<<"$out"
echo "required $INST/bin/spank_ckpt.so $PLUG_ARGS keep=lots" >"$PLUGSTACK"
out=$(as_user sbatch -o never-%j.out --wrap true 2>&1); rc=$?
check "(c) a malformed value is refused naming it ($(grep -o 'keep=lots[^.]*' <<<"$out" | head -1))" grep -q 'keep=lots' <<<"$out"
mv "$PLUGSTACK.good" "$PLUGSTACK"
out=$(as_user sbatch --checkpoint-dmtcp=often -o never-%j.out --wrap true 2>&1); rc=$?
info "sbatch said: $(tr '\n' ' ' <<<"$out")"
check "(c) sbatch --checkpoint-dmtcp=often refused at submission with the reason" \
    test "$rc" != 0 -a -z "$(submitted "$out")" -a -n "$(grep 'checkpoint-dmtcp=often: invalid duration' <<<"$out")"
out=$(as_user timeout 60 srun -N1 --restart-from="$INST/ckpt/nothing-here" true 2>&1); rc=$?
info "srun said: $(tr '\n' ' ' <<<"$out")"
check "(c) srun --restart-from a directory without a checkpoint refused (exit $rc)" grep -q -- "--restart-from=$INST/ckpt/nothing-here" <<<"$out"
check "(c) options are listed in sbatch --help" bash -c "sbatch --help | grep -q -- '--checkpoint-dmtcp=INTERVAL'"
check "(c) options are listed in srun --help" bash -c "srun --help | grep -q -- '--restart-from=DIR'"

# ticks of a job output: verify a restored run. $1 file, $2 expected last tick
verify_restored() { # FILE TICKS LABEL-PREFIX: every restore continues at a tick in 2..last+1
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
quiet() { "$@" >/dev/null; }

# --- (a) preemption -> checkpoint in the grace period -> requeue -> restore --------------------------
TICKS=1500
cat >"$WORK/low.sh" <<EOF
#!/bin/bash
#SBATCH --checkpoint-dmtcp
echo "run restart=\${SLURM_RESTART_COUNT:-0} host=\$(hostname) t=\$(date +%s.%N)"
exec $WORK/counter $TICKS
EOF
chmod 755 "$WORK/low.sh"
out=$(as_user sbatch -p low -N1 -w "${NODES[0]}" --exclusive --open-mode=append -o low-%j.out "$WORK/low.sh" 2>&1)
JL=$(submitted "$out"); JOBS+=("$JL")
check "(a) low job submitted ($out)" test -n "$JL"
LOWOUT=$WORK/low-$JL.out
wait_state "$JL" RUNNING 60
deadline=$((SECONDS + 60))
until grep -q '^tick 60$' "$LOWOUT" 2>/dev/null || (( SECONDS > deadline )); do sleep 0.2; done
check "(a) low job $JL running and ticking" grep -q '^tick 60$' "$LOWOUT"
t_high=$(now)
out=$(as_user sbatch -p high -N1 -w "${NODES[0]}" --exclusive -o high-%j.out --wrap 'echo high on $(hostname); sleep 5' 2>&1)
JH=$(submitted "$out"); JOBS+=("$JH")
check "(a) high job submitted" test -n "$JH"
t_preempt= t_requeue= t_high_run= t_low_again= t_first_tick= last=
deadline=$((SECONDS + CKPT_SLURM_GRACE + 60 + CKPT_SLURM_KILLWAIT + CKPT_SLURM_CRED_EXPIRE + 120))
while (( SECONDS < deadline )); do
    ls=$(jobfield "$JL" JobState); lr=$(jobfield "$JL" Restarts); hs=$(jobfield "$JH" JobState)
    [[ -z $t_preempt && -n $(jobfield "$JL" PreemptTime) && $(jobfield "$JL" PreemptTime) != None ]] && t_preempt=$(now)
    [[ -z $t_requeue && ${lr:-0} -ge 1 ]] && t_requeue=$(now)
    [[ -z $t_high_run && $hs == RUNNING ]] && t_high_run=$(now)
    [[ -n $t_requeue && -z $t_low_again && $ls == RUNNING ]] && t_low_again=$(now)
    if [[ -n $t_low_again && -z $t_first_tick ]] && awk '/restoring from/{r=1;next} r && /^tick /{f=1} END{exit !f}' "$LOWOUT" 2>/dev/null; then t_first_tick=$(now); fi
    if [[ "$ls/$lr/$hs" != "$last" ]]; then info "t+$(since "$t_high") s: low=$ls restarts=${lr:-?} reason=$(jobfield "$JL" Reason) high=$hs"; last="$ls/$lr/$hs"; fi
    [[ -n $t_first_tick ]] && break
    [[ -z $ls || $ls == FAILED || $ls == CANCELLED || $ls == COMPLETED ]] && { info "stopped waiting: low=$ls"; break; }
    sleep 0.25
done
check "(a) the low job was requeued (Restarts=$(jobfield "$JL" Restarts))" test -n "$t_requeue"
check "(a) the high job ran" test -n "$t_high_run"
check "(a) the low job ran again and its program printed ticks after the restore" test -n "$t_first_tick"
st=$(wait_done "$JL" 180)
check "(a) the low job completed after the restore ($st)" test "$st" == COMPLETED
AGLOG=$INST/ckpt/$TUSER/$JL/ckpt-slurm.log
# the test polls scontrol and may miss the short PreemptTime window (the agent requeues within
# seconds, which clears it); the agent's log records that it saw it
preempted() { [[ -n $t_preempt ]] || grep -q 'preemption started (PreemptTime set' "$AGLOG"; }
check "(a) the low job was preempted (PreemptTime set)" preempted
res=$(verify_restored "$LOWOUT" "$TICKS" "")
info "$(tr '\n' ';' <<<"$res")"
check "(a) restored from its checkpoint: first tick after the restore > 1, consecutive to tick $TICKS, PASS" quiet verify_restored "$LOWOUT" "$TICKS" ""
check "(a) the checkpoint was taken on preemption (agent log)" grep -q 'preemption: checkpoint generation [0-9]* committed' "$AGLOG"
check "(a) no coordinator outlives job $JL" no_leftovers "$JL"
echo "# low job output (ticks elided):"; grep -v '^tick ' "$LOWOUT" | sed 's/^/#      /'
echo "# agent log:"; sed 's/^/#      /' "$AGLOG" 2>/dev/null
ck=$(sed -n 's/.*preemption: checkpoint generation [0-9]* committed in \([0-9.]*\) s (program stopped \([0-9.e-]*\) s.*/\1 \2/p' "$AGLOG" | head -1)
t_det=$(sed -n 's/^\[\([0-9.]*\)\] ckpt-slurm: job [0-9]*: preemption started.*/\1/p' "$AGLOG" | head -1)
t_rq=$(sed -n 's/^\[\([0-9.]*\)\] ckpt-slurm: job [0-9]*: preemption: requeued/\1/p' "$AGLOG" | head -1)
figure "preemption: high submitted -> grace started (PreemptTime seen): $( [[ -n $t_preempt ]] && since "$t_high" "$t_preempt" || echo -) s"
figure "preemption: high submitted -> agent noticed it: $( [[ -n $t_det ]] && since "$t_high" "$t_det" || echo -) s"
figure "preemption: checkpoint inside the grace period: ${ck%% *} s (program stopped ${ck##* } s)"
figure "preemption: high submitted -> requeue issued by the agent: $( [[ -n $t_rq ]] && since "$t_high" "$t_rq" || echo -) s"
figure "preemption: high submitted -> Restarts=1 seen: $( [[ -n $t_requeue ]] && since "$t_high" "$t_requeue" || echo -) s"
figure "preemption: high submitted -> high running: $( [[ -n $t_high_run ]] && since "$t_high" "$t_high_run" || echo -) s"
figure "preemption: high submitted -> low running again: $( [[ -n $t_low_again ]] && since "$t_high" "$t_low_again" || echo -) s"
figure "preemption: high submitted -> first tick of the restored program: $( [[ -n $t_first_tick ]] && since "$t_high" "$t_first_tick" || echo -) s"

# --- (q) plain scontrol requeue: the runtime holds the SIGTERM and checkpoints first ------------------
QT=900
cat >"$WORK/rq.sh" <<EOS
#!/bin/bash
#SBATCH --checkpoint-dmtcp
echo "run restart=\${SLURM_RESTART_COUNT:-0} host=\$(hostname)"
exec $WORK/counter $QT
EOS
chmod 755 "$WORK/rq.sh"
out=$(as_user sbatch -p low -N1 -w "${NODES[1]}" --open-mode=append -o rq-%j.out "$WORK/rq.sh" 2>&1)
JQ=$(submitted "$out"); JOBS+=("$JQ")
check "(q) job submitted ($out)" test -n "$JQ"
RQOUT=$WORK/rq-$JQ.out
wait_state "$JQ" RUNNING 60
deadline=$((SECONDS + 60))
until grep -q '^tick 40$' "$RQOUT" 2>/dev/null || (( SECONDS > deadline )); do sleep 0.2; done
check "(q) job $JQ running and ticking" grep -q '^tick 40$' "$RQOUT"
t_rq=$(now)
scontrol requeue "$JQ"
st=$(wait_done "$JQ" 240)
check "(q) the requeued job completed ($st)" test "$st" == COMPLETED
res=$(verify_restored "$RQOUT" "$QT" "")
info "$(tr '\n' ';' <<<"$res")"
first_after=$(sed -n 's/.*first_after=\([0-9]*\).*/\1/p' <<<"$res" | head -1)
check "(q) plain scontrol requeue: restored from the checkpoint its SIGTERM triggered (first tick after the restore ${first_after:-?} > 40)" \
    test "${first_after:-0}" -gt 40
check "(q) ... and the whole run verified (consecutive ticks to $QT, PASS)" quiet verify_restored "$RQOUT" "$QT" ""
check "(q) no coordinator outlives job $JQ" no_leftovers "$JQ"
figure "scontrol requeue: requeue -> job completed after the restore: $(since "$t_rq") s"

# --- (d) srun --restart-from ------------------------------------------------------------------------
DT=600
as_user bash -c "exec srun -N1 -n2 -w ${NODES[1]} --checkpoint-dmtcp -l $WORK/counter $DT >$WORK/step1.out 2>&1" &
BGPIDS+=($!); SRUN1=$!
deadline=$((SECONDS + 60))
until [[ $(grep -c ': tick 100$' "$WORK/step1.out" 2>/dev/null) == 2 ]] || (( SECONDS > deadline )); do sleep 0.2; done
JS=$(squeue -h -u "$TUSER" -o '%i %j' | awk '$2=="counter"{print $1}' | head -1); JOBS+=("$JS")
SDIR=$INST/ckpt/$TUSER/$JS
check "(d) srun step of 2 tasks running under the plugin (job $JS)" test -S "$SDIR/coordinator.sock"
out=$(as_user "$INST/bin/ckpt" checkpoint --ckpt-dir "$SDIR" 2>&1); rc=$?
info "$(tr '\n' ' ' <<<"$out")"
check "(d) ckpt checkpoint of the step (exit $rc)" test "$rc" == 0
scancel "$JS"; wait "$SRUN1" 2>/dev/null
check "(d) no coordinator outlives job $JS" no_leftovers "$JS"
last0=$(grep -c '^0: tick' "$WORK/step1.out"); last1=$(grep -c '^1: tick' "$WORK/step1.out")
info "first job ended at ticks rank0=$last0 rank1=$last1"
t=$(now)
as_user timeout 180 srun -N1 -n2 -w "${NODES[0]}" --restart-from="$SDIR" -l "$WORK/counter" "$DT" >"$WORK/step2.out" 2>&1; rc=$?
figure "srun --restart-from: restore + remaining ticks took $(since "$t") s"
check "(d) srun --restart-from finished (exit $rc)" test "$rc" == 0
for r in 0 1; do
    # the step1 ticks of this rank, then step2's (restore line included), as one stream
    { grep "^$r: " "$WORK/step1.out"; grep "^$r: \|restoring task $r " "$WORK/step2.out" | sed "s/^\(ckpt: .*restoring task\)/$r: \1/"; } >"$WORK/rank$r.out"
    res=$(verify_restored "$WORK/rank$r.out" "$DT" "$r: "); info "rank $r: $(tr '\n' ';' <<<"$res")"
    check "(d) rank $r restored: first tick > 1, consecutive to $DT, PASS" quiet verify_restored "$WORK/rank$r.out" "$DT" "$r: "
    vpid=$(sed -n "s/^$r: counter pid \([0-9]*\) .*/\1/p" "$WORK/step1.out" | head -1)
    check "(d) rank $r restored from its own image (vpid ${vpid:-?} of rank $r)" grep -q "^$r: ckpt\\[$vpid\\]: info: restored from" "$WORK/step2.out"
done
grep -v ': tick ' "$WORK/step2.out" | sed 's/^/#      step2: /' | head -10
check "(d) no coordinator outlives the --restart-from job" no_leftovers "$JS"

# --- (m) a step on two nodes: the other node reaches the coordinator over TCP; checkpoint; restore --
# with the ranks on swapped nodes (rank 0 on node2, rank 1 on node1)
MT=600
as_user bash -c "exec srun -N2 -n2 --ntasks-per-node=1 --checkpoint-dmtcp -l $WORK/counter $MT >$WORK/multi1.out 2>&1" &
BGPIDS+=($!); SRUNM=$!
deadline=$((SECONDS + 60))
until [[ $(grep -c ': tick 100$' "$WORK/multi1.out" 2>/dev/null) == 2 ]] || (( SECONDS > deadline )); do sleep 0.2; done
JM=$(squeue -h -u "$TUSER" -o '%i %j' | awk '$2=="counter"{print $1}' | head -1); JOBS+=("$JM")
MDIR=$INST/ckpt/$TUSER/$JM
maddr=$(cat "$MDIR/coordinator.addr" 2>/dev/null)
check "(m) the coordinator of the 2-node step (job $JM) also listens on TCP on ${NODES[0]} (${maddr:-no coordinator.addr})" \
    grep -qx "tcp:${NODES[0]}:[0-9]*" "$MDIR/coordinator.addr"
mport=${maddr##*:}
# hosts of the joined processes, from the status JSON
status_hosts() { as_user "$INST/bin/ckpt" status --ckpt-dir "$MDIR" --json 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join(sorted("%s@%s" % (p["info"].get("rank"), p["info"]["host"]) for p in json.load(sys.stdin)["processes"])))'; }
# peer addresses of the coordinator's established TCP connections, seen in node1's namespace
tcp_peers() { ip netns exec ckpt-n1 ss -Htn state established "( sport = :$mport )" | awk '{print $4}' | sed 's/:[0-9]*$//' | sort -u | tr '\n' ' '; }
h=$(status_hosts)
check "(m) both tasks joined the job's coordinator, one per node ($h)" test "$h" == "0@${NODES[0]} 1@${NODES[1]}"
p=$(tcp_peers)
check "(m) the task on ${NODES[1]} is connected over TCP from its own address (peers: ${p:-none})" \
    grep -qw "${CKPT_SLURM_NET:-10.77.0}.12" <<<"$p"

# (u) another user cannot reach the job's coordinator
U2=ckpttest2 CREATED_U2=
if ! getent passwd "$U2" >/dev/null; then useradd -M -U -s /bin/bash -d /nonexistent "$U2" && CREATED_U2=1; fi
as_u2() { (cd /tmp && runuser -u "$U2" -- "$@"); }
out=$(as_u2 "$INST/bin/ckpt" checkpoint --ckpt-dir "$MDIR" 2>&1); rc=$?
info "other user, ckpt checkpoint: $(tr '\n' ' ' <<<"$out" | cut -c1-200)"
check "(u) another user's ckpt checkpoint of the job is refused (exit $rc)" test "$rc" != 0
U2DIR=$(as_u2 mktemp -d /tmp/ckpt-u2.XXXXXX)
as_u2 bash -c "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $U2DIR/coordinator.secret; chmod 600 $U2DIR/coordinator.secret"
out=$(as_u2 env CKPT_COORD="$maddr" "$INST/bin/ckpt" checkpoint --ckpt-dir "$U2DIR" 2>&1); rc=$?
info "other user over TCP with a guessed secret: $(tr '\n' ' ' <<<"$out" | cut -c1-200)"
check "(u) ... and over TCP with a secret of its own it is refused by the coordinator (exit $rc)" test "$rc" != 0
out=$(as_u2 kill -TERM "$(pgrep -u "$TUSER" -x counter | head -1)" 2>&1); rc=$?
check "(u) ... and it cannot signal the job's processes (exit $rc)" test "$rc" != 0
rm -rf -- "$U2DIR"
if [[ -n $CREATED_U2 ]]; then userdel "$U2" 2>/dev/null || true; fi
check "(u) the job has no new generation from it and still runs" bash -c "[[ ! -e $MDIR/gen-1 ]] && squeue -h -j $JM | grep -q ."

out=$(as_user "$INST/bin/ckpt" checkpoint --ckpt-dir "$MDIR" --json 2>&1); rc=$?
info "$(tr '\n' ' ' <<<"$out" | cut -c1-300)"
check "(m) ckpt checkpoint of the 2-node step (exit $rc)" test "$rc" == 0
scancel "$JM"; wait "$SRUNM" 2>/dev/null
check "(m) no coordinator outlives job $JM" no_leftovers "$JM"
info "first run ended at ticks rank0=$(grep -c '^0: tick' "$WORK/multi1.out") rank1=$(grep -c '^1: tick' "$WORK/multi1.out")"
printf '%s\n%s\n' "${NODES[1]}" "${NODES[0]}" >"$WORK/swapped.hosts"; chown "$TUSER:" "$WORK/swapped.hosts"
t=$(now)
as_user bash -c "SLURM_HOSTFILE=$WORK/swapped.hosts timeout 180 srun -N2 -n2 -m arbitrary --restart-from=$MDIR -l $WORK/counter $MT >$WORK/multi2.out 2>&1" &
BGPIDS+=($!); SRUNM2=$!
deadline=$((SECONDS + 90))
until [[ -n $(grep -h 'restored from' "$WORK/multi2.out" 2>/dev/null | sed -n 2p) ]] || (( SECONDS > deadline )); do sleep 0.2; done
sleep 1
maddr=$(cat "$MDIR/coordinator.addr" 2>/dev/null); mport=${maddr##*:}
h=$(status_hosts) p=$(tcp_peers)
info "after the restore: ranks@hosts $h; coordinator ${maddr:-?}; TCP peers ${p:-none}"
check "(m) restored on swapped nodes, both tasks rejoined the coordinator ($h)" test "$h" == "0@${NODES[1]} 1@${NODES[0]}"
check "(m) ... rank 0, now on ${NODES[1]}, over TCP (peers: ${p:-none})" grep -qw "${CKPT_SLURM_NET:-10.77.0}.12" <<<"$p"
wait "$SRUNM2"; rc=$?
figure "2-node srun --restart-from: restore + remaining ticks took $(since "$t") s"
check "(m) srun --restart-from of the 2-node step finished (exit $rc)" test "$rc" == 0
for r in 0 1; do
    { grep "^$r: " "$WORK/multi1.out"; grep "^$r: \|restoring task $r " "$WORK/multi2.out" | sed "s/^\(ckpt: .*restoring task\)/$r: \1/"; } >"$WORK/mrank$r.out"
    res=$(verify_restored "$WORK/mrank$r.out" "$MT" "$r: "); info "rank $r: $(tr '\n' ';' <<<"$res")"
    check "(m) rank $r restored on the other node: first tick > 1, consecutive to $MT, PASS" quiet verify_restored "$WORK/mrank$r.out" "$MT" "$r: "
done
grep -v ': tick ' "$WORK/multi2.out" | sed 's/^/#      multi2: /' | head -10
check "(m) no coordinator outlives the 2-node --restart-from job" no_leftovers "$JM"

# --- (w) walltime: checkpoint walltime_margin before the limit, requeue, restore ------------------
if [[ ${CKPT_E2E_WALLTIME:-1} == 1 ]]; then
    WT=2400
    cat >"$WORK/wall.sh" <<EOF
#!/bin/bash
echo "run restart=\${SLURM_RESTART_COUNT:-0} t=\$(date +%s.%N)"
exec $WORK/counter $WT
EOF
    chmod 755 "$WORK/wall.sh"
    t=$(now)
    out=$(as_user sbatch --checkpoint-dmtcp --time=2 -N1 --open-mode=append -o wall-%j.out "$WORK/wall.sh" 2>&1)
    JW=$(submitted "$out"); JOBS+=("$JW")
    st=$(wait_done "$JW" 400)
    check "(w) walltime job completed ($st, Restarts=$(jobfield "$JW" Restarts))" test "$st" == COMPLETED
    check "(w) checkpointed before the time limit (agent log)" grep -q 'time limit: checkpoint generation [0-9]* committed' "$INST/ckpt/$TUSER/$JW/ckpt-slurm.log"
    res=$(verify_restored "$WORK/wall-$JW.out" "$WT" ""); info "$(tr '\n' ';' <<<"$res")"
    check "(w) restored after the requeue and finished: first tick > 1, consecutive, PASS" quiet verify_restored "$WORK/wall-$JW.out" "$WT" ""
    check "(w) no coordinator outlives job $JW" no_leftovers "$JW"
    grep -v '^tick ' "$WORK/wall-$JW.out" | sed 's/^/#      /'
    sed 's/^/#      agent: /' "$INST/ckpt/$TUSER/$JW/ckpt-slurm.log" 2>/dev/null
    figure "walltime: job with --time=2 and ~75 s of work (Restarts=$(jobfield "$JW" Restarts)) finished in $(since "$t") s"
fi

# --- (r) ckpt-slurm requeue JOBID: checkpoint, requeue, restore -------------------------------------
RT=1200
printf '#!/bin/bash\nexec %s %s\n' "$WORK/counter" "$RT" >"$WORK/rq.sh"
chmod 755 "$WORK/rq.sh"
out=$(as_user sbatch --checkpoint-dmtcp -N1 --open-mode=append -o rq-%j.out "$WORK/rq.sh" 2>&1)
JR=$(submitted "$out"); JOBS+=("$JR")
deadline=$((SECONDS + 60))
until grep -q '^tick 100$' "$WORK/rq-$JR.out" 2>/dev/null || (( SECONDS > deadline )); do sleep 0.2; done
out=$(as_user "$INST/bin/ckpt-slurm" requeue "$JR" 2>&1); rc=$?
info "ckpt-slurm requeue said: $(tr '\n' ' ' <<<"$out")"
check "(r) ckpt-slurm requeue $JR (exit $rc) found the job's directory from plugstack.conf" test "$rc" == 0
st=$(wait_done "$JR" 180)
check "(r) requeued job completed ($st, Restarts=$(jobfield "$JR" Restarts))" test "$st" == COMPLETED -a "$(jobfield "$JR" Restarts)" == 1
res=$(verify_restored "$WORK/rq-$JR.out" "$RT" ""); info "$(tr '\n' ';' <<<"$res")"
check "(r) restored from the requeue checkpoint, consecutive to $RT, PASS" quiet verify_restored "$WORK/rq-$JR.out" "$RT" ""
check "(r) no coordinator outlives job $JR" no_leftovers "$JR"

# --- (s) a batch script running srun steps: requeued during its second step, it goes on from there --
# The script is restored (not rerun); the srun of the running step is executed again and its new
# step's tasks are restored from the old step's images, by rank; the finished first step is not rerun.
ST=900
cat >"$WORK/steps.sh" <<EOF
#!/bin/bash
echo "run restart=\${SLURM_RESTART_COUNT:-0}"
srun -n1 $WORK/counter 30
echo "step A done"
srun -n2 -l $WORK/counter $ST
echo "step B done rc=\$?"
EOF
chmod 755 "$WORK/steps.sh"
out=$(as_user sbatch --checkpoint-dmtcp -N1 -n2 --open-mode=append -o steps-%j.out "$WORK/steps.sh" 2>&1)
JB=$(submitted "$out"); JOBS+=("$JB")
SOUT=$WORK/steps-$JB.out
deadline=$((SECONDS + 90))
until [[ $(grep -c ': tick 100$' "$SOUT" 2>/dev/null) == 2 ]] || (( SECONDS > deadline )); do sleep 0.2; done
check "(s) batch job $JB with two srun steps is in its second step" grep -q '^step A done$' "$SOUT"
out=$(as_user "$INST/bin/ckpt-slurm" requeue "$JB" 2>&1); rc=$?
info "ckpt-slurm requeue said: $(tr '\n' ' ' <<<"$out")"
check "(s) ckpt-slurm requeue $JB during step B (exit $rc)" test "$rc" == 0
st=$(wait_done "$JB" 240)
check "(s) requeued job completed ($st, Restarts=$(jobfield "$JB" Restarts))" test "$st" == COMPLETED -a "$(jobfield "$JB" Restarts)" == 1
check "(s) the script was restored, not rerun: one 'run restart=' line" test "$(grep -c '^run restart=' "$SOUT")" == 1
check "(s) step A ran once (one 'tick 1', one 'step A done')" \
    test "$(grep -c '^tick 1$' "$SOUT")" == 1 -a "$(grep -c '^step A done$' "$SOUT")" == 1
for r in 0 1; do
    res=$(verify_restored "$SOUT" "$ST" "$r: "); info "step B rank $r: $(tr '\n' ';' <<<"$res")"
    check "(s) step B rank $r restored from its own image in a new step: first tick > 1, consecutive to $ST, PASS" \
        quiet verify_restored "$SOUT" "$ST" "$r: "
done
check "(s) the script went on after step B with srun's status 0" grep -q '^step B done rc=0$' "$SOUT"
grep -v ': tick \|^tick ' "$SOUT" | sed 's/^/#      steps: /' | head -30
check "(s) no coordinator outlives job $JB" no_leftovers "$JB"

# --- (p) a 2-node batch job whose srun step spans both nodes, preempted: the whole job is
# checkpointed in the grace period (the task on node2 over TCP), requeued, and continues on 2 nodes
PT=1200
cat >"$WORK/steps2.sh" <<EOF
#!/bin/bash
echo "run restart=\${SLURM_RESTART_COUNT:-0}"
srun -N2 -n2 -l $WORK/counter $PT
echo "step done rc=\$?"
EOF
chmod 755 "$WORK/steps2.sh"
out=$(as_user sbatch -p low -N2 --exclusive --checkpoint-dmtcp --open-mode=append -o p2-%j.out "$WORK/steps2.sh" 2>&1)
JP=$(submitted "$out"); JOBS+=("$JP")
POUT=$WORK/p2-$JP.out
PDIR=$INST/ckpt/$TUSER/$JP
deadline=$((SECONDS + 90))
until [[ $(grep -c ': tick 100$' "$POUT" 2>/dev/null) == 2 ]] || (( SECONDS > deadline )); do sleep 0.2; done
ranks_at() { as_user "$INST/bin/ckpt" status --ckpt-dir "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join(sorted("%s@%s" % (p["info"].get("rank"), p["info"]["host"]) for p in json.load(sys.stdin)["processes"] if p["info"].get("rank") is not None and p["info"].get("step") not in (None, "batch"))))'; }
h=$(ranks_at "$PDIR")
check "(p) 2-node job $JP: its step's tasks run on both nodes ($h)" test "$h" == "0@${NODES[0]} 1@${NODES[1]}"
t=$(now)
out=$(as_user sbatch -p high -N1 -w "${NODES[0]}" --exclusive -o high2-%j.out --wrap 'sleep 5' 2>&1)
JH2=$(submitted "$out"); JOBS+=("$JH2")
st=$(wait_done "$JP" 300)
figure "2-node preemption: high submitted -> the low job completed after its restore: $(since "$t") s"
check "(p) the preempted 2-node job completed after a restore ($st, Restarts=$(jobfield "$JP" Restarts))" \
    test "$st" == COMPLETED -a "$(jobfield "$JP" Restarts)" == 1
check "(p) the checkpoint was taken on preemption (agent log)" grep -q 'preemption: checkpoint generation [0-9]* committed' "$PDIR/ckpt-slurm.log"
check "(p) the script was restored, not rerun" test "$(grep -c '^run restart=' "$POUT")" == 1
for r in 0 1; do
    res=$(verify_restored "$POUT" "$PT" "$r: "); info "rank $r: $(tr '\n' ';' <<<"$res")"
    check "(p) rank $r continued from its checkpoint: first tick > 1, consecutive to $PT, PASS" quiet verify_restored "$POUT" "$PT" "$r: "
done
check "(p) the script went on after the step with status 0" grep -q '^step done rc=0$' "$POUT"
grep -v ': tick ' "$POUT" | sed 's/^/#      p2: /' | head -30
check "(p) no coordinator outlives job $JP" no_leftovers "$JP"
