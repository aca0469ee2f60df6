#!/usr/bin/env bash
# Builds CPython 3.13 twice from Debian's python3.13 source package: free-threaded (--disable-gil, "3.13t")
# and its GIL twin, same tarball, same flags, so GIL-vs-no-GIL comparisons measure only the build switch.
# Builds are cached outside the repo (PERCORE_CACHE, default ~/.cache/percore) and reused when present.
#
# usage: scripts/provision-python.sh [nogil|gil|both]   (default: both)
# prints nothing but progress on stderr; the interpreters end up at
#   $PERCORE_CACHE/python/<version>-nogil/bin/python3.13t
#   $PERCORE_CACHE/python/<version>-gil/bin/python3.13
set -euo pipefail

which_builds=${1:-both}
cache=${PERCORE_CACHE:-$HOME/.cache/percore}
# Debian versions to try in order: sid's newest we measured, then trixie's. Both are >= 3.13.3, which
# free-threaded PyO3 0.28 needs.
candidates=${PERCORE_PY_DEBVERSIONS:-"3.13.15-1 3.13.5-2"}
jobs=${PERCORE_BUILD_JOBS:-$(nproc)}

say() { printf 'provision-python: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

interpreter_path() { # kind -> path of the interpreter if already built
    local kind=$1 d
    for d in "$cache"/python/*-"$kind"; do
        [ -d "$d" ] || continue
        if [ "$kind" = nogil ]; then
            [ -x "$d/bin/python3.13t" ] && { echo "$d/bin/python3.13t"; return 0; }
        else
            [ -x "$d/bin/python3.13" ] && { echo "$d/bin/python3.13"; return 0; }
        fi
    done
    return 1
}

need_nogil=0; need_gil=0
case "$which_builds" in
    nogil) need_nogil=1 ;;
    gil) need_gil=1 ;;
    both) need_nogil=1; need_gil=1 ;;
    *) die "unknown build '$which_builds' (expected nogil, gil or both)" ;;
esac
[ $need_nogil = 1 ] && interpreter_path nogil >/dev/null && need_nogil=0
[ $need_gil = 1 ] && interpreter_path gil >/dev/null && need_gil=0
if [ $need_nogil = 0 ] && [ $need_gil = 0 ]; then
    exit 0
fi

mkdir -p "$cache/src" "$cache/python"
exec 9>"$cache/provision.lock"
flock 9

# Build dependencies: CPython's own optional modules (ssl for pip, zlib, ctypes, ...).
build_deps="build-essential pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev
            libreadline-dev libncurses-dev uuid-dev libexpat1-dev libgdbm-dev dpkg-dev"
missing=""
for p in $build_deps; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    say "installing build dependencies:$missing"
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq $missing >/dev/null) \
        || die "could not install build dependencies:$missing"
fi

tarball=$(ls "$cache"/src/python3.13_*.orig.tar.xz 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$tarball" ]; then
    # A private apt configuration with a deb-src line for sid and trixie, so the system's lists are untouched.
    # The mirror is taken from the system's own apt sources at run time.
    mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n 1 || true)
    [ -n "$mirror" ] || die "no Debian mirror found in the system's apt sources"
    aptdir="$cache/apt"
    mkdir -p "$aptdir/lists/partial"
    printf 'deb-src [trusted=yes] %s sid main\ndeb-src [trusted=yes] %s trixie main\n' "$mirror" "$mirror" \
        > "$aptdir/sources.list"
    aptopts=(-o "Dir::Etc::sourcelist=$aptdir/sources.list" -o "Dir::Etc::sourceparts=-"
             -o "Dir::State::Lists=$aptdir/lists" -o "APT::Get::List-Cleanup=0"
             -o "Acquire::AllowInsecureRepositories=1")
    say "fetching Debian source lists (mirror from system apt sources)"
    apt-get "${aptopts[@]}" update -qq >/dev/null 2>&1 || say "warning: apt update reported errors"
    tmp=$(mktemp -d)
    got=""
    for v in $candidates; do
        say "trying python3.13=$v"
        if (cd "$tmp" && apt-get "${aptopts[@]}" source --download-only "python3.13=$v" >/dev/null 2>&1); then
            got=$v; break
        fi
    done
    [ -n "$got" ] || die "could not download Debian's python3.13 source (tried: $candidates)"
    orig=$(ls "$tmp"/python3.13_*.orig.tar.xz | head -n 1)
    mv "$orig" "$cache/src/"
    rm -rf "$tmp"
    tarball="$cache/src/$(basename "$orig")"
fi
upstream=$(basename "$tarball" | sed -E 's/python3\.13_([^.]+\.[^.]+\.[^.]+)\.orig\.tar\.xz/\1/')
say "using CPython $upstream from $(basename "$tarball")"

build_one() { # kind configure-flag
    local kind=$1 flag=$2
    local prefix="$cache/python/$upstream-$kind" work="$cache/build/$upstream-$kind"
    rm -rf "$work" "$prefix"
    mkdir -p "$work"
    tar -xJf "$tarball" -C "$work" --strip-components=1
    say "building $kind interpreter into $prefix (make -j$jobs, a few minutes)"
    (
        cd "$work"
        # Same flags for both builds; only --disable-gil differs.
        ./configure --prefix="$prefix" $flag --with-ensurepip=install >"$work/configure.log" 2>&1
        make -j"$jobs" >"$work/make.log" 2>&1
        make install >"$work/install.log" 2>&1
    ) || { say "build failed; see logs in $work"; tail -n 30 "$work"/*.log >&2; rm -rf "$prefix"; exit 1; }
    rm -rf "$work"
}

[ $need_nogil = 1 ] && build_one nogil --disable-gil
[ $need_gil = 1 ] && build_one gil ""

p=$(interpreter_path nogil || true); [ -z "$p" ] || "$p" -c 'import sys, ssl; assert not sys._is_gil_enabled()' \
    || die "free-threaded build at $p is broken"
p=$(interpreter_path gil || true); [ -z "$p" ] || "$p" -c 'import sys, ssl; assert sys._is_gil_enabled()' \
    || die "GIL build at $p is broken"
say "ready"
