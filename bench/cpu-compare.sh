#!/usr/bin/env bash
# Client CPU per request: a baseline commit's binary (default: round one's
# last, a1ab6b6) vs this one, on the headroom run, alternating rounds.
#   bash bench/cpu-compare.sh [BASE_COMMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${1:-a1ab6b6}
WORK=${BENCH_DIR:-/tmp/orderbatch-bench}; mkdir -p "$WORK"
rm -rf "$WORK/round1"; git worktree prune
git worktree add -q --detach "$WORK/round1" "$BASE"
cargo build --release --quiet --example gen_orders
f=$WORK/orders-100000-4.csv; [ -s "$f" ] || target/release/examples/gen_orders 100000 4 > "$f"
cargo build --release --quiet --bin orderbatch
(cd $WORK/round1 && CARGO_TARGET_DIR=$WORK/round1-target cargo build --release --quiet --bin orderbatch)
export PNM_SITE_IDENTIFIER=S_BENCH PNM_SECRET_KEY=bench-secret
PORT=18500
for round in 1 2 3; do
  for v in round1 now; do
    B=$ROOT/target/release/orderbatch; [ $v = round1 ] && B=$WORK/round1-target/release/orderbatch
    PORT=$((PORT+1)); $ROOT/target/release/orderbatch sandbox --listen 127.0.0.1:$PORT > /dev/null 2>&1 & S=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/__sandbox/counters >/dev/null && break; sleep 0.05; done
    rm -f $WORK/cpu.db*
    /usr/bin/time -f "%U %S" -o $WORK/cpu.time env PNM_BASE_URL=http://127.0.0.1:$PORT $B run $f --db $WORK/cpu.db --rate unlimited --concurrency 32 -q > $WORK/cpu.out
    kill $S; wait $S 2>/dev/null || true
    n=$(grep -oE '^ *[0-9]+ requests,' $WORK/cpu.out | tr -dc 0-9)
    echo "$v $(grep -oE '[0-9.]+ requests/s' $WORK/cpu.out | cut -d' ' -f1) req/s, client $(awk -v n=$n '{printf "%.1f us user+sys (%.1f user)", ($1+$2)*1e6/n, $1*1e6/n}' $WORK/cpu.time) per request"
  done
done
git worktree remove --force "$WORK/round1"
