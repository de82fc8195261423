#!/usr/bin/env bash
# keel's whole test suite, as CI runs it: installs the Debian packages the tests need (root,
# Debian 12), checks formatting and lints, runs the unit and integration tests, then drives a
# release build of keel with real initiators (libiscsi's tools, qemu-img) and libiscsi's
# conformance suite.
set -euo pipefail
cd "$(dirname "$0")"

echo "== dependencies"
interop/install-deps

echo "== format and lints"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== unit and integration tests"
cargo test --all-targets

echo "== interop with real initiators"
cargo build --release --quiet
export KEEL=$PWD/target/release/keel
passed=0
failed=0
failures=()
# Each script with its time limit: the conformance run takes libiscsi's whole suite twice
# (keel, then tgt beside it for the published matrix) and fails on any keel FAIL.
for entry in libiscsi-smoke:600 chap:600 qemu-roundtrip:600 robustness:600 conformance:3000; do
    script=${entry%%:*}
    echo "-- $script"
    if timeout "${entry##*:}" "interop/$script"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$script")
    fi
done
[ ${#failures[@]} -eq 0 ] || echo "failed: ${failures[*]}"
echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
