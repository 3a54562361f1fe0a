"""Load IMFTransformer1D weights saved by the diffusion_policy IMF-AttnRes head.

The external head has the same state-dict keys as IMFTransformer1D, but a saved file usually nests them:
behind a prefix (`model.`, `noise_pred_net.`, `module.`, or several of them) and/or inside a checkpoint
dict (`state_dict`, `state_dicts` -> `model` / `ema_model`, `ema`, ...). The loader finds the one mapping
that holds head keys, strips the prefix, and loads strictly. A RoboIMI training checkpoint gives its EMA head
when it has one, else its trained head.
"""
import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

# Every IMFTransformer1D (either backbone) has this key; it locates the head inside a nested checkpoint.
_ANCHOR_KEY = 'input_emb.weight'


def _prefixes_of_anchor(state_dict: Mapping) -> set[str]:
    """Prefixes p such that p + 'input_emb.weight' is a tensor key of `state_dict`."""
    prefixes = set()
    for key, value in state_dict.items():
        if not (isinstance(key, str) and torch.is_tensor(value) and key.endswith(_ANCHOR_KEY)):
            continue
        prefix = key[: -len(_ANCHOR_KEY)]
        if prefix == '' or prefix.endswith('.'):
            prefixes.add(prefix)
    return prefixes


def _find_head_state_dicts(node, path: str = '') -> list[tuple[str, Mapping]]:
    """All (path, mapping) pairs inside a nested checkpoint whose mapping holds head keys."""
    if not isinstance(node, Mapping):
        return []
    if _prefixes_of_anchor(node):
        return [(path, node)]
    found = []
    for key, value in node.items():
        found += _find_head_state_dicts(value, f'{path}.{key}' if path else str(key))
    return found


def _load_file(path) -> Mapping:
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f'External IMF head checkpoint {path} does not exist; check the path.') from None
    except pickle.UnpicklingError as error:
        raise ValueError(
            f'{path} contains Python objects besides tensors (e.g. a pickled training config), which '
            'torch.load(weights_only=True) refuses. If you trust the file, load it yourself with '
            "torch.load(path, map_location='cpu', weights_only=False) and pass the resulting dict."
        ) from error


def _select_head_state_dict(checkpoint: Mapping, prefix: str | None) -> tuple[dict, str]:
    """The head's entries of `checkpoint` with the prefix stripped, and the prefix used."""
    candidates = _find_head_state_dicts(checkpoint)
    if prefix is not None:
        candidates = [(path, sd) for path, sd in candidates if prefix in _prefixes_of_anchor(sd)]
    if not candidates:
        sample_keys = list(checkpoint.keys())[:10]
        wanted = f"'{prefix}{_ANCHOR_KEY}'" if prefix is not None else f"a key ending in '{_ANCHOR_KEY}'"
        raise ValueError(
            f'No IMF head weights found: the checkpoint has no tensor {wanted} at any nesting level '
            f'(top-level keys: {sample_keys}). Pass the head state dict itself, or the right prefix.'
        )
    if len(candidates) > 1:
        paths = [path or '<top level>' for path, _ in candidates]
        raise ValueError(
            f'Several nested state dicts hold IMF head weights: {paths}. Pass the one to load '
            "(e.g. checkpoint['state_dicts']['ema_model']) instead of the whole checkpoint."
        )
    _, state_dict = candidates[0]
    if prefix is None:
        prefixes = _prefixes_of_anchor(state_dict)
        if len(prefixes) > 1:
            raise ValueError(
                f'The state dict holds several heads, under the prefixes {sorted(prefixes)}. '
                'Pass prefix= to choose one.'
            )
        (prefix,) = prefixes
    head_entries = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    return head_entries, prefix


def load_external_imf_head_state_dict(head: nn.Module, path_or_state_dict, prefix: str | None = None) -> str:
    """Load diffusion_policy IMF-head weights into `head` (an IMFTransformer1D) with strict key matching.

    `path_or_state_dict`: a file path or an already loaded (possibly nested) checkpoint dict.
    `prefix`: the key prefix in front of the head keys ('' for none, e.g. 'model.' or 'noise_pred_net.');
    detected automatically when None. Keys outside the prefix (vision encoder, normaliser, optimizer
    state) are ignored; under the prefix, every key must match the head in name and shape.
    Returns the prefix that was stripped.
    """
    checkpoint = _load_file(path_or_state_dict) if isinstance(path_or_state_dict, (str, os.PathLike)) else path_or_state_dict
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'Expected a checkpoint dict or state dict, got {type(checkpoint).__name__}.')
    if 'agent' in checkpoint and 'config' in checkpoint:  # a RoboIMI checkpoint: the agent's head
        checkpoint, prefix = checkpoint.get('ema', checkpoint['agent']), 'noise_pred_net.'
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    state_dict, prefix = _select_head_state_dict(checkpoint, prefix)

    expected = head.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f'{key}: checkpoint {tuple(state_dict[key].shape)} vs head {tuple(value.shape)}'
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"External IMF head checkpoint (prefix {prefix!r}) does not match {type(head).__name__}.\n"
            f'  missing keys: {missing}\n'
            f'  unexpected keys: {unexpected}\n'
            f'  shape mismatches: {mismatched}\n'
            'Build the head with the external run\'s settings (n_emb, n_layer, n_head, n_kv_head, cond_dim, '
            'horizon, backbone_type, causal_attn) or pass the prefix that precedes the head keys.'
        )
    head.load_state_dict(state_dict, strict=True)
    return prefix
