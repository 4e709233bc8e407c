#!/usr/bin/env bash
# Create .venv and install rocmforge into it. `--test` adds the test tools and the llama.cpp oracle.
#
# torch comes first so that the project's plain `torch` requirement is already met: on a GPU machine
# install the ROCm or CUDA build beforehand (see README) and it is kept; otherwise TORCH_SPEC picks one
# (default: the CPU build this project's CI uses).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip >/dev/null

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" install "${TORCH_SPEC:-torch==2.13.0}"
fi

if [[ "${1:-}" == "--test" ]]; then
    # llama-cpp-python compiles llama.cpp (about 5 minutes on 2 cores); keep the built wheel for next time.
    WHEELS="${ROCMFORGE_WHEEL_CACHE:-$HOME/.cache/rocmforge-wheels}"
    mkdir -p "$WHEELS"
    if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "building llama-cpp-python (the test oracle) once into $WHEELS ..." >&2
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${PIP[@]}" wheel --no-deps -w "$WHEELS" "llama-cpp-python>=0.3.8"
    fi
    "${PIP[@]}" install --find-links "$WHEELS" -e ".[test]"
    # The kernel tests run Triton on the CPU through its interpreter. GPU builds of torch bring their own
    # Triton (pytorch-triton-rocm on ROCm); install PyPI's only where none is importable, never over theirs.
    if ! .venv/bin/python -c "import triton" 2>/dev/null; then
        "${PIP[@]}" install "triton>=3.0"
    fi
else
    "${PIP[@]}" install -e .
fi
