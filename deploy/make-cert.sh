#!/bin/sh
# A self-signed certificate for the proxy, for local use only (providers such as Evolink call
# only https:// URLs, and will not accept a self-signed one: in production put the real
# certificate's full chain and key in the same two files, see deploy/README.md).
#
#   deploy/make-cert.sh [DIR] [NAME...]
#
# Writes DIR/fullchain.pem and DIR/privkey.pem (DIR defaults to deploy/certs), valid 30 days
# for the NAMEs (default: localhost and 127.0.0.1). An existing pair is replaced.
set -eu

dir=${1:-$(dirname "$0")/certs}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- localhost 127.0.0.1

san=""
for name in "$@"; do
    case $name in
        *[!0-9.]*) entry="DNS:$name" ;;  # anything but digits and dots is a host name
        *) entry="IP:$name" ;;
    esac
    san="${san:+$san,}$entry"
done

mkdir -p "$dir"
umask 077  # the private key is readable by its owner only
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=$1" -addext "subjectAltName=$san" \
    -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
chmod 644 "$dir/fullchain.pem"
echo "wrote $dir/fullchain.pem and $dir/privkey.pem for $san"
