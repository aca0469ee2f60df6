#!/bin/bash
# usage: prof.sh <label> <port> <path> -- server command...   perf record -e cpu-clock of the server tree under wrk (RT)
label=$1 port=$2 path=$3; shift 4
setsid chrt -f 10 taskset -c 1 "$@" > /dev/null 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null --max-time 1 http://127.0.0.1:$port$path && break; sleep 0.2; done
chrt -f 10 taskset -c 0 wrk -t1 -c${CONNS:-64} -d2s http://127.0.0.1:$port$path > /dev/null
pids=$(pgrep -s $pid | paste -sd,)
perf record -e cpu-clock -F 4999 -g -p $pids -o /tmp/perf-$label.data -- sleep 4 > /dev/null 2>&1 &
rp=$!
out=$(chrt -f 10 taskset -c 0 wrk -t1 -c${CONNS:-64} -d4s http://127.0.0.1:$port$path)
wait $rp
echo "$out" | awk '/requests in/{print "'$label' requests:", $1}' | tee /tmp/perf-$label.n
kill -TERM -- -$pid; sleep 2; kill -KILL -- -$pid 2>/dev/null
