"""Run one server pinned to core 1 and wrk (-t1 -c64) pinned to core 0; report req/s and, per request,
the server's CPU time (user/sys), its run-queue wait (runnable but not running: CPU contention), its
busiest threads (cpu/wait µs per request, timeslices), and wrk's wake-ups and CPU per request.

RT=1 runs both under SCHED_FIFO (chrt -f 10) so other users' compilations on this 2-core machine cannot
take the cores away mid-run (the kernel still leaves them 5%); without it req/s mostly measures how much
CPU the scheduler happened to give the server.

usage: [RT=1] sched.py <label> <port> <path> <secs> -- server command..."""

import atexit
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

label, port, path, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cmd = sys.argv[sys.argv.index("--") + 1 :]
RT1 = ["chrt", "-f", "10"] if os.environ.get("RT") else []
RT0 = ["chrt", "-f", "10"] if os.environ.get("RT") else []
url = f"http://127.0.0.1:{port}{path}"
wrkstat = f"/tmp/wrkstat-{os.getpid()}"
server = subprocess.Popen(
    [*RT1, "taskset", "-c", "1", *cmd],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
)


def tree(pid):
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except Exception:
        out = []
    for c in out:
        pids += tree(int(c))
    return pids


def sched(pids):
    threads = {}
    for p in pids:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                a, b, c = map(int, open(f"/proc/{p}/task/{t}/schedstat").read().split())
                comm = open(f"/proc/{p}/task/{t}/comm").read().strip()
                st = open(f"/proc/{p}/task/{t}/stat").read().rsplit(")", 1)[1].split()
                threads[(p, int(t))] = (comm, a, b, c, int(st[11]), int(st[12]))
        except FileNotFoundError:
            pass
    return threads


def stop_server():
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


atexit.register(stop_server)
for _ in range(200):
    try:
        urllib.request.urlopen(url, timeout=1).read()
        break
    except Exception:
        time.sleep(0.2)
subprocess.run(
    [*RT0, "taskset", "-c", "0", "wrk", "-t1", f"-c{os.environ.get('CONNS', 64)}", "-d2s", url],
    capture_output=True,
)
pids = tree(server.pid)
before = sched(pids)
wrk = subprocess.Popen(
    [
        *RT0,
        "taskset",
        "-c",
        "0",
        "perf",
        "stat",
        "-x,",
        "-o",
        wrkstat,
        "-e",
        "context-switches,task-clock",
        "wrk",
        "-t1",
        f"-c{os.environ.get('CONNS', 64)}",
        f"-d{secs}s",
        url,
    ],
    stdout=subprocess.PIPE,
    text=True,
)
time.sleep(0.3)
wb = sched([wrk.pid])
out, _ = wrk.communicate()
after = sched(pids)
n = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
run = sum(after[k][1] - before[k][1] for k in after if k in before)
wait = sum(after[k][2] - before[k][2] for k in after if k in before)
busy = sorted(
    (
        (after[k][1] - before[k][1]) / n / 1e3,
        after[k][0],
        (after[k][2] - before[k][2]) / n / 1e3,
        after[k][3] - before[k][3],
    )
    for k in after
    if k in before
)[::-1][:4]
tick = 1e6 / os.sysconf("SC_CLK_TCK")
user = sum(after[k][4] - before[k][4] for k in after if k in before) * tick / n
syst = sum(after[k][5] - before[k][5] for k in after if k in before) * tick / n
print(
    f"{label:24s} {rps:8.0f} req/s  cpu {run / n / 1e3:5.1f} us/req (user {user:4.1f} sys {syst:4.1f})  rq-wait {wait / n / 1e3:5.1f} us/req  "
    f"util {run / 1e9 / float(secs):.2f}  threads: "
    + ", ".join(f"{c}:{r:.1f}/{w:.1f}/{s}" for r, c, w, s in busy)
)
stat = {
    line.split(",")[2]: float(line.split(",")[0])
    for line in open(wrkstat)
    if line.count(",") > 3 and line[0].isdigit()
}
print(
    f"{'':24s} wrk: {stat.get('context-switches', 0) / n:.2f} wake-ups/req, "
    f"{stat.get('task-clock', 0) * 1e3 / n:.1f} us CPU/req"
)
