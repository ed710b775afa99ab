"""Hugging Face folder → GGUF, with llama.cpp's own converter (``convert_hf_to_gguf.py``).

pip does not install the converter: no PyPI package from ggml-org ships it (``gguf`` has only
the gguf-py library). It comes from the llama-cpp-python sdist, which vendors llama.cpp at the
commit the installed server runs, so the converter, its ``conversion/`` package and ``gguf-py``
always match the loader. ``.ci/install-llamacpp.sh`` downloads that sdist once (it is also what
pip builds the server from) and runs ``python -m homellm.engines.gguf install-converter SDIST``,
which unpacks the three into ``<sys.prefix>/share/homellm/llama.cpp``, beside the server.

Usage: ``python -m homellm.engines.gguf convert MODEL_DIR OUT.gguf [--outtype f32]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from homellm.errors import EngineError, HomellmError
from homellm.fsutil import atomic_write_text, fsync_dir, homellm_home

CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
CONVERTER_ENV = "HOMELLM_GGUF_CONVERTER"  # an explicit path to convert_hf_to_gguf.py
VERSION_STAMP = "homellm-source.txt"  # which sdist the installed converter came from
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0", "auto")
# what to unpack from <sdist>/vendor/llama.cpp/: the script, its model classes, its gguf library
_VENDORED = (CONVERTER_SCRIPT, "conversion/", "gguf-py/", "LICENSE")

# Qwen2's split regex as its tokenizer.json spells it; llama.cpp's "qwen2" pre-tokenizer is
# this regex (rewritten without (?i:) for its own engine) followed by byte-level mapping.
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Runs the converter in a child process with the pre-tokenizer fix. llama.cpp names a BPE
# pre-tokenizer by hashing how the tokenizer splits a test string; a self-trained tokenizer's
# hash is in no list, so the converter refuses it. Only then is the name that
# fallback_pre_tokenizer() read from tokenizer.json used (argv[3], "" for none): any other
# unknown tokenizer still fails, since a wrong pre-tokenizer would silently garble prompts.
_WRAPPER = r"""
import importlib.util, logging, sys
from pathlib import Path

converter, fallback = Path(sys.argv[1]), sys.argv[3]
sys.path.insert(0, str(converter.parent))
spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", converter)
module = importlib.util.module_from_spec(spec)
sys.modules["convert_hf_to_gguf"] = module
spec.loader.exec_module(module)

try:
    import conversion.base as where  # llama.cpp after the split into conversion/
except ImportError:
    where = module  # older single-file converter
cls = getattr(where, "TextModel", None) or getattr(where, "Model")
original = cls.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        if not fallback:
            raise
        logging.getLogger("homellm").warning(
            "unlisted BPE pre-tokenizer; tokenizer.json matches llama.cpp's %r", fallback)
        return fallback

cls.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [str(converter), sys.argv[2], *sys.argv[4:]]
module.main()
"""


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a ``tokenizers`` pre_tokenizer (tokenizer.json), or None.

    * ByteLevel with GPT-2's regex and no prefix space: "gpt-2" ("gpt2" converts but the
      loader rejects it).
    * Sequence[Split(Qwen2's regex, isolated), ByteLevel(no regex, no prefix space)], what
      ``homellm tokenizer train`` and Qwen2 write: "qwen2". The NFC normaliser in front of it
      is not carried over (llama.cpp has none), so the ids match ours for NFC text only.
    """
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel":
        if pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
            return "gpt-2"
        return None
    steps = pre.get("pretokenizers")
    if pre.get("type") != "Sequence" or not isinstance(steps, list) or len(steps) != 2:
        return None
    split, byte_level = steps
    if not (isinstance(split, dict) and isinstance(byte_level, dict)):
        return None
    if (split.get("type") == "Split" and split.get("pattern") == {"Regex": QWEN2_SPLIT_REGEX}
            and split.get("behavior") == "Isolated" and not split.get("invert", False)
            and byte_level.get("type") == "ByteLevel"
            and byte_level.get("use_regex", True) is False
            and not byte_level.get("add_prefix_space", False)):
        return "qwen2"
    return None


def fallback_pre_tokenizer(model_dir: Path) -> str | None:
    """What tokenizer.json in ``model_dir`` says the pre-tokenizer is, in llama.cpp's names."""
    try:
        data = json.loads((Path(model_dir) / "tokenizer.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return pre_tokenizer_name(data.get("pre_tokenizer")) if isinstance(data, dict) else None


def installed_converter_dir() -> Path:
    """Where ``install-converter`` puts it: inside the Python environment the server lives in."""
    return Path(sys.prefix) / "share" / "homellm" / "llama.cpp"


def converter_candidates() -> list[Path]:
    """Searched in order: $HOMELLM_GGUF_CONVERTER, the environment's copy, the homellm cache."""
    candidates: list[Path] = []
    if os.environ.get(CONVERTER_ENV):
        candidates.append(Path(os.environ[CONVERTER_ENV]).expanduser())
    candidates.append(installed_converter_dir() / CONVERTER_SCRIPT)
    candidates.append(homellm_home() / "llamacpp" / "llama.cpp" / CONVERTER_SCRIPT)
    return candidates


def find_converter() -> Path | None:
    """llama.cpp's ``convert_hf_to_gguf.py`` (with ``gguf-py`` beside it), or None."""
    for candidate in converter_candidates():
        if candidate.is_file() and (candidate.parent / "gguf-py").is_dir():
            return candidate
    return None


def converter_source(converter: Path) -> str | None:
    """The sdist name recorded when the converter was unpacked (None if unknown)."""
    try:
        return (converter.parent / VERSION_STAMP).read_text("utf-8").strip() or None
    except OSError:
        return None


def install_converter(sdist: Path, dest: Path | None = None) -> Path:
    """Unpack the converter from a llama-cpp-python sdist into ``dest``; returns the script path.

    The folder is built beside ``dest`` and renamed into place, so a reader sees the old copy
    or the new one, never half of one.
    """
    dest = Path(dest) if dest else installed_converter_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with tarfile.open(sdist) as archive:
                found = _extract_vendored(archive, staging)
        except (OSError, tarfile.TarError) as exc:
            raise EngineError(f"cannot unpack {sdist}: {exc}") from None
        if CONVERTER_SCRIPT not in found or "gguf-py/" not in found:
            raise EngineError(f"{sdist} has no vendor/llama.cpp/{CONVERTER_SCRIPT} with gguf-py")
        atomic_write_text(staging / VERSION_STAMP, sdist.name + "\n")
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest / CONVERTER_SCRIPT


def _extract_vendored(archive: tarfile.TarFile, staging: Path) -> set[str]:
    found: set[str] = set()
    members: list[tarfile.TarInfo] = []
    for member in archive.getmembers():
        parts = member.name.split("/")
        # <name>-<version>/vendor/llama.cpp/<rest>
        if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
            continue
        rest = "/".join(parts[3:])
        wanted = next((w for w in _VENDORED if rest == w or (w.endswith("/") and
                                                            rest.startswith(w))), None)
        if wanted is None or not (member.isfile() or member.isdir()):
            continue
        found.add(wanted)
        member = member.replace(name=rest)
        members.append(member)
    archive.extractall(staging, members=members, filter="data")
    return found


def convert_to_gguf(model_dir: Path, out_file: Path, outtype: str = "f32",
                    converter: Path | None = None, timeout_s: float = 3600.0) -> Path:
    """Convert a Hugging Face model folder to one GGUF file, written atomically; returns it."""
    model_dir, out_file = Path(model_dir), Path(out_file)
    if outtype not in OUTTYPES:
        raise EngineError(f"unknown GGUF outtype {outtype!r}: expected {', '.join(OUTTYPES)}")
    if not (model_dir / "config.json").is_file():
        raise EngineError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    converter = Path(converter) if converter else find_converter()
    if converter is None or not converter.is_file():
        raise EngineError(
            "llama.cpp's GGUF converter (convert_hf_to_gguf.py) was not found: run "
            f".ci/install-llamacpp.sh, or set {CONVERTER_ENV} to its path"
        )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    # a name with no braces: the converter fills {ftype}-style templates in the output name
    fd, tmp_name = tempfile.mkstemp(prefix=".homellm-gguf-", suffix=".tmp", dir=out_file.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    argv = [sys.executable, "-c", _WRAPPER, str(converter), str(model_dir),
            fallback_pre_tokenizer(model_dir) or "", "--outfile", str(tmp), "--outtype", outtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    env.pop("NO_LOCAL_GGUF", None)  # always the gguf-py that matches the converter
    try:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EngineError(
                f"GGUF conversion of {model_dir} did not finish in {timeout_s:.0f} s") from None
        if done.returncode != 0:
            raise EngineError(f"GGUF conversion of {model_dir} failed: {_last_line(done.stderr)}")
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise EngineError(f"GGUF conversion of {model_dir} wrote nothing: "
                              f"{_last_line(done.stderr)}")
        os.chmod(tmp, 0o644)  # mkstemp made it 0600
        fsync_dir(tmp)
        os.replace(tmp, out_file)
        fsync_dir(out_file.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out_file


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homellm.engines.gguf",
                                     description="llama.cpp GGUF conversion for homellm")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a Hugging Face folder to a .gguf file")
    convert.add_argument("model_dir", type=Path)
    convert.add_argument("out_file", type=Path)
    convert.add_argument("--outtype", default="f32", choices=OUTTYPES)
    install = sub.add_parser("install-converter",
                             help="unpack the converter from a llama-cpp-python sdist")
    install.add_argument("sdist", type=Path)
    install.add_argument("--dest", type=Path, default=None)
    sub.add_parser("where", help="print the converter's path (exit 1 if none)")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            print(convert_to_gguf(args.model_dir, args.out_file, args.outtype))
        elif args.command == "install-converter":
            print(install_converter(args.sdist, args.dest))
        else:
            found = find_converter()
            if found is None:
                return 1
            print(found)
    except HomellmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
