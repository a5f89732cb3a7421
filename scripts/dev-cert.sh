#!/usr/bin/env bash
# Makes a self-signed certificate for local TLS (`make run-tls`): 127.0.0.1, ::1 and localhost,
# an EC P-256 key, valid 30 days. Writes DIR/cert.pem and DIR/key.pem (mode 600), and keeps an
# existing pair that is still valid for a day. For local use only: browsers will warn, since no
# authority signed it; `curl --cacert DIR/cert.pem https://127.0.0.1:8080/healthz` trusts it.
#   usage: scripts/dev-cert.sh [DIR]    (default .run/tls, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.run/tls}"
command -v openssl >/dev/null 2>&1 || { echo "dev-cert: openssl is missing: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$dir"
cert="$dir/cert.pem"
key="$dir/key.pem"
if [ -s "$cert" ] && [ -s "$key" ] && openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null 2>&1; then
  echo "dev-cert: keeping $cert (valid for more than a day)"
  exit 0
fi
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$key" -out "$cert" 2>/dev/null
chmod 600 "$key"
echo "dev-cert: wrote $cert and $key (self-signed, 30 days, localhost 127.0.0.1 ::1)"
