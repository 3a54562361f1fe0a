"""The wheels gpu/gpu_wheels.sh carries to the GPU machine: the dm_control pruning keeps a valid wheel (on a
synthetic wheel, fast), and the real set (downloaded, slow), installed alone beside the packages the GPU machine's
image has, runs both built-in tasks.

The set is built for this machine's Python (`--python-version` of the running interpreter) and installed into a
temporary --target. The tasks then run in `python -S` (no site-packages) whose path holds that target, the
repository, and links to only those of this environment's distributions that the GPU image also has (with their own
requirements as installed here): a package the wheels miss fails to import, as it would on the GPU machine.
"""

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import unittest
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from gpu.prune_dm_control import prune_wheel
from tests.test_packaging import setup_requirements

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gpu" / "gpu_wheels.sh"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

# The Python distributions of the GPU machine's image.
GPU_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# Run under `python -S`: the built-in tasks and the training stack's imports, from the carried wheels.
TASKS_CHECK = r"""
import json, sys
from pathlib import Path

target = Path(sys.argv[1])
import antlr4, diffusers, dm_control, dm_env, gym_aloha, gymnasium, hydra, mujoco, OpenGL, omegaconf
carried = {m.__name__: m.__file__ for m in (antlr4, diffusers, dm_control, dm_env, gym_aloha, gymnasium, hydra, mujoco, OpenGL, omegaconf)}
try:
    import dm_control.locomotion
    pruned = False
except ImportError:
    pruned = True

import torch
from roboimi.envs.scripted_policy import ScriptedDemonstrator
from roboimi.vla.agent import VLAAgent  # the DDPM / DDIM schedulers from diffusers
# Every program gpu_check.sh runs: none may need a package the wheels leave out (swanlab, imageio-ffmpeg, glfw).
import roboimi.demos.record_sim_episodes, roboimi.demos.vla_scripts.eval_vla, roboimi.demos.vla_scripts.train_vla
import gpu.gpu_check, benchmarks.inference_latency

tasks = {}
for task in ("sim_transfer", "sim_insertion"):
    demonstrator = ScriptedDemonstrator(task, image_size=(32, 40), camera_names=("r_vis", "top", "front"))
    trajectory, _ = demonstrator.joint_trajectory(0)  # the end-effector env, driven by the scripted expert
    obs, _ = demonstrator.env.reset(seed=0)
    obs, reward, *_ = demonstrator.env.step(trajectory[0])
    tasks[task] = {cam: [list(image.shape), float(image.std())] for cam, image in obs["images"].items()}
    demonstrator.close()
print(json.dumps({"carried": carried, "pruned": pruned, "tasks": tasks, "torch": torch.__file__}))
"""


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def registry_error() -> str | None:
    """Why the package registry cannot be used (None when it can): one small download."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, "farama-notifications==0.0.6"],
            capture_output=True, text=True, timeout=120,
        )
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["pip download failed"])[-1]


def link_gpu_image_packages(shim: Path, carried: set[str]) -> None:
    """Link into `shim` the top-level entries of this environment's distributions that the GPU image has, and of
    their requirements as installed here (an image package comes with its own), never one of `carried`."""
    site = Path(sysconfig.get_paths()["purelib"])
    installed = {normalized(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[str(site)])}
    wanted, queue = set(), [name for name in installed if name in GPU_IMAGE_PACKAGES]
    while queue:
        name = queue.pop()
        if name in wanted or name in carried or name not in installed:
            continue
        wanted.add(name)
        for spec in installed[name].requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(normalized(requirement.name))
    for name in wanted:
        for top in {Path(f).parts[0] for f in installed[name].files or [] if not str(f).startswith("..")}:
            if (site / top).exists() and not (shim / top).exists():
                (shim / top).symlink_to(site / top)


def assert_record_matches(test: unittest.TestCase, wheel: Path) -> list[str]:
    """Every file of `wheel` is in its RECORD with its hash and size, and RECORD names no other; returns the names."""
    with zipfile.ZipFile(wheel) as archive:
        (record,) = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
        rows = [line.split(",") for line in archive.read(record).decode().splitlines()]
        test.assertEqual({row[0] for row in rows}, set(archive.namelist()))
        for path, digest, size in rows:
            if path != record:
                data = archive.read(path)
                test.assertEqual((digest, int(size)), (record_hash(data), len(data)), path)
        return archive.namelist()


class PinsTest(unittest.TestCase):
    def test_carried_versions_satisfy_setup_py(self):
        carried = {normalized(n): v for n, v in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s)]*)", SCRIPT.read_text())}
        pinned = {normalized(r.name): r for r in map(Requirement, setup_requirements())}
        shared = sorted(set(carried) & set(pinned))
        self.assertEqual(shared, ["diffusers", "dm-control", "gym-aloha", "gymnasium", "hydra-core", "mujoco", "omegaconf"])
        for name in shared:
            self.assertIn(carried[name], pinned[name].specifier, name)


class PruneRulesTest(unittest.TestCase):
    def test_keeps_the_imported_sources_and_common_xml_with_a_matching_record(self):
        files = {
            "dm_control/__init__.py": b"",
            "dm_control/mujoco/engine.py": b"engine",
            "dm_control/mujoco/engine_test.py": b"test",
            "dm_control/mujoco/testing/assets/cube.xml": b"<mujoco/>",
            "dm_control/mujoco/wrapper/mjbindings/enums.py": b"enums",
            "dm_control/rl/control.py": b"control",
            "dm_control/suite/base.py": b"base",
            "dm_control/suite/cheetah.xml": b"<mujoco/>",
            "dm_control/suite/common/materials.xml": b"<mujoco/>",
            "dm_control/suite/dog_assets/skin.skn": b"\0" * 100,
            "dm_control/locomotion/walkers/ant.py": b"ant",
            "dm_control/_render/pyopengl/egl_renderer.py": b"egl",
            "dm_control/utils/xml_tools.py": b"xml",
            "dm_control-1.0.41.dist-info/METADATA": b"Name: dm_control",
        }
        record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in files.items())
        record += "dm_control-1.0.41.dist-info/RECORD,,\n"
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "dm_control-1.0.41-py3-none-any.whl"
            with zipfile.ZipFile(source, "w") as archive:
                for path, data in files.items():
                    archive.writestr(path, data)
                archive.writestr("dm_control-1.0.41.dist-info/RECORD", record)
            pruned = prune_wheel(source, Path(tmp) / "pruned")
            self.assertEqual(pruned.name, source.name)
            names = assert_record_matches(self, pruned)
            with self.assertRaises(ValueError):  # never over its own source
                prune_wheel(source, Path(tmp))
        self.assertEqual(sorted(names), sorted([
            "dm_control/__init__.py", "dm_control/mujoco/engine.py", "dm_control/mujoco/wrapper/mjbindings/enums.py",
            "dm_control/rl/control.py", "dm_control/suite/base.py", "dm_control/suite/common/materials.xml",
            "dm_control/_render/pyopengl/egl_renderer.py", "dm_control/utils/xml_tools.py",
            "dm_control-1.0.41.dist-info/METADATA", "dm_control-1.0.41.dist-info/RECORD",
        ]))
        self.assertEqual(names[-1], "dm_control-1.0.41.dist-info/RECORD")


@pytest.mark.slow
class GpuWheelsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        error = registry_error()
        if error:
            raise unittest.SkipTest(f"the package registry cannot be reached ({error}); gpu_wheels.sh downloads from it")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.wheels = Path(cls.tmp.name) / "wheels"
        cls.build = subprocess.run(
            ["bash", str(SCRIPT), "--python-version", PYTHON_VERSION, "--no-gl", str(cls.wheels)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHON": sys.executable},
        )

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.assertEqual(self.build.returncode, 0, self.build.stdout + self.build.stderr)

    def test_pruned_dm_control_wheel_is_valid_and_small(self):
        (wheel,) = self.wheels.glob("dm_control-*.whl")
        self.assertLess(wheel.stat().st_size, 2**20)
        names = assert_record_matches(self, wheel)
        self.assertIn("dm_control/suite/common/materials.xml", names)
        self.assertFalse([n for n in names if n.startswith("dm_control/locomotion/") or n.endswith("_test.py")])
        self.assertIn("of 64 MiB", self.build.stdout)

    def test_carried_set_alone_builds_steps_and_renders_both_tasks(self):
        target, shim = Path(self.tmp.name) / "site", Path(self.tmp.name) / "gpu_image"
        shim.mkdir()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
             "--upgrade", "--target", str(target), *map(str, self.wheels.glob("*.whl"))],
            check=True, capture_output=True, timeout=300,
        )
        carried = {normalized(p.name.split("-")[0]) for p in self.wheels.glob("*.whl")}
        link_gpu_image_packages(shim, carried)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(map(str, (target, ROOT, shim))),
            "PYTHONNOUSERSITE": "1",
            "OMP_NUM_THREADS": "1",
            "MUJOCO_GL": "egl",  # as gpu_check.sh sets it: the image has no glfw, mujoco's default on Linux
        }
        result = subprocess.run(
            [sys.executable, "-S", "-c", TASKS_CHECK, str(target)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-4000:])
        report = json.loads(result.stdout.strip().splitlines()[-1])
        for module, path in report["carried"].items():
            self.assertTrue(Path(path).is_relative_to(target), f"{module} imported from {path}")
        self.assertTrue(report["pruned"])
        self.assertTrue(report["torch"].startswith(str(shim)))
        for task in ("sim_transfer", "sim_insertion"):
            for cam in ("r_vis", "top", "front"):
                shape, spread = report["tasks"][task][cam]
                self.assertEqual(shape, [32, 40, 3])
                self.assertGreater(spread, 1.0, f"{task} {cam}: a blank frame")


if __name__ == "__main__":
    unittest.main()
