#!/usr/bin/env bash
# Download the wheels the GPU image lacks (requirements.txt beside this file) into benchmarks/gpu/wheels/
# (git-ignored), for run.sh to install there without network. Run on a machine with PyPI access:
#   bash benchmarks/gpu/fetch_wheels.sh
# Versions are those of this checkout's .venv (the tested set: `make install`), else constraints.txt's; wheels
# for CPython 3.12 on x86_64 Linux (the image's).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
mkdir -p "$here/wheels"
cp "$repo/constraints.txt" "$here/wheels/.pins"
"$python" -m pip freeze 2>/dev/null | grep '==' >> "$here/wheels/.pins" || true
# DeepSpeed is published as source only: built here into a pure-Python wheel (its ops are JIT-built, and
# the project's optimizer needs none of them); everything else comes as the image's binary wheels.
source_only="deepspeed"
grep -v '^#' "$here/requirements.txt" | grep -v '^$' | grep -vx "$source_only" > "$here/wheels/.binary"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$here/wheels" \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    --constraint "$here/wheels/.pins" -r "$here/wheels/.binary"
DS_BUILD_OPS=0 "$python" -m pip wheel --quiet --no-deps --wheel-dir "$here/wheels" \
    --constraint "$here/wheels/.pins" $source_only
du -sh "$here/wheels"
echo "carry it: run(command=\"bash benchmarks/gpu/run.sh\", carry=[\"benchmarks/gpu/wheels\"], timeout_s=600)"
