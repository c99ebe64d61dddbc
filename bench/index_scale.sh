#!/usr/bin/env bash
# Index at scale: generate hosts x atoms x backups atom-versions and ingest
# them into SQLite and PostgreSQL through the store's own ingest path
# (MetadataStore::add_dataset: one call per host per backup, a dataset
# `mysql` of 100 atoms of source `hostNNN`, 4 calls in flight), against a
# raw bulk insert of the same rows into the same schema, interleaved round
# by round (a round = one backup of every host; each round is one sample):
# SQLite, one transaction per round of prepared 100-row INSERTs;
# PostgreSQL, one transaction per round of COPY FROM STDIN. Goal: ingest
# rate store / raw >= 0.5. Then find_atoms latency through the store
# (p50/p99 over random hosts and atoms) for six query shapes, against a
# `SELECT 1` round trip on the same pool. Goal: p99 <= 20 ms.
#
#   bench/index_scale.sh [--quick]
#
# full: 1000 hosts x 100 atoms x 100 backups = 10 000 000 atom-versions
# (about 4 GiB per SQLite file, 2 files), 200 queries per shape;
# quick: 100 x 100 x 10 = 100 000, 50 queries per shape.
# PostgreSQL: $BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/test);
# the program creates and drops its own schemas tabacco_bench_store and
# tabacco_bench_raw there. BACKENDS=sqlite skips PostgreSQL.
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then
    SHAPE=(--hosts 100 --atoms 100 --backups 10); QUERIES=50
else
    SHAPE=(--hosts 1000 --atoms 100 --backups 100); QUERIES=200
fi
INDEX_BENCH=$(index_bench)
echo "== index at scale; $(machine); load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$INDEX_BENCH" run "${SHAPE[@]}" --queries "$QUERIES" --concurrency 4 \
    --dir "$WORK/index" --backends "${BACKENDS:-sqlite,postgres}" \
    --postgres "${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
