#!/usr/bin/env bash
# The Redis broker's figures in BENCHMARKS.md ("Past one machine"): one redis-server (no
# persistence), two rpchub nodes on it (A publishes, B's clients subscribe) and one node on the
# memory broker (M) for comparison, all on this machine; `rpchub bench` loads them.
#
#   cargo build --release && bash benches/redis-nodes.sh [RESULTS_DIR]
#
# Runs, each `--seconds` long (SECONDS_EACH, default 5):
#   publish  publications/s through `publish` calls: one call in flight on each of C connections
#            (C = 1, 8, 64, 100), into one channel or into one channel per connection (100
#            channels at C = 100); on node A (Redis) and on M. One call in flight in all is no
#            pipelining; with C in flight the node's one multiplexed Redis connection pipelines
#            up to C scripts per round trip.
#   latency  1,000 subscribers on B, 200 publications/s published on A: cross-node latency;
#            the same on M (publisher and subscribers on M); and at 50 publications/s, where
#            this machine is not saturated (at 200/s the two cores are busy with 200,000 frames
#            a second, each a write and a read of its own).
#   fanout   1,000 subscribers, publishing as fast as the bench allows (--max-lag): deliveries/s
#            on B with publications from A, and on M; then again with the CPUs split (taskset):
#            Redis and node A on CPU 0, node B (or M) and the bench on CPU 1, so that the node
#            serving the subscribers has the same CPU with either broker (fan-out, and latency
#            at 50 publications/s).
# Every run prints one JSON line into RESULTS_DIR/runs.jsonl (rpchub bench --json); a summary
# table follows. Needs redis-server (Debian's redis-server package) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RPCHUB_BIN:-target/release/rpchub}
OUT=${1:-${RESULTS_DIR:-target/redis-bench}}
SECS=${SECONDS_EACH:-5}
TOKEN=redis-bench-admin-token
mkdir -p "$OUT"
: >"$OUT/runs.jsonl"
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  return 1
}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "$OUT/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT"

node() { # name broker -> sets PORT_<name> and PID_<name>
  local port
  port=$(free_port)
  RPCHUB_ADMIN_TOKEN=$TOKEN "$BIN" serve --listen "127.0.0.1:$port" --broker "$2" --node-id "$1" \
    --log warn >"$OUT/node-$1.log" 2>&1 &
  PIDS+=("$!")
  printf -v "PID_$1" %s "$!"
  printf -v "PORT_$1" %s "$port"
  wait_port "$port"
}
node A "redis://127.0.0.1:$REDIS_PORT"
node B "redis://127.0.0.1:$REDIS_PORT"
node M memory

bench() { # label, then bench arguments; RUN: a command to run the bench under (taskset)
  local label=$1
  shift
  echo "== $label" >&2
  # shellcheck disable=SC2086
  RPCHUB_TOKEN=$TOKEN ${RUN:-} "$BIN" bench "$@" --json | python3 -c '
import json, sys
v = json.loads(sys.stdin.read()); v["label"] = sys.argv[1]; print(json.dumps(v))' "$label" >>"$OUT/runs.jsonl"
  sleep 1
}
url() { local p="PORT_$1"; echo "ws://127.0.0.1:${!p}/ws/rpc"; }
DATA='{"sym":"BTC","px":"97012.5","sz":"0.125","side":"B","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'

for broker in redis memory; do
  if [ $broker = redis ]; then n=A; else n=M; fi
  pid="PID_$n"
  for c in 1 8 64 100; do
    bench "publish $broker 1-channel c=$c" rpc --url "$(url $n)" --server-pid "${!pid}" --also-pid "redis=$REDIS_PID" \
      --connections "$c" --seconds "$SECS" --method publish --params "[\"bench:one-$broker\",$DATA]"
  done
  bench "publish $broker 100-channels c=100" rpc --url "$(url $n)" --server-pid "${!pid}" --also-pid "redis=$REDIS_PID" \
    --connections 100 --seconds "$SECS" --method publish --params "[\"bench:c{conn}-$broker\",$DATA]" --spread 100
done

for rate in 200 50; do
  bench "latency redis B<-A 1000x$rate/s" fanout --url "$(url B)" --publish-url "$(url A)" --server-pid "$PID_B" \
    --also-pid "node-a=$PID_A" --also-pid "redis=$REDIS_PID" --subscribers 1000 --rate $rate --seconds $((SECS * 2)) \
    --channel "bench:latency-redis-$rate"
  bench "latency memory M 1000x$rate/s" fanout --url "$(url M)" --server-pid "$PID_M" --also-pid "redis=$REDIS_PID" \
    --subscribers 1000 --rate $rate --seconds $((SECS * 2)) --channel "bench:latency-memory-$rate"
done
bench "fanout redis B<-A 1000 max" fanout --url "$(url B)" --publish-url "$(url A)" --server-pid "$PID_B" \
  --also-pid "node-a=$PID_A" --also-pid "redis=$REDIS_PID" --subscribers 1000 --seconds "$SECS" \
  --channel bench:fanout-redis
bench "fanout memory M 1000 max" fanout --url "$(url M)" --server-pid "$PID_M" --also-pid "redis=$REDIS_PID" \
  --subscribers 1000 --seconds "$SECS" --channel bench:fanout-memory

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  taskset -pc 0 "$REDIS_PID" >/dev/null
  taskset -apc 0 "$PID_A" >/dev/null
  taskset -apc 1 "$PID_B" >/dev/null
  taskset -apc 1 "$PID_M" >/dev/null
  RUN="taskset -c 1" bench "fanout redis B<-A pinned" fanout --url "$(url B)" --publish-url "$(url A)" \
    --server-pid "$PID_B" --also-pid "node-a=$PID_A" --also-pid "redis=$REDIS_PID" --subscribers 1000 \
    --seconds "$SECS" --threads 1 --channel bench:pinned-redis
  RUN="taskset -c 1" bench "fanout memory M pinned" fanout --url "$(url M)" --server-pid "$PID_M" \
    --also-pid "redis=$REDIS_PID" --subscribers 1000 --seconds "$SECS" --threads 1 --channel bench:pinned-memory
  RUN="taskset -c 1" bench "latency redis B<-A 1000x50/s pinned" fanout --url "$(url B)" --publish-url "$(url A)" \
    --server-pid "$PID_B" --also-pid "node-a=$PID_A" --also-pid "redis=$REDIS_PID" --subscribers 1000 --rate 50 \
    --seconds $((SECS * 2)) --threads 1 --channel bench:pinned-latency-redis
  RUN="taskset -c 1" bench "latency memory M 1000x50/s pinned" fanout --url "$(url M)" --server-pid "$PID_M" \
    --also-pid "redis=$REDIS_PID" --subscribers 1000 --rate 50 --seconds $((SECS * 2)) --threads 1 \
    --channel bench:pinned-latency-memory
fi

python3 - "$OUT/runs.jsonl" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def g(v, *path):
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    return v
print(f"{'run':38} {'per s':>9} {'p50 µs':>8} {'p99 µs':>8} {'node µs/op':>10} {'redis µs/pub':>12} {'busy %':>6} {'errors':>6}")
for v in runs:
    if v.get("scenario") == "rpc":
        rate, unit, errors = v.get("calls_per_s"), "call", v.get("errors")
        redis = g(v, "also_cpu", "redis", "cpu_us_per_call")
    else:
        rate, unit = v.get("deliveries_per_s"), "delivery"
        errors = sum(v.get(k, 0) or 0 for k in ("lost", "gaps", "dups", "publish_errors"))
        redis = g(v, "also_cpu", "redis", "cpu_us_per_publication")
    node = v.get(f"server_cpu_us_per_{unit}")
    fmt = lambda x, d=1: "n/a" if x is None else f"{x:,.{d}f}" if isinstance(x, float) else f"{x:,}"
    print(f"{v['label']:38} {fmt(rate, 0):>9} {fmt(g(v,'latency_us','p50')):>8} {fmt(g(v,'latency_us','p99')):>8} "
          f"{fmt(node, 2):>10} {fmt(redis):>12} {fmt(v.get('machine_busy_pct'), 0):>6} {fmt(errors):>6}"
          + (f"  error: {v['error']}" if v.get("error") else ""))
EOF
