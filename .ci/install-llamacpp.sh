#!/usr/bin/env bash
# llama-cpp-python's OpenAI server and llama.cpp's GGUF converter, into the active Python.
#
# PyPI has no llama-cpp-python wheel for this platform, only a 77 MB sdist that compiles
# llama.cpp (about 5 min on 2 cores). Done once; everything lands in a cache:
#   $HOMELLM_HOME/llamacpp (default ~/.cache/homellm/llamacpp)
#     llama_cpp_python-VERSION.tar.gz   the sdist: the server's source and the converter's
#     wheels/<python>-<arch>-<build>/   the wheel built from it
# so a later run (a fresh venv included) installs in seconds with no compiler and no download
# of llama-cpp-python. The converter (convert_hf_to_gguf.py + conversion/ + gguf-py, vendored
# in the same sdist at the llama.cpp commit the server runs) is unpacked into
# <sys.prefix>/share/homellm/llama.cpp, where homellm.engines.gguf.find_converter() looks.
# Idempotent: with both already in place it only checks, in a second or two.
# Settings: LLAMACPP_PYTHON_VERSION, PYTHON, CMAKE_ARGS (for example -DGGML_CUDA=on),
# CMAKE_BUILD_PARALLEL_LEVEL (default: every core).
set -euo pipefail

VERSION="${LLAMACPP_PYTHON_VERSION:-0.3.36}"  # the version documented in engines/llamacpp.py
PY="${PYTHON:-python}"
t_all=$(date +%s.%N)

elapsed() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
say() { echo "[install-llamacpp] $*"; }

HOME_DIR=$("$PY" -c 'from homellm.fsutil import homellm_home; print(homellm_home())' 2>/dev/null \
           || echo "${HOMELLM_HOME:-$HOME/.cache/homellm}")
CACHE="$HOME_DIR/llamacpp"
SDIST_NAME="llama_cpp_python-$VERSION.tar.gz"
SDIST="$CACHE/$SDIST_NAME"
BUILD_KEY=$(printf '%s' "${CMAKE_ARGS:-}" | sha256sum | cut -c1-8)
[ -z "${CMAKE_ARGS:-}" ] && BUILD_KEY=cpu
WHEELS="$CACHE/wheels/$(uname -m)-$BUILD_KEY"  # the wheel is py3-none: any CPython 3
mkdir -p "$CACHE" "$WHEELS"

versions() {
    "$PY" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
out = []
for name in ("torch", "transformers"):
    try:
        out.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        out.append(f"{name} -")
print(", ".join(out))
EOF
}

server_ok() {
    "$PY" - "$VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("llama_cpp_python") == sys.argv[1]
import fastapi, pydantic_settings, sentencepiece, sse_starlette, starlette_context, uvicorn  # noqa
EOF
}

fetch_sdist() {
    [ -f "$SDIST" ] && return 0
    local t tmp
    t=$(date +%s.%N)
    tmp=$(mktemp -d "$CACHE/.sdist.XXXXXX")
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp"
    mv "$tmp/$SDIST_NAME" "$SDIST"
    rm -rf "$tmp"
    say "downloaded $SDIST_NAME in $(elapsed "$t") s"
}

before=$(versions)

# 1. the server
if server_ok; then
    say "llama-cpp-python $VERSION [server] already installed"
else
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
        fetch_sdist
        if ! command -v c++ >/dev/null || ! command -v cc >/dev/null; then
            say "no C/C++ compiler: installing Debian's g++"
            apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ >/dev/null
        fi
        t=$(date +%s.%N)
        say "building llama-cpp-python $VERSION from source (once; about 5 min on 2 cores)"
        tmp=$(mktemp -d "$WHEELS/.build.XXXXXX")
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            "$PY" -m pip wheel -q --no-deps "$SDIST" -w "$tmp"
        mv "$tmp"/llama_cpp_python-"$VERSION"-*.whl "$WHEELS"/
        rm -rf "$tmp"
        wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
        say "built $(basename "$wheel") in $(elapsed "$t") s"
    fi
    t=$(date +%s.%N)
    # sentencepiece: the converter imports it for every Qwen2/3 model, even BPE ones
    "$PY" -m pip install -q "$wheel[server]" sentencepiece
    say "installed $(basename "$wheel") [server] in $(elapsed "$t") s"
fi

# 2. the converter, from the same sdist
installed=$("$PY" -m homellm.engines.gguf where 2>/dev/null || true)
if [ -n "$installed" ] && [ "$(cat "$(dirname "$installed")/homellm-source.txt" 2>/dev/null)" = "$SDIST_NAME" ]; then
    say "GGUF converter from $SDIST_NAME already at $installed"
else
    fetch_sdist
    t=$(date +%s.%N)
    installed=$("$PY" -m homellm.engines.gguf install-converter "$SDIST")
    say "unpacked the GGUF converter to $installed in $(elapsed "$t") s"
fi

after=$(versions)
if [ "$before" != "$after" ]; then
    say "WARNING: this changed $before -> $after"
fi
say "done in $(elapsed "$t_all") s ($after)"
