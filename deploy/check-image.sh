#!/bin/sh
# Build the image and prove it runs: start a container from it and wait for Docker's own
# HEALTHCHECK to report it healthy, then ask /healthz through the published port. For CI, or
# any machine with a Docker daemon (tests/test_deploy.py runs it where `docker info` works).
#
#   deploy/check-image.sh [TAG]        (default callback-relay:check)
set -eu

tag=${1:-callback-relay:check}
root=$(cd "$(dirname "$0")/.." && pwd)
name="callback-relay-check-$$"

docker build --quiet --tag "$tag" "$root" >/dev/null
trap 'docker rm --force "$name" >/dev/null 2>&1 || true' EXIT
docker run --detach --name "$name" --publish 127.0.0.1::8000 \
    --env RELAY_ADMIN_TOKEN=check-image-admin --env RELAY_SECRET_KEY=check-image-key \
    "$tag" >/dev/null

# The HEALTHCHECK's start period is 15 s, its interval 10 s: healthy within a minute or broken.
status=starting
for _ in $(seq 60); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$name")
    [ "$status" = starting ] || break
    [ "$(docker inspect --format '{{.State.Running}}' "$name")" = true ] || break
    sleep 1
done
if [ "$status" != healthy ]; then
    echo "image $tag: health $status" >&2
    docker logs "$name" >&2 || true
    exit 1
fi

port=$(docker port "$name" 8000/tcp | head -n 1 | sed 's/.*://')
python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=5).status != 200)"
echo "image $tag: built, healthy, /healthz answers 200"
