#!/usr/bin/env bash
# Start Debian's PostgreSQL on loopback and make a database for the multi-worker search tests.
# Run as root (CI does). Prints the URL to export as TENSORFOLD_TEST_POSTGRES.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_lsclusters >/dev/null; then
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
fi
read -r ver name port status _ < <(pg_lsclusters --no-header | head -1) || true
if [ -z "${ver:-}" ]; then
    ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
    pg_createcluster "$ver" main >&2
    read -r ver name port status _ < <(pg_lsclusters --no-header | head -1)
fi
if [ "$status" != "online" ]; then
    pg_ctlcluster "$ver" "$name" start -- -o "-c listen_addresses=127.0.0.1" >/dev/null
fi
runuser -u postgres -- psql -q -p "$port" -tc "SELECT 1 FROM pg_roles WHERE rolname='tensorfold'" | grep -q 1 \
    || runuser -u postgres -- psql -q -p "$port" -c "CREATE ROLE tensorfold LOGIN PASSWORD 'tensorfold'"
runuser -u postgres -- psql -q -p "$port" -tc "SELECT 1 FROM pg_database WHERE datname='tensorfold_test'" | grep -q 1 \
    || runuser -u postgres -- createdb -p "$port" -O tensorfold tensorfold_test
echo "postgresql://tensorfold:tensorfold@127.0.0.1:$port/tensorfold_test"
