"""Repack the dm_control wheel with only what RoboIMI's built-in tasks load, for a machine that gets its packages as
carried wheels (gpu/gpu_wheels.sh).

The full wheel is 56 MB, nearly all of it locomotion, the suite's dog meshes and the MJCF / composer stack, none of
which sim_transfer and sim_insertion import (roboimi/envs and gym_aloha use dm_control.mujoco, dm_control.rl and
dm_control.suite.base). Kept: the Python sources of the packages they import, with _render whole for every headless
backend (EGL, OSMesa), and the one data file set they read, the suite's common XML, which dm_control.suite loads on
import. Kept files are copied byte for byte and RECORD keeps their original lines, so the pruned wheel verifies and
installs like the original.

    python gpu/prune_dm_control.py dm_control-1.0.41-py3-none-any.whl OUT_DIR
"""

import argparse
import fnmatch
import zipfile
from pathlib import Path

# fnmatch's * also matches "/", so a package pattern keeps its subpackages.
KEEP = (
    "dm_control/__init__.py",
    "dm_control/_render/*.py",
    "dm_control/mujoco/*.py",
    "dm_control/rl/*.py",
    "dm_control/suite/*.py",  # dm_control/suite/__init__.py imports every domain module
    "dm_control/suite/common/*.xml",
    "dm_control/utils/*.py",
    "dm_control-*.dist-info/*",
)
DROP = ("*_test.py", "dm_control/mujoco/testing/*")


def kept(path: str) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in KEEP) and not any(fnmatch.fnmatch(path, p) for p in DROP)


def prune_wheel(wheel: Path, out_dir: Path) -> Path:
    """Write the pruned copy of `wheel` under the same file name into `out_dir`; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise ValueError(f"{target} would overwrite its source; pass another output directory.")
    with zipfile.ZipFile(wheel) as source:
        members = [info for info in source.infolist() if kept(info.filename)]
        records = [name for name in source.namelist() if name.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise ValueError(f"{wheel} has {len(records)} RECORD files; expected one dist-info directory.")
        names = {info.filename for info in members}
        record_lines = source.read(records[0]).decode().splitlines()
        record = "".join(f"{line}\n" for line in record_lines if line.split(",", 1)[0] in names)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as pruned:
            # RECORD last, as wheel builders write it.
            for info in sorted(members, key=lambda i: i.filename == records[0]):
                data = record.encode() if info.filename == records[0] else source.read(info)
                info.compress_type = zipfile.ZIP_DEFLATED
                pruned.writestr(info, data)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="the downloaded dm_control wheel")
    parser.add_argument("out_dir", type=Path, help="where the pruned wheel goes (same file name)")
    args = parser.parse_args()
    target = prune_wheel(args.wheel, args.out_dir)
    with zipfile.ZipFile(args.wheel) as full, zipfile.ZipFile(target) as pruned:
        print(
            f"{target}: {len(pruned.namelist())} of {len(full.namelist())} files, "
            f"{target.stat().st_size / 2**20:.1f} MiB (was {args.wheel.stat().st_size / 2**20:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
