#!/usr/bin/env bash
# Quickstart on the embedded defaults: back up a sample directory and a
# sample dump command into a local restic repository, list the index,
# restore one atom of each and compare with the originals.
#
#   examples/quickstart/run.sh [WORK_DIR]     (default: ./work/quickstart)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mkdir -p "${1:-$root/work/quickstart}" && cd "${1:-$root/work/quickstart}" && pwd)
bin=${TABACCO_BIN:-$root/target/release/tabacco}
[ -x "$bin" ] || { echo "quickstart: $bin is missing: run scripts/setup first" >&2; exit 1; }

# The configuration tree, with @WORK@ filled in.
rm -rf "$work/etc"
mkdir -p "$work/etc/handlers" "$work/etc/sources" "$work/sample/home/alice" "$work/sample/home/bob"
for f in agent.yml handlers/handlers.yml sources/home.yml sources/db.yml; do
    sed "s#@WORK@#$work#g" "$here/$f" > "$work/etc/$f"
done
[ -f "$work/repo-password" ] || head -c 24 /dev/urandom | base64 > "$work/repo-password"
chmod 600 "$work/repo-password"
export QUICKSTART_DIR=$here

# Sample data.
echo "alice's notes, $(date -u +%FT%TZ)" > "$work/sample/home/alice/notes.txt"
head -c 100000 /dev/urandom > "$work/sample/home/alice/photo.jpg"
echo "bob's todo list" > "$work/sample/home/bob/todo.txt"

t() { echo "+ tabacco $*" >&2; "$bin" --config "$work/etc/agent.yml" "$@"; }

t config check
t backup home db
t query '*'
rm -rf "$work/restored"
t restore --target "$work/restored" home/users/alice
t restore --target "$work/restored" db/site2/main

diff -r "$work/sample/home/alice" "$work/restored$work/sample/home/alice"
[ ! -e "$work/restored$work/sample/home/bob" ]
TABACCO_SOURCE=db TABACCO_DATASET=site2 TABACCO_ATOM=main TABACCO_HOST=quickstart-host \
    "$here/sample-dump.sh" | cmp - "$work/restored/dumps/main.sql"
echo "quickstart: restored home/users/alice and db/site2/main byte-identical under $work/restored"
