#!/usr/bin/env bash
# Run every benchmark; `--quick` runs reduced versions (a few minutes).
#
#   bench/all.sh [--quick]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for b in file_backup pipe_backup verify_drill many_atoms index_scale server_load agent_footprint; do
    "$here/$b.sh" "$@"
    echo
done
