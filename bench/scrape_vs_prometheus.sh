#!/usr/bin/env bash
# trawl's whole-process CPU per sample and memory against Prometheus 2.42, in the same
# rounds, on nginx-served node-exporter payloads (the shared anchors harness).
#   bench/scrape_vs_prometheus.sh                       node100 and node1000, 3 rounds (~25 min)
#   bench/scrape_vs_prometheus.sh --configs node100 --rounds 1 --scale 0.25   (~1 min smoke)
# Needs: scripts/install (for .venv), Debian's prometheus and nginx, the harness beside the
# repository in ../shared/bench (or TRAWL_BENCH_HARNESS=DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${TRAWL_BENCH_HARNESS:-../shared/bench}
[ -f "$HARNESS/run_anchors.py" ] || { echo "no harness at $HARNESS/run_anchors.py" >&2; exit 2; }
[ -x .venv/bin/python ] || scripts/install
args=(--configs node100,node1000 --rounds 3)
[ $# -gt 0 ] && args=("$@")
exec .venv/bin/python "$HARNESS/run_anchors.py" --scrapers prometheus,trawl \
  --spec "trawl=$PWD/bench/specs/trawl.json" "${args[@]}"
