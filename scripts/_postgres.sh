# Sourced by test.sh: a throwaway PostgreSQL server for the suite, the way test.sh installs
# chromium. Debian's postgresql package (installed with apt when run as root), a cluster made by
# initdb in a temporary folder, a server on 127.0.0.1 at a free port with trust authentication,
# stopped (and its folder removed) when the tests end. The database tests read its URL from
# INSPECT_TEST_DATABASE_URL and skip, saying why, where there is none.
_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(_pg_bin)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[inspect] installing postgresql for the database tests"
  (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) || echo "[inspect] postgresql not installed: the PostgreSQL tests will skip"
fi
PG_BIN="$(_pg_bin)"
if [ -n "$PG_BIN" ] && [ -z "${INSPECT_TEST_DATABASE_URL:-}" ]; then
  PG_DIR="$(mktemp -d /tmp/inspect-pg.XXXXXX)"
  PG_PORT="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # initdb and the server refuse to run as root: they run as the package's postgres user then.
  if [ "$(id -u)" = 0 ]; then _as_pg=(runuser -u postgres --); chown postgres "$PG_DIR"; else _as_pg=(); fi
  if "${_as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
    && "${_as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200" start >/dev/null; then
    export INSPECT_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "[inspect] PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') for the tests at 127.0.0.1:$PG_PORT"
    _stop_postgres() { "${_as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_DIR"; }
  else
    echo "[inspect] PostgreSQL could not be started (see below): the PostgreSQL tests will skip"
    tail -3 "$PG_DIR"/*.log 2>/dev/null
    rm -rf "$PG_DIR"
  fi
fi
