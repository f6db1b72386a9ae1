#!/usr/bin/env bash
# Regenerates the "Seeding through the operator" and "Control plane at
# scale" sections of e2e/bench/RESULTS.md: runs `e2e bench` and `e2e
# bench-scale` for the target configurations and writes each table between
# its section's markers, keeping the rest of the file. Needs kubectl, and
# root for the seeding section (network namespaces, tc-shaped links).
#
#   e2e/bench/run.sh                     the target configurations (~40 min)
#   e2e/bench/run.sh --quick             small configurations (~3 min)
#   e2e/bench/run.sh --scale-only        only the control plane at scale
#   e2e/bench/run.sh --results FILE      write FILE instead of RESULTS.md
#   e2e/bench/run.sh --no-build          use target/release as it is
#
# One run per configuration. The machine is usually shared: the ratios are
# measured against baselines taken in the same run, absolute times are not
# comparable between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

results=e2e/bench/RESULTS.md
quick=false
build=true
seeding=true
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=true ;;
    --no-build) build=false ;;
    --scale-only) seeding=false ;;
    --results)
      results=${2:?--results needs a file}
      shift
      ;;
    -h | --help)
      sed -n '2,16p' "$0"
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

if $seeding && [ "$(id -u)" != 0 ]; then
  echo "run.sh: needs root (network namespaces and tc-shaped links)" >&2
  exit 1
fi

note=""
if $quick; then
  note="Smoke configurations (\`e2e/bench/run.sh --quick\`), not the targets: \
small datasets, where the fixed costs (kubectl, listing, planning, fsync at \
publication) weigh heavily against T*."
  configs=(
    "--nodes 4 --size 64MiB --link-mbit 200"
    "--nodes 4 --size 16MiB --link-mbit 200 --small-files 2000"
  )
else
  configs=(
    "--nodes 4 --size 1GiB --link-mbit 200"
    "--nodes 8 --size 1GiB --link-mbit 200"
    "--nodes 16 --size 256MiB --link-mbit 100"
    # The same bytes as the next row in four files: the small-files target
    # compares the two makespans.
    "--nodes 8 --size 256MiB --link-mbit 200"
    "--nodes 8 --size 256MiB --link-mbit 200 --small-files 50000"
  )
fi
# The control plane at scale: simulated agents, no byte moves (no root).
scale_note=""
if $quick; then
  scale_note="Smoke configuration (\`e2e/bench/run.sh --quick\`), not the target: \
50 agents and 4 Datasets."
  scale_configs=("--agents 50 --datasets 4 --seed-time 10s")
else
  scale_configs=("--agents 500 --datasets 20")
fi

if $build; then
  # The agent, the operator and e2e: `e2e bench` starts the first two.
  cargo build --release --locked --workspace --bins
fi
bin=target/release/e2e
reports=$(mktemp)
scale_reports=$(mktemp)
log=$(mktemp)
trap 'rm -f "$reports" "$scale_reports" "$log"' EXIT

if $seeding; then
  for config in "${configs[@]}"; do
    echo "+ e2e bench $config --json" >&2
    # $config is split into arguments on purpose.
    # shellcheck disable=SC2086
    "$bin" bench $config --json | tee "$log"
    # The last stdout line is the JSON report.
    tail -n 1 "$log" >>"$reports"
  done
  "$bin" bench render --input "$reports" --results "$results" \
    --date "$(date -u +%Y-%m-%d)" --note "$note"
fi

for config in "${scale_configs[@]}"; do
  echo "+ e2e bench-scale $config --json" >&2
  # shellcheck disable=SC2086
  "$bin" bench-scale $config --json | tee "$log"
  tail -n 1 "$log" >>"$scale_reports"
done
"$bin" bench-scale render --input "$scale_reports" --results "$results" \
  --date "$(date -u +%Y-%m-%d)" --note "$scale_note"
echo "run.sh: wrote $results" >&2
