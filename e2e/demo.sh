#!/usr/bin/env bash
# The demo, from a fresh clone: installs what the cluster needs, builds
# everything, starts a local cluster (API stand-in, 4 nodes with real agents,
# the operator, an HTTP origin), seeds a generated ~1 GiB model-like dataset
# through a Dataset applied with kubectl, verifies every node's copy and
# prints the figures. Flags go to `e2e demo` (e.g. --keep, --size 256MiB,
# --nodes 8); see `cargo run --release -p e2e -- demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
e2e/setup.sh
exec cargo run --release --locked -p e2e -- demo "$@"
