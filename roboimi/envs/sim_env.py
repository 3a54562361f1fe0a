"""RoboIMI's dual-arm simulation env: a joint-controlled gym-aloha task plus its own camera rendering."""

import itertools
import operator
import time
from typing import Sequence

import gymnasium
import mujoco
import numpy as np
from dm_control.rl import control
from gym_aloha.constants import DT
from gymnasium import spaces

from roboimi.envs.aloha_tasks import NUM_ROBOT_QPOS, AlohaTaskSpec, build_control_env

# RoboIMI camera names that differ from the model's own; model names work as well.
CAMERA_ALIASES = {"r_vis": "right_wrist", "top": "top", "front": "angle"}
# Per arm (left, right): the two finger bodies, whose tips mark where a grasp happens (the gripper link sits ~0.1 m
# behind them and hovers above an object it holds).
FINGER_BODIES = (
    ("vx300s_left/left_finger_link", "vx300s_left/right_finger_link"),
    ("vx300s_right/left_finger_link", "vx300s_right/right_finger_link"),
)
ACTION_DIM = 14  # per arm: 6 joint positions (rad) + normalized gripper (0 closed, 1 open)
STATE_DIM = 14  # qpos and qvel: per arm 6 joints + the normalized gripper
# gym-aloha's joint task sends action[0:6] to actuators 0-5 and action[7:13] to actuators 8-13; actions 6 and 13
# are normalized gripper commands it maps onto the finger actuators (6-7, 14-15).
ARM_ACTUATORS = np.r_[0:6, 8:14]
ARM_ACTIONS = np.r_[0:6, 7:13]

# Per arm (left, right): blue and orange, apart from the red cube and the grey table and arms.
TRAJECTORY_RGBA = (np.array([0.12, 0.47, 0.95, 1.0], np.float32), np.array([1.0, 0.55, 0.0, 1.0], np.float32))
OBJECT_RGBA = np.array([0.85, 0.05, 0.6, 1.0], np.float32)  # magenta: the manipulated objects' paths
START_RGBA = np.array([0.1, 0.85, 0.2, 1.0], dtype=np.float32)  # green sphere where a path starts
END_RGBA = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)  # white sphere where it ends
MARKER_RADIUS_M_PX = 4.0  # marker sphere radius (m) times the image's smaller side (px)
# Capsule radius (m) times the image's smaller side (px): about one pixel wide where the arms work, so paths
# stay visible in small images and thin in large ones.
TRAJECTORY_RADIUS_M_PX = 1.0
TRAJECTORY_MIN_SEGMENT = 1e-4  # shorter segments are skipped: a zero-length connector has no direction


class InvalidActionError(ValueError):
    """An action the env cannot execute (wrong shape or non-finite values)."""


class SimulationDivergedError(RuntimeError):
    """The physics became invalid (NaN, Inf or huge accelerations); the episode cannot continue."""


def check_action(action, action_dim: int) -> np.ndarray:
    """Return `action` as a float64 (action_dim,) array, or raise InvalidActionError saying what is wrong."""
    array = np.asarray(action, dtype=np.float64)
    if array.shape != (action_dim,):
        raise InvalidActionError(
            f"action has shape {array.shape}, expected ({action_dim},); pass one joint-space action per step "
            f"(take one row of a predicted chunk)."
        )
    if not np.all(np.isfinite(array)):
        raise InvalidActionError(f"action contains non-finite values ({array.tolist()}); check the policy output.")
    return array


def _open_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    # The offscreen framebuffer must hold the image; enlarging it lets any image size work.
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    try:
        return mujoco.Renderer(model, height=height, width=width)
    except Exception as error:
        raise RuntimeError(
            f"Could not create the headless MuJoCo renderer ({type(error).__name__}: {error}). RoboIMI renders "
            "with MUJOCO_GL=egl by default; if EGL is unavailable, install OSMesa (Debian/Ubuntu: "
            "`apt-get install libosmesa6`) and run with MUJOCO_GL=osmesa set before Python starts."
        ) from error


def _image_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"{name} must be [height, width] with positive entries, got {list(size)}.")
    return hw


def _action_space(model: mujoco.MjModel) -> spaces.Box:
    """The 14 joint targets: each arm joint within its actuator's control range (rad), each gripper in [0, 1].

    The gripper range is the normalized command the scripted expert and the recorded data use. The env does not
    reject or clip actions outside the box: MuJoCo clamps every control to its actuator's range.
    """
    low, high = np.zeros(ACTION_DIM), np.ones(ACTION_DIM)
    low[ARM_ACTIONS], high[ARM_ACTIONS] = model.actuator_ctrlrange[ARM_ACTUATORS].T
    return spaces.Box(low, high, dtype=np.float64)


class DualArmSimEnv(gymnasium.Env):
    """A built-in bimanual ALOHA task with a 14-dim joint-position action at 50 Hz, as a `gymnasium.Env`.

    Observation: {"qpos": (14,), "qvel": (14,), "env_state": (E,), "images": {cam: (H, W, 3) uint8}}.
    Only the requested cameras are rendered, all with one reused `mujoco.Renderer` per image size.
    `terminated` is True from the first step whose reward reaches `max_reward` (success) and stays True; the env
    keeps stepping after it, so a caller may run a fixed number of steps. `truncated` is True from step
    `episode_len` on. `render()` is the `render_camera` view at `render_size` (gymnasium's rgb_array mode);
    `render_image(camera, size)` renders any camera at any size.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / DT)}
    trajectory_legend = (
        ("left fingertips", TRAJECTORY_RGBA[0]),
        ("right fingertips", TRAJECTORY_RGBA[1]),
        ("object", OBJECT_RGBA),
        ("start", START_RGBA),
        ("end", END_RGBA),
    )

    def __init__(
        self,
        spec: AlohaTaskSpec,
        image_size: Sequence[int] = (96, 96),
        camera_names: Sequence[str] = ("r_vis", "top", "front"),
        shadows: bool = False,
        render_mode: str | None = "rgb_array",
        render_camera: str = "front",
        render_size: Sequence[int] = (480, 640),
    ):
        self.task_name = spec.name
        self.episode_len = spec.episode_len
        self._sample_object_pose = spec.sample_object_pose
        self._task = spec.joint_task()
        self.max_reward = self._task.max_reward
        self._control_env = build_control_env(spec.joint_xml, self._task)
        physics = self._control_env.physics
        self._model, self._data = physics.model.ptr, physics.data.ptr

        model_cameras = tuple(self._model.camera(i).name for i in range(self._model.ncam))
        self.available_cameras = tuple(CAMERA_ALIASES) + tuple(c for c in model_cameras if c not in CAMERA_ALIASES)
        self.camera_names = tuple(camera_names)
        for camera in (*self.camera_names, render_camera):
            self._model_camera(camera)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or {self.metadata['render_modes'][0]!r}, got {render_mode!r}.")
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.render_size = _image_size("render_size", render_size)
        self.image_size = _image_size("image_size", image_size)
        self._shadows = shadows
        self._renderers = {}  # (H, W) -> mujoco.Renderer; the policy's size plus any media size asked for
        self._renderer(self.image_size)
        self._finger_geoms = [[self._finger_geom(body) for body in arm] for arm in FINGER_BODIES]
        self._finger_tips_local = {}  # finger geom -> (4, 3) its mesh box's corners at the tip, in the geom's frame
        free_joints = np.flatnonzero(self._model.jnt_type == mujoco.mjtJoint.mjJNT_FREE)
        self._object_body_ids = self._model.jnt_bodyid[free_joints]

        unbounded = dict(low=-np.inf, high=np.inf, dtype=np.float64)  # MuJoCo's joint limits are soft
        self.observation_space = spaces.Dict(
            {
                "qpos": spaces.Box(shape=(STATE_DIM,), **unbounded),
                "qvel": spaces.Box(shape=(STATE_DIM,), **unbounded),
                "env_state": spaces.Box(shape=(self._model.nq - NUM_ROBOT_QPOS,), **unbounded),
                "images": spaces.Dict(
                    {cam: spaces.Box(0, 255, (*self.image_size, 3), dtype=np.uint8) for cam in self.camera_names}
                ),
            }
        )
        self.action_space = _action_space(self._model)

        self.object_pose = None  # (E,) pose placed at the last reset
        self.last_observe_ms = 0.0  # time spent reading state and rendering for the latest observation
        self._episode_max_reward = 0.0
        self._elapsed_steps = 0

    def _model_camera(self, camera: str) -> str:
        if camera not in self.available_cameras:
            raise ValueError(
                f"Unknown camera {camera!r} for task {self.task_name!r}; available cameras: "
                f"{', '.join(self.available_cameras)}."
            )
        return CAMERA_ALIASES.get(camera, camera)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode with the object pose drawn from `seed`: same seed, same pose and images.

        Without a seed the episode seed is drawn from `self.np_random`, so it follows from the last seeded reset
        (an env never seeded draws fresh entropy, gymnasium's convention); `info["seed"]` replays the episode.
        """
        if options:
            raise ValueError(
                f"DualArmSimEnv.reset takes no options, got {sorted(options)}; pass seed= to pick the object pose."
            )
        seed = None if seed is None else operator.index(seed)  # numpy integers too; gymnasium takes Python ints
        super().reset(seed=seed)
        episode_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        self.object_pose = self._sample_object_pose(episode_seed)
        self._task.object_pose = self.object_pose
        self._episode_max_reward = 0.0
        self._elapsed_steps = 0
        return self._observe(self._control_env.reset().observation), {"seed": episode_seed}

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        """Execute one 14-dim joint-position action (one control step, 20 ms).

        Returns (obs, reward, terminated, truncated, info); terminated = info["is_success"] = the reward has reached
        `max_reward` at some step of this episode.
        """
        action = check_action(action, ACTION_DIM)
        try:
            timestep = self._control_env.step(action)
        except control.PhysicsError as error:
            raise SimulationDivergedError(
                f"the simulation diverged ({error}) after the action {np.round(action, 3).tolist()}; the policy's "
                "commands drove the physics unstable (an untrained or badly normalized policy often does)."
            ) from error
        reward = float(timestep.reward)
        self._episode_max_reward = max(self._episode_max_reward, reward)
        self._elapsed_steps += 1
        success = self._episode_max_reward >= self.max_reward
        truncated = self._elapsed_steps >= self.episode_len
        return self._observe(timestep.observation), reward, success, truncated, {"is_success": success}

    def _observe(self, state: dict) -> dict:
        start = time.perf_counter()
        obs = {
            "qpos": state["qpos"],
            "qvel": state["qvel"],
            "env_state": state["env_state"],
            "images": {camera: self.render_image(camera) for camera in self.camera_names},
        }
        self.last_observe_ms = (time.perf_counter() - start) * 1e3
        return obs

    def _renderer(self, size: Sequence[int]) -> mujoco.Renderer:
        size = tuple(int(s) for s in size)
        if size not in self._renderers:
            renderer = _open_renderer(self._model, *size)
            if not self._shadows:
                # Shadows dominate software-rendering cost (about 4x slower with them on).
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._renderers[size] = renderer
        return self._renderers[size]

    def render(self) -> np.ndarray | None:
        """(H, W, 3) uint8 view of `render_camera` at `render_size` (rgb_array mode); None when render_mode is None."""
        if self.render_mode is None:
            return None
        return self.render_image(self.render_camera, self.render_size)

    def render_image(self, camera: str, size: Sequence[int] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 image of any available camera, at `size` = (H, W) or the env's image size."""
        renderer = self._renderer(size or self.image_size)
        renderer.update_scene(self._data, camera=self._model_camera(camera))
        return renderer.render()

    def _finger_geom(self, body_name: str) -> int:
        body = self._model.body(body_name).id
        return int(np.flatnonzero(self._model.geom_bodyid == body)[0])

    def _tip_corners(self, geom: int) -> np.ndarray:
        """(4, 3) the corners of the geom's bounding box farthest from its gripper link, in the geom's frame.

        The finger is rigid and slides along its own axis, so the far end found in the first pose stays its tip.
        """
        if geom not in self._finger_tips_local:
            center, half = self._model.geom_aabb[geom][:3], self._model.geom_aabb[geom][3:]
            corners = center + half * np.array(list(itertools.product((-1, 1), repeat=3)))  # (8, 3)
            rotation = self._data.geom_xmat[geom].reshape(3, 3)
            world = self._data.geom_xpos[geom] + corners @ rotation.T
            gripper = self._data.xpos[self._model.body_parentid[self._model.geom_bodyid[geom]]]
            self._finger_tips_local[geom] = corners[np.argsort(np.linalg.norm(world - gripper, axis=1))[-4:]]
        return self._finger_tips_local[geom]

    def end_effector_positions(self) -> np.ndarray:
        """(2, 3) world positions of the left and right fingertips (the mean of both fingers' tip ends)."""
        tips = []
        for arm in self._finger_geoms:
            ends = [
                self._data.geom_xpos[g] + self._tip_corners(g) @ self._data.geom_xmat[g].reshape(3, 3).T for g in arm
            ]
            tips.append(np.concatenate(ends).mean(axis=0))
        return np.stack(tips)

    def object_positions(self) -> np.ndarray:
        """(M, 3) world positions of the task's free objects (the cube; the peg and the socket)."""
        return self._data.xpos[self._object_body_ids].copy()

    def render_trajectory_image(
        self,
        paths: Sequence[np.ndarray],
        camera: str = "front",
        size: Sequence[int] | None = None,
        object_paths: Sequence[np.ndarray] = (),
    ) -> np.ndarray:
        """(H, W, 3) uint8 image of `camera` with each arm's (T, 3) fingertip path (left, right) drawn in the scene
        in its own colour (TRAJECTORY_RGBA), each object's path in OBJECT_RGBA, a green sphere where a path starts
        and a white one where it ends."""
        size = tuple(size or self.image_size)
        renderer = self._renderer(size)
        renderer.update_scene(self._data, camera=self._model_camera(camera))
        scene = renderer.scene
        radius = TRAJECTORY_RADIUS_M_PX / min(size)
        marker = MARKER_RADIUS_M_PX / min(size)

        def new_geom(geom_type, rgba, size=np.zeros(3), pos=np.zeros(3)):
            if scene.ngeom >= scene.maxgeom:  # the scene is full: draw what fits
                return None
            geom = scene.geoms[scene.ngeom]
            mujoco.mjv_initGeom(geom, geom_type, size, pos, np.eye(3).ravel(), rgba)
            scene.ngeom += 1
            return geom

        capsule, sphere = mujoco.mjtGeom.mjGEOM_CAPSULE, mujoco.mjtGeom.mjGEOM_SPHERE
        colored = [(path, TRAJECTORY_RGBA[arm % len(TRAJECTORY_RGBA)]) for arm, path in enumerate(paths)]
        colored += [(path, OBJECT_RGBA) for path in object_paths]
        for path, rgba in ((np.asarray(p, dtype=np.float64), rgba) for p, rgba in colored):
            if not len(path):
                continue
            for start, end in zip(path[:-1], path[1:]):
                if np.linalg.norm(end - start) >= TRAJECTORY_MIN_SEGMENT and (geom := new_geom(capsule, rgba)):
                    mujoco.mjv_connector(geom, capsule, radius, start, end)
            for point, point_rgba in ((path[0], START_RGBA), (path[-1], END_RGBA)):
                new_geom(sphere, point_rgba, size=np.full(3, marker), pos=point)
        return renderer.render()

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()  # a second close() is a no-op, as gymnasium expects
