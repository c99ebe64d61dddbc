#!/usr/bin/env bash
# Server under load: `tabacco metadb` (SQLite, loopback, no auth) preloaded
# through the store with 100 000 atom-versions (100 hosts x 100 atoms x 10
# backups; full: 1000 hosts, 1 000 000), driven by wrk on loopback:
#
#   - POST /api/update_active_job_status: status pings of 1000 hosts in
#     turn, each reporting one running job with progress;
#   - POST /api/find_atoms: a literal atom of a random host, all versions
#     (10 atom-versions per answer);
#   - GET /healthz of the same server (anchor): the HTTP stack, routing,
#     metrics middleware and a one-row write to the database (the health
#     probe rewrites one row of `health_probe`, so that a full disk shows),
#     the floor any writing API request pays. A status ping is one such
#     write plus JSON; find_atoms is a read, so its ratio to the anchor can
#     exceed what the HTTP floor alone would allow.
#
# Each measurement runs DURATION seconds (10; quick 3) with $CONNS
# connections on 2 wrk threads, RUNS times (5; quick 3), alternating the
# endpoints; median and spread of requests/s and p99 latency. Goals: >=
# 10 000 status pings/s, p99 <= 10 ms. wrk and the server share the same
# cores.
#
#   bench/server_load.sh [--quick]
source "$(dirname "$0")/lib.sh"
need wrk wrk
if [ "$QUICK" = 1 ]; then HOSTS=100; DURATION=3; else HOSTS=1000; DURATION=10; fi
CONNS=${CONNS:-16}
W=$WORK/server
mkdir -p "$W"
INDEX_BENCH=$(index_bench)

cat > "$W/status.lua" <<'LUA'
-- Status pings: host001..host999 in turn, one running job each.
local n = 0
local headers = { ["Content-Type"] = "application/json" }
request = function()
  n = n + 1
  local host = string.format("host%03d", n % 1000)
  local body = '{"host":"' .. host .. '","active_jobs":[{"host":"' .. host ..
    '","job_id":"job-' .. n .. '","backup_id":"01a20f05362c7169bc144c5780a8b16e",' ..
    '"dataset_id":"01a20f054790776b8ac6db8097839767","dataset_source":"mysql",' ..
    '"status":{"message_type":"status","seconds_elapsed":12,"seconds_remaining":30,' ..
    '"percent_done":0.28,"total_files":1,"files_done":0,"total_bytes":104857600,' ..
    '"bytes_done":29360128,"error_count":0,"current_files":["/mysql/db17"]}}]}'
  return wrk.format("POST", "/api/update_active_job_status", headers, body)
end
LUA
cat > "$W/find.lua" <<LUA
-- find_atoms: a literal atom of a random preloaded host, all versions.
local headers = { ["Content-Type"] = "application/json" }
math.randomseed(42)
request = function()
  local body = string.format('{"pattern":"host%03d/mysql/db%02d"}', math.random(0, $HOSTS - 1), math.random(0, 99))
  return wrk.format("POST", "/api/find_atoms", headers, body)
end
LUA
cat > "$W/report.lua" <<'LUA'
-- Machine-readable summary after wrk's own: requests/s, p50, p99 (ms),
-- errors (non-2xx answers and socket errors).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.3f %.3f %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status + e.connect + e.read + e.write + e.timeout))
end
LUA
for s in status find; do cat "$W/report.lua" >> "$W/$s.lua"; done
cp "$W/report.lua" "$W/healthz.lua"

echo "== server load: tabacco metadb on SQLite, $HOSTS hosts x 100 atoms x 10 backups preloaded; wrk -t2 -c$CONNS -d${DURATION}s; $(machine); load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$INDEX_BENCH" load --sqlite "$W/metadb.sqlite" --hosts "$HOSTS" --atoms 100 --backups 10
"$TABACCO" metadb --listen 127.0.0.1:0 --database "sqlite://$W/metadb.sqlite" \
    > "$W/server.out" 2> "$W/server.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 100); do
    grep -q '^listening on' "$W/server.out" && break
    sleep 0.05
done
URL=$(sed -n 's/^listening on //p' "$W/server.out")
[ -n "$URL" ] || { echo "bench: metadb did not start:"; cat "$W/server.err"; exit 1; }

: > "$W/results"
for run in $(seq 1 "$RUNS"); do
    for ep in healthz status find; do
        case $ep in
            healthz) path=/healthz ;;
            status) path=/api/update_active_job_status ;;
            find) path=/api/find_atoms ;;
        esac
        out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$W/$ep.lua" "$URL$path")
        echo "$out" | sed -n "s/^RESULT /$ep /p" >> "$W/results"
    done
done
# Cross-check that the pings were stored (one row per host).
curl -sf "$URL/api/hosts" | python3 -c 'import json,sys; h=json.load(sys.stdin); n=sum(1 for x in h if x["active_jobs"]); print("  /api/hosts after the runs:", n, "hosts with a running job")'
cpu=$(ps -o times= -p "$SERVER")
echo "  server CPU time over all runs: ${cpu}s; server RSS $(ps -o rss= -p "$SERVER" | awk '{printf "%.1f MiB", $1/1024}')"
python3 - "$W/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    ep, rps, p50, p99, err = line.split()
    rows.setdefault(ep, []).append((float(rps), float(p50), float(p99), int(err)))
names = {"healthz": "GET /healthz (anchor, 1-row write)", "status": "POST update_active_job_status",
         "find": "POST find_atoms (literal)"}
med = {}
for ep in ("healthz", "status", "find"):
    r = rows[ep]
    rps = [x[0] for x in r]; p50 = [x[1] for x in r]; p99 = [x[2] for x in r]
    med[ep] = (statistics.median(rps), statistics.median(p99))
    print(f"  {names[ep]:<32} median {med[ep][0]:8.0f} req/s  spread {min(rps):.0f}..{max(rps):.0f}"
          f"   p50 {statistics.median(p50):.2f} ms   p99 median {med[ep][1]:.2f} ms  spread {min(p99):.2f}..{max(p99):.2f}"
          f"   errors {sum(x[3] for x in r)}   ({len(r)} runs)")
for ep, goal in (("status", 10000), ("find", None)):
    ratio = med[ep][0] / med["healthz"][0]
    verdict = ""
    if goal:
        verdict = f"; goals >= {goal}/s: {'ok' if med[ep][0] >= goal else 'MISSES'}, p99 <= 10 ms: {'ok' if med[ep][1] <= 10 else 'MISSES'}"
    else:
        verdict = f"; p99 <= 10 ms: {'ok' if med[ep][1] <= 10 else 'MISSES'}"
    print(f"  {names[ep]}: req/s / healthz = {ratio:.2f}{verdict}")
PY
