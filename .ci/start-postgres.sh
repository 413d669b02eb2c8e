#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback; print its URL. Exit 1 if not possible.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || exit 1
[ -x "$bin/initdb" ] || exit 1
# a free loopback port (another server may already hold the default one)
port=${PGPORT_CI:-$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
dir=$(mktemp -d /tmp/ac-pg.XXXXXX)
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || exit 1
  chown postgres "$dir"
  as() { su postgres -s /bin/sh -c "$*"; }
else
  as() { sh -c "$*"; }
fi
as "$bin/initdb -D $dir/data -A trust -U postgres" >/dev/null 2>&1 || exit 1
as "$bin/pg_ctl -D $dir/data -l $dir/log -o \"-h 127.0.0.1 -p $port -k $dir\" -w start" >/dev/null 2>&1 || exit 1
echo "postgresql://postgres@127.0.0.1:$port/postgres"
