#!/usr/bin/env bash
# Install Fashion-MNIST from Debian's dataset-fashion-mnist package where apt is usable as root.
# Elsewhere the loader falls back to torchvision's download at run time, and then to an
# error message that says how to get the data.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/t10k-images-idx3-ubyte.gz" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ -n "${RBL_DATA_DIR:-}" ] && [ -f "$RBL_DATA_DIR/t10k-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist" >&2
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    exit 0
  fi
  echo "apt-get could not install dataset-fashion-mnist" >&2
fi
echo "note: Fashion-MNIST is not in $dir; rbl will try torchvision's download, or set RBL_DATA_DIR" >&2
exit 0
