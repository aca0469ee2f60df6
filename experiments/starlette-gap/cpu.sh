#!/bin/bash
# usage: cpu.sh <label> <port> <path> <secs> -- server command...
# Server pinned to core 1, wrk -t1 -c64 on core 0; reports req/s and CPU µs/request (user, sys) of the
# server's whole process tree (noisy machine: CPU per request is steadier than req/s).
label=$1 port=$2 path=$3 secs=$4; shift 5
taskset -c 1 "$@" > /tmp/cpu-$label.log 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null --max-time 1 http://127.0.0.1:$port$path && break; sleep 0.2; done
taskset -c 0 wrk -t1 -c64 -d2s http://127.0.0.1:$port$path > /dev/null
tree() { echo $pid; pgrep -P $pid; }
ticks() { local u=0 s=0; for p in $(tree); do read -r a b < <(awk '{print $14, $15}' /proc/$p/stat 2>/dev/null) || continue; u=$((u+a)); s=$((s+b)); done; echo $u $s; }
read u0 s0 < <(ticks)
out=$(taskset -c 0 wrk -t1 -c64 -d${secs}s http://127.0.0.1:$port$path)
read u1 s1 < <(ticks)
n=$(echo "$out" | awk '/requests in/{print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
hz=$(getconf CLK_TCK)
awk -v l="$label" -v n=$n -v r=$rps -v u=$((u1-u0)) -v s=$((s1-s0)) -v hz=$hz 'BEGIN{printf "%-28s %8.0f req/s  user %5.1f us/req  sys %5.1f us/req  total %5.1f\n", l, r, u/hz*1e6/n, s/hz*1e6/n, (u+s)/hz*1e6/n}'
kill -TERM $pid; for c in $(pgrep -P $pid); do kill -TERM $c; done 2>/dev/null; wait $pid 2>/dev/null
