#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md. Builds release, generates data, starts
# `orderbatch sandbox` in its own process, and prints every figure.
#   bash bench/run.sh            # everything (about 12 minutes on 2 cores)
#   bash bench/run.sh validate rate   # only these sections: validate memory state rate headroom resume batching oauth stream poison first-done serve report inbox
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${BENCH_DIR:-/tmp/orderbatch-bench}
mkdir -p "$WORK"
# BENCH_BIN=path: use that binary (e.g. a debug build) and skip the release build
# (only for sections that do not use gen_orders: inbox).
# inbox: INBOX_RATE (default 100) sets --rate and rows per file; INBOX_TRACE=1
# runs the pass again with every request logged, and prints each file's
# first and last request and the largest gaps between requests.
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet --bin orderbatch --example gen_orders
fi
B=${BENCH_BIN:-$ROOT/target/release/orderbatch}
GEN=$ROOT/target/release/examples/gen_orders
export PNM_SITE_IDENTIFIER=S_BENCH PNM_SECRET_KEY=bench-secret
SECTIONS=${*:-"validate memory state rate headroom resume batching"}

data() { # rows [orders per customer, e.g. 4 or 1-7] -> path
  local per=${2:-4}
  local f=$WORK/orders-$1-$per.csv
  [ -s "$f" ] || "$GEN" "$1" "$per" > "$f"
  echo "$f"
}

# The latency bound of a run of file $1 that sent $2 requests, at $3 ms per
# answer and concurrency $4: max(requests x latency / concurrency, the
# longest customer's chain of requests x latency).
bound() {
  python3 - "$@" <<'PY'
import csv, math, sys
from collections import Counter
path, requests, latency, conc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000, int(sys.argv[4])
orders = Counter(r["site_customer_identifier"] for r in csv.DictReader(open(path, newline="", encoding="utf-8")))
def chain(k):  # creates, refresh pages (a full last page needs one more), one token call
    pages = 1 if k == 1 else math.ceil(k / 5) + (1 if k % 5 == 0 else 0)
    return k + pages + 1
longest = max(chain(k) for k in orders.values())
print(f"{max(requests * latency / conc, longest * latency):.3f} {longest}")
PY
}

# Median of the "rows in N s" wall time of the summary in $1.
run_secs() { grep -oE 'rows in [0-9.]+s' "$1" | grep -oE '[0-9.]+'; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# BENCH_PORT: where the sandboxes start listening (the next free port above
# it): two benchmarks on one machine must not share a sandbox.
PORT=${BENCH_PORT:-18190}
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_sandbox() { # extra sandbox flags...
  PORT=$((PORT + 1))
  while in_use $PORT; do PORT=$((PORT + 1)); done
  "$B" sandbox --listen 127.0.0.1:$PORT "$@" > "$WORK/sandbox.log" 2>&1 &
  SANDBOX=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/__sandbox/counters" >/dev/null && break; sleep 0.05; done
  if ! kill -0 "$SANDBOX" 2>/dev/null; then
    echo "the sandbox did not start on 127.0.0.1:$PORT: $(cat "$WORK/sandbox.log")" >&2
    exit 1
  fi
  export PNM_BASE_URL=http://127.0.0.1:$PORT
}
stop_sandbox() { kill "$SANDBOX" 2>/dev/null || true; wait "$SANDBOX" 2>/dev/null || true; }
counters() { curl -sf "$PNM_BASE_URL/__sandbox/counters"; }
total_requests() { counters | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["requests"].values()))'; }

for section in $SECTIONS; do case $section in
validate)
  f=$(data 1000000)
  echo "== 1. validate, 1,000,000 rows ($(du -h "$f" | cut -f1)), median of 5"
  for _ in 1 2 3 4 5; do /usr/bin/time -f "%e" "$B" validate "$f" 2>&1 >/dev/null | tail -1; done | median |
    awk '{printf "orderbatch validate: %.3f s = %.2f M rows/s\n", $1, 1/$1}'
  for _ in 1 2 3; do python3 -c "
import csv,sys,time
t=time.perf_counter(); n=sum(1 for _ in csv.reader(open(sys.argv[1], newline='', encoding='utf-8'))); print(time.perf_counter()-t)" "$f"; done | median |
    awk '{printf "python csv.reader count: %.3f s = %.2f M rows/s\n", $1, 1/$1}'
  ;;
memory)
  echo "== 2. peak RSS of a full run (create, refresh, token) against the sandbox, unlimited rate"
  for n in 100000 1000000; do
    f=$(data $n); start_sandbox
    rm -f "$WORK/mem.db"*
    /usr/bin/time -f "%M" -o "$WORK/rss" "$B" run "$f" --db "$WORK/mem.db" --rate unlimited --concurrency 16 -q > "$WORK/mem-$n.out"
    echo "$n rows: peak RSS $(( $(cat "$WORK/rss") / 1024 )) MB; $(grep -E 'requests/s' "$WORK/mem-$n.out" | sed 's/^ *//')"
    grep 'state writes' "$WORK/mem-$n.out" | sed 's/^ */  /'
    db_bytes=$(stat -c %s "$WORK/mem.db"); wal=$(stat -c %s "$WORK/mem.db-wal" 2>/dev/null || echo 0)
    echo "  state db: $db_bytes bytes + wal $wal = $(( (db_bytes + wal) / n )) bytes/row"
    cp "$WORK/mem.db" "$WORK/mem-$n.db"
    stop_sandbox
  done
  ;;
state)
  echo "== 3. state cost after a full run (see memory): bytes per row, and after VACUUM"
  for n in 100000 1000000; do
    [ -f "$WORK/mem-$n.db" ] || continue
    python3 - "$WORK/mem-$n.db" "$n" <<'PY'
import os, shutil, sqlite3, sys
path, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path)
parts = dict(c.execute("select name, sum(pgsize) from dbstat group by name").fetchall())
print(f"{n} rows: {os.path.getsize(path)/n:.0f} bytes/row; rows table {parts.get('rows',0)/n:.0f}, "
      f"indexes on rows {sum(v for k, v in parts.items() if k.startswith('rows_by_'))/n:.0f}")
c.close(); shutil.copy(path, path + ".v"); c = sqlite3.connect(path + ".v"); c.execute("vacuum"); c.close()
print(f"  after VACUUM: {os.path.getsize(path + '.v')/n:.0f} bytes/row")
PY
  done
  ;;
rate)
  echo "== 4. rate adherence: --rate R against a sandbox with --rate-limit R, 30 s"
  for R in 100 1000; do
    n=$(( R * 30 * 2 / 3 + R )); f=$(data $n); start_sandbox --rate-limit $R
    rm -f "$WORK/rate.db"*
    timeout 45 "$B" run "$f" --db "$WORK/rate.db" --rate $R --concurrency 16 -q > /dev/null || true
    counters | python3 -c "
import json,sys
c=json.load(sys.stdin); R=$R
per=sorted((int(k),v) for k,v in c['per_second'].items())
full=per[1:-1][:30]
print(f'R={R}: 429s={c[\"faults\"][\"rate_limited\"]}, busiest second {max(v for _,v in full)} (limit {R*1.01:.0f}), '
      f'sustained {sum(v for _,v in full)/len(full):.1f}/s over {len(full)} s = {100*sum(v for _,v in full)/len(full)/R:.1f}% of R')"
    stop_sandbox
  done
  ;;
headroom)
  echo "== 5. headroom: unlimited --rate, sandbox without latency, in its own process;"
  echo "   5 rounds of (pipeline, then wrk on create_order alone), medians; CPU per request of each process"
  f=$(data 100000)
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  command -v wrk >/dev/null || echo "  (install wrk, e.g. apt-get install wrk, for the generator ceiling)"
  : > "$WORK/headroom.tsv"
  for round in 1 2 3 4 5; do
    start_sandbox; rm -f "$WORK/head.db"*
    s0=$(cpu_ticks "$SANDBOX")
    /usr/bin/time -f "%U %S" -o "$WORK/head.time" "$B" run "$f" --db "$WORK/head.db" --rate unlimited --concurrency 32 -q > "$WORK/head.out"
    s1=$(cpu_ticks "$SANDBOX"); stop_sandbox
    rps=$(grep -oE '[0-9.]+ requests/s' "$WORK/head.out" | cut -d' ' -f1)
    n=$(grep -oE '^ *[0-9]+ requests,' "$WORK/head.out" | tr -dc 0-9)
    client_us=$(awk -v n="$n" '{printf "%.1f", ($1 + $2) * 1e6 / n}' "$WORK/head.time")
    sandbox_us=$(awk -v n="$n" -v t=$((s1 - s0)) 'BEGIN {printf "%.1f", t * 1e4 / n}')
    wrk_rps=0; wrk_us=0
    if command -v wrk >/dev/null; then
      start_sandbox
      python3 - "$WORK/create.lua" <<'PY'
import hashlib, hmac, sys, time, urllib.parse
p = {"site_identifier": "S_BENCH", "timestamp": str(int(time.time())), "version": "3.0", "order_amount": "10.00",
     "order_currency": "USD", "site_customer_identifier": "WRK", "order_type": "exact", "order_is_standing": "true"}
msg = "".join(k + p[k] for k in sorted(p))
p["signature"] = hmac.new(b"bench-secret", msg.encode(), hashlib.sha256).hexdigest()
body = urllib.parse.urlencode(p)
open(sys.argv[1], "w").write(f'wrk.method = "POST"\nwrk.body = "{body}"\n'
    'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
PY
      s0=$(cpu_ticks "$SANDBOX")
      wrk -t2 -c32 -d10s -s "$WORK/create.lua" "$PNM_BASE_URL/json-api/create_order" > "$WORK/wrk.out"
      s1=$(cpu_ticks "$SANDBOX"); stop_sandbox
      if grep -q 'Non-2xx' "$WORK/wrk.out"; then echo "  wrk got errors:"; cat "$WORK/wrk.out"; fi
      wrk_rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
      wrk_n=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
      wrk_us=$(awk -v n="$wrk_n" -v t=$((s1 - s0)) 'BEGIN {printf "%.1f", t * 1e4 / n}')
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$rps" "$client_us" "$sandbox_us" "$wrk_rps" "$wrk_us" | tee -a "$WORK/headroom.tsv" |
      awk -F'\t' '{printf "  round: pipeline %.0f req/s (client %s us CPU/request, sandbox %s); wrk %.0f req/s (sandbox %s us CPU/request)\n", $1, $2, $3, $4, $5}'
  done
  med() { cut -f"$1" "$WORK/headroom.tsv" | median; }
  p=$(med 1); w=$(med 4)
  echo "  median: pipeline $p requests/s (client $(med 2) us, sandbox $(med 3) us CPU per request);" \
    "wrk create_order $w requests/s (sandbox $(med 5) us CPU per request) -> $(awk -v p="$p" -v w="$w" 'BEGIN {if (w > 0) printf "%.0f %%", 100 * p / w; else print "n/a"}')"
  ;;
resume)
  echo "== 6. resume latency: 1,000,000-row run killed at ~90% of its requests"
  f=$(data 1000000); start_sandbox
  rm -f "$WORK/resume.db"*
  "$B" run "$f" --db "$WORK/resume.db" --rate unlimited --concurrency 16 -q > /dev/null & RUN=$!
  target=$(( 1000000 * 3 / 2 * 9 / 10 ))
  while [ "$(total_requests)" -lt $target ]; do sleep 0.5; done
  kill -9 $RUN; wait $RUN 2>/dev/null || true
  before=$(total_requests)
  start=$(date +%s.%N)
  "$B" run "$f" --db "$WORK/resume.db" --rate unlimited --concurrency 16 -q > /dev/null & RUN=$!
  while [ "$(total_requests)" -le "$before" ]; do sleep 0.01; done
  echo "killed after $before requests; first new request $(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')") s after the resumed command started"
  wait $RUN || true
  stop_sandbox
  ;;
batching)
  echo "== 7. batching: requests per order"
  (cd "$WORK" && "$B" demo -q | grep 'requests per row' | sed 's/^ */  samples\/orders.csv (demo): /')
  for n in 100000; do
    f=$(data $n); start_sandbox; rm -f "$WORK/batch.db"*
    "$B" run "$f" --db "$WORK/batch.db" --rate unlimited --concurrency 16 -q | grep 'requests per row' | sed "s/^ */  generated $n rows, 4 orders per customer: /"
    stop_sandbox
  done
  ;;
oauth)
  echo "== 8. OAuth vs HMAC: the headroom run (100,000 rows, unlimited rate, --concurrency 32), 5 alternating rounds, medians"
  f=$(data 100000)
  : > "$WORK/oauth.tsv"
  for round in 1 2 3 4 5; do
    for auth in hmac oauth; do
      if [ $auth = oauth ]; then start_sandbox --oauth-only --token-lifetime 60; else start_sandbox; fi
      rm -f "$WORK/auth.db"*
      PNM_CLIENT_ID=sandbox-client PNM_CLIENT_SECRET=sandbox-client-secret PNM_TOKEN_URL=$PNM_BASE_URL/oauth/token \
        "$B" run "$f" --db "$WORK/auth.db" --auth $auth --rate unlimited --concurrency 32 -q > "$WORK/auth.out"
      tokens=$(curl -sf "$PNM_BASE_URL/__sandbox/state" | python3 -c 'import json,sys; print(json.load(sys.stdin)["oauth"]["token_requests"])')
      stop_sandbox
      rps=$(grep -oE '[0-9.]+ requests/s' "$WORK/auth.out" | cut -d' ' -f1)
      printf '%s\t%s\t%s\n' "$auth" "$rps" "$tokens" | tee -a "$WORK/oauth.tsv" | awk -F'\t' '{printf "  %s: %.0f req/s (%s token requests)\n", $1, $2, $3}'
    done
  done
  h=$(awk -F'\t' '$1=="hmac" {print $2}' "$WORK/oauth.tsv" | median)
  o=$(awk -F'\t' '$1=="oauth" {print $2}' "$WORK/oauth.tsv" | median)
  echo "  median: hmac $h req/s, oauth $o req/s -> oauth at $(awk -v h="$h" -v o="$o" 'BEGIN {printf "%.1f %%", 100 * o / h}') of hmac"
  ;;
stream)
  echo "== 9. streaming against a slow provider (issue 16): 3 rounds each, medians"
  for spec in "100 800 32" "300 2000 64"; do
    set -- $spec; lat=$1; n=$2; conc=$3
    f=$(data $n 1-7)
    : > "$WORK/stream.tsv"
    for round in 1 2 3; do
      start_sandbox --latency-ms $lat,$lat; rm -f "$WORK/stream.db"*
      "$B" run "$f" --db "$WORK/stream.db" --rate unlimited --concurrency $conc -q > "$WORK/stream.out"
      stop_sandbox
      req=$(grep -oE '^ *[0-9]+ requests,' "$WORK/stream.out" | tr -dc 0-9)
      secs=$(run_secs "$WORK/stream.out")
      read b longest < <(bound "$f" "$req" "$lat" "$conc")
      printf '%s\t%s\t%s\t%s\n' "$secs" "$req" "$b" "$longest" | tee -a "$WORK/stream.tsv" |
        awk -F'\t' '{printf "  round: %s s for %s requests; bound %s s (longest chain %s) -> %.2f x the bound\n", $1, $2, $3, $4, $1 / $3}'
    done
    secs=$(cut -f1 "$WORK/stream.tsv" | median); b=$(cut -f3 "$WORK/stream.tsv" | median)
    echo "  latency ${lat} ms, $n rows (1-7 orders per customer), --concurrency $conc: median $secs s vs bound $b s = $(awk -v s="$secs" -v b="$b" 'BEGIN {printf "%.2f x the bound (%.0f %% of it)", s / b, 100 * b / s}')"
  done
  ;;
poison)
  echo "== 11. one customer poisoned (every request 500), latency 100 ms, 800 rows (1-7 per customer), --concurrency 32, --max-attempts 8"
  f=$(data 800 1-7)
  victim=$(sed -n 2p "$f" | cut -d, -f1)
  healthy=$(( $(tail -n +2 "$f" | wc -l) - $(grep -c "^$victim," "$f") ))
  for round in 1 2 3; do
    start_sandbox --latency-ms 100,100 --poison-customer "$victim"; rm -f "$WORK/poison.db"*
    "$B" run "$f" --db "$WORK/poison.db" --rate unlimited --concurrency 32 --max-attempts 8 -q > /dev/null 2>&1 & RUN=$!
    t0=$(date +%s.%N)
    while :; do
      done_rows=$( ("$B" status --db "$WORK/poison.db" --json 2>/dev/null || true) | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["runs"][0]["states"].get("done", 0))
except Exception: print(0)')
      [ "$done_rows" -ge "$healthy" ] && break
      sleep 0.1
    done
    t1=$(date +%s.%N); kill $RUN 2>/dev/null || true; wait $RUN 2>/dev/null || true; stop_sandbox
    echo "  round: all $healthy healthy rows done after $(python3 -c "print(f'{$t1 - $t0:.2f}')") s (poisoned $victim still retrying)"
  done
  ;;
first-done)
  echo "== 10. time to the first row done: 100,000 rows at --rate 1000 (issue 16 target 5)"
  f=$(data 100000)
  for round in 1 2 3; do
    start_sandbox; rm -f "$WORK/first.db"*
    "$B" run "$f" --db "$WORK/first.db" --rate 1000 --concurrency 16 -q > /dev/null & RUN=$!
    while [ "$(total_requests)" -eq 0 ]; do sleep 0.01; done; t0=$(date +%s.%N)
    while :; do
      d=$( ("$B" status --db "$WORK/first.db" --json 2>/dev/null || true) | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["runs"][0]["states"].get("done", 0))
except Exception: print(0)')
      [ "$d" -gt 0 ] && break
      sleep 0.05
    done
    t1=$(date +%s.%N); kill $RUN; wait $RUN 2>/dev/null || true; stop_sandbox
    echo "  round: first row done $(python3 -c "print(f'{$t1 - $t0:.2f}')") s after the first request"
  done
  ;;
report)
  echo "== report: the timeline's cost per request, and rendering the HTML report (and status) of a 1,000,000-row run"
  cargo bench --quiet --bench hot -- timeline 2>/dev/null | grep -E "time:|thrpt:" | sed 's/^ */  /'
  f=$(data 1000000); start_sandbox
  rm -f "$WORK/report.db"*
  "$B" run "$f" --db "$WORK/report.db" --rate unlimited --concurrency 16 -q > "$WORK/report-run.out" || true
  grep -E 'requests/s' "$WORK/report-run.out" | sed 's/^ */  run: /'
  stop_sandbox
  # Wall time of a command in seconds, to the millisecond (time(1) gives 10 ms).
  secs() { local t0; t0=$(date +%s%N); "$@" > /dev/null; echo "$(( $(date +%s%N) - t0 ))" | awk '{printf "%.4f\n", $1 / 1e9}'; }
  for _ in 1 2 3 4 5; do secs "$B" report --db "$WORK/report.db" --html "$WORK/report.html"; done | median |
    awk '{printf "  orderbatch report --html, 1,000,000 rows: %.3f s (median of 5)\n", $1}'
  for _ in 1 2 3 4 5; do secs "$B" status --db "$WORK/report.db"; done | median |
    awk '{printf "  orderbatch status, 1,000,000 rows: %.3f s (median of 5)\n", $1}'
  echo "  report.html: $(stat -c %s "$WORK/report.html") bytes; timeline: $(sqlite3 "$WORK/report.db" 'SELECT COUNT(*), SUM(LENGTH(bucket)) FROM timeline' 2>/dev/null || echo '(sqlite3 not installed)') buckets, bytes"
  ;;
serve)
  echo "== 12. orderbatch serve: URLs served from the db (issue 18), wrk -t2 -c32 -d10s, 3 rounds"
  command -v wrk >/dev/null || { echo "  (install wrk: apt-get install wrk)"; exit 0; }
  f=$(data 10000); start_sandbox; rm -f "$WORK/serve.db"*
  "$B" run "$f" --db "$WORK/serve.db" --rate unlimited --concurrency 32 -q > /dev/null
  export ORDERBATCH_SERVE_TOKEN=bench-serve-token-0123456789
  "$B" serve --db "$WORK/serve.db" --listen 127.0.0.1:18399 -q > "$WORK/serve.url" 2>/dev/null & SERVE=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18399/healthz >/dev/null && break; sleep 0.05; done
  cat > "$WORK/serve.lua" <<'LUA'
wrk.headers["Authorization"] = "Bearer bench-serve-token-0123456789"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("/v1/orders/ORD-%09d/embedded-js-url", counter % 10000))
end
LUA
  wrk_rounds() {
    for round in 1 2 3; do
      wrk -t2 -c32 -d10s --latency -s "$WORK/serve.lua" http://127.0.0.1:18399 > "$WORK/wrk-serve.out"
      echo "  $1 round: $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-serve.out") req/s, p50 $(awk '$1=="50%" {print $2}' "$WORK/wrk-serve.out"), p99 $(awk '$1=="99%" {print $2}' "$WORK/wrk-serve.out"), non-2xx: $(grep -c 'Non-2xx' "$WORK/wrk-serve.out" || true)"
    done
  }
  wrk_rounds "-q"
  kill $SERVE; wait $SERVE 2>/dev/null || true
  # The default logging (one line per request), written to a file.
  "$B" serve --db "$WORK/serve.db" --listen 127.0.0.1:18399 > "$WORK/serve.url" 2> "$WORK/serve.log" & SERVE=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18399/healthz >/dev/null && break; sleep 0.05; done
  wrk_rounds "logging to a file"
  echo "  log: $(wc -l < "$WORK/serve.log") lines, $(du -h "$WORK/serve.log" | cut -f1)"
  refreshes=$(counters | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"].get("refresh_embedded_js_urls", 0))')
  echo "  refresh_embedded_js_urls at the sandbox after serving: $refreshes (all from the run itself: the URLs were fresh)"
  kill $SERVE; wait $SERVE 2>/dev/null || true; stop_sandbox
  ;;
inbox)
  R=${INBOX_RATE:-100}
  echo "== inbox: 10 files of $R rows (3 requests each) back to back at --rate $R against a sandbox with --rate-limit $R:"
  echo "   the rate kept across the file boundaries (one budget; a file registers while the last one sends, and starts once its customers are all handed out)"
  rm -rf "$WORK/inbox"; mkdir -p "$WORK/inbox/in"
  python3 - "$WORK/inbox/in" "$R" <<'PY'
import os, sys
d, rows = sys.argv[1], int(sys.argv[2])
for f in range(10):
    with open(os.path.join(d, f"f{f:02}.csv"), "w") as out:
        out.write("site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_identifier\n")
        for i in range(rows):
            out.write(f"F{f}-C{i},{10 + i % 90}.00,USD,exact,true,F{f}-{i}\n")
PY
  start_sandbox --rate-limit "$R"
  start=$(date +%s.%N)
  "$B" inbox "$WORK/inbox/in" --db "$WORK/inbox/state.db" --ready stable:0 --rate "$R" --concurrency 16 -q > "$WORK/inbox.out" || true
  end=$(date +%s.%N)
  tail -1 "$WORK/inbox.out"
  counters | python3 -c "
import json,sys
c=json.load(sys.stdin); R=$R; wall=$end-$start
per=sorted((int(k),v) for k,v in c['per_second'].items())
full=per[1:-1]
total=sum(v for _,v in per)
print(f'{total} requests in {wall:.1f} s of wall time (start to exit, 10 files) = {100*total/wall/R:.1f}% of --rate {R}')
print(f'full seconds: {len(full)}, sustained {sum(v for _,v in full)/len(full):.1f}/s = {100*sum(v for _,v in full)/len(full)/R:.1f}% of R; '
      f'slowest second {min(v for _,v in full)} ({100*min(v for _,v in full)/R:.0f}% of R), busiest {max(v for _,v in full)}; 429s: {c[\"faults\"][\"rate_limited\"]}')"
  stop_sandbox
  if [ -n "${INBOX_TRACE:-}" ]; then
    # The same pass again with every request logged (debug): each file's
    # first and last request, and the largest gaps between requests.
    rm -rf "$WORK/inbox"; mkdir -p "$WORK/inbox/in"
    python3 - "$WORK/inbox/in" "$R" <<'PY'
import os, sys
d, rows = sys.argv[1], int(sys.argv[2])
for f in range(10):
    with open(os.path.join(d, f"f{f:02}.csv"), "w") as out:
        out.write("site_customer_identifier,order_amount,order_currency,order_type,order_is_standing,site_order_identifier\n")
        for i in range(rows):
            out.write(f"F{f}-C{i},{10 + i % 90}.00,USD,exact,true,F{f}-{i}\n")
PY
    start_sandbox --rate-limit "$R"
    RUST_LOG=orderbatch=debug "$B" --log-format json inbox "$WORK/inbox/in" --db "$WORK/inbox/state.db" --ready stable:0 --rate "$R" --concurrency 16 -q > /dev/null 2> "$WORK/inbox.trace" || true
    stop_sandbox
    python3 - "$WORK/inbox.trace" "$R" <<'PY'
import json, sys, datetime
R = int(sys.argv[2])
ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
starts, runs, files, events = [], {}, {}, []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    t, m, run = ts(e["timestamp"]), e.get("message", ""), e.get("run_id")
    if m == "request done":
        # When the answer was in (its latency_ms counts the wait for the
        # rate too): the sandbox answers within a millisecond or two.
        starts.append(t)
        r = runs.setdefault(run, {"first": t, "last": t})
        r["first"], r["last"] = min(r["first"], t), max(r["last"], t)
    elif m == "every customer handed out":
        runs.setdefault(run, {"first": t, "last": t})["fed"] = t
    elif m == "file started":
        files[run] = (e.get("file"), t)
    if m.startswith("file ") and e.get("file"):
        events.append((t, f"{e['file']} {m[5:]}"))
starts.sort()
t0 = starts[0]
print(f"trace: {len(starts)} answers in {starts[-1] - t0:.2f} s = {100 * (len(starts) - 1) / (starts[-1] - t0) / R:.1f}% of R between the first and the last")
for run in sorted(runs, key=lambda r: runs[r]["first"]):
    r, (name, began) = runs[run], files.get(run, ("?", 0))
    print(f"  run {run} {name}: started {began - t0:7.3f} s, first answer {r['first'] - t0:7.3f}, customers all handed out {r.get('fed', 0) - t0:7.3f}, last answer {r['last'] - t0:7.3f}")
gaps = sorted(((b - a, a - t0) for a, b in zip(starts, starts[1:])), reverse=True)[:5]
print(f"  mean spacing {1000 * (starts[-1] - t0) / (len(starts) - 1):.2f} ms; largest gaps between answers, with what the inbox did within 200 ms before them:")
for g, a in gaps:
    near = [f"{w} at {t - t0:.3f}" for t, w in events if a - 0.2 <= t - t0 <= a + g]
    print(f"    {1000 * g:.0f} ms at {a:.3f} s: " + ("; ".join(near) or "-"))
PY
  fi
  ;;
esac; done
