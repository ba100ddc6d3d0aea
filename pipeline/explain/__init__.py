"""Explanation methods, registered by name (as Datashader registers reductions): each turns a
batch of pixels into patch-level maps for ASAP's targets (the fake logit, its negation "real",
and the 16 distilled dimensions), and declares what it costs.

    maps = get_method("chefer_all").fn(model, pixels, n_maps)  # (B, n_maps, gh, gw); n_maps 2 or 18

``explain`` is what the pipeline stores per image: the fake and real maps by the run's method,
the 16 dimension maps by the cheap last-block rule, and the fake maps of comparison methods that
the explorer can switch to. How faithful each method is on planted evidence is measured by
``benchmarks/faithfulness.py`` (README, "Explanation methods"); the default is chosen from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

N_MAPS = 18  # fake, real, d00..d15 (pipeline.schema.MAP_NAMES)


@dataclass
class Explanation:
    emb: torch.Tensor  # (B, E) CLIP image embedding
    distilled: torch.Tensor  # (B, 16)
    logit: torch.Tensor  # (B,) raw fake logit
    maps: torch.Tensor  # (B, n_maps, gh, gw), non-negative: fake, real[, d00..d15]
    attention: torch.Tensor | None = None  # (B, gh, gw) last-block CLS attention, if at hand
    compare: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (B, gh, gw)
    # the last block's input tokens (B*k*k, T, D), if at hand: the pattern stage's token
    # descriptor is one block away from them instead of a whole forward pass (issue 10)
    last_input: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable  # (model, pixels (B, 3, S, S), n_maps) -> Explanation
    cost: str  # what it computes, in passes over the network
    passes: float  # cost of the fake + real maps in forward passes (benchmarks/faithfulness.py)
    class_specific: bool  # False: one map for every target (plain attention, rollout)
    reference: str


METHODS: dict[str, Method] = {}
ALIASES = {"last": "chefer_last", "all": "chefer_all"}  # the names of schema version 1
# the 16 dimension maps: all targets at about one forward pass
from ..schema import DIMS_METHOD  # noqa: E402


def register(name: str, *, cost: str, passes: float, class_specific: bool, reference: str):
    def wrap(fn):
        METHODS[name] = Method(name, fn, cost, passes, class_specific, reference)
        return fn

    return wrap


def get_method(name: str) -> Method:
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise ValueError(f"unknown explanation method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def explain(model, pixels: torch.Tensor, method: str, compare: tuple[str, ...] = (),
            fuse: bool = True):  # fmt: skip
    """The run's 18 maps: fake and real by ``method``, d00..d15 by DIMS_METHOD, plus the fake map
    of each ``compare`` method (B, gh, gw). The last-block rule also yields plain attention, so
    comparing with ``chefer_last`` or ``attention`` costs nothing extra. For the default pair
    (chefer_all, chefer_last) both rules share one forward pass (``fuse``; False: each runs its
    own, as benchmarks/pipeline.py compares)."""
    method = get_method(method).name
    if fuse and (method, DIMS_METHOD) == ("chefer_all", "chefer_last"):
        out, main_maps = chefer.chefer_all_and_last(model, pixels, N_MAPS)
        free = {DIMS_METHOD: out.maps[:, 0], "attention": out.attention, method: main_maps[:, 0]}
        out.maps = torch.cat([main_maps, out.maps[:, 2:]], dim=1)
        return _compare(model, pixels, out, free, compare)
    out = METHODS[DIMS_METHOD].fn(model, pixels, N_MAPS)
    free = {DIMS_METHOD: out.maps[:, 0], "attention": out.attention}
    if method != DIMS_METHOD:
        main = METHODS[method].fn(model, pixels, 2)
        free[method] = main.maps[:, 0]
        out.maps = torch.cat([main.maps, out.maps[:, 2:]], dim=1)
    return _compare(model, pixels, out, free, compare)


def _compare(model, pixels, out: Explanation, free: dict, compare: tuple[str, ...]):
    for name in (get_method(c).name for c in compare):
        out.compare[name] = (
            free[name] if name in free else METHODS[name].fn(model, pixels, 2).maps[:, 0]
        )
    return out


from . import attention, chefer, gradinput, legrad, occlusion  # noqa: E402, F401  (registers)

# chosen by benchmarks/faithfulness.py (README, "Explanation methods"): on the planted suite it
# pointed at the artifact as often as occlusion on the families the detector learned, and its
# deletion area equalled occlusion's, at 2x a forward pass
DEFAULT_METHOD = "chefer_all"
