#!/usr/bin/env bash
# Gossip at scale on one machine: N gossip processes on loopback against one registry.
#
#   scripts/run_scale_test.sh N
#
# Starts a registry on a free loopback port with a temporary data dir, then N nodes
# (scripts/run_gossip_node.py), node i training on digits share i of N. The nodes find
# their gossip group through the registry by domain, wait until all N are in it, gossip
# SCALE_CYCLES cycles each and exit; the script waits for every one of them to exit, then prints one row per node
# (test accuracy, bytes sent/received, merges) and the mean/min. Everything it started is
# stopped, and the temporary dir removed, on exit, Ctrl-C or SIGTERM.
#
# Environment:
#   MYCELIUM_PYTHON   python with the project installed (default: <repo>/.venv/bin/python)
#   SCALE_CYCLES      gossip cycles per node (default 40)
#   SCALE_PERIOD_S    seconds between a node's gossip sends (default 0.2)
#   SCALE_TIMEOUT_S   safety net: a node stops after this many seconds (default 900)
#   SCALE_KEEP        set to keep the temporary dir (logs) and print its path
#
# Exit status: 0 when every node finished and printed its summary, 1 when one did not
# (its log is shown), 2 for bad usage.
set -euo pipefail

usage() { echo "usage: $0 N   (N: number of gossip nodes, 2..1000)" >&2; exit 2; }
[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || usage
N=$((10#$1))
((N >= 2 && N <= 1000)) || usage

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${MYCELIUM_PYTHON:-$ROOT/.venv/bin/python}
CYCLES=${SCALE_CYCLES:-40}
PERIOD=${SCALE_PERIOD_S:-0.2}
TIMEOUT=${SCALE_TIMEOUT_S:-900}
bad_env() { echo "error: $1 must be $2, got '$3'" >&2; exit 2; }
[[ $CYCLES =~ ^[0-9]+$ ]] && ((10#$CYCLES >= 1)) || bad_env SCALE_CYCLES "a whole number >= 1" "$CYCLES"
[[ $PERIOD =~ ^[0-9]*\.?[0-9]+$ ]] && [[ ! $PERIOD =~ ^0*\.?0*$ ]] \
    || bad_env SCALE_PERIOD_S "a number of seconds > 0" "$PERIOD"
[[ $TIMEOUT =~ ^[0-9]+$ ]] && ((10#$TIMEOUT >= 1)) \
    || bad_env SCALE_TIMEOUT_S "a whole number of seconds >= 1" "$TIMEOUT"
[[ -x $PYTHON ]] || { echo "error: no python at $PYTHON (set MYCELIUM_PYTHON)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mycelium-scale.XXXXXX")
REGISTRY_PID=""
NODE_PIDS=()

cleanup() {
    local pid
    for pid in "${NODE_PIDS[@]}" $REGISTRY_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}" $REGISTRY_PID; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${SCALE_KEEP:-} ]]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export FLWR_TELEMETRY_ENABLED=0 PYTHONUNBUFFERED=1
# One compute thread per process: N processes share the cores, and oversubscribed OpenMP
# threads spin (measured: whole nodes stalled for seconds with torch's default).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
PORT=$("$PYTHON" -c 'from node.addresses import free_port; print(free_port())')
URL="http://127.0.0.1:$PORT"
"$PYTHON" -m registry --host 127.0.0.1 --port "$PORT" --data-dir "$WORK/registry" \
    >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!

# Ready when /healthz answers; bounded by a count of tries and by the registry exiting.
if ! "$PYTHON" - "$URL" "$REGISTRY_PID" <<'EOF'
import os, sys, time
import httpx
url, pid = sys.argv[1], int(sys.argv[2])
for _ in range(600):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the registry exited")
    try:
        if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.1)
sys.exit("the registry did not become healthy")
EOF
then
    cat "$WORK/registry.log" >&2
    exit 1
fi

START=$(date +%s.%N)
for ((i = 0; i < N; i++)); do
    "$PYTHON" "$ROOT/scripts/run_gossip_node.py" \
        --config "$ROOT/configs/base.yaml" --registry-url "$URL" \
        --node-id "node-$i" --host 127.0.0.1 --port 0 --dataset digits \
        --index "$i" --nodes "$N" --cycles "$CYCLES" --period-s "$PERIOD" \
        --min-peers $((N - 1)) --duration-s "$TIMEOUT" \
        --data-dir "$WORK/node-$i" --log-level "${SCALE_LOG_LEVEL:-warning}" \
        >"$WORK/node-$i.out" 2>"$WORK/node-$i.err" &
    NODE_PIDS+=($!)
done

failed=0
for ((i = 0; i < N; i++)); do
    if ! wait "${NODE_PIDS[$i]}"; then
        failed=$((failed + 1))
    fi
done
NODE_PIDS=()
WALL=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

: >"$WORK/summaries"
for ((i = 0; i < N; i++)); do
    if ! grep -h '^gossip done:' "$WORK/node-$i.out" >>"$WORK/summaries"; then
        echo "node-$i printed no summary; its log:" >&2
        tail -n 20 "$WORK/node-$i.err" >&2
        failed=$((failed + 1))
    fi
done
awk -v n="$N" -v wall="$WALL" '
    {
        for (f = 3; f <= NF; f++) { split($f, kv, "="); v[kv[1]] = kv[2] }
        rows++
        printf "%-10s %8.4f %14d %14d %7d\n", v["node"], v["accuracy"], v["bytes_sent"], \
            v["bytes_received"], v["merges"]
        acc += v["accuracy"]; sent += v["bytes_sent"]; recv += v["bytes_received"]
        if (rows == 1 || v["accuracy"] + 0 < min) min = v["accuracy"] + 0
    }
    BEGIN { printf "%-10s %8s %14s %14s %7s\n", "node", "accuracy", "bytes_sent", "bytes_recv", "merges" }
    END {
        if (rows == 0) exit 1
        printf "%-10s %8.4f %14d %14d\n", "mean", acc / rows, sent / rows, recv / rows
        printf "%-10s %8.4f\n", "min", min
        printf "nodes %d/%d finished in %ss\n", rows, n, wall
    }' "$WORK/summaries"

((failed == 0)) || { echo "error: $failed node(s) failed" >&2; exit 1; }
