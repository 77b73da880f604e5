#!/usr/bin/env bash
# LiteLLM proxy side by side with the direct baseline (and the plain hops) in one run.
#
#   bench/litellm/run.sh                   # install if needed, then benchmark
#   bench/litellm/run.sh --reps 5          # extra arguments go to bench/proxy_bench.py
#
# LiteLLM lives in its own virtual environment under bench/out/ (ignored by git), so its
# pins never touch geopin's. The mock upstream, the load generator and LiteLLM run as
# bench/proxy_bench.py arranges them: mock + load generator on core 0, LiteLLM on core 1.
set -euo pipefail

VERSION="1.108.7"  # newer releases' [proxy] extras do not resolve
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/bench/out/litellm-venv"
LOG="$REPO/bench/out/litellm-install.log"
GEOPIN_PYTHON="${GEOPIN_PYTHON:-$REPO/.venv/bin/python}"

mkdir -p "$REPO/bench/out"
if ! LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "installing litellm[proxy]==$VERSION into $VENV (log: $LOG)" >&2
    {
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --upgrade pip
        "$VENV/bin/pip" install "litellm[proxy]==$VERSION"
    } >"$LOG" 2>&1 || {
        echo "installing LiteLLM failed; the end of $LOG:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    }
fi

# LITELLM_LOCAL_MODEL_COST_MAP and the master key are set by bench/litellm/target.py.
exec "$GEOPIN_PYTHON" "$REPO/bench/proxy_bench.py" \
    --litellm-venv "$VENV" --litellm --litellm-region --plain-hop --tcp-relay --asgi-floor "$@"
