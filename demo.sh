#!/usr/bin/env bash
# A short demonstration: build ckpt, run a Python program under it, checkpoint it, kill it,
# restart it, and watch it continue where it was.
set -euo pipefail
cd "$(dirname "$0")"
# Descriptors leaked into this shell by whatever started it are not part of the demo.
for fd in $(ls /proc/$$/fd); do
  if [ "$fd" -gt 2 ] 2>/dev/null && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
echo "== building ckpt (release)"
cargo build --release --workspace -q
CKPT=$PWD/target/release/ckpt
dir=$(mktemp -d /tmp/ckpt-demo.XXXXXX)
cleanup() { [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

prog='import time
total = 0
for i in range(1, 1000):
    total += i * i
    print(f"step {i:3d}  sum of squares so far = {total}", flush=True)
    time.sleep(0.25)'

echo "== ckpt launch --ckpt-dir $dir -- python3 -c '<count and sum squares>'"
"$CKPT" launch --ckpt-dir "$dir" -- python3 -c "$prog" &
pid=$!
sleep 2.2
echo "== ckpt checkpoint --kill   (saves the running program, then ends it)"
"$CKPT" checkpoint --ckpt-dir "$dir" --kill
{ wait "$pid"; } 2>/dev/null || true
pid=
echo "== the program is gone; ckpt list shows the checkpoint:"
"$CKPT" list --ckpt-dir "$dir"
echo "== ckpt restart $dir   (continues from the checkpoint, same pid inside the program)"
timeout 2.2 "$CKPT" restart "$dir" || true
echo "== done: the steps went on from where the checkpoint was taken, not from 1."
