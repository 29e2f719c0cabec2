#!/bin/sh
# The compose stack's secrets, made on the first `docker compose up` inside
# the `secrets` volume (mounted at /run/pathflow-secrets), so none is ever in
# the repository. Files already there are kept: run again, it changes nothing
# but tokens.toml, which it rewrites from the tokens beside it.
#
#   pseudonymisation.key  64 hex digits (32 random bytes): ingest's HMAC key
#   analyst.token         the analyst's bearer token / Postgres password
#   grafana.token         Grafana's token (its PostgreSQL data source password)
#   tokens.toml           serve's tokens_file: their sha256 hashes and roles
#
# It runs as root (the `secrets` service sets user 0) only to give each file
# to the one user that reads it: pathflow (uid 10001, the image's user) for
# the key, the analyst token and tokens.toml; grafana (uid 472, the Grafana
# image's user) for grafana.token.
set -eu

dir=/run/pathflow-secrets
umask 077

# N random bytes as 2N lowercase hex digits, no newline.
random_hex() {
    head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# Writes stdin to $1 through a temporary file, so a reader never sees half of it.
put() {
    cat > "$1.tmp"
    mv "$1.tmp" "$1"
}

if [ ! -s "$dir/pseudonymisation.key" ]; then
    random_hex 32 | put "$dir/pseudonymisation.key"
    echo "secrets: made a new pseudonymisation key"
fi
for who in analyst grafana; do
    if [ ! -s "$dir/$who.token" ]; then
        random_hex 24 | put "$dir/$who.token"
        echo "secrets: made a new $who token"
    fi
done

# `pathflow serve hash-token` reads one token on stdin and prints sha256:<hex>.
analyst_hash=$(pathflow serve hash-token < "$dir/analyst.token")
grafana_hash=$(pathflow serve hash-token < "$dir/grafana.token")
put "$dir/tokens.toml" <<TOML
# Written by deploy/compose/init-secrets.sh: the hashes of the tokens beside
# this file (never the tokens). Format: serve's tokens_file, see
# deploy/serve.example.toml.
[[tokens]]
name = "compose-analyst"
hash = "$analyst_hash"
role = "analyst"

[[tokens]]
name = "grafana"
hash = "$grafana_hash"
role = "analyst"
TOML

chown pathflow:pathflow "$dir/pseudonymisation.key" "$dir/analyst.token" "$dir/tokens.toml"
chmod 0400 "$dir/pseudonymisation.key" "$dir/analyst.token"
chmod 0440 "$dir/tokens.toml"
chown 472:0 "$dir/grafana.token"
chmod 0400 "$dir/grafana.token"
# Grafana (another user) must reach its own file; the names are no secret.
chmod 0755 "$dir"

echo "secrets: ready in the secrets volume ($dir)"
echo "secrets: the analyst token (HTTP bearer token, Postgres password) is shown by"
echo "secrets:   docker compose -f deploy/docker-compose.yml exec serve cat $dir/analyst.token"
