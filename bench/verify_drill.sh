#!/usr/bin/env bash
# Restore drill throughput: `tabacco verify --no-check --all` (restore into
# a scratch directory, compare with the snapshot listing, the recorded
# fingerprints and the unchanged live files, record the results) against
# raw `restic restore` of the same atoms from the same snapshots into a
# directory that is then removed. Goal: ratio <= 1.2.
#
# Two sources, each backed up once: a file source (one atom, a generated
# tree) and a pipe source (one atom, a generated stream).
#
#   bench/verify_drill.sh [--quick]   (quick: 2 000 files / 100 MiB tree and
#                                      a 128 MiB stream, 3 runs)
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then FILES=2000 TOTAL=$((100 << 20)) MIB=128; else FILES=20000 TOTAL=$((1 << 30)) MIB=1024; fi
W=$WORK/verify
mkdir -p "$W"
if [ ! -f "$W/tree-$FILES-$TOTAL.done" ]; then
    rm -rf "$W/data"
    python3 "$BENCH_DIR/gen_tree.py" "$W/data/tree" "$FILES" "$TOTAL"
    touch "$W/tree-$FILES-$TOTAL.done"
fi
if [ ! -f "$W/stream-$MIB.bin" ]; then
    rm -f "$W"/stream-*.bin
    python3 -c "import random,sys; r=random.Random(7); o=open(sys.argv[1],'wb'); [o.write(r.randbytes(1<<20)) for _ in range($MIB)]" "$W/stream-$MIB.bin"
fi
STREAM=$W/stream-$MIB.bin
export STREAM
tabacco_config "$W/etc" "$W/repo"
echo "name: files
type: file" > "$W/etc/handlers/files.yml"
echo "name: tree
handler: files
params: {path: $W/data}
datasets: [{name: all, atoms: [{name: tree}]}]" > "$W/etc/sources/tree.yml"
cat > "$W/etc/handlers/dump.yml" <<YAML
name: dump
type: pipe
params:
  backup_command: cat "\$STREAM"
  restore_command: cat > /dev/null
YAML
echo "name: db
handler: dump
datasets: [{name: big, atoms: [{name: main}]}]" > "$W/etc/sources/db.yml"

"$BENCH_DIR/fresh_repo.sh" "$W/repo"
rm -rf "$W/state"
"$TABACCO" --config "$W/etc/agent.yml" backup tree db >/dev/null 2>&1
tree_snap=$(restic -r "$W/repo" snapshots --json --tag source=tree | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
db_snap=$(restic -r "$W/repo" snapshots --json --tag source=db | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
db_path=$(restic -r "$W/repo" snapshots --json --tag source=db | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["paths"][0])')

RAW="restic -r $W/repo restore $tree_snap --target $W/raw --include $W/data/tree >/dev/null \
 && restic -r $W/repo restore $db_snap --target $W/raw --include $db_path >/dev/null && rm -rf $W/raw"
TAB="$TABACCO --config $W/etc/agent.yml verify --no-check --all >/dev/null 2>&1"

echo "== restore drills: a file atom of $FILES files ($((TOTAL >> 20)) MiB) and a pipe atom of $MIB MiB; $(machine)"
hyperfine -N --runs "$RUNS" --export-json "$W/verify.json" --style none \
    --prepare "rm -rf $W/raw" \
    -n "restic restore (2 snapshots)" "bash -c \"$RAW\"" \
    -n "tabacco verify --all" "bash -c \"$TAB\"" >/dev/null
report "$W/verify.json" "restore drill"
"$TABACCO" --config "$W/etc/agent.yml" verify --no-check --all 2>/dev/null | tail -1 | sed 's/^/  last run: /'

echo "-- the repository check (not a drill): restic check --read-data-subset 100%, once"
start=$(date +%s.%N)
restic -r "$W/repo" check --read-data-subset 100% >/dev/null 2>&1
python3 -c "import sys; print(f'  restic check --read-data-subset 100%: {float(sys.argv[2]) - float(sys.argv[1]):.2f} s')" "$start" "$(date +%s.%N)"
