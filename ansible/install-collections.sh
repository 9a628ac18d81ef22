#!/bin/sh
# Install the collections named in requirements.yml into ansible/collections
# from the `ansible` community package on PyPI (pip is the only network client
# needed; Ansible Galaxy is not used). Idempotent: does nothing when the
# collections are already there.
#
# usage: install-collections.sh PIP  (e.g. .venv/bin/pip)
set -eu
pip=${1:?usage: install-collections.sh PIP}
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/collections/ansible_collections"
# The `ansible` 9.x release bundles collections tested with ansible-core 2.16.
spec='ansible>=9,<10'
wanted='community/general ansible/posix'

missing=''
for c in $wanted; do
    [ -f "$dest/$c/MANIFEST.json" ] || missing="$missing $c"
done
[ -z "$missing" ] && exit 0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$pip" download --quiet --no-deps --dest "$tmp" "$spec"
wheel=$(ls "$tmp"/ansible-*.whl)
mkdir -p "$dest"
for c in $missing; do
    rm -rf "${dest:?}/$c"
    python3 - "$wheel" "$c" "$dest" <<'PY'
import sys
import zipfile

wheel, coll, dest = sys.argv[1:]
prefix = f"ansible_collections/{coll}/"
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith(prefix)]
    if not members:
        sys.exit(f"install-collections: {coll} not found in {wheel}")
    for m in members:
        z.extract(m, dest.rsplit("/ansible_collections", 1)[0])
PY
    echo "installed $c ($(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$dest/$c/MANIFEST.json" | head -1))"
done
