#!/usr/bin/env bash
# Set up everything on a fresh machine with nothing but Python 3.10+: a virtualenv in
# .venv with era-keras (editable) and every pipeline's dependencies, pinned by
# constraints.txt. Re-running is cheap: it reinstalls only when those files change.
#
#   scripts/setup.sh --bench   also builds the GRPO peers' own venvs for
#                              benchmarks/grpo_peers.py: .venv/trl (TRL 1.16, on the
#                              project's torch) and .venv/tunix (Tunix 0.1.7)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BENCH=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    *) echo "error: unknown option $arg (allowed: --bench)" >&2; exit 2 ;;
  esac
done

# The GRPO peers, each in a venv of its own, pinned by benchmarks/peers/*.txt.
build_peers() {
  local site
  site=$(.venv/bin/python -c "import site; print(site.getsitepackages()[0])")
  if [ ! -x .venv/trl/bin/python ]; then
    "$PYTHON" -m venv .venv/trl
    # TRL's venv sees the project's packages after its own: its torch (2.13, CPU) is
    # reused, so pip does not pull a CUDA torch.
    echo "$site" > "$(.venv/trl/bin/python -c "import site; print(site.getsitepackages()[0])")/era_project.pth"
  fi
  .venv/trl/bin/python -m pip install -q -c benchmarks/peers/trl.txt trl transformers accelerate datasets
  [ -x .venv/tunix/bin/python ] || "$PYTHON" -m venv .venv/tunix
  .venv/tunix/bin/python -m pip install -q -c benchmarks/peers/tunix.txt google-tunix transformers safetensors
}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.era-setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha1sum | cut -c1-12)
peer_stamp=.venv/.era-peers-$(cat benchmarks/peers/*.txt scripts/setup.sh | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then
  if [ "$BENCH" = 1 ] && [ ! -f "$peer_stamp" ]; then
    build_peers && rm -f .venv/.era-peers-* && touch "$peer_stamp"
  fi
  exit 0
fi

.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned exactly: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[all]" "torch==2.13.0"
# TF-Agents 0.19 (its last release) pins tfp~=0.23, gym<=0.23, typing-extensions==4.5.0 and
# pygame==2.1.3, none of which can live next to TF 2.21 and Keras 3. It works with the
# versions above when installed without its metadata; it imports gym at import time, so
# gym 0.23 comes too (gymnasium is what the environments really use).
.venv/bin/python -m pip install -q --no-deps tf-agents==0.19.0 gym==0.23.0 gym-notices==0.1.0
# SBX (benchmarks only): without its tfp-nightly requirement, which would replace
# tensorflow-probability 0.25; the SBX benchmark worker finds tfp-nightly in .venv/sbx-tfp.
.venv/bin/python -m pip install -q --no-deps sbx-rl==0.28.0
.venv/bin/python -m pip install -q --no-deps --target .venv/sbx-tfp tfp-nightly==0.26.0.dev20261027
rm -f .venv/.era-setup-*
touch "$stamp"
if [ "$BENCH" = 1 ]; then
  build_peers && rm -f .venv/.era-peers-* && touch "$peer_stamp"
fi
