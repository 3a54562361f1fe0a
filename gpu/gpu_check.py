"""The Python side of gpu/gpu_check.sh: what the shell script cannot measure or write itself.

    gpu_check.py preflight OUT.json                  versions, the GPU, and one rendered frame per camera (EGL)
    gpu_check.py run RECORD.json SCRIPT ARGS...      run SCRIPT as __main__; RECORD gets its wall time, exit code and
                                                     peak CUDA memory (torch.cuda.max_memory_allocated)
    gpu_check.py steps RUN_DIR RECORD.json SECONDS   train steps that fit in SECONDS at RUN_DIR's measured rate
    gpu_check.py latency OUT.json [MODEL ARGS]       IMF-1 vs DDIM-10 per action chunk, end to end from 3 cameras
                                                     (benchmarks/inference_latency.py's variants and timing)
    gpu_check.py report OUT_DIR --run NAME=DIR ...   OUT_DIR/gpu_check.json and gpu_check.md from the stages' files

A training run's throughput is the median of `train/it_per_s` in its logs.json.txt without the first record, whose
interval holds the warm-up (data loader start, cuDNN autotuning, torch.compile).
"""

import argparse
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PACKAGES = ("torch", "torchvision", "numpy", "mujoco", "dm_control", "gym-aloha", "gymnasium", "hydra-core", "omegaconf",
            "diffusers", "h5py")
CAMERAS = ("r_vis", "top", "front")
STOPS = {0: "max_steps", 143: "SIGTERM (time bound)"}  # train_vla.py's exit codes
FORMAL_STEPS = 150_000  # the formal run of docs/training_at_scale.md (batch 80)


def read_json(path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


# ---- preflight -------------------------------------------------------------------------------------------------
def gpu_facts() -> dict:
    import torch

    facts = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     gpu_count=torch.cuda.device_count())
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            facts["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            facts["driver"] = None
    return facts


def render_check(image_size: int) -> dict:
    """One frame per camera of each built-in task; fails here, before any long stage, when headless GL does not work."""
    import numpy as np

    from roboimi.envs import make_env

    frames = {}
    for task in ("sim_transfer", "sim_insertion"):
        env = make_env(task, image_size=(image_size, image_size), camera_names=CAMERAS)
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(np.asarray(obs["qpos"]))
        spreads = {cam: float(image.std()) for cam, image in obs["images"].items()}
        blank = [cam for cam, spread in spreads.items() if spread < 1.0]
        if blank:
            raise RuntimeError(f"{task}: cameras {blank} rendered blank frames (MUJOCO_GL={os.environ.get('MUJOCO_GL')}).")
        frames[task] = spreads
        env.close()
    return frames


def gl_renderer() -> str:
    """The OpenGL renderer string of MuJoCo's headless context: the GPU, or a software rasterizer such as llvmpipe."""
    try:
        import mujoco
        from OpenGL import GL

        context = mujoco.GLContext(16, 16)
        context.make_current()
        try:
            return GL.glGetString(GL.GL_RENDERER).decode()
        finally:
            context.free()
    except Exception as error:  # the string is informative only; the render check decides
        return f"unknown ({type(error).__name__}: {error})"


def preflight(args) -> None:
    versions = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        versions["roboimi_commit"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=30
        ).stdout.strip() or None
    except OSError:
        versions["roboimi_commit"] = None
    result = {"versions": versions, **gpu_facts(), "mujoco_gl": os.environ.get("MUJOCO_GL")}
    write_json(args.out, result)  # the versions, also when a check below stops the run
    if args.device == "cuda" and not result["cuda_available"]:
        raise SystemExit("CUDA is not available to torch here: run the check on a GPU machine, or pass --smoke.")
    result["render_check"] = render_check(args.image_size)
    result["gl_renderer"] = gl_renderer()
    write_json(args.out, result)
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("python", "torch", "mujoco", "dm_control"))
    print(f"{shown}; CUDA {result['torch_cuda']}, cuDNN {result['cudnn']}, GPU {result.get('gpu', 'none')} "
          f"(driver {result.get('driver')}); GL {result['gl_renderer']}")


# ---- run a script, recording its peak CUDA memory -------------------------------------------------------------------
def run(args) -> None:
    record = {"argv": [args.script, *args.args], "started": time.time()}
    sys.argv = [args.script, *args.args]
    code = 1
    try:
        runpy.run_path(args.script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        raise
    finally:
        import torch

        record.update(ended=time.time(), exit_code=code,
                      peak_gpu_memory_bytes=torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None)
        write_json(args.record, record)


# ---- training throughput -----------------------------------------------------------------------------------------------
def log_records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "logs.json.txt"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "train/it_per_s" in r]


def throughput(run_dir: Path) -> dict:
    """Steady steps/s (median over the log intervals after the first), the steps done, the intervals measured."""
    records = log_records(run_dir)
    if not records:
        return {"steps_per_s": None, "steps": 0, "log_intervals": 0}
    steady = [r["train/it_per_s"] for r in records[1:]] or [records[0]["train/it_per_s"]]
    return {"steps_per_s": statistics.median(steady), "steps": int(records[-1]["step"]), "log_intervals": len(steady)}


def steps_that_fit(run_dir: Path, record: dict | None, seconds: float) -> int | None:
    """train.max_steps that fit `seconds` for a run of the same model as `run_dir` (None: nothing measured): its
    warm-up (start to the first log record, less that record's steps at the steady rate) repeats, the rest goes at
    the steady rate, with 10 % to spare."""
    measured = throughput(run_dir)
    if not measured["steps_per_s"] or record is None:
        return None
    rate = measured["steps_per_s"]
    first = log_records(run_dir)[0]
    warmup_s = max(first["time"] - record["started"] - first["step"] / rate, 0.0)
    return max(int(0.9 * (seconds - warmup_s) * rate), 1)


def steps(args) -> None:
    fitting = steps_that_fit(args.run_dir, read_json(args.record), args.seconds)
    if fitting is None:
        raise SystemExit(f"{args.run_dir}: no throughput measured (see its log); cannot size the next run.")
    print(fitting)


# ---- inference latency ---------------------------------------------------------------------------------------------
def latency(args) -> None:
    import torch

    from benchmarks.common import (
        add_model_arguments, build_agent, describe_machine, percentile, setup_runtime, synthetic_batch,
    )
    from benchmarks.inference_latency import Variant, run_round_robin

    model = argparse.ArgumentParser(prog="gpu_check.py latency OUT.json")
    add_model_arguments(model, n_emb=384, n_layer=18, n_head=1)
    model.add_argument("--repeats", type=int, default=50)
    model.add_argument("--warmup", type=int, default=5)
    args = model.parse_args(args.model_args, namespace=args)
    device = setup_runtime(args)
    imf, ddpm = build_agent("imf", args, device).eval(), build_agent("ddpm", args, device).eval()
    obs = synthetic_batch(1, args, device)
    obs = {"images": obs["images"], "qpos": obs["qpos"]}
    noise = torch.randn(1, args.pred_horizon, imf.action_dim, device=device)
    variants = [Variant("IMF-1", imf, 1, obs, noise), Variant("DDIM-10", ddpm, 10, obs, noise)]
    run_round_robin(variants, args.warmup, device, record=False)
    run_round_robin(variants, args.repeats, device, record=True)
    result = {"machine": describe_machine(device, args.threads), "head": f"{args.n_emb} x {args.n_layer}",
              "n_head": args.n_head, "image_size": args.image_size, "cameras": len(obs["images"]),
              "repeats": args.repeats}
    for v in variants:
        result[v.name] = {f"{kind}_ms": statistics.median(times) for kind, times in v.times_ms.items()}
        result[v.name]["end_to_end_p90_ms"] = percentile(v.times_ms["end_to_end"], 90)
    for kind in ("end_to_end", "head"):
        result[f"ddim10_over_imf1_{kind}"] = result["DDIM-10"][f"{kind}_ms"] / result["IMF-1"][f"{kind}_ms"]
    write_json(args.out, result)
    print(f"IMF-1 {result['IMF-1']['end_to_end_ms']:.2f} ms, DDIM-10 {result['DDIM-10']['end_to_end_ms']:.2f} ms end to "
          f"end ({result['ddim10_over_imf1_end_to_end']:.2f}x)")


# ---- report ----------------------------------------------------------------------------------------------------------
def run_summary(run_dir: Path, record: dict | None, lat: dict | None) -> dict:
    import yaml

    config_path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    train, agent = cfg.get("train", {}), cfg.get("agent", {})
    head = agent.get("head", {})
    measured = throughput(run_dir)
    batch = train.get("batch_size")
    kind = "IMF-1" if "imf" in agent.get("_target_", "") else "DDIM-10"
    policy = run_dir / "policy.pt"
    log = run_dir.parent / f"{run_dir.name}.log"
    # The trainer falls back to eager mode when torch.compile fails, and says so in its output.
    fallback = [line for line in log.read_text(errors="replace").splitlines() if "torch.compile failed" in line] \
        if log.is_file() else []
    return {
        "run_dir": str(run_dir),
        "agent": agent.get("_target_", "").rsplit(".", 1)[-1] or None,
        "prediction": agent.get("prediction", agent.get("prediction_type")),
        "head": f"{head.get('n_emb')} x {head.get('n_layer')}, {head.get('n_head')} head(s)" if head else None,
        "batch_size": batch,
        "lr": train.get("lr"),
        "precision": train.get("precision", "fp32"),
        "compile": train.get("compile", False),
        "compile_fallback": fallback[0].strip() if fallback else None,
        "device": train.get("device"),
        "steps": measured["steps"],
        "wall_s": round(record["ended"] - record["started"], 1) if record else None,
        "exit_code": record["exit_code"] if record else None,
        "stopped": None if record is None else STOPS.get(record["exit_code"], f"exit {record['exit_code']}"),
        "steps_per_s": measured["steps_per_s"],
        "samples_per_s": measured["steps_per_s"] * batch if measured["steps_per_s"] and batch else None,
        "formal_run_hours": FORMAL_STEPS / measured["steps_per_s"] / 3600 if measured["steps_per_s"] else None,
        "log_intervals": measured["log_intervals"],
        "peak_gpu_memory_bytes": record.get("peak_gpu_memory_bytes") if record else None,
        "policy": str(policy) if policy.is_file() else None,
        "inference_latency_ms": lat[kind]["end_to_end_ms"] if lat and kind in lat else None,
        "inference_latency_policy": kind,
        "success_rate": None,
    }


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['mode']}): {result['status']}", ""]
    pre = result.get("preflight")
    if pre:
        versions = pre["versions"]
        lines += [
            f"Python {versions['python']}, torch {versions['torch']} (CUDA {pre['torch_cuda']}, cuDNN {pre['cudnn']}), "
            f"GPU {pre.get('gpu', 'none')} (driver {pre.get('driver', '-')}), {versions['cpu_count']} CPU cores; MuJoCo "
            f"{versions['mujoco']} with MUJOCO_GL={pre['mujoco_gl']} ({pre.get('gl_renderer', 'not rendered')}); "
            f"dm_control {versions['dm_control']}, diffusers {versions['diffusers']}, commit {versions['roboimi_commit']}.",
            "",
        ]
    rec = result.get("recording")
    if rec:
        lines += [f"Recording: {rec.get('episodes')} sim_transfer demos, cameras {rec.get('cameras')} at "
                  f"{rec.get('image_size')} px, {rec.get('workers')} workers, {fmt(rec.get('seconds'), '.0f')} s.", ""]
    lines += [
        "| run | agent | prediction | head | batch | precision | compile | steps | wall (s) | stopped | steps/s "
        "| samples/s | 150k steps (h) | peak GPU memory (GiB) | policy latency (ms) | success |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        memory = None if r["peak_gpu_memory_bytes"] is None else r["peak_gpu_memory_bytes"] / 2**30
        latency_ms = None if r["inference_latency_ms"] is None else f"{r['inference_latency_ms']:.2f} ({r['inference_latency_policy']})"
        lines.append(
            f"| {name} | {r['agent']} | {r['prediction']} | {r['head']} | {r['batch_size']} | {r['precision']} "
            f"| {str(r['compile']).lower() + (' (fell back)' if r['compile_fallback'] else '')} | {r['steps']} | {fmt(r['wall_s'])} | {r['stopped'] or '-'} | {fmt(r['steps_per_s'], '.2f')} "
            f"| {fmt(r['samples_per_s'], '.0f')} | {fmt(r['formal_run_hours'], '.1f')} | {fmt(memory, '.2f')} | {latency_ms or '-'} "
            f"| {fmt(r['success_rate'], '.0%')} |"
        )
    ev = result.get("eval")
    if ev:
        lines += ["", f"Evaluation of {ev['run']} ({ev['checkpoint']}, step {ev['global_step']}): "
                      f"{ev['successes']} / {ev['num_episodes']} held-out episodes ({ev['success_rate']:.0%}, seeds "
                      f"{ev['seed']}-{ev['seed'] + ev['num_episodes'] - 1}), {ev['max_timesteps']} steps each, "
                      f"{fmt(ev.get('mean_inference_ms'), '.2f')} ms inference per env step, {ev['num_workers']} workers."]
    lat = result.get("latency")
    if lat:
        lines += ["", f"Latency per action chunk ({lat['head']} heads, {lat['n_head']} attention head(s), "
                      f"{lat['cameras']} cameras at {lat['image_size']} px, median of {lat['repeats']}): IMF-1 "
                      f"{lat['IMF-1']['end_to_end_ms']:.2f} ms end to end ({lat['IMF-1']['head_ms']:.2f} ms sampler), "
                      f"DDIM-10 {lat['DDIM-10']['end_to_end_ms']:.2f} ms ({lat['DDIM-10']['head_ms']:.2f} ms): "
                      f"{lat['ddim10_over_imf1_end_to_end']:.2f}x end to end, {lat['ddim10_over_imf1_head']:.2f}x "
                      f"the sampler."]
    if result.get("stages_s"):
        lines += ["", "Stages (s): " + ", ".join(f"{k} {v}" for k, v in result["stages_s"].items()) + "."]
    return "\n".join(lines) + "\n"


def report(args) -> None:
    out = Path(args.out_dir)
    lat = read_json(args.latency) if args.latency else None
    result = {"mode": args.mode, "status": args.status, "preflight": read_json(args.preflight) if args.preflight else None,
              "recording": read_json(args.recording) if args.recording else None, "runs": {}, "eval": None,
              "latency": lat, "stages_s": read_json(args.stages) if args.stages else None}
    for spec in args.run:
        name, run_dir = spec.split("=", 1)
        run_dir = Path(run_dir)
        result["runs"][name] = run_summary(run_dir, read_json(run_dir.parent / f"{run_dir.name}.run.json"), lat)
    summary = read_json(Path(args.eval_dir) / "summary.json") if args.eval_dir else None
    if summary:
        episodes = summary["episodes"]
        result["eval"] = {
            "run": args.eval_run, "checkpoint": summary["checkpoint"], "global_step": summary["global_step"],
            "num_episodes": summary["num_episodes"], "successes": sum(bool(e["success"]) for e in episodes),
            "success_rate": summary["success_rate"], "seed": summary["seed"], "max_timesteps": summary["max_timesteps"],
            "num_workers": summary["num_workers"], "mean_inference_ms": summary.get("mean_inference_ms"),
            "summary": str(Path(args.eval_dir) / "summary.json"),
        }
        if args.eval_run in result["runs"]:
            result["runs"][args.eval_run]["success_rate"] = summary["success_rate"]
    write_json(out / "gpu_check.json", result)
    (out / "gpu_check.md").write_text(markdown(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("preflight", help="versions, GPU, one rendered frame per camera")
    p.add_argument("out", type=Path)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--device", default="cuda", help="cuda: stop here when torch sees no GPU")
    p.set_defaults(fn=preflight)

    p = commands.add_parser("run", help="run a script as __main__, recording wall time, exit code, peak CUDA memory")
    p.add_argument("record", type=Path)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=run)

    p = commands.add_parser("steps", help="train.max_steps that fit a number of seconds at a run's measured rate")
    p.add_argument("run_dir", type=Path)
    p.add_argument("record", type=Path)
    p.add_argument("seconds", type=float)
    p.set_defaults(fn=steps)

    p = commands.add_parser("latency", help="IMF-1 vs DDIM-10 per action chunk, end to end and sampler alone")
    p.add_argument("out", type=Path)
    p.add_argument("model_args", nargs=argparse.REMAINDER,
                   help="benchmarks/common.py's model arguments (--n-emb, --n-layer, --n-head, --image-size, --device, "
                        "...) and --repeats, --warmup")
    p.set_defaults(fn=latency)

    p = commands.add_parser("report", help="gpu_check.json and gpu_check.md from the stages' files")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--status", default="complete", help="how the check ended")
    p.add_argument("--preflight", type=Path)
    p.add_argument("--recording", type=Path)
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR")
    p.add_argument("--eval-dir", type=Path)
    p.add_argument("--eval-run", help="the --run NAME that --eval-dir evaluated")
    p.add_argument("--latency", type=Path)
    p.add_argument("--stages", type=Path)
    p.set_defaults(fn=report)

    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
