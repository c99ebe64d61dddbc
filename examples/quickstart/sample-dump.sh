#!/usr/bin/env bash
# A stand-in for a database dump command: prints a deterministic "dump" of
# the dataset named in the environment.
set -euo pipefail
echo "-- dump of ${TABACCO_SOURCE}/${TABACCO_DATASET}/${TABACCO_ATOM} on ${TABACCO_HOST}"
for i in $(seq 1 2000); do
    echo "INSERT INTO t VALUES ($i, '${TABACCO_DATASET}-row-$i');"
done
