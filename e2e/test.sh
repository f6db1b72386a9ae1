#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration and e2e tests.
# Installs what it needs first (see e2e/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

e2e/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Release build: the data-plane tests move gigabytes; the e2e tests start the
# agent and operator binaries, which must exist before they run. One build
# with the tests' features makes the binaries too (a separate `cargo build
# --bins` resolves features without the dev-dependencies and would compile
# the whole dependency tree a second time).
cargo test --workspace --release --locked --no-run
cargo test --workspace --release --locked
