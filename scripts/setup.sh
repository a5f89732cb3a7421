#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, and nothing that is already there.
# Idempotent: `make test` runs it every time; a second run takes a second.
#   - Debian packages: prometheus (+ promtool), nats-server, haproxy (the cluster tests and
#     make cluster), chromium (headless browser tests), openssl (test certificates and keys,
#     make run-tls), curl (`curl -N` on /sse in the example tests, and the TLS test's second
#     verifying client), coreutils' sha256sum (token digests in the security test)
#   - Python: websockets (the example clients and the end-to-end tests)
#   - Node: playwright-core for the browser test (uses the system Chromium, never downloads one),
#     @asyncapi/parser and ajv for make test-asyncapi
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  echo "setup: installing Python package websockets"
  python3 -m pip install --quiet --disable-pip-version-check 'websockets>=14'
fi

if [ -f gateway/tests/browser/package.json ] && [ ! -d gateway/tests/browser/node_modules/playwright-core ]; then
  echo "setup: installing playwright-core (npm) for the browser test"
  (cd gateway/tests/browser && npm install --no-audit --no-fund --silent)
fi
if [ -f examples/node/package.json ] && [ ! -d examples/node/node_modules/ws ]; then
  echo "setup: installing ws (npm) for the Node example client"
  (cd examples/node && npm install --no-audit --no-fund --silent)
fi
if [ -f docs/asyncapi-check/package.json ] && [ ! -d docs/asyncapi-check/node_modules/@asyncapi/parser ]; then
  echo "setup: installing @asyncapi/parser and ajv (npm) for the AsyncAPI check"
  (cd docs/asyncapi-check && npm install --no-audit --no-fund --silent)
fi
echo "setup: ok (prometheus, nats-server, haproxy, chromium, openssl, curl, python websockets, playwright-core, ws, @asyncapi/parser)"
