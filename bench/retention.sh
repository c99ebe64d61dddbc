#!/usr/bin/env bash
# bench/retention.sh [N] [D]: reconcile and forget at scale (issue 13).
#
# Makes a repository of N snapshots of one host, spread over D datasets
# of one source, each tagged as tabacco tags them (with its record), by
# running `restic backup --time` of a tiny file 4 at a time (the slow
# part: about N x 0.5 s of restic). Then measures, with an empty embedded
# index:
#   1. `tabacco reconcile`: rebuilds the index (N records) from the
#      repository;
#   2. `tabacco forget` with `keep_last: 1`: forgets N - D versions.
# For each: wall time and the restic commands run (`restic version` does
# not open the repository; everything else does), counted by a wrapper
# named as `restic_binary`.
#
# Environment: TABACCO_BIN (default target/debug/tabacco, built if
# missing), RESTIC (default restic).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1010}
D=${2:-10}
BIN=${TABACCO_BIN:-target/debug/tabacco}
RESTIC=$(command -v "${RESTIC:-restic}")
[ -x "$BIN" ] || cargo build --bin tabacco
W=$PWD/work/bench/retention-$N
rm -rf "$W"
mkdir -p "$W/etc/sources" "$W/etc/handlers" "$W/data" "$W/work"
echo x > "$W/data/f"
cat > "$W/restic-count" <<EOF
#!/bin/sh
echo "\$1" >> "$W/restic-calls"
exec "$RESTIC" "\$@"
EOF
chmod +x "$W/restic-count"
export RESTIC_REPOSITORY=$W/repo RESTIC_PASSWORD=bench-password
"$RESTIC" init -q
echo "making $N snapshots ($("$RESTIC" version))..."
start=$(date +%s)
python3 - "$N" "$D" "$W/data/f" > "$W/args" <<'EOF'
import json, sys, datetime
n, d, f = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = datetime.datetime(2024, 1, 1)
for i in range(n):
    t = t0 + datetime.timedelta(hours=7 * i)
    ts = t.strftime("%Y-%m-%d %H:%M:%S")
    rec = {"id": f"b{i:06d}", "timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "host": "benchhost",
           "datasets": [{"id": f"d{i:06d}", "name": f"ds{i % d}", "source": "bench",
                         "atoms": [{"name": "f"}], "snapshot_id": "", "total_files": 0,
                         "total_bytes": 0, "bytes_added": 0, "duration": 0}]}
    hexrec = json.dumps(rec, separators=(",", ":")).encode().hex()
    print(f'--host benchhost --time "{ts}" --tag backup_id=b{i:06d} --tag dataset_id=d{i:06d} '
          f'--tag source=bench --tag record.0={hexrec} {f}')
EOF
xargs -P4 -L1 "$RESTIC" backup -q < "$W/args" > /dev/null
echo "  made in $(( $(date +%s) - start ))s"
cat > "$W/etc/agent.yml" <<EOF
hostname: benchhost
work_dir: $W/work
repository:
  name: main
  type: restic
  params:
    uri: $W/repo
    password: bench-password
    restic_binary: $W/restic-count
retention: {keep_last: 1}
EOF
echo "name: files
type: file" > "$W/etc/handlers/files.yml"
{
    echo "name: bench"
    echo "handler: files"
    echo "params: {path: $W/data}"
    echo "datasets:"
    for i in $(seq 0 $((D - 1))); do echo "  - {name: ds$i, atoms: [{name: f}]}"; done
} > "$W/etc/sources/bench.yml"

measure() { # label, tabacco args...
    local label=$1; shift
    : > "$W/restic-calls"
    local s e
    s=$(date +%s.%N)
    "$BIN" --config "$W/etc/agent.yml" "$@" > "$W/out-$label" 2> "$W/err-$label"
    e=$(date +%s.%N)
    local opens
    opens=$(grep -cv '^version$' "$W/restic-calls" || true)
    printf '%-10s %8.2f s   restic runs opening the repository: %s (%s)\n' "$label" \
        "$(echo "$e - $s" | bc)" "$opens" "$(grep -v '^version$' "$W/restic-calls" | sort | uniq -c | tr -s ' ' | tr '\n' ',')"
}
measure reconcile reconcile
tail -1 "$W/out-reconcile"
echo "  index rows: $(grep -c 'indexed again' "$W/out-reconcile") re-indexed"
measure forget forget
tail -1 "$W/out-forget"
measure reconcile2 reconcile --dry-run
tail -1 "$W/out-reconcile2"
