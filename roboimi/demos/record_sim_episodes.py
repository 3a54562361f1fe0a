"""Record scripted-expert demonstrations of a built-in task as ACT-layout HDF5 episodes.

    python roboimi/demos/record_sim_episodes.py task=sim_transfer num_episodes=50 \
        dataset_dir=data/sim_transfer image_size=[96,96] seed=0
    python roboimi/demos/record_sim_episodes.py experiment=top_transfer_imf num_workers=2   # an experiment's demos

A Hydra program like train_vla.py: the settings live in roboimi/vla/conf/record/default.yaml, selected by the root
config roboimi/vla/conf/record_sim_episodes.yaml, and sit at the top level, so `key=value` sets them; `--help` lists
them, `--cfg job` prints what a command line composes. Nothing but the episodes is written (no outputs/ dir).
`experiment=<name>` sets task, num_episodes, dataset_dir, camera_names and image_size to what that training
experiment (conf/experiment/<name>.yaml) trains on; settings given beside it win.

Episode i is attempted with seed `seed + i`; a failed attempt moves on to the next seed, so the episodes
written carry consecutive successful seeds (stored in each file's attrs). Re-running the same command
continues after the last complete episode.
"""

import itertools
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import h5py
import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from roboimi.envs.scripted_policy import Demonstration, ScriptedDemonstrator  # noqa: E402  (sets MUJOCO_GL)
from gym_aloha.constants import FPS  # noqa: E402
from roboimi.atomic_file import UnusableDirError, create_dir, remove_stale_temp_files  # noqa: E402
from roboimi.vla import CONFIG_DIR  # noqa: E402
from roboimi.vla.data.episode_files import COMPRESSIONS, EPISODE_PATTERN, NoSpaceError, write_episode_file  # noqa: E402
from roboimi.vla.experiments import recording_settings  # noqa: E402
from roboimi.worker_process import die_with_parent  # noqa: E402

CONFIG_NAME = "record_sim_episodes"
SETTINGS_FILE = CONFIG_DIR / "record" / "default.yaml"
MAX_ATTEMPTS_PER_EPISODE = 3  # attempts allowed per requested episode before giving up


def write_episode(path: Path, demo: Demonstration, task: str, compression: str):
    """Write `demo` to `path` in the ACT layout, atomically."""
    write_episode_file(
        path,
        demo.qpos,  # (T, 14)
        demo.action,  # (T, 14)
        demo.images,  # cam -> (T, H, W, 3) uint8
        extra_observations={"qvel": demo.qvel, "env_state": demo.env_state},
        attrs={"task": task, "seed": demo.seed, "success": demo.success, "fps": FPS},
        compression=compression,
    )


_worker_demonstrator: ScriptedDemonstrator | None = None  # the envs of a recording worker process


def _init_worker(demonstrator_kwargs: dict):
    global _worker_demonstrator
    die_with_parent()
    _worker_demonstrator = ScriptedDemonstrator(**demonstrator_kwargs)


def _demonstrate_in_worker(seed: int) -> Demonstration:
    return _worker_demonstrator.demonstrate(seed)


def _demonstrations(
    demonstrator_kwargs: dict, seeds: Iterator[int], num_workers: int, still_needed: Callable[[], int]
) -> Iterator[Demonstration]:
    """Yield the demonstrations of `seeds` in seed order, from this process or from `num_workers` processes.

    Each attempt depends on its seed alone, so parallel attempts equal a sequential run's. At most
    min(num_workers, still_needed()) attempts run at once, so the last episodes start no attempt that is not needed.
    """
    if num_workers <= 1:
        demonstrator = ScriptedDemonstrator(**demonstrator_kwargs)
        try:
            yield from map(demonstrator.demonstrate, seeds)
        finally:
            demonstrator.close()
        return
    # spawn: a forked child would inherit the parent's GL state, which is not fork-safe.
    with ProcessPoolExecutor(
        max_workers=num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(demonstrator_kwargs,),
    ) as pool:
        pending = []
        while True:
            wanted = min(num_workers, still_needed()) - len(pending)
            pending.extend(pool.submit(_demonstrate_in_worker, seed) for seed in itertools.islice(seeds, max(wanted, 0)))
            if not pending:
                return
            yield pending.pop(0).result()


def _recorded_settings(path: Path) -> dict:
    """The task, cameras and image size an episode file was recorded with (OSError if HDF5 cannot read it)."""
    with h5py.File(path, "r") as f:
        images = f["observations/images"]
        shapes = {tuple(images[cam].shape[1:3]) for cam in images}
        return {
            "task": f.attrs.get("task"),
            "camera_names": sorted(images),
            "image_size": list(shapes.pop()) if shapes else None,
            "seed": int(f.attrs["seed"]),
        }


def _resume_point(dataset_dir: Path, first_seed: int, requested: dict) -> tuple[int, int]:
    """(episodes already complete, next seed to try).

    Stray temporary files of an interrupted run are removed; an unreadable last episode is named and recorded
    again; episodes recorded with another task, cameras or image size are refused, since appending to them would
    mix two datasets. `requested`: the task, camera_names and image_size of this run, as _recorded_settings reads them.
    """
    remove_stale_temp_files(dataset_dir)
    indices = {int(m.group(1)) for p in dataset_dir.iterdir() if (m := EPISODE_PATTERN.match(p.name))}
    done = 0
    while done in indices:
        done += 1
    next_seed = first_seed
    for index in range(done):
        path = dataset_dir / f"episode_{index}.hdf5"
        try:
            recorded = _recorded_settings(path)
        except (OSError, KeyError) as error:
            if index < done - 1:
                raise ValueError(f"Episode file {path} is unreadable ({error}); delete it and re-run to record it again.") from None
            print(f"Episode file {path} is unreadable or incomplete ({error}); recording it again.")
            path.unlink()
            return index, next_seed
        for key, value in requested.items():
            if recorded[key] != value:
                raise ValueError(
                    f"{dataset_dir} holds episodes recorded with {key}={recorded[key]} ({path.name}); this run asks for "
                    f"{key}={value}. Record into another dataset_dir, or use the settings the directory was recorded with."
                )
        next_seed = recorded["seed"] + 1
    return done, next_seed


def _no_space_message(error: NoSpaceError, dataset_dir: Path, written: int, num_episodes: int) -> str:
    """One line: where the room ran out, the bytes one more episode needs, and the fix."""
    mib = 2**20
    return (
        f"No room in dataset_dir={dataset_dir} for {Path(error.filename).relative_to(dataset_dir)} "
        f"({os.strerror(error.errno)}): it needs {error.needed:,} bytes ({error.needed / mib:.1f} MiB), about "
        f"{error.needed * (num_episodes - written) / mib:.1f} MiB for the {num_episodes - written} episode(s) still to "
        f"record. Free that space or pass another dataset_dir, then re-run the same command: it continues after the "
        f"{written} complete episode(s)."
    )


def record_episodes(
    task: str,
    num_episodes: int,
    dataset_dir: str | Path,
    image_size: Sequence[int] = (96, 96),
    seed: int = 0,
    camera_names: Sequence[str] = ("r_vis", "top", "front"),
    compression: str = "gzip",
    save_failed: bool = False,
    progress: bool = True,
    num_workers: int = 1,
) -> dict:
    """Write `num_episodes` successful expert episodes to `dataset_dir`/episode_<i>.hdf5 and summarize.

    Failed attempts are counted and skipped (written to `dataset_dir`/failed/ when `save_failed`).
    At most MAX_ATTEMPTS_PER_EPISODE attempts per missing episode are made. With `num_workers` > 1 the attempts
    run in that many processes; the files written are the same as a sequential recording's.
    When the file system has no room for an episode, NoSpaceError says so in one line naming dataset_dir, the bytes
    needed and the fix; the complete episodes stay, and the same call continues after them.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}.")
    if num_episodes < 0:
        raise ValueError(f"num_episodes must be >= 0, got {num_episodes}.")
    dataset_dir = create_dir(dataset_dir, "dataset_dir")
    requested = {
        "task": task,
        "camera_names": sorted(camera_names),
        "image_size": list(image_size) if camera_names else None,  # camera-less episodes have no image size
    }
    written, next_seed = _resume_point(dataset_dir, seed, requested)
    already_written = written
    max_attempts = MAX_ATTEMPTS_PER_EPISODE * max(num_episodes - written, 0)
    attempts = failures = 0
    start = time.perf_counter()
    bar = tqdm(total=num_episodes, initial=written, desc=f"record {task}", unit="ep", disable=not progress)
    demonstrator_kwargs = {"task": task, "image_size": image_size, "camera_names": camera_names}
    seeds = iter(range(next_seed, next_seed + max_attempts))
    demos = _demonstrations(demonstrator_kwargs, seeds, num_workers, still_needed=lambda: num_episodes - written)
    try:  # the renderers close on every exit path, or the GL context reports its own error at interpreter exit
        for demo in demos:
            attempts += 1
            if demo.success:
                write_episode(dataset_dir / f"episode_{written}.hdf5", demo, task, compression)
                written += 1
                bar.update(1)
            else:
                failures += 1
                if save_failed:
                    failed_dir = dataset_dir / "failed"
                    failed_dir.mkdir(exist_ok=True)
                    write_episode(failed_dir / f"episode_seed_{demo.seed}.hdf5", demo, task, compression)
            next_seed = demo.seed + 1
            bar.set_postfix(attempts=attempts, failed=failures)
            if written >= num_episodes:
                break
    except NoSpaceError as error:
        raise NoSpaceError(
            error.errno, _no_space_message(error, dataset_dir, written, num_episodes), error.filename, error.needed
        ) from None
    finally:
        demos.close()
        bar.close()
    return {
        "task": task,
        "dataset_dir": str(dataset_dir),
        "episodes_written": written - already_written,
        "episodes_total": written,
        "attempts": attempts,
        "failures": failures,
        "expert_success_rate": (attempts - failures) / attempts if attempts else float("nan"),
        "complete": written >= num_episodes,
        "next_seed": next_seed,
        "wall_s": time.perf_counter() - start,
        "dataset_bytes": sum(p.stat().st_size for p in dataset_dir.glob("episode_*.hdf5")),
    }


def expand_experiment(overrides: Sequence[str]) -> list[str]:
    """`overrides` with an `experiment=<name>` replaced by the settings that record that experiment's demonstrations
    (recording_settings), each unless the command line sets it too. SystemExit naming the experiments for an unknown
    name."""
    experiments = [o for o in overrides if o.startswith("experiment=")]
    if not experiments:
        return list(overrides)
    try:
        settings = recording_settings(experiments[-1].split("=", 1)[1])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    given = {o.split("=", 1)[0] for o in overrides}

    def value(v) -> str:
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)

    implied = [f"{key}={value(v)}" for key, v in settings.items() if key not in given]
    return implied + [o for o in overrides if not o.startswith("experiment=")]


def check_overrides(overrides: Sequence[str]) -> None:
    """SystemExit naming the valid keys when an override sets anything but a setting or the `record` preset.

    Runs before Hydra composes, whose own error for an unknown key names no valid key and suggests `+key=`.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise SystemExit(f"{error}\nusage: record_sim_episodes.py key=value ... (see --help)") from None
    valid = list(OmegaConf.load(SETTINGS_FILE))
    keys = [o.key_or_group for o in parsed if not o.key_or_group.startswith(("hydra.", "hydra/"))]
    unknown = [key for key in keys if key.split(".")[0] not in [*valid, "record"]]
    if unknown:
        raise SystemExit(
            f"Unknown option(s) {unknown}; valid keys: {', '.join(valid)} (usage: key=value; "
            f"`record_sim_episodes.py --help` shows their defaults)."
        )


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config the command line `record_sim_episodes.py *overrides` composes; Hydra's global state is left as found."""
    overrides = expand_experiment(overrides)
    check_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(CONFIG_NAME, overrides=overrides)


def recorder_settings(cfg: DictConfig) -> dict:
    """record_episodes keyword arguments from a composed config (SystemExit on a malformed image_size)."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    if len(settings["image_size"]) != 2:
        raise SystemExit(f"image_size must be [height,width], got {settings['image_size']}.")
    return settings


def main(cfg: DictConfig | Sequence[str]) -> dict:
    """Record as the command line would: `cfg` is a composed config or the list of `key=value` overrides."""
    if not isinstance(cfg, DictConfig):
        cfg = compose_config(cfg)
    try:
        summary = record_episodes(**recorder_settings(cfg))
    except (NoSpaceError, UnusableDirError) as error:
        # One line with the fix; through Hydra an exception would end in its traceback.
        raise SystemExit(error.strerror) from None
    status = "" if summary["complete"] else f" (stopped after {summary['attempts']} attempts: too many failures)"
    print(
        f"{summary['episodes_written']} episodes written to {summary['dataset_dir']} "
        f"({summary['episodes_total']} in total){status}; attempts: {summary['attempts']}, "
        f"expert success rate: {summary['expert_success_rate']:.1%}, {summary['wall_s']:.0f} s, "
        f"{summary['dataset_bytes'] / 2**20:.1f} MiB"
    )
    return summary


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> None:
    main(cfg)


def cli() -> None:
    """Console-script entry point (roboimi-record): Hydra's command line, with unknown keys named first."""
    # The parser hydra.main itself uses, so flag values (`--cfg job`) are not taken for overrides.
    overrides = get_args_parser().parse_args().overrides
    expanded = expand_experiment(overrides)
    check_overrides(expanded)
    if expanded != overrides:  # hydra.main reads the command line itself
        sys.argv[1:] = [*(arg for arg in sys.argv[1:] if arg not in overrides), *expanded]
    hydra_main()


if __name__ == "__main__":
    cli()
