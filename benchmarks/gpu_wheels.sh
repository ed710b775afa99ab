#!/usr/bin/env bash
# The Python packages homellm needs that the GPU machine's image lacks, as wheels for its
# python (CPython 3.12, manylinux x86_64), into .gpu-wheels/ (ignored by git; name it in the
# device run's `carry`). The list is the closure of homellm's missing dependencies as installed
# here, minus what the image has (/work/.library/device/KINDS.md, "Python packages already
# there"), plus anyio and typing-extensions whose image versions may be too old. Versions are
# the ones installed here, so the GPU run uses what the test suite ran against. transformers
# comes too: the image has 5.17; homellm's serve flags are checked against the release here.
# torch is never carried.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DEST=$ROOT/.gpu-wheels
grep -qx '/.gpu-wheels/' "$ROOT/.git/info/exclude" 2>/dev/null ||
    echo '/.gpu-wheels/' >>"$ROOT/.git/info/exclude"
PINS=$("$PY" - <<'PYEOF'
import importlib.metadata as m
import re

IMAGE = set("""accelerate aiohttp anyio certifi charset-normalizer click filelock fsspec h11
hf-xet httpcore httpx huggingface-hub idna jinja2 markupsafe matplotlib numpy packaging pyyaml
prometheus-client psutil regex rich safetensors scipy setuptools tokenizers torch tqdm typer
typing-extensions urllib3 uvloop zipp nvidia-ml-py""".split())
FORCE = ["anyio", "typing-extensions"]
WANT = ["transformers", "pydantic", "starlette", "fastapi", "uvicorn", "openai", "datasketch",
        "ftfy", "defusedxml", *FORCE]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


pins: dict[str, str] = {}
stack = list(WANT)
while stack:
    name = norm(stack.pop())
    if name in pins:
        continue
    try:
        pins[name] = m.version(name)
    except m.PackageNotFoundError:
        continue                      # not needed on this platform
    for req in m.requires(name) or []:
        if "extra ==" in req or "python_version < '3.1" in req:
            continue
        dep = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
        if norm(dep) not in IMAGE:
            stack.append(dep)
print(" ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
PYEOF
)
rm -rf "$DEST"
mkdir -p "$DEST"
for pin in $PINS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DEST" "$pin" 2>&1 | grep -v "is ignored" || true
done
echo "$PINS" | tr ' ' '\n' >"$DEST/PINS.txt"
du -sh "$DEST"
ls "$DEST" | wc -l
