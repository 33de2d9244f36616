#!/bin/sh
# The project's test command: build everything in release, then run every test (all test
# binaries, even after a failure, so one run reports everything).
# Extra arguments go to `cargo test`, e.g. `./tests/run.sh --test corpus counter` (one test
# binary, tests matching "counter") or `./tests/run.sh -- --nocapture`.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --workspace
exec cargo test --release --workspace --no-fail-fast "$@"
