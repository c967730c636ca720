#!/usr/bin/env bash
# The cost of durable intents (issue 14): the headroom run (100,000 rows,
# unlimited rate, --concurrency 32) with this build, against the same
# build with intent transactions left at synchronous=NORMAL (a patched copy
# in a git worktree), 5 alternating rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${BENCH_DIR:-/tmp/orderbatch-bench}; mkdir -p "$WORK"
VARIANT=$WORK/no-durable-intents
rm -rf "$VARIANT"; git worktree prune
git worktree add -q --detach "$VARIANT" HEAD
sed -i 's/let durable = batch.iter()/let durable = false \&\& batch.iter()/' "$VARIANT/src/store/writer.rs"
grep -q 'let durable = false' "$VARIANT/src/store/writer.rs"
cargo build --release --quiet --bin orderbatch --example gen_orders
(cd "$VARIANT" && CARGO_TARGET_DIR=$WORK/no-durable-target cargo build --release --quiet --bin orderbatch)
f=$WORK/orders-100000-4.csv; [ -s "$f" ] || target/release/examples/gen_orders 100000 4 > "$f"
export PNM_SITE_IDENTIFIER=S_BENCH PNM_SECRET_KEY=bench-secret
PORT=18300
for round in 1 2 3 4 5; do
  for variant in synced normal; do
    B=$ROOT/target/release/orderbatch; [ $variant = normal ] && B=$WORK/no-durable-target/release/orderbatch
    PORT=$((PORT + 1)); "$B" sandbox --listen 127.0.0.1:$PORT > /dev/null 2>&1 & S=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/__sandbox/counters > /dev/null && break; sleep 0.05; done
    rm -f "$WORK/dur.db"*
    PNM_BASE_URL=http://127.0.0.1:$PORT "$B" run "$f" --db "$WORK/dur.db" --rate unlimited --concurrency 32 -q > "$WORK/dur.out"
    kill $S; wait $S 2>/dev/null || true
    echo "$variant $(grep -oE '[0-9.]+ requests/s' "$WORK/dur.out" | cut -d' ' -f1) $(grep 'state writes' "$WORK/dur.out" | sed 's/^ *//')"
  done
done | tee "$WORK/durable.txt"
for v in synced normal; do
  echo "median $v: $(awk -v v=$v '$1 == v {print $2}' "$WORK/durable.txt" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') requests/s"
done
git worktree remove --force "$VARIANT"
