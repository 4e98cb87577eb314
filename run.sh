#!/usr/bin/env bash
# One entry point for a fresh clone:  ./run.sh train | test | bench | bench-service | bench-persist | bench-abuse | engine-demo
# Each command first sets up whatever is missing: libpmemobj (Debian's
# libpmemobj-dev, plus pmdk-tools for the offline pool checks), the npm
# dependencies, the native build and the TypeScript build.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup() {
  local pkgs=()
  pkg-config --exists libpmemobj libpmem 2>/dev/null || pkgs+=(libpmemobj-dev pkg-config)
  command -v pmempool >/dev/null 2>&1 || pkgs+=(pmdk-tools)
  command -v g++ >/dev/null 2>&1 || pkgs+=(g++ make python3)
  # The access tests make their certificates with the openssl CLI.
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  # The test command checks the C++ format (npm run lint).
  command -v clang-format >/dev/null 2>&1 || pkgs+=(clang-format)
  # The Python client test drives the service with Debian's grpcio.
  /usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null || pkgs+=(python3-grpcio python3-grpc-tools)
  # The Kubernetes manifest test renders deploy/k8s with kubectl's built-in kustomize.
  command -v kubectl >/dev/null 2>&1 || pkgs+=(kubernetes-client)
  if [ "${PMEMPS_NEED_REDIS:-0}" = 1 ]; then command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server); fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "run.sh: installing ${pkgs[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error   # also builds the addon (install script)
  elif [ ! -f build/Release/pmemps_native.node ] || [ -n "$(find native/src binding.gyp -newer build/Release/pmemps_native.node 2>/dev/null | head -1)" ]; then
    npm run --silent install
  fi
  npm run --silent build
}

cmd="${1:-train}"
shift || true
case "$cmd" in
  setup) setup ;;
  train|demo) setup; exec node dist/examples/train-ctr.js "$@" ;;
  engine-demo) setup; exec node dist/server/demo.js "$@" ;;
  test) setup; exec npm test --silent ;;
  bench) setup; exec node dist/bench/engine.js "$@" ;;
  bench-service) PMEMPS_NEED_REDIS=1 setup; exec node dist/bench/service.js "$@" ;;
  bench-persist) setup; exec node dist/bench/persist-overhead.js "$@" ;;
  bench-abuse) setup; exec node dist/bench/abuse-slow-readers.js "$@" ;;
  *) echo "usage: ./run.sh train|test|bench|bench-service|bench-persist|bench-abuse|engine-demo|setup" >&2; exit 2 ;;
esac
