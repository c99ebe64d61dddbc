#!/usr/bin/env bash
# File backup overhead: `tabacco backup` of a file source against the
# equivalent raw `restic backup`, first backup (empty repository) and
# unchanged second backup. Goal: ratio <= 1.05.
#
#   bench/file_backup.sh [--quick]    (quick: 2 000 files, 100 MiB, 3 runs)
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then FILES=2000 TOTAL=$((100 << 20)); else FILES=20000 TOTAL=$((1 << 30)); fi
W=$WORK/file
mkdir -p "$W"
if [ ! -f "$W/tree-$FILES-$TOTAL.done" ]; then
    rm -rf "$W/tree"
    python3 "$BENCH_DIR/gen_tree.py" "$W/tree" "$FILES" "$TOTAL"
    touch "$W/tree-$FILES-$TOTAL.done"
fi
tabacco_config "$W/etc" "$W/repo-tabacco"
echo "name: files
type: file" > "$W/etc/handlers/files.yml"
echo "name: tree
handler: files
params: {path: $W}
datasets: [{name: all, atoms: [{name: tree}]}]" > "$W/etc/sources/tree.yml"

RAW="restic -r $W/repo-raw backup --host bench-host --tag backup_id=x --tag dataset_id=y --tag source=tree $W/tree >/dev/null"
TAB="$TABACCO --config $W/etc/agent.yml backup tree >/dev/null 2>&1"

echo "== file backup overhead: $FILES files, $((TOTAL >> 20)) MiB; $(machine)"
echo "-- first backup into an empty repository"
hyperfine -N --runs "$RUNS" --export-json "$W/first.json" --style none \
    --prepare "bash -c '$BENCH_DIR/fresh_repo.sh $W/repo-raw $W/repo-tabacco; rm -rf $W/state'" \
    -n "restic backup" "bash -c \"$RAW\"" \
    -n "tabacco backup" "bash -c \"$TAB\"" >/dev/null
report "$W/first.json" "first backup"
echo "-- unchanged second backup"
hyperfine -N --runs "$RUNS" --export-json "$W/second.json" --style none \
    -n "restic backup" "bash -c \"$RAW\"" \
    -n "tabacco backup" "bash -c \"$TAB\"" >/dev/null
report "$W/second.json" "unchanged backup"
