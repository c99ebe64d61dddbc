#!/usr/bin/env bash
# Pipe backup overhead: a tabacco pipe source against `cmd | restic backup
# --stdin` for the same generated stream, first backup into an empty
# repository. Goal: ratio <= 1.03. Also reports tabacco's own CPU time and
# peak memory while streaming (restic and the dump command excluded).
#
#   bench/pipe_backup.sh [--quick]    (quick: 128 MiB stream, 3 runs)
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then MIB=128; else MIB=1024; fi
W=$WORK/pipe
mkdir -p "$W"
if [ ! -f "$W/stream-$MIB.bin" ]; then
    rm -f "$W"/stream-*.bin
    python3 -c "import random,sys; r=random.Random(7); o=open(sys.argv[1],'wb'); [o.write(r.randbytes(1<<20)) for _ in range($MIB)]" "$W/stream-$MIB.bin"
fi
STREAM=$W/stream-$MIB.bin
tabacco_config "$W/etc" "$W/repo-tabacco"
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
export STREAM

RAW="cat $STREAM | restic -r $W/repo-raw backup --stdin --stdin-filename db/big/main --host bench-host --tag backup_id=x --tag dataset_id=y --tag source=db >/dev/null"
TAB="$TABACCO --config $W/etc/agent.yml backup db >/dev/null 2>&1"

echo "== pipe backup overhead: $MIB MiB stream; $(machine)"
hyperfine -N --runs "$RUNS" --export-json "$W/pipe.json" --style none \
    --prepare "bash -c '$BENCH_DIR/fresh_repo.sh $W/repo-raw $W/repo-tabacco; rm -rf $W/state'" \
    -n "cat | restic --stdin" "bash -c \"set -o pipefail; $RAW\"" \
    -n "tabacco backup (pipe)" "bash -c \"$TAB\"" >/dev/null
report "$W/pipe.json" "pipe backup"

# tabacco's own footprint: sample /proc of the tabacco process (not its
# children) until it exits; the last sample holds its totals.
"$BENCH_DIR/fresh_repo.sh" "$W/repo-tabacco"; rm -rf "$W/state"
"$TABACCO" --config "$W/etc/agent.yml" backup db >/dev/null 2>&1 &
pid=$!
hz=$(getconf CLK_TCK)
last=""
while [ -r /proc/$pid/stat ]; do
    s=$(awk '{print $14, $15}' /proc/$pid/stat 2>/dev/null || true)
    m=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null || true)
    [ -n "$s" ] && [ -n "$m" ] && last="$s $m"
    sleep 0.05
done
wait $pid
read -r ut st hwm <<<"$last"
python3 - "$ut" "$st" "$hz" "$hwm" "$MIB" <<'PY'
import sys
ut, st, hz, hwm, mib = (int(x) for x in sys.argv[1:])
cpu = (ut + st) / hz
cpu_s = f"{cpu:.2f} s" if cpu > 0 else f"< {1 / hz:.2f} s (below the clock tick)"
print(f"  tabacco's own cost while streaming {mib} MiB: {cpu_s} CPU (user+sys, all threads), peak RSS {hwm / 1024:.1f} MiB")
PY
