"""Index math for sample windows: which frames a sample reads and which of them are padding.

For anchor frame t of an episode with `length` frames, the window starts at t - (obs_horizon - 1):
observations cover obs_horizon frames ending at t, actions cover pred_horizon frames from the same start,
so action position obs_horizon - 1 is the current step. Frames outside the episode repeat the edge frame
and are flagged as padding.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    obs_frames: np.ndarray  # (obs_horizon,) int64, clamped into [0, length)
    obs_is_pad: np.ndarray  # (obs_horizon,) bool
    action_frames: np.ndarray  # (pred_horizon,) int64, clamped into [0, length)
    action_is_pad: np.ndarray  # (pred_horizon,) bool


def _clamped(frames, length):
    clamped = np.clip(frames, 0, length - 1)
    return clamped, clamped != frames


def sample_window(t, length, obs_horizon, pred_horizon):
    if not 0 <= t < length:
        raise IndexError(f"Anchor frame {t} is outside an episode of {length} frames.")
    start = t - (obs_horizon - 1)
    obs_frames, obs_is_pad = _clamped(start + np.arange(obs_horizon), length)
    action_frames, action_is_pad = _clamped(start + np.arange(pred_horizon), length)
    return Window(obs_frames, obs_is_pad, action_frames, action_is_pad)


class AnchorIndex:
    """Maps a flat sample index to (episode position, anchor frame); every frame of every episode is an anchor."""

    def __init__(self, lengths):
        self.ends = np.cumsum(lengths)  # (num_episodes,) exclusive end of each episode's sample range

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def locate(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Sample index {index} is out of range for {len(self)} samples.")
        episode = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[episode - 1]) if episode else 0
        return episode, index - start
