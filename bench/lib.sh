# Shared helpers for the benchmark scripts (sourced, not run).
# Every script compares tabacco against an anchor measured in the same run.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TABACCO=${TABACCO:-$ROOT/target/release/tabacco}
WORK=${BENCH_WORK:-$ROOT/work/bench}
QUICK=0
for a in "$@"; do [ "$a" = "--quick" ] && QUICK=1; done
RUNS=${RUNS:-$([ "$QUICK" = 1 ] && echo 3 || echo 5)}
export RESTIC_PASSWORD=bench-password

# need COMMAND PACKAGE: install Debian's PACKAGE when COMMAND is missing,
# as scripts/deps does for the test suite.
need() {
    command -v "$1" >/dev/null && return
    echo "bench: installing $2 from Debian (for $1)" >&2
    local sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null || { echo "bench: $1 still missing after installing $2" >&2; exit 1; }
}
need hyperfine hyperfine
need restic restic
need python3 python3
if [ ! -x "$TABACCO" ] || [ -n "${BENCH_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -q)
fi

machine() {
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(restic version | cut -d' ' -f1-2), $("$TABACCO" --version)"
}

# A tabacco config tree in $1 with repository $2; sources/handlers added by
# the caller.
tabacco_config() {
    local etc=$1 repo=$2
    rm -rf "$etc"
    mkdir -p "$etc/handlers" "$etc/sources"
    cat > "$etc/agent.yml" <<YAML
hostname: bench-host
work_dir: $etc/../state
repository:
  type: restic
  params:
    uri: $repo
    password: $RESTIC_PASSWORD
YAML
}

# Print "name: median s (min..max, N runs)" for each command of a hyperfine
# JSON export, then the ratio of the second command to the first.
report() {
    python3 - "$1" "$2" <<'PY'
import json, statistics, sys
data = json.load(open(sys.argv[1]))["results"]
label = sys.argv[2]
meds = []
for r in data:
    med = statistics.median(r["times"])
    meds.append(med)
    print(f"  {r['command']:<28} median {med:8.3f} s   spread {min(r['times']):.3f}..{max(r['times']):.3f} s   ({len(r['times'])} runs)")
if len(meds) == 2:
    print(f"  {label}: tabacco / anchor = {meds[1] / meds[0]:.3f}")
PY
}

# Path of the benchmark program examples/index_bench.rs (built if missing;
# BENCH_BUILD=1 forces a rebuild; INDEX_BENCH overrides the path).
index_bench() {
    local bin=${INDEX_BENCH:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/index_bench}
    if [ ! -x "$bin" ] || [ -n "${BENCH_BUILD:-}" ]; then
        (cd "$ROOT" && cargo build --release --locked -q --example index_bench) >&2
    fi
    echo "$bin"
}
