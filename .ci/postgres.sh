#!/usr/bin/env bash
# Provide a local PostgreSQL for the storage tests and print its SQLAlchemy URL on stdout (and nothing else).
#
# Idempotent: installs the Debian "postgresql" package only when no server is installed, reuses the newest
# installed major version's cluster (creating it if missing), moves it to a free port when its own port is
# taken by something else, starts it, and (re)creates the role and database. Runs as root (CI, fresh machine).
#
#   export PRIORAUTH_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"
#
# Settings (environment, all optional): PRIORAUTH_PG_CLUSTER (main), PRIORAUTH_PG_PORT (5432, the first port
# tried for a new or moved cluster), PRIORAUTH_PG_DB / PRIORAUTH_PG_USER / PRIORAUTH_PG_PASSWORD (priorauth).
# Progress goes to stderr.
set -euo pipefail

CLUSTER="${PRIORAUTH_PG_CLUSTER:-main}"
FIRST_PORT="${PRIORAUTH_PG_PORT:-5432}"
DB_NAME="${PRIORAUTH_PG_DB:-priorauth}"
DB_USER="${PRIORAUTH_PG_USER:-priorauth}"
DB_PASSWORD="${PRIORAUTH_PG_PASSWORD:-priorauth}"

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Names and password go into a URL and into SQL unquoted by the shell: keep them to a safe alphabet.
for value in "$CLUSTER" "$DB_NAME" "$DB_USER" "$DB_PASSWORD"; do
    [[ "$value" =~ ^[A-Za-z0-9_]+$ ]] || die "cluster, database, user and password must match [A-Za-z0-9_]+"
done
[[ "$FIRST_PORT" =~ ^[0-9]+$ ]] || die "PRIORAUTH_PG_PORT must be a number"
[[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and manages clusters)"

newest_version() {
    # Installed server major versions, newest first; empty when no server is installed.
    local dir
    for dir in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "$dir" ]] && basename "$(dirname "$(dirname "$dir")")"
    done | sort -rn | head -n 1
}

install_server() {
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
}

port_in_use() {
    # Something accepts TCP on 127.0.0.1:$1 (bash's /dev/tcp; no ss/netstat needed).
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port_assigned_elsewhere() {
    # Another cluster is configured for port $1 (it may be down now but would clash when started).
    pg_lsclusters --no-header | awk -v port="$1" -v ver="$VERSION" -v name="$CLUSTER" \
        '$3 == port && !($1 == ver && $2 == name) { found = 1 } END { exit !found }'
}

free_port() {
    local port
    for ((port = FIRST_PORT; port < FIRST_PORT + 100; port++)); do
        if ! port_in_use "$port" && ! port_assigned_elsewhere "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free port in ${FIRST_PORT}..$((FIRST_PORT + 99))"
}

cluster_field() {
    # Column $1 of pg_lsclusters for our cluster (3 = port, 4 = status).
    pg_lsclusters --no-header | awk -v ver="$VERSION" -v name="$CLUSTER" -v col="$1" \
        '$1 == ver && $2 == name { print $col }'
}

as_postgres() {
    # cd / so psql does not warn about an unreadable working directory (e.g. /root).
    (cd / && runuser -u postgres -- "$@")
}

VERSION="$(newest_version || true)"
if [[ -z "$VERSION" ]] || ! command -v pg_lsclusters >/dev/null; then
    install_server
    VERSION="$(newest_version || true)"
    [[ -n "$VERSION" ]] || die "PostgreSQL server still missing after apt-get install"
fi
log "server version $VERSION, cluster $CLUSTER"

# The socket directory lives on tmpfs on many systems and may be gone after a reboot.
install -d -o postgres -g postgres -m 2775 /var/run/postgresql

if [[ -z "$(cluster_field 3)" ]]; then
    port="$(free_port)"
    log "creating cluster $VERSION/$CLUSTER on port $port"
    pg_createcluster --port="$port" "$VERSION" "$CLUSTER" >&2
fi

if [[ "$(cluster_field 4)" != online* ]]; then
    port="$(cluster_field 3)"
    if port_in_use "$port" || port_assigned_elsewhere "$port"; then
        port="$(free_port)"
        log "port $(cluster_field 3) is taken; moving cluster $VERSION/$CLUSTER to port $port"
        pg_conftool "$VERSION" "$CLUSTER" set port "$port"
    fi
    log "starting cluster $VERSION/$CLUSTER"
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

PORT="$(cluster_field 3)"
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "cluster $VERSION/$CLUSTER does not accept TCP connections on 127.0.0.1:$PORT"

log "ensuring role $DB_USER and database $DB_NAME"
as_postgres psql -X -q -p "$PORT" -d postgres -v ON_ERROR_STOP=1 \
    -v user="$DB_USER" -v password="$DB_PASSWORD" -v db="$DB_NAME" >&2 <<'SQL'
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user')\gexec
ALTER ROLE :"user" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL

# Prove the URL works over TCP with the password before handing it out.
PGPASSWORD="$DB_PASSWORD" psql -X -q -h 127.0.0.1 -p "$PORT" -U "$DB_USER" -d "$DB_NAME" -v ON_ERROR_STOP=1 \
    -c 'SELECT 1' >/dev/null || die "cannot log in as $DB_USER over TCP (check pg_hba.conf for 127.0.0.1)"

echo "postgresql+psycopg://${DB_USER}:${DB_PASSWORD}@127.0.0.1:${PORT}/${DB_NAME}"
