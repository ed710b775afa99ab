#!/usr/bin/env bash
# Builds one venv per serving engine, outside git's reach, for scripts/engine_acceptance.py.
# Idempotent: a venv whose engine already imports at the pinned version is left alone.
# Usage: scripts/engine_venvs.sh [vllm|sglang|all]   (default: all)
# Logs: .venv-engines/<engine>.log ; exit status 0 only if every asked engine installed.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE="${ENGINE_VENVS_DIR:-$ROOT/.venv-engines}"
PYTHON="${ENGINE_VENVS_PYTHON:-python3.11}"
VLLM_VERSION="0.33.0"
SGLANG_VERSION="0.5.23"
mkdir -p "$BASE"

# This machine's pip config caps torch to the CPU wheels it keeps on disk; the engines pin
# their own (CUDA) torch, so that cap must not apply inside their venvs.
export PIP_CONSTRAINT=""

install_engine() {
    local name="$1" spec="$2" module="$3" version="$4"
    local venv="$BASE/$name" log="$BASE/$name.log"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$module" "$version" <<'PY' 2>/dev/null
import importlib.metadata, sys
sys.exit(0 if importlib.metadata.version(sys.argv[1]) == sys.argv[2] else 1)
PY
    then
        echo "$name: $spec already in $venv"
        return 0
    fi
    echo "$name: installing $spec into $venv (log: $log)"
    "$PYTHON" -m venv "$venv" || return 1
    {
        "$venv/bin/python" -m pip install --upgrade pip &&
            "$venv/bin/python" -m pip install "$spec"
    } >"$log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "$name: pip failed (exit $rc); last lines of $log:"
        tail -n 20 "$log"
        return $rc
    fi
    echo "$name: installed $("$venv/bin/python" -m pip show "$module" | grep '^Version')"
}

want="${1:-all}"
status=0
case "$want" in
    vllm) install_engine vllm "vllm==$VLLM_VERSION" vllm "$VLLM_VERSION" || status=1 ;;
    sglang) install_engine sglang "sglang==$SGLANG_VERSION" sglang "$SGLANG_VERSION" || status=1 ;;
    all)
        install_engine vllm "vllm==$VLLM_VERSION" vllm "$VLLM_VERSION" || status=1
        install_engine sglang "sglang==$SGLANG_VERSION" sglang "$SGLANG_VERSION" || status=1
        ;;
    *) echo "usage: $0 [vllm|sglang|all]" >&2; exit 2 ;;
esac
exit $status
