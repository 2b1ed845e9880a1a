#!/usr/bin/env bash
# Installs what diffusion-studio needs to build, run and test; idempotent, and fast (a few
# checks) when nothing is missing.
#   1. Debian packages: build (pkg-config, ALSA headers) and headless run/test (Xvfb, Mesa
#      lavapipe/llvmpipe, ImageMagick, xdotool), through apt-get (with sudo when not root).
#   2. A Python virtual environment with torch==2.11.0 — libtorch for the `tch` crate — in
#      $DIFFUSION_STUDIO_CACHE (default ~/.cache/diffusion-studio), shared by every clone.
# Prints the venv's path on its last line.
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE_DIR=${DIFFUSION_STUDIO_CACHE:-$HOME/.cache/diffusion-studio}
VENV=$CACHE_DIR/venv
APT_PACKAGES=(pkg-config libasound2-dev python3-venv xvfb xauth mesa-vulkan-drivers libvulkan1
  libgl1-mesa-dri libegl1 libxkbcommon-x11-0 imagemagick xdotool)

say() { echo "setup: $*" >&2; }

# 1. the Rust toolchain cannot be installed from here: say what to do
if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found. Install Rust ≥ 1.95 with rustup (https://rustup.rs), then run make again."
  exit 1
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 95 ]; then
  say "$(rustc --version) is too old: eframe 0.37 needs Rust ≥ 1.95 (rustup update)."
  exit 1
fi

# 2. Debian packages, only those missing
missing=()
for package in "${APT_PACKAGES[@]}"; do
  if [ "$package" = python3-venv ] && python3 -c 'import venv, ensurepip' 2>/dev/null; then
    continue # this python3 has venv built in (pyenv, python.org builds)
  fi
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "not a Debian/Ubuntu machine: please install the equivalents of: ${missing[*]}"
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# 3. libtorch through PyPI's torch wheel, in the shared cache
installed=$(sed -nE "s/^__version__ = '([0-9.]+).*/\1/p" "$VENV"/lib/python3*/site-packages/torch/version.py 2>/dev/null | head -1 || true)
if [ "$installed" != "$TORCH_VERSION" ]; then
  say "installing torch==$TORCH_VERSION into $VENV (about 4.6 GB, once for every clone)"
  mkdir -p "$CACHE_DIR"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --progress-bar off --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet --progress-bar off "torch==$TORCH_VERSION" >&2
fi
echo "$VENV"
