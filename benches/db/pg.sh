#!/usr/bin/env bash
# A real PostgreSQL 15 (Debian's package) for the database benchmark and its CI smoke test, with
# TechEmpower's `world` (10,000 rows) and `fortune` (the 12 standard fortunes) tables.
#
#   benches/db/pg.sh start   # (re)starts the cluster, reloads the tables, prints its DSN on stdout
#   benches/db/pg.sh stop    # stops it (nothing to do if it is not running)
#   benches/db/pg.sh status  # exit 0 if it is running
#
# Callers stop it with a trap (scripts/dev test and scripts/dev bench --db: `trap '... stop' EXIT`, set
# before `start`, so a failed start is cleaned up too). One cluster per PERCORE_CACHE, used by one run at
# a time: `start` stops a cluster a killed run left behind before starting it again.
#
# Where: $PERCORE_CACHE/pg when the `postgres` user can reach it (initdb and the server refuse to run as
# root, and the data directory must belong to the user the server runs as); the default cache,
# ~/.cache/percore, is under /root (mode 700), which `postgres` cannot traverse, so then
# /var/tmp/percore-pg-<hash of PERCORE_CACHE>. The server listens on 127.0.0.1 only, on a free port, with
# password (scram-sha-256) authentication for TCP; its Unix socket lives in the cluster directory.
# PERCORE_PG_CPUS (e.g. 0) pins the server (and every backend it forks) with taskset.
set -euo pipefail
shopt -s inherit_errexit

cache=${PERCORE_CACHE:-$HOME/.cache/percore}
bin=/usr/lib/postgresql/15/bin
say() { printf '\033[1mpg: %s\033[0m\n' "$*" >&2; }
as_postgres() { runuser -u postgres -- "$@"; }

cluster_dir() {
    if id postgres >/dev/null 2>&1; then
        mkdir -p "$cache"
        if as_postgres test -x "$cache"; then echo "$cache/pg"; return; fi
    fi
    echo "/var/tmp/percore-pg-$(printf '%s' "$(cd "$cache" 2>/dev/null && pwd || echo "$cache")" | sha256sum | cut -c1-12)"
}

install() {
    [ -x "$bin/initdb" ] && return
    say "installing PostgreSQL 15 (Debian's postgresql package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq postgresql >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
    [ -x "$bin/initdb" ] || { say "no $bin/initdb after installing postgresql"; exit 1; }
}

dir=$(cluster_dir)
data=$dir/data
log=$dir/server.log

running() { [ -f "$data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

stop() {
    if running; then
        as_postgres "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
        say "stopped the cluster in $dir"
    fi
}

# Only the benchmark's tables, as TechEmpower defines them (config/create-postgres.sql), reloaded on every
# start so that /updates of a previous run leave nothing behind.
SCHEMA="
DROP TABLE IF EXISTS world;
CREATE TABLE world (id integer NOT NULL, randomnumber integer NOT NULL DEFAULT 0, PRIMARY KEY (id));
INSERT INTO world (id, randomnumber)
    SELECT x.id, least(floor(random() * 10000 + 1), 10000) FROM generate_series(1, 10000) AS x(id);
DROP TABLE IF EXISTS fortune;
CREATE TABLE fortune (id integer NOT NULL, message varchar(2048) NOT NULL, PRIMARY KEY (id));
INSERT INTO fortune (id, message) VALUES
    (1, 'fortune: No such file or directory'),
    (2, 'A computer scientist is someone who fixes things that aren''t broken.'),
    (3, 'After enough decimal places, nobody gives a damn.'),
    (4, 'A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1'),
    (5, 'A computer program does what you tell it to do, not what you want it to do.'),
    (6, 'Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen'),
    (7, 'Any program that runs right is obsolete.'),
    (8, 'A list is only as strong as its weakest link. — Donald Knuth'),
    (9, 'Feature: A bug with seniority.'),
    (10, 'Computers make very fast, very accurate mistakes.'),
    (11, '<script>alert(\"This should not be displayed in a browser alert box.\");</script>'),
    (12, 'フレームワークのベンチマーク');
VACUUM ANALYZE world;
VACUUM ANALYZE fortune;
"

start() {
    install
    stop
    mkdir -p "$dir"
    chown postgres: "$dir"
    chmod 700 "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
        say "initdb in $data"
        rm -rf "$data"
        as_postgres "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    local pin=() port attempt
    [ -n "${PERCORE_PG_CPUS:-}" ] && pin=(taskset -c "$PERCORE_PG_CPUS")
    # A free loopback port: try random ones (the server fails to start on a port in use).
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 40000))
        # Settings (docs/benchmarks.md, "Database"): loopback only; enough connections for every pool;
        # no fsync wait per commit (/updates would measure the shared disk, not the server under test).
        if "${pin[@]}" runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start -o "\
            -c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
            -c max_connections=200 -c shared_buffers=128MB -c synchronous_commit=off -c jit=off" >/dev/null; then
            break
        fi
        port=
        tail -n 5 "$log" >&2 || true
    done
    [ -n "$port" ] || { say "PostgreSQL did not start (log: $log)"; exit 1; }
    local psql=(as_postgres "$bin/psql" -h "$dir" -p "$port" -X -q -v ON_ERROR_STOP=1)
    "${psql[@]}" -d postgres >/dev/null <<SQL
SELECT 'CREATE ROLE benchmarkdbuser LOGIN'
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'benchmarkdbuser') \gexec
ALTER ROLE benchmarkdbuser PASSWORD 'benchmarkdbpass';
GRANT pg_checkpoint TO benchmarkdbuser;
SELECT 'CREATE DATABASE hello_world OWNER benchmarkdbuser'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hello_world') \gexec
SQL
    printf 'SET client_min_messages = warning;\nSET ROLE benchmarkdbuser;\n%s' "$SCHEMA" | "${psql[@]}" -d hello_world >/dev/null
    say "PostgreSQL 15 serving on 127.0.0.1:$port (cluster: $dir)"
    echo "postgresql://benchmarkdbuser:benchmarkdbpass@127.0.0.1:$port/hello_world"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) running ;;
    *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
