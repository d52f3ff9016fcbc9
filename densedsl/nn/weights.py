"""Weights from files and foreign models: reading a weights file safely and loading it into a model.

`read_weights_file` checks the file before torch sees it (a regular file: E912; every zip record
against its CRC-32: E913, `verify_archive`) and loads it with `torch.load(weights_only=True)`;
`normalised_weights` renames other libraries' key conventions (DistributedDataParallel,
torch.compile, torchvision's legacy keys, MONAI, timm's VoVNet, pytorchcv's DenseNet, SparseNet and
HarDNet) to densedsl's; `load_weights` loads them,
listing every mismatch in one `WeightsError` (E908). The training side (`checkpoints`,
`transfer`) builds on this module; nothing here imports it.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import require_regular

_CHUNK = 1 << 20  # bytes of an archive record read at a time
_SCAN = 1 << 20  # values of a tensor checked for NaN at a time


class WeightsError(d.SpecError):
    """Weights that do not fit a model (E908); every mismatch is listed in one message.

    `missing`, `unexpected` (key lists), `mismatched` ((key, model shape, file shape) triples)
    and `unusable` ("key: why" lines) are also available as attributes.
    """

    def __init__(self, diagnostics, *, missing=(), unexpected=(), mismatched=(), unusable=()):
        super().__init__(diagnostics)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)
        self.unusable = tuple(unusable)


# torchvision's `_load_state_dict`: '.'s are no longer allowed in module names, but checkpoints
# of the first _DenseLayer have keys 'norm.1', 'relu.1', 'conv.1', 'norm.2', 'relu.2', 'conv.2'.
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
# MONAI's DenseNet (monai.networks.nets.DenseNet121/169/201/264, any spatial_dims) keeps
# torchvision's layout but wraps each dense layer's modules in `layers` and names the classifier
# `class_layers.out`.
_MONAI_LAYER = re.compile(r"^(.*denselayer\d+)\.layers\.(.*)$")
_MONAI_CLASSIFIER = "class_layers.out."
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
NATIVE, LEGACY, OLD_NORM, MONAI = ("densedsl/torchvision", "torchvision (legacy keys)",
                                   "densedsl before norm5", "MONAI")
TIMM_VOVNET, PYTORCHCV = "timm VoVNet", "pytorchcv"
# a state_dict's is the last one any key shows
CONVENTIONS = (NATIVE, LEGACY, OLD_NORM, MONAI, TIMM_VOVNET, PYTORCHCV)
# densedsl before 0.2 named the head's norm `norm{B+1}` (norm4 for a 3-block network).
_HEAD_NORM = re.compile(r"^features\.norm(\d+)\.(.*)$")
_MAX_LISTED = 8  # lines of each list in a message; the rest are counted
_MAX_KEY = 200  # characters of a key in a message
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _fail(message: str, hint: str | None = None, file: str | None = None, **lists) -> WeightsError:
    return WeightsError([d.Diagnostic(d.BAD_FILE, message, None, hint, file=file)], **lists)


# A run directory's model, as training/checkpoints.model_file picks it (best.pt when `--keep best`
# kept one, else the last epoch's checkpoint.pt); named here because nn never imports training.
RUN_DIR_FILES = ("best.pt", "checkpoint.pt")


def run_dir_weights(path: str | os.PathLike) -> str:
    """The weights file of a run directory of `densedsl train`, or E902 for any other directory."""
    for file in RUN_DIR_FILES:
        candidate = os.path.join(path, file)
        if os.path.isfile(candidate):
            return candidate
    raise WeightsError([d.Diagnostic(
        d.IS_DIRECTORY, f"is a directory with neither {' nor '.join(RUN_DIR_FILES)}: not a run directory "
        "of densedsl train", None, "pass a weights file (.pt, .pth), or the run directory `densedsl train "
        "--out RUN_DIR` wrote", file=str(path))])


def read_weights_file(path: str | os.PathLike) -> Any:
    """A weights file as torch.load(weights_only=True) returns it, after E912/E913 checks; for a
    run directory, its best.pt if there is one, else its checkpoint.pt."""
    require_regular(path, "weights file")   # E912: a FIFO would block torch.load forever
    if os.path.isdir(path):
        path = run_dir_weights(path)
    name = str(path)
    if os.path.isfile(path):
        verify_archive(path, "weights file")  # E913: torch.load ignores the records' CRC-32s
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _fail("no such weights file", "check the path", file=name) from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(f"not a weights-only checkpoint ({first})",
                    "densedsl loads tensors only (torch.load weights_only=True); save "
                    "model.state_dict() rather than the model object", file=name) from None
    except (OSError, EOFError, RuntimeError) as e:
        # torch.load reports a truncated or foreign file as RuntimeError from its zip reader.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(f"cannot read the weights: {first}", "pass a .pt/.pth file written by torch.save",
                    file=name) from None


def _state_dict_of(obj: Any, name: str | None) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):  # densedsl's training checkpoints; Lightning's
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise _fail(f"expected a state_dict (a dict of tensors), got {type(obj).__name__}",
                    "save model.state_dict(), or a checkpoint dict with a 'model' entry", file=name)
    return dict(obj)


BlockNumbers = Mapping[tuple[str, str, str], int]   # what _block_numbers returns


def _unwrapped(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _normalise_key(key: str, blocks: BlockNumbers) -> tuple[str, str]:
    """The key (wrapper prefixes already stripped) in densedsl's (torchvision's) layout, and the
    convention it was written in; `blocks` numbers the file's dense blocks (`_block_numbers`)."""
    if m := _LEGACY_KEY.match(key):
        return m.group(1) + m.group(2), LEGACY
    if m := _MONAI_LAYER.match(key):
        return f"{m.group(1)}.{m.group(2)}", MONAI
    if key.startswith(_MONAI_CLASSIFIER):
        return "classifier." + key.removeprefix(_MONAI_CLASSIFIER), MONAI
    for convention, pattern, rename in _RELATIVES:
        if (m := pattern.match(key)) and (renamed := rename(m, blocks)) is not None:
            return renamed, convention
    return key, NATIVE


def _normalised_keys(keys: Iterable[str]) -> list[tuple[str, str, str]]:
    """(the key as written, in densedsl's layout, its convention) for every key of a state_dict."""
    unwrapped = [(key, _unwrapped(key)) for key in keys]
    blocks = _block_numbers(k for _, k in unwrapped)
    return [(raw, *_normalise_key(key, blocks)) for raw, key in unwrapped]


# --- DenseNet's relatives as other libraries write them ----------------------------------------------
# specs/vovnet39.dense and vovnet57.dense are timm's vovnet39a/vovnet57a, specs/sparsenet.dense,
# densenet121.dense and hardnet*.dense pytorchcv's models, module for module and in the same
# order (tests/test_relatives_weights.py): only the names differ. timm and pytorchcv's HarDNet
# number a dense block by its stage and its place in the stage, densedsl through the network, so
# the n-th (stage, block) pair the file holds, in numeric order, is densedsl's block n; pytorchcv's
# DenseNet and SparseNet have one block a stage, whose transition opens the next stage.
_OP = {"conv": "conv", "bn": "norm"}
_STAGE_BLOCK = {  # the (stage, block) pair of a key that belongs to one dense block and its transition
    TIMM_VOVNET: re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."),
    PYTORCHCV: re.compile(r"^features\.stage(\d+)\.unit(\d+)\.(?:blocks|conv|downsample)\."),
}
_HARDNET_UNIT = r"^features\.stage(\d+)\.unit(\d+)\."


# A classifier named `head.fc` or `output` is many libraries' and models'; it is renamed only in
# a file whose body is the relative's (else it stays unexpected, under its own name).
_BODY = {TIMM_VOVNET: re.compile(r"^stages\.\d+\.blocks\.\d+\.conv_(?:mid|concat)\."),
         PYTORCHCV: re.compile(r"^features\.(?:init_block|stage\d+|post_activ)\.")}


def _block_numbers(keys: Iterable[str]) -> dict[tuple[str, str, str], int]:
    """(convention, stage, block) -> densedsl's 1-based block number, for the pairs the keys hold;
    (convention, "", "") -> 0 when the file holds that relative's body (`_BODY`)."""
    pairs: dict[str, set[tuple[str, str]]] = {c: set() for c in _STAGE_BLOCK}
    bodies: set[str] = set()
    for key in keys:
        for convention, pattern in _STAGE_BLOCK.items():
            if m := pattern.match(key):
                pairs[convention].add((m.group(1), m.group(2)))
        bodies.update(c for c, pattern in _BODY.items() if pattern.match(key))
    numbers = {(c, *pair): n for c, found in pairs.items()
               for n, pair in enumerate(sorted(found, key=lambda p: (int(p[0]), int(p[1]))), 1)}
    return numbers | {(c, "", ""): 0 for c in bodies}


Rename = Callable[[re.Match[str], BlockNumbers], str | None]  # None: not this relative's key after all


def _classifier(convention: str) -> Rename:
    return lambda m, n: f"classifier.{m[1]}" if (convention, "", "") in n else None


def _rule(convention: str, pattern: str, rename: Rename) -> tuple[str, re.Pattern[str], Rename]:
    return convention, re.compile(pattern), rename


# Relatives whose weights name modules densedsl's specs do not have, and why no spec can.
_UNSAYABLE = (
    (re.compile(r"^features\.stage\d+\.unit\d+\.(?:branches|concat_conv)\."),
     ("these are pytorchcv's VoVNet weights: it adds a residual around every OSA block but a stage's "
      "first, which no spec can say; specs/vovnet39.dense and vovnet57.dense are timm's vovnet39a and "
      "vovnet57a, whose weights load")),
    (re.compile(r"^stages\.\d+\.blocks\.\d+\.attn\."),
     ("these are weights of one of timm's ese_/eca_ VoVNets: an attention module (and a residual) per "
      "OSA block, which no spec can say; timm's vovnet39a and vovnet57a load into specs/vovnet39.dense "
      "and vovnet57.dense")),
)


def _unsayable(keys: Iterable[str]) -> list[str]:
    """Why a file's keys that no model built from a spec has cannot be loaded, where it is known."""
    return [why for pattern, why in _UNSAYABLE if any(pattern.match(_unwrapped(k)) for k in keys)]


_RELATIVES = (
    # timm's VoVNet (vovnet39a, vovnet57a): stem.i, stages.s.blocks.b.{conv_mid.l, conv_concat}, head.fc
    _rule(TIMM_VOVNET, r"^stem\.(\d+)\.(conv|bn)\.(.+)$", lambda m, n: f"features.{_OP[m[2]]}{m[1]}.{m[3]}"),
    _rule(TIMM_VOVNET, r"^stages\.(\d+)\.blocks\.(\d+)\.conv_mid\.(\d+)\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.denseblock{n[TIMM_VOVNET, m[1], m[2]]}.denselayer{int(m[3]) + 1}."
                       f"{_OP[m[4]]}1.{m[5]}"),
    _rule(TIMM_VOVNET, r"^stages\.(\d+)\.blocks\.(\d+)\.conv_concat\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.transition{n[TIMM_VOVNET, m[1], m[2]]}.{_OP[m[3]]}.{m[4]}"),
    _rule(TIMM_VOVNET, r"^head\.fc\.(.+)$", _classifier(TIMM_VOVNET)),
    # pytorchcv's stems: DenseNet/SparseNet init_block.{conv, bn}; HarDNet init_block.conv1, conv2
    # and, in the DS models, a depthwise downsample (the stem's third conv)
    _rule(PYTORCHCV, r"^features\.init_block\.(conv|bn)\.(.+)$", lambda m, n: f"features.{_OP[m[1]]}0.{m[2]}"),
    _rule(PYTORCHCV, r"^features\.init_block\.conv(\d+)\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.{_OP[m[2]]}{int(m[1]) - 1}.{m[3]}"),
    _rule(PYTORCHCV, r"^features\.init_block\.downsample\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.{_OP[m[1]]}2.{m[2]}"),
    # DenseNet (stageS.unitL) and SparseNet (stageS.blocks.blockL): pre-activation bottleneck layers
    _rule(PYTORCHCV, r"^features\.stage(\d+)\.(?:unit|blocks\.block)(\d+)\.conv([12])\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.denseblock{m[1]}.denselayer{m[2]}.{_OP[m[4]]}{m[3]}.{m[5]}"),
    _rule(PYTORCHCV, r"^features\.stage(\d+)\.trans\d*\.conv\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.transition{int(m[1]) - 1}.{_OP[m[2]]}.{m[3]}"),
    _rule(PYTORCHCV, r"^features\.post_activ\.bn\.(.+)$", lambda m, n: f"features.norm5.{m[1]}"),
    # HarDNet: stageS.unitU.blocks.blockL (DS: pw_conv, dw_conv), the unit's 1x1 conv and (DS) its
    # depthwise downsample
    _rule(PYTORCHCV, _HARDNET_UNIT + r"blocks\.block(\d+)\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.denseblock{n[PYTORCHCV, m[1], m[2]]}.denselayer{m[3]}.{_OP[m[4]]}1.{m[5]}"),
    _rule(PYTORCHCV, _HARDNET_UNIT + r"blocks\.block(\d+)\.(pw|dw)_conv\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.denseblock{n[PYTORCHCV, m[1], m[2]]}.denselayer{m[3]}."
                       f"{_OP[m[5]]}{1 if m[4] == 'pw' else 2}.{m[6]}"),
    _rule(PYTORCHCV, _HARDNET_UNIT + r"conv\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.transition{n[PYTORCHCV, m[1], m[2]]}.{_OP[m[3]]}.{m[4]}"),
    _rule(PYTORCHCV, _HARDNET_UNIT + r"downsample\.(conv|bn)\.(.+)$",
          lambda m, n: f"features.transition{n[PYTORCHCV, m[1], m[2]]}.dw{_OP[m[3]]}.{m[4]}"),
    _rule(PYTORCHCV, r"^output\.(?:fc\.)?(weight|bias)$", _classifier(PYTORCHCV)),
)


def _old_head_norm(state: dict, own: Mapping) -> tuple[dict, bool]:
    """Rename an old checkpoint's `features.norm{B+1}` to `features.norm5` when the model has
    norm5 and the weights have no norm5 but a norm the model lacks."""
    if "features.norm5.weight" not in own or "features.norm5.weight" in state:
        return state, False
    old = {m.group(1) for k in state if (m := _HEAD_NORM.match(k)) and k not in own}
    if len(old) != 1:
        return state, False
    prefix = f"features.norm{old.pop()}."
    return {("features.norm5." + k.removeprefix(prefix)) if k.startswith(prefix) else k: v
            for k, v in state.items()}, True


def weights_convention(weights: Any) -> str:
    """Which key layout a state_dict (or checkpoint, or path) is written in: one of CONVENTIONS."""
    name = str(weights) if isinstance(weights, (str, os.PathLike)) else None
    raw = read_weights_file(weights) if name is not None else weights
    return _convention(c for _, _, c in _normalised_keys(_state_dict_of(raw, name)))


def _convention(found) -> str:
    found = set(found)
    return next((c for c in reversed(CONVENTIONS) if c in found), NATIVE)


def _listing(title: str, items: list[str]) -> list[str]:
    """A titled list of whole lines, at most _MAX_LISTED of them, then how many were left out."""
    lines = [f"{title} ({len(items)}):"] + [f"  {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"  … and {len(items) - _MAX_LISTED} more")
    return lines


def shown_key(key: str) -> str:
    """A key as one line of a listing: a file's keys are anyone's text, newlines, escape sequences
    and megabytes included."""
    key = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", key)
    return key if len(key) <= _MAX_KEY else key[:_MAX_KEY - 20] + " … " + key[-17:]


def _shape(t: Any) -> str:
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}, not a tensor"
    return "x".join(map(str, t.shape)) if t.dim() else "scalar"


def normalised_weights(weights: Any, own: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """(the state_dict of `weights` in densedsl's key layout, the convention it was written in)
    for a model whose own state_dict is `own`. `weights`: a state_dict, a checkpoint dict with a
    'model' entry, or a path. Two keys that name one tensor (`norm1.weight` beside the legacy
    `norm.1.weight`, `module.x` beside `x`) are E908: which of the two was meant is unknowable."""
    state, convention, _ = _normalised(weights, own)
    return state, convention


def _normalised(weights: Any, own: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str, dict[str, str]]:
    """`normalised_weights`, and the key each tensor had in the file where a relative's layout
    (timm's, pytorchcv's) renamed it, for messages: their names share nothing with densedsl's."""
    name = str(weights) if isinstance(weights, (str, os.PathLike)) else None
    raw = read_weights_file(weights) if name is not None else weights
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}   # densedsl key -> the key as the file wrote it
    found: set[str] = set()
    relatives: dict[str, str] = {}
    raw_state = _state_dict_of(raw, name)
    for raw_key, key, convention in _normalised_keys(raw_state):
        value = raw_state[raw_key]
        if key in origin:
            raise _fail(f"the weights hold '{shown_key(key)}' twice: as '{shown_key(origin[key])}' and as "
                        f"'{shown_key(raw_key)}'", "keep one of the two keys (a state_dict names each "
                        "tensor once); the file mixes two models' weights, or two key conventions", file=name)
        state[key], origin[key] = value, raw_key
        found.add(convention)
        if convention in (TIMM_VOVNET, PYTORCHCV):
            relatives[key] = raw_key
    state, renamed = _old_head_norm(state, own)
    if renamed:
        found.add(OLD_NORM)
    return state, _convention(found), relatives


# --- how weights fit a model -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fit:
    """How a state_dict in densedsl's key layout fits a model's own state_dict."""

    taken: tuple[str, ...]                       # usable as they stand
    reshaped: tuple[tuple[str, str, str], ...]   # (key, model shape, file shape)
    missing: tuple[str, ...]                     # in the model, not in the file
    unexpected: tuple[str, ...]                  # in the file, not in the model
    unusable: tuple[str, ...]                    # "key: why" for values no model can take
    ranks: tuple[int, int] | None                # (the file's, the model's) convolution dimensions, when they differ

    def cause(self) -> list[str]:
        """The one reason behind the shape differences, when there is one to state."""
        if self.ranks is None:
            return []
        theirs, ours = self.ranks
        return [f"the weights are for {theirs}-D convolutions, the spec is {ours}-D"]


def fit(state: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> Fit:
    """Compare `state` with `own` key by key. Each value's kind, layout, dtype and shape are read
    before any of its elements, so a crafted tensor (a stride-0 view of 10^10 elements) is refused
    or set aside without being materialised; only a value of the model's own shape is scanned for
    NaN and infinity, in chunks."""
    taken: list[str] = []
    reshaped: list[tuple[str, str, str]] = []
    unusable: list[str] = []
    ranks: dict[tuple[int, int], int] = {}   # (file's, model's) convolution dimensions -> keys
    for key, value in state.items():
        if key not in own:
            continue
        problem = _unusable(value, own[key])
        if problem is not None:
            unusable.append(f"{shown_key(key)}: {problem}")
        elif value.shape != own[key].shape:
            reshaped.append((key, _shape(own[key]), _shape(value)))
            if _is_conv_weight(key, own[key]) and value.dim() >= 3 and value.dim() != own[key].dim():
                pair = (value.dim() - 2, own[key].dim() - 2)
                ranks[pair] = ranks.get(pair, 0) + 1
        elif (bad := non_finite_count(value)):
            unusable.append(f"{shown_key(key)}: {bad:,} of {value.numel():,} values are NaN or infinite")
        else:
            taken.append(key)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    return Fit(tuple(taken), tuple(reshaped), tuple(missing), tuple(unexpected), tuple(unusable),
               max(ranks, key=ranks.__getitem__) if ranks else None)


def _is_conv_weight(key: str, own: torch.Tensor) -> bool:
    return key.endswith(".weight") and own.dim() >= 3


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    return "complex" if dtype.is_complex else "floating-point" if dtype.is_floating_point else "integer"


def _unusable(value: Any, own: torch.Tensor) -> str | None:
    """Why `value` cannot stand for the model's tensor `own`, from its metadata alone; or None."""
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided:
        return f"a {str(value.layout).removeprefix('torch.')} tensor; densedsl loads dense (strided) tensors"
    if value.device.type == "meta":
        return "a meta tensor (a shape without values)"
    if value.is_quantized:
        return f"a quantized tensor ({value.dtype}); dequantize it first"
    if _kind(value.dtype) != _kind(own.dtype):
        return f"{value.dtype} values where the model holds {_kind(own.dtype)} ones ({own.dtype})"
    return None


def non_finite_count(t: torch.Tensor) -> int:
    """How many values of a floating-point or complex tensor are NaN or infinite, reading no more
    than the tensor's storage holds. A view with more elements than its storage (a stride-0
    `expand`, which torch.save keeps as it is) is judged by the storage itself: every value it
    shows comes from there, and a mask of its own elements could take terabytes."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    stored = t.untyped_storage().nbytes() // t.element_size()
    if t.numel() > stored:
        t = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), 0, (stored,), (1,))
    if bool(torch.isfinite(t.sum())):  # NaN and infinity never sum to a finite number; 30x faster
        return 0
    chunks = t.view(-1).split(_SCAN) if t.is_contiguous() else (t,)  # a view: no larger than its storage
    return sum(int((~torch.isfinite(chunk)).sum()) for chunk in chunks)


# --- loading ---------------------------------------------------------------------------------------

_HINT = "build the model from the spec and --set values the weights were trained with"
_HINTS = {  # how to fine-tune with another classifier, in the caller's terms
    False: "; to fine-tune with another classifier, drop the 'classifier.*' entries and pass strict=False",
    True: "; to fine-tune with another classifier, start training from them: densedsl train SPEC --init WEIGHTS",
}
_RANK_HINT = ("the spec's input must have the rank the weights were trained with: CxL for 1-D, "
              "CxHxW for 2-D, CxDxHxW for 3-D convolutions")
UNUSABLE_HINT = ("pass weights saved from a model's state_dict(): dense, finite floating-point tensors "
                 "(integer num_batches_tracked); NaN or infinity means the run that wrote them "
                 "diverged: use an earlier checkpoint")


def load_weights(model: nn.Module, weights: Any, *, strict: bool = True, cli: bool = False) -> nn.Module:
    """Load a state_dict, a checkpoint dict with a 'model' entry, a path to a .pt/.pth file, or a
    run directory of `densedsl train` (its best.pt if kept, else its checkpoint.pt; E902 when it
    holds neither).

    Keys saved from DistributedDataParallel (`module.`) or torch.compile (`_orig_mod.`),
    torchvision's legacy `norm.1`-style keys, MONAI's DenseNet layout (`denselayerN.layers.…`,
    `class_layers.out`), timm's VoVNet and pytorchcv's DenseNet, SparseNet and HarDNet
    (`_RELATIVES`) are renamed; the convention recognised is reported in the error message
    and kept as `model.weights_convention`. Missing, unexpected and wrongly shaped keys, and
    values no model can take (not a tensor, sparse or meta, complex, boolean or integer where
    the model holds floats, NaN or infinity) are all reported in one WeightsError (E908);
    `strict=False` tolerates missing and unexpected keys, never the others. Returns the model.
    `cli` words the hint for the command line.
    """
    name = str(weights) if isinstance(weights, (str, os.PathLike)) else None
    own = model.state_dict()
    state, convention, file_keys = _normalised(weights, own)

    def named(key: str) -> str:  # a renamed key with the name the file gave it
        return shown_key(key) + (f" (the file's {shown_key(file_keys[key])})" if key in file_keys else "")

    f = fit(state, own)
    missing, unexpected = (f.missing, f.unexpected) if strict else ((), ())
    if f.unusable or f.reshaped or missing or unexpected:
        counts = [f"{len(x)} {label}" for x, label in ((f.unusable, "unusable"), (missing, "missing"),
                                                      (unexpected, "unexpected"),
                                                      (f.reshaped, "with a different shape")) if x]
        lines = [f"the weights ({convention} layout) do not fit the model: {', '.join(counts)}", *f.cause(),
                 *_unsayable(f.unexpected)]
        lines += _listing("unusable values", list(f.unusable)) if f.unusable else []
        lines += _listing("missing from the weights", [f"{shown_key(k)} ({_shape(own[k])})" for k in missing]) \
            if missing else []
        lines += _listing("not in the model", [f"{named(k)} ({_shape(state[k])})" for k in unexpected]) \
            if unexpected else []
        lines += _listing("different shapes", [f"{named(k)}: model {a}, weights {b}" for k, a, b in f.reshaped]) \
            if f.reshaped else []
        hint = _RANK_HINT if f.ranks else UNUSABLE_HINT if f.unusable and not f.reshaped else _HINT + _HINTS[cli]
        raise _fail("\n".join(lines), hint, file=name, missing=f.missing, unexpected=f.unexpected,
                    mismatched=f.reshaped, unusable=f.unusable)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    # the ignore: torch's stub types Module.__setattr__'s value as Tensor | Module, but any value
    # may be set (a plain attribute, which torch stores in the instance __dict__)
    model.weights_convention = convention  # type: ignore[assignment]
    return model


def _archive_error(code: d.Code, path: Path, message: str, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(path))])


def verify_archive(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Check a torch.save zip archive record by record against its CRC-32s (E913), reading it in
    chunks; refuse compressed records (torch never writes them, and they could expand without
    bound). A file that is not a zip archive at all passes: torch.load reports it. So does one
    saved with `torch.serialization.set_crc32_options(False)` (every CRC 0): there is nothing to
    check it against (densedsl's own checkpoints always carry CRCs)."""
    p = Path(path)
    corrupt_hint = f"the {what} was damaged after it was written (a failing disk, a truncated or " \
                   "interrupted copy, an edit): use another copy, or train again"
    try:
        with open(p, "rb") as f:
            starts_like_zip = f.read(4) == b"PK\x03\x04"
        if not zipfile.is_zipfile(p):
            if starts_like_zip:  # a zip archive that lost its end (the central directory)
                raise _archive_error(d.CORRUPT, p, f"the {what} is truncated or damaged: its zip directory "
                             "is missing", corrupt_hint)
            return
        with zipfile.ZipFile(p) as archive:
            members = archive.infolist()
            if all(m.CRC == 0 for m in members if m.file_size):
                return
            for member in members:
                if member.compress_type != zipfile.ZIP_STORED:
                    raise _archive_error(d.BAD_FILE, p, f"record '{member.filename}' is compressed; torch.save "
                                 "writes stored records only", f"pass a {what} written by torch.save")
                with archive.open(member) as record:
                    while record.read(_CHUNK):
                        pass
    except zipfile.BadZipFile as e:
        raise _archive_error(d.CORRUPT, p, f"the {what} is corrupt: {e}", corrupt_hint) from None
    except (EOFError, zlib.error, NotImplementedError, RuntimeError, ValueError) as e:
        raise _archive_error(d.CORRUPT, p, f"the {what} is corrupt: {e or type(e).__name__}", corrupt_hint) from None
    except OSError as e:
        raise _archive_error(d.CANNOT_READ, p, f"cannot read the {what}: {e.strerror or e}") from None


__all__ = ["CONVENTIONS", "Fit", "WeightsError", "fit", "load_weights", "non_finite_count", "normalised_weights",
           "read_weights_file", "run_dir_weights", "verify_archive", "weights_convention"]
