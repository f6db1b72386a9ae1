#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need beyond the Rust
# toolchain: moto's S3 server (origin), iproute2 (node network namespaces and
# link shaping), e2fsprogs (node filesystems for the benchmark) and kubectl's
# companions. Safe to run again: it installs only
# what is missing.
set -euo pipefail

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v tc >/dev/null 2>&1 || need_apt+=(iproute2)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# setpriv: children of the test cluster get PR_SET_PDEATHSIG through it.
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# mkfs.ext4, losetup: the benchmark gives every node a filesystem of its own.
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing ${need_apt[*]} (not root: tests that need them fall back or skip)" >&2
    fi
fi

if ! python3 -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
fi

# The real Helm engine as a library (e2e/helm/render.py, e2e/tests/helm_chart.rs):
# lint, render, install/upgrade the chart without a helm binary.
if ! python3 -c 'import helm_python' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'helm-python-sdk>=0.2.2,<0.3'
fi
