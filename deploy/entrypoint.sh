#!/bin/sh
# Entrypoint of the pmemps image: runs one shard (pserver). Arguments are
# passed to pserver as flags; every flag can also be given as PMEMPS_<OPTION>
# in the environment (PMEMPS_CACHE_MB=4096, PMEMPS_POOL_SIZE=64G, ...).
#
# Secrets are files, not environment: mount them under $PMEMPS_SECRETS_DIR
# (default /run/secrets/pmemps, what a Kubernetes secret volume or a compose
# secret with target pmemps/<file> gives) and each one present is handed to
# pserver by path, unless its variable is already set:
#   tls.crt -> PMEMPS_TLS_CERT     tls.key -> PMEMPS_TLS_KEY
#   ca.crt  -> PMEMPS_TLS_CLIENT_CA (clients must present a cert it signed)
#   tokens  -> PMEMPS_AUTH_TOKENS
# The names are those of a Kubernetes TLS secret (kubernetes.io/tls), so one
# secret mounted as-is works.
#
# pserver refuses a non-loopback bind (0.0.0.0 here) without TLS or tokens
# unless PMEMPS_INSECURE=1: set it only on a network you trust.
set -eu

secrets=${PMEMPS_SECRETS_DIR:-/run/secrets/pmemps}

from_secret() {
  # $1: variable, $2: file name under $secrets
  eval "current=\${$1:-}"
  if [ -z "$current" ] && [ -f "$secrets/$2" ]; then
    export "$1=$secrets/$2"
  fi
}
from_secret PMEMPS_TLS_CERT tls.crt
from_secret PMEMPS_TLS_KEY tls.key
from_secret PMEMPS_TLS_CLIENT_CA ca.crt
from_secret PMEMPS_AUTH_TOKENS tokens

# Flags (or nothing) start a shard; anything else is run as a command, e.g.
# the training example in deploy/compose.yaml.
case "${1:-}" in
  '' | -*)
    # exec: the server is PID 1 and receives docker stop's SIGTERM itself,
    # which starts its drain and clean close.
    exec node /opt/pmemps/dist/server/pserver.js "$@"
    ;;
  *) exec "$@" ;;
esac
