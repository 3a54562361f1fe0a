#!/usr/bin/env bash
# The packages gpu/gpu_check.sh needs that the GPU machine's image lacks, as wheels for a machine without
# network, plus the GL loader libraries that headless EGL rendering needs where the image has none.
#
#   bash gpu/gpu_wheels.sh                               # cp312 wheels and GL loaders into .gpu_wheels
#   bash gpu/gpu_wheels.sh --python-version 3.11 --no-gl /tmp/w   # the same set for this machine's Python
#
# The GPU image has torch, torchvision, numpy, h5py, scipy, lxml, imageio, pillow, pyyaml, tqdm, absl-py, protobuf,
# packaging, filelock, huggingface-hub, safetensors, regex, requests and cloudpickle; what RoboIMI imports beyond
# them is listed below with the pins of setup.py, each package's own requirements (its METADATA) included where the
# image lacks them. Nothing for video writing (imageio-ffmpeg) or tracking (swanlab): the check writes no video and
# tracks nothing. dm_control is repacked with what the built-in tasks load (gpu/prune_dm_control.py), 0.1 of
# its 54 MiB. Fails when DIR and the repository files that travel with it exceed 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PY_VERSION=3.12
GL=1
DIR=.gpu_wheels
while [ $# -gt 0 ]; do
    case $1 in
        --python-version) PY_VERSION=$2; shift 2 ;;
        --no-gl) GL=0; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "unknown option $1; usage: $0 [--python-version X.Y] [--no-gl] [DIR]" >&2; exit 2 ;;
        *) DIR=$1; shift ;;
    esac
done
LIMIT_BYTES=$((64 * 1024 * 1024))

WHEELS=(
    mujoco==3.8.1               # requires absl-py, etils, glfw, numpy, pyopengl; etils and glfw are not imported
    dm-control==1.0.41          # pruned; dm-tree, glfw and labmaze are required but not imported by what is kept
    dm-env==1.6
    pyopengl==3.1.10            # EGL / OSMesa bindings of mujoco and dm_control
    gym-aloha==0.1.5            # the ALOHA models and tasks; its imageio[ffmpeg] is for gymnasium videos only
    gymnasium==1.4.0
    farama-notifications==0.0.6
    hydra-core==1.3.8
    omegaconf==2.3.1
    diffusers==0.42.1           # the DDPM / DDIM schedulers; its importlib_metadata is for Python < 3.8 only
)
SDISTS=(antlr4-python3-runtime==4.9.3)  # hydra's and omegaconf's parser runtime: published as a source archive only
GL_DEBS=(libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

echo "== wheels for CPython $PY_VERSION, manylinux x86_64, into $DIR (GL loaders: $([ $GL = 1 ] && echo yes || echo no))"
# Only what an earlier run wrote is replaced: DIR may be a folder that holds other files.
rm -rf "$DIR/full" "$DIR/gl"
rm -f "$DIR"/*.whl
mkdir -p "$DIR/full"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR/full" "${WHEELS[@]}"
# Pure-Python source archives build to the same py3-none-any wheel for every Python.
"$PYTHON" -m pip wheel -q --no-deps -w "$DIR/full" "${SDISTS[@]}"
"$PYTHON" gpu/prune_dm_control.py "$DIR"/full/dm_control-*.whl "$DIR"
for wheel in "$DIR"/full/*.whl; do
    case $(basename "$wheel") in dm_control-*) ;; *) mv "$wheel" "$DIR/" ;; esac
done
rm -rf "$DIR/full"

if [ "$GL" = 1 ]; then
    # libEGL / libOpenGL (glvnd) for MUJOCO_GL=egl; gpu_check.sh unpacks them only where ldconfig finds no libEGL.
    lists=$(mktemp -d)
    apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists" -oAPT::Sandbox::User=root)
    mkdir -p "$lists/partial" "$DIR/gl"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$DIR/gl" && apt-get "${apt_opts[@]}" download -qq "${GL_DEBS[@]}")
    rm -rf "$lists"
fi

find "$DIR" -type f -printf '%s %p\n' | sort -k2 | awk '{printf "%10d  %s\n", $1, $2}'
dir_bytes=$(du -sb "$DIR" | cut -f1)
repo_bytes=$(git ls-files -z --cached --others --exclude-standard \
    | "$PYTHON" -c 'import os, sys; print(sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if os.path.isfile(p)))')
total=$((dir_bytes + repo_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "== $DIR: $(mib "$dir_bytes"); with the repository files that travel ($(mib "$repo_bytes")): $(mib "$total") of 64 MiB"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
    echo "error: $(mib "$total") exceeds the 64 MiB a device run carries; drop wheels or repository files" >&2
    exit 1
fi
