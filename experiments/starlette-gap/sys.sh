#!/bin/bash
# usage: sys.sh <label> <port> <path> -- server command...   syscalls per request (strace -c, all threads)
label=$1 port=$2 path=$3; shift 4
setsid taskset -c 1 "$@" > /dev/null 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null --max-time 1 http://127.0.0.1:$port$path && break; sleep 0.2; done
taskset -c 0 wrk -t1 -c64 -d2s http://127.0.0.1:$port$path > /dev/null
pids=$(pgrep -s $pid | sed 's/^/-p /')
strace -f -c -o /tmp/strace-$label.txt $pids & spid=$!
sleep 1
out=$(taskset -c 0 wrk -t1 -c64 -d4s http://127.0.0.1:$port$path)
kill -INT $spid; wait $spid
n=$(echo "$out" | awk '/requests in/{print $1}')
echo "== $label: $n requests"
awk -v n=$n 'NR>2 && $NF!="total" && $4+0>0 {printf "  %-20s %8.3f calls/req  %6.2f us/req (strace-inflated)\n", $NF, $4/n, $2/n}' /tmp/strace-$label.txt | sort -k2 -nr | head -15
kill -TERM -- -$pid; sleep 2; kill -KILL -- -$pid 2>/dev/null
