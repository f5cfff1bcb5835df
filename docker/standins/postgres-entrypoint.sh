#!/bin/bash
# Entrypoint of the stand-in for `postgres:17-bookworm` that scripts/stack.sh builds from Debian's
# postgresql-17 where no container registry can be reached (CI). Written for hnr, not taken from the
# upstream image; it honours the part of that image's interface that docker/compose.yaml uses:
#   POSTGRES_PASSWORD (required), POSTGRES_USER (default postgres), POSTGRES_DB (default POSTGRES_USER),
#   PGDATA (default /var/lib/postgresql/data), and the scripts in /docker-entrypoint-initdb.d (*.sh run,
#   or sourced when not executable; *.sql fed to psql), run once, on an empty data directory.
# Started as root, it prepares the directories and re-executes itself as the `postgres` user.
set -euo pipefail

PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
export PGDATA POSTGRES_USER POSTGRES_DB

if [[ ${1:-postgres} != postgres ]]; then
    exec "$@"
fi

if ((EUID == 0)); then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
    echo "stand-in entrypoint: initialising $PGDATA for user $POSTGRES_USER" >&2
    # The password reaches initdb through a file descriptor, never the command line.
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

    # A server on the Unix socket only, for the init scripts.
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -k /run/postgresql" --wait --silent start
    export PGHOST=/run/postgresql PGUSER=$POSTGRES_USER
    if [[ $POSTGRES_DB != postgres ]]; then
        psql -v ON_ERROR_STOP=1 --dbname=postgres --quiet -v db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        [[ -e $script ]] || continue
        echo "stand-in entrypoint: running $script" >&2
        case $script in
            *.sh)
                if [[ -x $script ]]; then
                    "$script"
                else
                    # shellcheck disable=SC1090
                    . "$script"
                fi
                ;;
            *.sql) psql -v ON_ERROR_STOP=1 --dbname="$POSTGRES_DB" --quiet --file="$script" ;;
            *) echo "stand-in entrypoint: ignoring $script" >&2 ;;
        esac
    done
    unset PGHOST PGUSER
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -k /run/postgresql
