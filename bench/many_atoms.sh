#!/usr/bin/env bash
# Many atoms: a pipe source with N small dumps (one dataset of one atom
# each, generated 64 KiB streams) against one raw `restic backup --stdin`
# per atom, two at a time on both sides (tabacco's default dataset
# parallelism). Reports wall time and the number of restic processes that
# open the repository per run, counted by a wrapper around restic.
# The raw side's stderr goes to $WORK/many/raw-stderr.log: two restic
# processes sharing one cache print harmless "error clearing pack files
# in cache" lines.
#
#   bench/many_atoms.sh [--quick]    (quick: 20 atoms, 3 runs; full: 200)
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then N=20; else N=200; fi
W=$WORK/many
mkdir -p "$W"
# restic wrapper counting repository opens (every command but `version`).
cat > "$W/restic-counting" <<SH
#!/usr/bin/env bash
[ "\$1" = version ] || echo "\$1" >> "$W/opens.log"
exec restic "\$@"
SH
chmod +x "$W/restic-counting"
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
datasets_command: |
  for i in \$(seq 1 $N); do echo "- {name: db\$i, atoms: [{name: main}]}"; done
YAML
cat > "$W/raw.sh" <<SH
#!/usr/bin/env bash
set -euo pipefail
seq 1 $N | xargs -P 2 -I{} bash -c 'set -o pipefail; head -c 65536 /dev/urandom | $W/restic-counting -r $W/repo-raw backup --stdin --stdin-filename many/db{}/main --host bench-host --tag backup_id=x --tag dataset_id=y --tag source=many >/dev/null 2>>$W/raw-stderr.log'
SH
chmod +x "$W/raw.sh"

echo "== many atoms: $N pipe atoms of 64 KiB; $(machine)"
hyperfine -N --runs "$RUNS" --export-json "$W/many.json" --style none \
    --prepare "bash -c '$BENCH_DIR/fresh_repo.sh $W/repo-raw $W/repo-tabacco; rm -rf $W/state'" \
    -n "restic per atom (x$N)" "$W/raw.sh" \
    -n "tabacco backup ($N atoms)" "bash -c \"$TABACCO --config $W/etc/agent.yml backup many >/dev/null 2>&1\"" >/dev/null
report "$W/many.json" "many atoms"
# Repository opens per run, one more run of each with the counter reset.
"$BENCH_DIR/fresh_repo.sh" "$W/repo-raw" "$W/repo-tabacco"; rm -rf "$W/state"
: > "$W/opens.log"; "$W/raw.sh"; raw_opens=$(wc -l < "$W/opens.log")
: > "$W/opens.log"; "$TABACCO" --config "$W/etc/agent.yml" backup many >/dev/null 2>&1; tab_opens=$(wc -l < "$W/opens.log")
echo "  repository opens per run: restic per atom $raw_opens, tabacco $tab_opens ($(sort "$W/opens.log" | uniq -c | awk '{print $1 " " $2}' | paste -sd, -))"
