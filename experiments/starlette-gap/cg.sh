#!/bin/bash
# usage: cg.sh <name> <port> <warmup> <count> <path> -- server command...
# Runs the server under callgrind (collection off), warms up, counts <count> requests, dumps.
set -u
name=$1 port=$2 warm=$3 count=$4 path=$5; shift 6
here=$(cd "$(dirname "$0")" && pwd); out=$here/out; mkdir -p "$out"
rm -f $out/$name.*
# PYTHON: any interpreter (the client is plain http.client), e.g. the venv of the server under test.
CLIENT="${PYTHON:-python3} $here/client.py"
PYTHONHASHSEED=${PYTHONHASHSEED:-0} valgrind --tool=callgrind --instr-atstart=no --trace-children=yes \
  --callgrind-out-file=$out/$name.%p --separate-threads=no "$@" > $out/$name.log 2>&1 &
vpid=$!
for i in $(seq 1 600); do
  if curl -s -o /dev/null --max-time 2 http://127.0.0.1:$port$path; then break; fi; sleep 1
done
$CLIENT $port $warm $path 2>>$out/$name.log
callgrind_control -i on >/dev/null
$CLIENT $port $count $path 2>>$out/$name.log
callgrind_control -i off >/dev/null
callgrind_control -d >/dev/null
sleep 1
kill -TERM $vpid; sleep 3; pkill -TERM -P $vpid 2>/dev/null; wait $vpid
ls -la $out/$name.*
