#!/usr/bin/env bash
# Replace each given directory with a fresh, initialised restic repository,
# copied from a template next to the first one (restic init costs seconds;
# no measurement should include it).
set -euo pipefail
export RESTIC_PASSWORD=${RESTIC_PASSWORD:-bench-password}
template="$(dirname "$1")/repo-template"
if [ ! -d "$template" ]; then
    restic init -q -r "$template" >/dev/null
fi
for dest in "$@"; do
    rm -rf "$dest"
    cp -a "$template" "$dest"
done
