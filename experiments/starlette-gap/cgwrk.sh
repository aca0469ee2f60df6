#!/bin/bash
# usage: cgwrk.sh <name> <port> <secs> <path> -- server command...
# Server under callgrind (collection off; CALLGRIND_ARGS adds options, e.g. --cache-sim=yes); warm-up with the sequential client; then collect during a
# wrk -c64 run of <secs>; prints Ir per request (all threads of the traced processes).
set -u
name=$1 port=$2 secs=$3 path=$4; shift 5
here=$(cd "$(dirname "$0")" && pwd); out=$here/out; mkdir -p "$out"
rm -f $out/$name.*
# PYTHON: any interpreter (the client is plain http.client), e.g. the venv of the server under test.
CLIENT="${PYTHON:-python3} $here/client.py"
PYTHONHASHSEED=${PYTHONHASHSEED:-0} setsid valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --instr-atstart=no --trace-children=yes \
  --callgrind-out-file=$out/$name.%p "$@" > $out/$name.log 2>&1 &
vpid=$!
for i in $(seq 1 600); do
  if curl -s -o /dev/null --max-time 2 http://127.0.0.1:$port$path; then break; fi; sleep 1
done
$CLIENT $port 1000 $path 2>>$out/$name.log
wrk -t1 -c${CONNS:-64} -d3s --timeout 20s http://127.0.0.1:$port$path > /dev/null
pids=$(callgrind_control -l 2>/dev/null | awk -F'[ :]' '/PID/{print $2}')
for p in $(pgrep -s $vpid); do callgrind_control -i on $p >/dev/null 2>&1; done
wrk -t1 -c${CONNS:-64} -d${secs}s --timeout 20s http://127.0.0.1:$port$path > $out/$name.wrk
for p in $(pgrep -s $vpid); do callgrind_control -i off $p >/dev/null 2>&1; callgrind_control -d $p >/dev/null 2>&1; done
sleep 1
kill -TERM -- -$vpid; sleep 4; kill -KILL -- -$vpid 2>/dev/null; wait $vpid 2>/dev/null
n=$(awk '/requests in/{print $1}' $out/$name.wrk)
ir=0; for f in $out/$name.*.1; do c=$(grep -E "^totals:" $f | awk "{print \$2}"); ir=$((ir + ${c:-0})); done
echo "$name: $n requests, $ir Ir, $((ir / n)) Ir/request"
