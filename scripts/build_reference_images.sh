#!/usr/bin/env bash
# Build the reference images, the kinds people actually ship, from the reference
# stores, each with exactly the nixlayer command line a user would type:
#
#   postgrest.tar                  a static server from scratch, like PostgREST's
#   simple-python-api.tar          a FastAPI + uvicorn app on a Python environment
#   simple-python-api-debug.tar    the same, with bash and coreutils in /bin
#
# Usage: scripts/build_reference_images.sh [OUT_DIR]   (default: fixtures/reference)
#
# Generates the stores in OUT_DIR/store and their closures in OUT_DIR (with the
# default, the committed closures are rewritten, identically unless the generator
# changed), writes the images to OUT_DIR and prints their paths, one a line.
# PYTHON names the interpreter for the generator (default: python).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${1:-$repo/fixtures/reference}"
out=$(cd "${1:-$repo/fixtures/reference}" && pwd)
python=${PYTHON:-python}

# The store path of a name in the reference stores, as `nix-build` would print it.
store_path() {
  "$python" "$repo/scripts/make_reference_stores.py" --path "$1"
}

"$python" "$repo/scripts/make_reference_stores.py" "$out/store" --closures-out "$out"
postgrest=$(store_path postgrest-12.0.2)
python_env=$(store_path python3-3.11.9-env)
bash=$(store_path bash-5.2p26)
coreutils=$(store_path coreutils-9.4)

# The host files (postgrest.conf, app/) are named as a user in the checkout types them.
cd "$repo"

nixlayer from-closure "$out/postgrest-closure.json" --store-root "$out/store/postgrest" \
  --contents "$postgrest" \
  --add fixtures/reference/postgrest.conf:/etc/postgrest.conf \
  --cmd '["/bin/postgrest"]' --expose 3000 --user 1000 \
  --name postgrest:latest -o "$out/postgrest.tar"
echo "$out/postgrest.tar"

nixlayer from-closure "$out/python-app-closure.json" --store-root "$out/store/python-app" \
  --contents "$python_env" --link-paths /bin \
  --add fixtures/reference/app:/app \
  --cmd '["uvicorn","main:app"]' --env UVICORN_HOST=0.0.0.0 --env UVICORN_PORT=5000 \
  --expose 5000 --workdir /app --volume /app \
  --name simple-python-api:latest -o "$out/simple-python-api.tar"
echo "$out/simple-python-api.tar"

nixlayer from-closure "$out/python-app-debug-closure.json" --store-root "$out/store/python-app" \
  --contents "$python_env" --contents "$bash" --contents "$coreutils" --link-paths /bin \
  --add fixtures/reference/app:/app \
  --cmd '["uvicorn","main:app"]' --env UVICORN_HOST=0.0.0.0 --env UVICORN_PORT=5000 \
  --expose 5000 --workdir /app --volume /app \
  --name simple-python-api-debug:latest -o "$out/simple-python-api-debug.tar"
echo "$out/simple-python-api-debug.tar"
