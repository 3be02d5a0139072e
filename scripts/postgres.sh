#!/usr/bin/env bash
# A throwaway PostgreSQL for NeurStore: installs the server, starts or stops a cluster.
#
# Usage:
#   scripts/postgres.sh install     install PostgreSQL (Debian packages) when it is missing
#   scripts/postgres.sh up DIR      create a cluster in DIR when DIR is new, start it otherwise
#                                   (after a crash too); the last line printed is its URL
#   scripts/postgres.sh down DIR    stop the cluster in DIR
#   scripts/postgres.sh extension [PG_CONFIG]
#                                   build the `neurstore` extension (crates/neurstore-pg) and
#                                   install it into the PostgreSQL of PG_CONFIG (default: the
#                                   newest Debian one), as root: installs the build prerequisites
#                                   and cargo-pgrx 0.18.1 when missing; restart nothing, a new
#                                   session loads the new library
#   scripts/postgres.sh standby URL DIR
#                                   a streaming standby of the server at URL (one this script
#                                   started) in DIR, on a port of its own: created with
#                                   pg_basebackup when DIR is new, started otherwise; the last
#                                   line printed is its URL (read-only queries only)
#
# The cluster listens on 127.0.0.1 only (and on a socket inside DIR), on a free port chosen
# when it is created and kept in DIR/port, with trust authentication for the superuser
# `postgres`: a cluster for tests and trials, never for data that matters. PostgreSQL refuses
# to run as root, so under root the server runs as the user `neurstore-pg` (created when
# missing) and DIR is given to it; any other user runs it as themselves.
#
# PG_BIN picks the server's bin directory (default: the newest under /usr/lib/postgresql).
set -euo pipefail

die() {
    echo "error: $*" >&2
    exit 1
}

pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$newest" && -x "$newest/initdb" ]] || return 1
    echo "$newest"
}

install_server() {
    if pg_bin >/dev/null; then
        echo "PostgreSQL present: $(pg_bin)" >&2
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed; run this as root to install it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql postgresql-client >/dev/null
    # Debian starts a cluster of its own; the tests use theirs.
    if command -v pg_ctlcluster >/dev/null; then
        pg_lsclusters -h 2>/dev/null | while read -r version name _; do
            pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
        done
    fi
    pg_bin >/dev/null || die "PostgreSQL did not install"
}

# Runs a command as the cluster's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u neurstore-pg -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

up() {
    local dir=$1 bin
    install_server
    bin=$(pg_bin)
    if [[ $(id -u) -eq 0 ]] && ! id neurstore-pg >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin neurstore-pg
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) -eq 0 ]]; then
        chown neurstore-pg "$dir"
        # The owner must reach DIR through every parent.
        local p=$dir
        while [[ "$p" != / ]]; do
            p=$(dirname "$p")
            chmod o+x "$p" 2>/dev/null || true
        done
    fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        free_port >"$dir/port"
        mkdir -p "$dir/socket"
        [[ $(id -u) -eq 0 ]] && chown neurstore-pg "$dir/socket" "$dir/port"
        cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $(cat "$dir/port")
unix_socket_directories = '$dir/socket'
wal_level = replica
max_wal_senders = 4
fsync = on
EOF
        echo "host replication postgres 127.0.0.1/32 trust" >>"$dir/data/pg_hba.conf"
    fi
    local port
    port=$(cat "$dir/port")
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        # After a crash the server finds its own pid file stale and starts anyway.
        as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
            { tail -n 20 "$dir/server.log" >&2; die "the server did not start"; }
    fi
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

standby() {
    local url=$1 dir=$2 bin
    bin=$(pg_bin) || die "PostgreSQL is not installed"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ $(id -u) -eq 0 ]] && chown neurstore-pg "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_owner "$bin/pg_basebackup" -R -X stream --checkpoint=fast -D "$dir/data" -d "$url" >"$dir/basebackup.log" 2>&1 ||
            { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
        free_port >"$dir/port"
        mkdir -p "$dir/socket"
        [[ $(id -u) -eq 0 ]] && chown neurstore-pg "$dir/socket" "$dir/port"
        cat >>"$dir/data/postgresql.conf" <<EOF
port = $(cat "$dir/port")
unix_socket_directories = '$dir/socket'
hot_standby = on
EOF
    fi
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
            { tail -n 20 "$dir/server.log" >&2; die "the standby did not start"; }
    fi
    echo "postgresql://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

down() {
    local dir=$1 bin
    bin=$(pg_bin) || die "PostgreSQL is not installed"
    [[ -f "$dir/data/PG_VERSION" ]] || die "no cluster in $dir"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# The pgrx release the extension is built with (crates/neurstore-pg pins the same).
PGRX_VERSION=0.18.1

extension() {
    local pg_config=${1:-} root major
    [[ $(id -u) -eq 0 ]] || die "installing the extension writes into PostgreSQL's directories; run this as root"
    root=$(cd "$(dirname "$0")/.." && pwd)
    if [[ -z "$pg_config" ]]; then
        install_server
        pg_config="$(pg_bin)/pg_config"
    fi
    [[ -x "$pg_config" ]] || die "no pg_config at $pg_config"
    major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    [[ "$major" =~ ^[0-9]+$ ]] || die "cannot tell the PostgreSQL version of $pg_config"
    # Debian's server headers for a Debian server; a relocatable server (the pgserver wheel's
    # PostgreSQL 18) carries its own.
    local includes
    includes=$("$pg_config" --includedir-server)
    if [[ ! -f "$includes/postgres.h" ]]; then
        apt_install "postgresql-server-dev-$major"
    fi
    # A server built on an older glibc (the wheel's, manylinux2014) includes <xlocale.h>, which
    # newer glibcs dropped: <locale.h> has what it declared.
    if grep -q '^#define HAVE_XLOCALE_H 1' "$includes/pg_config.h" && [[ ! -f /usr/include/xlocale.h ]]; then
        local shim="$root/target/pgrx/include"
        mkdir -p "$shim"
        echo '#include <locale.h>' >"$shim/xlocale.h"
        export BINDGEN_EXTRA_CLANG_ARGS="-I$shim" CFLAGS="${CFLAGS:-} -I$shim"
    fi
    command -v clang >/dev/null || [[ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null)" ]] ||
        apt_install libclang-dev
    command -v cc >/dev/null || apt_install build-essential
    if [[ "$(cargo pgrx --version 2>/dev/null || true)" != *"$PGRX_VERSION"* ]]; then
        echo "installing cargo-pgrx $PGRX_VERSION (about 10 minutes)" >&2
        cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
    fi
    # A pgrx home of its own per version: `init` with every version given a pg_config works
    # offline and leaves other configurations alone.
    export PGRX_HOME="$root/target/pgrx/pg$major"
    mkdir -p "$PGRX_HOME"
    cargo pgrx init "--pg$major" "$pg_config" >/dev/null
    local started=$SECONDS
    (cd "$root/crates/neurstore-pg" &&
        CARGO_TARGET_DIR="$root/target/pgrx/target" cargo pgrx install --release --pg-config "$pg_config")
    echo "built and installed the neurstore extension for PostgreSQL $major in $((SECONDS - started)) s" >&2
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

case "${1:-}" in
    install) install_server ;;
    extension) [[ $# -le 2 ]] || die "usage: $0 extension [PG_CONFIG]"; extension "${2:-}" ;;
    up) [[ $# -eq 2 ]] || die "usage: $0 up DIR"; up "$2" ;;
    down) [[ $# -eq 2 ]] || die "usage: $0 down DIR"; down "$2" ;;
    standby) [[ $# -eq 3 ]] || die "usage: $0 standby URL DIR"; standby "$2" "$3" ;;
    *) die "usage: $0 install | extension [PG_CONFIG] | up DIR | down DIR | standby URL DIR" ;;
esac
