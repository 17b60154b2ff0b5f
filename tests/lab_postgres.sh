#!/bin/sh
# Stand-in for the postgres image's entrypoint where containers are local processes (the k8s-lab
# runs each container's command on the host and ignores images): initdb into a fresh directory and
# run the host's PostgreSQL server, as user postgres, with the same POSTGRES_* variables (the
# password from POSTGRES_PASSWORD_FILE, as the image reads it).
set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
DATA=$(mktemp -d /tmp/sg-pgdata.XXXXXX)
AS=""
if [ "$(id -u)" = 0 ]; then
  chown postgres "$DATA"
  AS="runuser -u postgres --"
fi
trap 'rm -rf "$DATA"' EXIT
PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
printf '%s' "$PASSWORD" > "$DATA/pw"
[ -z "$AS" ] || chown postgres "$DATA/pw"
$AS "$BIN/initdb" -D "$DATA/db" -U "$POSTGRES_USER" --pwfile="$DATA/pw" --auth=scram-sha-256 >/dev/null
rm -f "$DATA/pw"
$AS "$BIN/postgres" -D "$DATA/db" -p 5432 -k "$DATA" -c listen_addresses=127.0.0.1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER; rm -rf "$DATA"' TERM INT EXIT
for _ in $(seq 100); do
  PGPASSWORD=$PASSWORD "$BIN/psql" -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER" -d postgres -qtAc "select 1" \
    >/dev/null 2>&1 && break
  sleep 0.3
done
PGPASSWORD=$PASSWORD "$BIN/createdb" -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER" "$POSTGRES_DB"
echo "lab postgres ready (pid $SERVER, data $DATA)"
wait $SERVER
