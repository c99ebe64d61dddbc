#!/usr/bin/env bash
# Agent footprint: start-up time until the status server accepts
# connections, and resident memory of an idle agent with 50 scheduled
# sources after 60 s (quick: 10 s). Goals: <= 20 ms, <= 10 MB. Anchor: the
# same measurements of `restic version` (start-up to exit) and of an idle
# `sleep` process, taken in the same run.
#
#   bench/agent_footprint.sh [--quick]
source "$(dirname "$0")/lib.sh"
IDLE=$([ "$QUICK" = 1 ] && echo 10 || echo 60)
W=$WORK/agent
mkdir -p "$W"
tabacco_config "$W/etc" "$W/repo"
echo "name: files
type: file" > "$W/etc/handlers/files.yml"
for i in $(seq 1 50); do
    echo "name: src$i
handler: files
schedule: '@daily'
params: {path: /etc}
datasets: [{name: d, atoms: [{name: hostname}]}]" > "$W/etc/sources/src$i.yml"
done

echo "== agent footprint: 50 sources, idle ${IDLE}s; $(machine)"
python3 - "$TABACCO" "$W/etc/agent.yml" "$RUNS" "$IDLE" <<'PY'
import os, socket, statistics, subprocess, sys, time
tabacco, config, runs, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start_agent():
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([tabacco, "--config", config, "agent", "--http-addr", f"127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p, time.perf_counter() - t0
        except OSError:
            if p.poll() is not None:
                sys.exit(f"agent exited with {p.returncode} before listening")
            time.sleep(0.0005)

def rss_kib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def stop(p):
    p.terminate(); p.wait(timeout=30)

starts = []
for _ in range(runs):
    p, t = start_agent(); starts.append(t); stop(p)
restic = []
for _ in range(runs):
    t0 = time.perf_counter()
    subprocess.run(["restic", "version"], stdout=subprocess.DEVNULL, check=True)
    restic.append(time.perf_counter() - t0)

def line(name, xs, unit=1000, u="ms"):
    print(f"  {name:<36} median {statistics.median(xs) * unit:8.1f} {u}   spread {min(xs) * unit:.1f}..{max(xs) * unit:.1f} {u}   ({len(xs)} runs)")

line("tabacco agent: start to listening", starts)
line("restic version: start to exit", restic)
print(f"  start-up: tabacco / restic = {statistics.median(starts) / statistics.median(restic):.2f}")

p, _ = start_agent()
s = subprocess.Popen(["sleep", str(idle + 5)])
time.sleep(idle)
a, b = rss_kib(p.pid), rss_kib(s.pid)
anon, filed = rss_kib(p.pid, "RssAnon"), rss_kib(p.pid, "RssFile")
stop(p); s.kill()
print(f"  idle RSS after {idle}s: tabacco agent {a / 1024:.1f} MiB ({anon / 1024:.1f} MiB private, {filed / 1024:.1f} MiB file-backed code pages), sleep {b / 1024:.1f} MiB; tabacco / sleep = {a / b:.1f}")
PY
