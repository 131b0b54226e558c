#!/bin/bash
# PostgreSQL takeover with about 100,000 live requests: two release brokers on a fresh database,
# filled through the leader by labaid-bench (the demo's per-trust rate limit holds it to about
# 4,000 a second), then kill -9 of the leader and the time until `labctl` given both addresses
# has a submission acknowledged by the other. Prints one "takeover" line per run.
#
#   cargo build --release --bin labaid-broker --bin labaid-bench --bin labctl
#   benches/pg_takeover.sh postgres://postgres@127.0.0.1:PORT [RUNS] [FILL]   # 3, 25s
set -euo pipefail
server=${1:?a PostgreSQL server URL without a database, e.g. postgres://postgres@127.0.0.1:5432}
runs=${2:-3}
fill=${3:-25s}
bin=$(cd "$(dirname "$0")/../target/release" && pwd)
work=$(mktemp -d "${LABAID_BENCH_DIR:-.}/pg-takeover-XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for run in $(seq 1 "$runs"); do
  db="labaid_takeover_$$_$run"
  psql "$server/postgres" -qc "CREATE DATABASE $db"
  grpc=() ; pids=()
  for name in a b; do
    port=$(free_port)
    grpc+=("127.0.0.1:$port")
    "$bin/labaid-broker" --store "$server/$db" --listen "127.0.0.1:$port" \
      --metrics-listen "127.0.0.1:$(free_port)" --web-listen off \
      --data-dir "$work/$run-$name" > "$work/$run-$name.log" 2>&1 &
    pids+=($!)
    disown # killing it is the point: no job-control notice
    sleep 2 # the first to start leads
  done
  "$bin/labaid-bench" --addr "http://${grpc[0]}" --scenario submit --duration "$fill" \
    > "$work/$run-bench.log" 2>&1
  live=$(grep -o '[0-9]* live requests' "$work/$run-bench.log" | tail -1)
  sleep 3 # the standby follows the journal
  started=$(date +%s.%N)
  kill -9 "${pids[0]}"
  until LABAID_TOKEN=demo:RJ1 "$bin/labctl" --addr "http://${grpc[0]},http://${grpc[1]}" \
      requests submit --nhs-number 9434765919 --tests K,UE --priority stat \
      --collected-at -20m --order-number "TAKEOVER-$run" > /dev/null 2> "$work/labctl.err"; do
    sleep 0.05
  done
  echo "run $run: takeover $(echo "$(date +%s.%N) - $started" | bc) s with $live"
  kill "${pids[1]}"
  psql "$server/postgres" -qc "DROP DATABASE $db WITH (FORCE)"
done
