#!/usr/bin/env bash
# Installs spikeprop into .venv/ at the repository root: torch (CPU build), the package with its
# test extras, lava-nc 0.10.0 (which declares Python <3.11, so it is installed without its
# metadata checks after its dependencies are installed normally; see ../shared/DESIGN.md), and
# tonic 1.7.0, the reader of the event datasets (without its dependencies: they pull librosa and
# numba for tonic's audio transforms, which spikeprop does not use; what `import tonic` needs is
# installed beside it).
# Idempotent: a second run with unchanged setup.cfg and this script only checks imports.
#
#   scripts/install.sh                  # the package, tests, Lava
#   scripts/install.sh --fashion-mnist  # also Debian's dataset-fashion-mnist (needs root and apt)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

want_fmnist=0
for arg in "$@"; do
  case "$arg" in
    --fashion-mnist) want_fmnist=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (known: --fashion-mnist)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"   # the CPU wheel the machines carry; an unpinned torch pulls a CUDA build
LAVA_VERSION="0.10.0"    # the last lava-nc release (Lava is archived)
TONIC_VERSION="1.7.0"    # the event datasets' reader (spikeprop.events)
IMPORTROSBAG_VERSION="1.0.4"  # imported by tonic.datasets at import time (its rosbag datasets)

if [ ! -x .venv/bin/python ]; then
  echo "install.sh: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
py=.venv/bin/python
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

stamp=.venv/.spikeprop-install-stamp
fingerprint="$(cat setup.cfg scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] \
   && "$py" -c "import torch, spikeprop, lava.magma, snntorch, nir, tonic" 2>/dev/null; then
  echo "install.sh: .venv is up to date"
else
  if ! "$py" -c "import torch" 2>/dev/null; then
    echo "install.sh: installing torch==$TORCH_VERSION (CPU build)"
    "${pip[@]}" install "torch==$TORCH_VERSION"
  fi
  echo "install.sh: installing spikeprop and its test extras"
  "${pip[@]}" install -e ".[test]"
  if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('lava-nc') != '$LAVA_VERSION')" 2>/dev/null; then
    echo "install.sh: installing lava-nc==$LAVA_VERSION (no-deps, ignoring its Python <3.11 pin)"
    "${pip[@]}" install --no-deps --ignore-requires-python "lava-nc==$LAVA_VERSION"
  fi
  if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('tonic') != '$TONIC_VERSION')" 2>/dev/null; then
    echo "install.sh: installing tonic==$TONIC_VERSION (no-deps: numpy, scipy, h5py, tqdm are spikeprop's; plus requests, importRosbag)"
    "${pip[@]}" install requests
    "${pip[@]}" install --no-deps "tonic==$TONIC_VERSION" "importRosbag==$IMPORTROSBAG_VERSION"
  fi
  "$py" -c "import tonic.datasets, tonic.transforms" \
    || { echo "install.sh: tonic does not import" >&2; exit 1; }
  # lava.magma needs spikeprop's 3.11 shim to import; check it through hardware.lava.
  "$py" -c "import hardware.lava as hl; hl.import_lava()" \
    || { echo "install.sh: Lava does not import even with the shim" >&2; exit 1; }
  echo "$fingerprint" > "$stamp"
fi

if [ "$want_fmnist" = 1 ]; then
  if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
    echo "install.sh: Fashion-MNIST is already in /usr/share/datasets/fashion-mnist"
  else
    echo "install.sh: installing Debian's dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  fi
fi
echo "install.sh: done. Activate with: source .venv/bin/activate"
