#!/usr/bin/env bash
# Many atoms: one pipe dataset of N atoms (generated 64 KiB streams, listed
# by an `atoms_command`), backed up by tabacco as one snapshot, against one
# raw `restic backup --stdin` per atom, two at a time (the same dump
# parallelism as tabacco's default `parallel_dumps`). Reports wall time,
# the restic runs that open the repository per run (counted by a wrapper
# around restic), and tabacco's peak RSS and peak spool size during a run
# (sampled every 50 ms from /proc and `du`). Then the restore of every
# atom of that snapshot: tabacco (one `restic restore` into a scratch
# directory) against one `restic dump` per atom.
# The raw side's stderr goes to $WORK/many/raw-stderr.log: two restic
# processes sharing one cache print harmless "error clearing pack files
# in cache" lines.
#
#   bench/many_atoms.sh [--quick]    (quick: 20 and 100 atoms, 3 runs;
#                                     full: 200 atoms x RUNS and 1000 atoms
#                                     x RUNS_LARGE, default 1: the raw side
#                                     takes minutes per run)
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then SIZES="20 100"; else SIZES="200 1000"; fi
W=$WORK/many
mkdir -p "$W"
# restic wrapper counting repository opens (every command but `version`).
cat > "$W/restic-counting" <<SH
#!/usr/bin/env bash
[ "\$1" = version ] || echo "\$1" >> "$W/opens.log"
exec restic "\$@"
SH
chmod +x "$W/restic-counting"

# Run tabacco once in the background, sampling its peak RSS (VmHWM) and
# the spool's size; prints "peak_rss_kib peak_spool_bytes".
sample_run() {
    "$TABACCO" --config "$W/etc/agent.yml" backup many >/dev/null 2>&1 &
    local pid=$! rss=0 spool=0 r s
    while kill -0 "$pid" 2>/dev/null; do
        r=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$r" ] && [ "$r" -gt "$rss" ] && rss=$r
        s=$(du -sb "$W/state/spool" 2>/dev/null | cut -f1 || true)
        [ -n "$s" ] && [ "$s" -gt "$spool" ] && spool=$s
        sleep 0.05
    done
    wait "$pid"
    echo "$rss $spool"
}

for N in $SIZES; do
    runs=$RUNS
    [ "$N" -ge 1000 ] && runs=${RUNS_LARGE:-1}
    tabacco_config "$W/etc" "$W/repo-tabacco"
    echo "    restic_binary: $W/restic-counting" >> "$W/etc/agent.yml"
    cat > "$W/etc/handlers/dump.yml" <<'YAML'
name: dump
type: pipe
params:
  backup_command: head -c 65536 /dev/urandom
  restore_command: cat > /dev/null
YAML
    cat > "$W/etc/sources/many.yml" <<YAML
name: many
handler: dump
datasets:
  - name: all
    atoms_command: seq -f 'db%g' 1 $N
YAML
    cat > "$W/raw.sh" <<SH
#!/usr/bin/env bash
set -euo pipefail
seq 1 $N | xargs -P 2 -I{} bash -c 'set -o pipefail; head -c 65536 /dev/urandom | $W/restic-counting -r $W/repo-raw backup --stdin --stdin-filename many/all/db{} --host bench-host --tag backup_id=x --tag dataset_id=y --tag source=many >/dev/null 2>>$W/raw-stderr.log'
SH
    chmod +x "$W/raw.sh"

    echo "== many atoms: $N pipe atoms of 64 KiB in one dataset; $(machine)"
    hyperfine -N --runs "$runs" --export-json "$W/many-$N.json" --style none \
        --prepare "bash -c '$BENCH_DIR/fresh_repo.sh $W/repo-raw $W/repo-tabacco; rm -rf $W/state'" \
        -n "restic per atom (x$N)" "$W/raw.sh" \
        -n "tabacco backup ($N atoms)" "bash -c \"$TABACCO --config $W/etc/agent.yml backup many >/dev/null 2>&1\"" >/dev/null
    report "$W/many-$N.json" "many atoms ($N)"
    # Repository opens per run, one more run of each with the counter reset,
    # the tabacco one sampled for memory and spool.
    "$BENCH_DIR/fresh_repo.sh" "$W/repo-raw" "$W/repo-tabacco"; rm -rf "$W/state"
    : > "$W/opens.log"; "$W/raw.sh"; raw_opens=$(wc -l < "$W/opens.log")
    : > "$W/opens.log"; read -r rss spool < <(sample_run); tab_opens=$(wc -l < "$W/opens.log")
    echo "  repository opens per run: restic per atom $raw_opens, tabacco $tab_opens ($(sort "$W/opens.log" | uniq -c | awk '{print $1 " " $2}' | paste -sd, -))"
    echo "  tabacco peak RSS $((rss / 1024)) MiB ($rss KiB), peak spool $((spool / 1024)) KiB for $((N * 64)) KiB of dumps"

    # Restore of every atom of that snapshot: one `restic dump` per atom
    # (2 at a time) against one `tabacco restore` of them all.
    snap=$(restic -r "$W/repo-tabacco" snapshots --json --no-lock | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
    cat > "$W/raw-restore.sh" <<SH
#!/usr/bin/env bash
set -euo pipefail
seq 1 $N | xargs -P 2 -I{} bash -c 'restic -r $W/repo-tabacco dump --no-lock $snap /many/all/db{} > /dev/null'
SH
    chmod +x "$W/raw-restore.sh"
    hyperfine -N --runs "$runs" --export-json "$W/restore-$N.json" --style none \
        --prepare "rm -rf $W/restored" \
        -n "restic dump per atom (x$N)" "$W/raw-restore.sh" \
        -n "tabacco restore ($N atoms)" "bash -c \"$TABACCO --config $W/etc/agent.yml restore --target $W/restored 'many/all/*' >/dev/null 2>&1\"" >/dev/null
    report "$W/restore-$N.json" "restore of $N atoms"
    : > "$W/opens.log"; "$TABACCO" --config "$W/etc/agent.yml" restore --target "$W/restored" 'many/all/*' >/dev/null 2>&1
    echo "  repository opens per restore: tabacco $(wc -l < "$W/opens.log") ($(sort "$W/opens.log" | uniq -c | awk '{print $1 " " $2}' | paste -sd, -)), restic dump per atom $N"
done
