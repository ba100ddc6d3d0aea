"""Cross-image patterns: the most relevant patches of every image, described and clustered into
recurring patterns, summarised, and their impact measured counterfactually; plus the per-image
deletion/insertion faithfulness of the maps.

Map and reduce, as the rest of the pipeline (DESIGN "Patterns"):

- per partition (in the encode pass, which has the images and the last block's input at hand;
  else a Dask task, ``patch_partition``): the top ``patches_per_image`` patches of each
  image by its fake-logit map, each described by the last block's patch token and/or the amplitude
  spectrum of the patch's high-pass residual (position-free: generator traces are periodic), plus
  how much of each distilled dimension's map falls on it; and deletion/insertion curves for a
  sample of images. One ``parts/patches-NNNNN.npz`` per partition, so new partitions add work
  incrementally.
- on the driver: k-means on a uniform sample of patches (k given, or the finest stable k),
  fitted on several random subsets of it and started from the medoid fit (the grouping the fits
  agree with most), refined by one mini-batch pass over the partitions, then patches assigned
  partition by partition (memory stays bounded by one partition); each pattern's stability is
  how well the other fits reproduce it.
- per pattern (a Dask task, ``pattern_impact``): mask the pattern's patches in up to
  ``impact_images`` member images and re-score; the control masks as many random other patches of
  the same images."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import PatternConfig, RunConfig
from .devices import default_batch_size
from .explain import adapter as A
from .imageio import ImageRejected, load_for_model, normalize
from .metrics import faithfulness_summary
from .perturb import (
    blurred,
    bootstrap_ci,
    curve_area,
    curves_of,
    masked,
    order_by,
    p_fake,
    tokens_and_attention,
)
from .schema import (
    DISTILLED_COLUMNS,
    FAITHFULNESS_COLUMNS,
    PART_FEATURE_COLUMNS,
    PATTERN_COLUMNS,
    PATTERN_MEMBER_COLUMNS,
    RANDOM_ORDER,
    STABLE_PATTERN,
    RunPaths,
    atomic_write,
    read_table,
    write_table,
)
from .worker import cached_model, pick_device

# fewer re-scored images than this make a bootstrap interval meaningless: never significant
MIN_SIGNIFICANT = 5


def _pixels(model, paths: list[bytes]):
    """Normalised pixels of the images that still load, and the indices that did."""
    arrs, ok = [], []
    for i, p in enumerate(paths):
        try:
            arrs.append(load_for_model(p, model.image_size))
            ok.append(i)
        except ImageRejected:
            continue
    if not arrs:
        return None, ok
    return normalize(np.stack(arrs), model.preprocess["mean"], model.preprocess["std"]), ok


def spectrum_features(pixels: torch.Tensor, reference: torch.Tensor, gy, gx, grid) -> torch.Tensor:
    """Log-amplitude spectrum of the high-pass residual (pixels - blurred), grey, unit length, over
    the patch and its neighbours (3x3 patches, shifted inwards at the border): periodic generator
    traces give the same descriptor anywhere, and a trace that straddles patch borders (maps
    point within about one patch) is still inside the window. (n, d) on the pixels' device."""
    gh, gw = grid
    ph, pw = pixels.shape[-2] // gh, pixels.shape[-1] // gw
    resid = (pixels - reference).mean(dim=1)  # (B, S, S)
    if len(resid) == 0:
        return resid.new_zeros((0, 3 * ph * (3 * pw // 2 + 1)))
    dev = resid.device
    gy, gx = torch.as_tensor(gy, device=dev), torch.as_tensor(gx, device=dev)
    y0 = (gy - 1).clamp(min=0).clamp(max=max(gh - 3, 0)) * ph
    x0 = (gx - 1).clamp(min=0).clamp(max=max(gw - 3, 0)) * pw
    rows = (y0[:, None] + torch.arange(3 * ph, device=dev))[:, :, None]  # (n, 3ph, 1)
    cols = (x0[:, None] + torch.arange(3 * pw, device=dev))[:, None, :]  # (n, 1, 3pw)
    win = resid[torch.arange(len(resid), device=dev)[:, None, None], rows, cols]
    f = torch.log1p(torch.fft.rfft2(win.float()).abs()).flatten(1)  # all windows in one FFT
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def describe(model, pixels: torch.Tensor, maps: torch.Tensor, cfg: PatternConfig,
             last_input: torch.Tensor | None = None) -> dict:  # fmt: skip
    """The top ``patches_per_image`` patches of each image of a batch by its fake map, described.

    ``maps`` (B, 18, gh, gw) are the stored maps (as float, on the pixels' device). ``last_input``:
    the last block's input tokens when the encode pass has them at hand (its token descriptor is
    then one block away instead of a forward pass). Returns tensors on the device, B * k rows
    each (``keep`` marks those that count: an all-zero map points nowhere), so that the encode
    loop does not wait for the device per batch: image (index in the batch), gy, gx, relevance,
    feature (descriptor), dims (each distilled dimension's share of its map on the patch)."""
    B, gh, gw = len(maps), *maps.shape[-2:]
    fake = maps[:, 0].reshape(B, -1)  # (B, gh*gw)
    k = min(cfg.patches_per_image, fake.shape[1])
    top = torch.sort(-fake, dim=1, stable=True).indices[:, :k]  # (B, k), as np.argsort(kind=stable)
    b_idx = torch.arange(B, device=maps.device).repeat_interleave(k)
    flat = top.reshape(-1)
    rel = fake[b_idx, flat]
    keep = (rel > 0) & (rel >= cfg.min_relative * fake.max(dim=1).values[b_idx])
    gy, gx = flat // gw, flat % gw
    parts = []
    if cfg.feature in ("token", "both"):
        if last_input is not None:
            out = A.run_blocks(model, last_input, A.blocks(model)[-1:])  # (B*k*k, T, D)
            tokens = A.untile(model, out[:, 1:])
        else:
            tokens, _ = tokens_and_attention(model, pixels)  # (B, gh*gw, D)
        t = tokens[b_idx, flat].float()
        parts.append(t / t.norm(dim=1, keepdim=True).clamp_min(1e-12))
    if cfg.feature in ("spectrum", "both"):
        # float32 whatever the run's precision: a trace of a few grey levels is a few thousandths
        # of the normalised pixels, below bfloat16's resolution (the encode pass may autocast)
        with torch.autocast(pixels.device.type, enabled=False):
            px = pixels.float()
            ref = blurred(model, px)
            parts.append(spectrum_features(px[b_idx], ref[b_idx], gy, gx, (gh, gw)))
    feat = torch.cat(parts, dim=1) / len(parts) ** 0.5
    dims = maps[:, 2:].reshape(B, maps.shape[1] - 2, -1)  # (B, 16, gh*gw)
    share = dims / dims.sum(dim=2, keepdim=True).clamp_min(1e-12)
    return {"image": b_idx, "gy": gy, "gx": gx, "relevance": rel, "keep": keep,
            "feature": feat.half(), "dims": share[b_idx, :, flat].half()}  # fmt: skip


PATCH_KEYS = ("id", "gy", "gx", "relevance", "feature", "dims")


class PatchCollector:
    """Collects ``describe``'s batches of one partition (on the device) and turns them into the
    partition's patch arrays at the end: one copy to the host per partition."""

    def __init__(self, cfg: PatternConfig):
        self.cfg, self.batches, self.rows = cfg, [], []

    def add(self, model, pixels, maps, rows, last_input=None) -> None:
        """``rows``: the features-table row of each image of the batch (kept on the host)."""
        self.batches.append(describe(model, pixels, maps, self.cfg, last_input))
        self.rows.append(np.asarray(rows, np.int64))

    def arrays(self, ids: np.ndarray) -> dict:
        """Patch arrays with ``ids`` (features-table order) for the rows."""
        if not self.batches:
            return {k: np.zeros(0) for k in PATCH_KEYS}
        cat = {k: torch.cat([b[k] for b in self.batches]).cpu().numpy() for k in self.batches[0]}
        offsets = np.cumsum([0] + [len(r) for r in self.rows[:-1]])
        sizes = [len(b["image"]) for b in self.batches]
        cat["image"] = np.concatenate(self.rows)[cat["image"] + np.repeat(offsets, sizes)]
        keep = cat.pop("keep")
        out = {k: v[keep] for k, v in cat.items()}
        out["id"] = np.asarray(ids)[out.pop("image")]
        out["relevance"] = out["relevance"].astype(np.float32)
        return {k: out[k] for k in PATCH_KEYS}


def faithfulness(model, pixels, orders: dict[str, torch.Tensor], steps: int,
                 seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Deletion and insertion areas of each patch order (name -> (B, gh, gw) map; random values
    for the random order): one row per (image index, method). Ties (patches of equal relevance,
    e.g. zero) are broken at random from ``seed``: the same curves in any process."""
    gen = torch.Generator(device=pixels.device).manual_seed(seed)
    jobs = []
    for fake in orders.values():
        order = order_by(fake.to(pixels.device), gen)
        jobs += [(order, False), (order, True)]
    curves = [c.cpu() for c in curves_of(model, pixels, jobs, steps)]
    base = curves[0][:, 0].numpy()  # deletion at step 0 is the image itself
    rows = []
    idx = np.arange(len(pixels))
    for i, name in enumerate(orders):
        dele, ins = curve_area(curves[2 * i]), curve_area(curves[2 * i + 1])
        rows.append(pd.DataFrame({"index": idx, "method": name, "p_fake": base,
                                  "deletion_auc": dele, "insertion_auc": ins}))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def faith_quota(total: int, n_parts: int, part: int) -> int:
    """Partition ``part``'s share of ``total`` faithfulness images (shares differ by at most 1)."""
    return total // n_parts + (1 if part < total % n_parts else 0)


def partition_faithfulness(model, paths: list[bytes], feats: pd.DataFrame, rel, cmp,
                           cfg: PatternConfig, methods: list[str], part: int, n_parts: int,
                           device: str) -> pd.DataFrame:  # fmt: skip
    """Deletion/insertion curves of the partition's share of the faithfulness images, drawn from
    those scored fake (deleting fake evidence must lower p(fake)). ``paths``, ``rel`` (maps) and
    ``cmp`` (comparison maps) are in features-table row order; an image that no longer loads
    is left out."""
    rng = np.random.default_rng(cfg.seed + part)
    scored_fake = np.flatnonzero(feats["pred"].to_numpy() == 1)
    quota = faith_quota(cfg.faithfulness_images, n_parts, part)
    picks = np.sort(rng.permutation(scored_fake)[:quota])
    pixels, ok = _pixels(model, [paths[r] for r in picks])
    if pixels is None:
        return pd.DataFrame(columns=list(FAITHFULNESS_COLUMNS))
    picks = picks[ok]
    fake = np.asarray(rel[picks, 0], np.float32)
    orders = {methods[0]: torch.as_tensor(fake)}
    for j, name in enumerate(methods[1:]):
        orders[name] = torch.as_tensor(np.asarray(cmp[picks, j], np.float32))
    gen = torch.Generator().manual_seed(cfg.seed + part)
    orders[RANDOM_ORDER] = torch.rand(fake.shape, generator=gen)
    res = faithfulness(model, pixels.to(device), orders, cfg.steps, cfg.seed + part)
    res["id"] = feats["id"].to_numpy()[picks][res.pop("index").to_numpy()]
    return res


PER_PATCH = ("patches_per_image", "min_relative", "feature", "faithfulness_images", "steps",
             "seed")  # fmt: skip


def patch_signature(cfg: PatternConfig) -> str:
    """The settings a partition's patch file depends on (stored in it: another set recomputes)."""
    return json.dumps({f: getattr(cfg, f) for f in PER_PATCH}, sort_keys=True)


def write_patches(run: RunPaths, part: int, arrays: dict, faith: pd.DataFrame,
                  cfg: PatternConfig) -> None:  # fmt: skip
    arrays = dict(arrays, signature=np.array(patch_signature(cfg)))
    for c in FAITHFULNESS_COLUMNS:
        kind = str if c == "method" else np.float64
        arrays[f"faith_{c}"] = faith[c].to_numpy().astype(kind)

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz"
            np.savez(fh, **arrays)

    atomic_write(run.part_patches(part), _write)


def patches_current(run: RunPaths, part: int, cfg: PatternConfig) -> bool | None:
    """Whether partition ``part``'s patch file was made with ``cfg``'s per-patch settings (None:
    a file from before the files recorded them)."""
    with np.load(run.part_patches(part)) as z:
        return str(z["signature"]) == patch_signature(cfg) if "signature" in z.files else None


def patch_partition(part: int, paths: list[bytes], run_root: str, model_path: str, sha: str,
                    cfg: PatternConfig, device: str | None, batch_size: int | None,
                    methods: list[str], n_parts: int = 1) -> dict:  # fmt: skip
    """Describe one partition's top patches and its faithfulness sample; write patches-NNNNN.npz.
    The encode pass does this itself (worker.encode_partition); this is for partitions encoded
    without it (patterns off, an older run) or pattern settings changed since."""
    run = RunPaths(Path(run_root))
    if run.part_patches(part).exists():
        return {"part": part, "skipped": True}
    t0 = time.perf_counter()
    device = pick_device(device)
    batch_size = batch_size or default_batch_size(device)
    model = cached_model(model_path, sha, device)
    feats = read_table(run.part_features(part), PART_FEATURE_COLUMNS)
    rel = np.load(run.part_relevance(part), mmap_mode="r")
    cmp = np.load(run.part_compare(part), mmap_mode="r")
    order = feats["row"].to_numpy()  # maps rows of the features rows
    rel, cmp = rel[order], cmp[order]
    collector = PatchCollector(cfg)
    for s in range(0, len(feats), batch_size):
        rows = np.arange(s, min(s + batch_size, len(feats)))
        pixels, ok = _pixels(model, [paths[r] for r in rows])
        if pixels is None:
            continue
        rows = rows[ok]
        maps = torch.as_tensor(np.asarray(rel[rows], np.float32), device=device)
        collector.add(model, pixels.to(device), maps, rows)
    arrays = collector.arrays(feats["id"].to_numpy())
    faith = partition_faithfulness(model, paths, feats, rel, cmp, cfg, methods, part, n_parts,
                                   device)  # fmt: skip
    write_patches(run, part, arrays, faith, cfg)
    return {"part": part, "skipped": False, "patches": len(arrays["id"]),
            "seconds": time.perf_counter() - t0}  # fmt: skip


def load_patches(run: RunPaths, part: int, keys: tuple[str, ...] | None = None) -> dict:
    """A partition's patch arrays; only ``keys`` when given (an .npz reads each array lazily)."""
    with np.load(run.part_patches(part)) as z:
        return {k: z[k] for k in (keys or z.files)}


def _features(run: RunPaths, part: int) -> np.ndarray:
    return load_patches(run, part, ("feature",))["feature"].astype(np.float32)


def choose_k(sample: np.ndarray, cfg: PatternConfig) -> int:
    """cfg.n_patterns, or (0) the finest grouping that holds up: the largest k in
    [2, max_patterns] whose every pattern has a stability of at least STABLE_PATTERN on a random
    subset of up to 4,000 patches; when no k does, the k whose least stable pattern is the most
    stable. (A continuum cut into k pieces has no stable k; separate groups give their number.)"""
    if cfg.n_patterns:
        return min(cfg.n_patterns, len(sample))
    rng = np.random.default_rng(cfg.seed)
    sub = sample[rng.permutation(len(sample))[:4000]]
    chosen, best_k, best_min = None, 2, -1.0
    for k in range(2, min(cfg.max_patterns, len(sub) - 1) + 1):
        _, runs, medoid = consensus_kmeans(sub, k, cfg.stability_runs, cfg.seed)
        others = [r for i, r in enumerate(runs) if i != medoid]
        least = float(np.nanmin(cluster_stability(runs[medoid], others, k)))
        if least >= STABLE_PATTERN:
            chosen = k
        if least > best_min:
            best_k, best_min = k, least
    return chosen if chosen is not None else best_k


def cluster(run: RunPaths, parts: list[int], cfg: PatternConfig):
    """Fit centres (sample init + one mini-batch pass), then assign every patch; per-part arrays."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(cfg.seed)
    total = sum(len(load_patches(run, p, ("id",))["id"]) for p in parts)
    frac = min(1.0, cfg.sample / max(total, 1))
    sample = []
    for p in parts:
        f = _features(run, p)
        sample.append(f[rng.random(len(f)) < frac])
    sample = np.concatenate(sample)
    if len(sample) < 3:
        raise ValueError(f"only {len(sample)} relevant patches in the run; too few for patterns")
    k = choose_k(sample, cfg)
    init, runs, medoid = consensus_kmeans(sample, k, cfg.stability_runs, cfg.seed)
    mbk = MiniBatchKMeans(k, init=init, n_init=1, random_state=cfg.seed, batch_size=4096)
    for p in parts:
        f = _features(run, p)
        if len(f) >= k:
            mbk.partial_fit(f)
    assigned = {}
    for p in parts:
        f = _features(run, p)
        if len(f) == 0:
            assigned[p] = (np.zeros(0, np.int32), np.zeros(0, np.float32))
            continue
        d = mbk.transform(f)  # (n, k) distances to centres
        lab = d.argmin(axis=1)
        assigned[p] = (lab.astype(np.int32), d[np.arange(len(f)), lab].astype(np.float32))
    others = [r for i, r in enumerate(runs) if i != medoid]
    stability = cluster_stability(mbk.predict(sample), others, k)
    return k, assigned, stability


def consensus_kmeans(sample: np.ndarray, k: int, runs: int, seed: int, frac: float = 0.8):
    """k-means on ``runs`` random subsets (``frac`` of the sample, one seeded start each); every
    run labels the whole sample. Returns the centres of the medoid run (the one whose labels agree
    most with all others, adjusted Rand index), every run's labels, and the medoid's index.

    Patch descriptors often form a continuum rather than separate clouds, and k-means then has
    many near-equal optima: one seeded fit picks among them by a hair (on the demo, inertia within
    0.3% across seeds, partitions at ARI 0.4-0.9), so a 1e-7 change upstream regrouped the
    patches. The medoid of several fits is the grouping most fits agree with, and the runs
    measure how reproducible each pattern is (``cluster_stability``)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    n = len(sample)
    size = max(k, int(round(frac * n)))
    labels, centres = [], []
    for r in range(runs):
        sub = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
        km = KMeans(k, n_init=1, random_state=seed + r).fit(sample[sub])
        labels.append(km.predict(sample))
        centres.append(km.cluster_centers_)
    agree = np.zeros((runs, runs))
    for i in range(runs):
        for j in range(i + 1, runs):
            agree[i, j] = agree[j, i] = adjusted_rand_score(labels[i], labels[j])
    medoid = int(np.argmax(agree.sum(axis=1)))  # ties: the lowest index
    return centres[medoid], labels, medoid


def cluster_stability(labels: np.ndarray, runs: list[np.ndarray], k: int) -> np.ndarray:
    """Clusterwise stability (Hennig 2007): for each cluster of ``labels``, the mean over the
    other runs of its best Jaccard overlap with any of that run's clusters, on the same points.
    1 = every run finds it; about 0.5 or less = it dissolves. NaN without other runs."""
    out = np.full(k, np.nan)
    if not runs:
        return out
    for c in range(k):
        a = labels == c
        if not a.any():
            out[c] = 0.0
            continue
        best = []
        for other in runs:
            inter = np.bincount(other[a], minlength=k)  # |a & (other == j)| for each j
            union = a.sum() + np.bincount(other, minlength=k) - inter
            best.append(float((inter / np.maximum(union, 1)).max()))
        out[c] = float(np.mean(best))
    return out


def members_table(run: RunPaths, parts: list[int], assigned: dict, n_exemplars: int = 6):
    frames, dims = [], []
    for p in parts:
        z = load_patches(run, p, ("id", "gy", "gx", "relevance", "dims"))
        lab, dist = assigned[p]
        frames.append(pd.DataFrame({"pattern": lab, "id": z["id"].astype(np.int64),
                                    "gy": z["gy"], "gx": z["gx"], "relevance": z["relevance"],
                                    "distance": dist}))  # fmt: skip
        dims.append(z["dims"].astype(np.float32))
    mem = pd.concat(frames, ignore_index=True)
    dims = np.concatenate(dims) if dims else np.zeros((0, len(DISTILLED_COLUMNS)))
    mem["exemplar"] = 0
    for _, g in mem.groupby("pattern"):
        g = g.drop_duplicates("id")  # exemplars from distinct images
        mem.loc[g.nsmallest(n_exemplars, "distance").index, "exemplar"] = 1
        far = g.drop(g.nsmallest(n_exemplars, "distance").index).nlargest(n_exemplars, "distance")
        mem.loc[far.index, "exemplar"] = 2
    return mem, dims


def pattern_impact(paths: list[bytes], cells: list[list[tuple[int, int]]], model_path: str,
                   sha: str, device: str | None, seed: int) -> dict:  # fmt: skip
    """p(fake) drop when each image's pattern patches ``cells`` are masked, and when as many
    random other patches are: arrays of per-image drops.

    The masked footprint is the pattern's patches and their 8 neighbours: a generator trace is
    not aligned with the ViT's patch grid, and the part of it that spills into a neighbouring
    patch would otherwise keep the detector firing. The control masks the same number of
    patches outside the footprint, at random. ``local_*``: the same with the pattern's own
    patches only (and as many random ones): whether the evidence is in them, or spread over
    the image so that any large mask removes some of it (benchmarks/pattern_controls.py)."""
    device = pick_device(device)
    model = cached_model(model_path, sha, device)
    pixels, ok = _pixels(model, paths)
    if pixels is None:
        return {k: np.zeros(0) for k in ("drop", "random_drop", "local_drop", "local_random_drop")}
    pixels = pixels.to(device)
    from .explain.adapter import grid

    own = [cells[j] for j in ok]
    pat, rnd = impact_masks(own, grid(model), np.random.default_rng(seed))
    # own patches only: a generator of its own, so the footprint's draws stay as they were
    lpat, lrnd = impact_masks(own, grid(model), np.random.default_rng([seed, 1]), False)
    ref = blurred(model, pixels)
    base = p_fake(model, pixels)

    def drop(mask: torch.Tensor) -> np.ndarray:
        return (base - p_fake(model, masked(pixels, ref, mask.to(device)))).cpu().numpy()

    return {"drop": drop(pat), "random_drop": drop(rnd), "local_drop": drop(lpat),
            "local_random_drop": drop(lrnd)}  # fmt: skip


def impact_masks(cells: list[list[tuple[int, int]]], grid_hw: tuple[int, int],
                 rng: np.random.Generator, neighbours: bool = True):  # fmt: skip
    """Patch masks (n, gh, gw) bool for ``pattern_impact``: each image's pattern ``cells`` (with
    their 8 neighbours unless ``neighbours`` is False), and the control: as many other patches
    of the same image, drawn at random."""
    gh, gw = grid_hw
    pat = torch.zeros(len(cells), gh, gw, dtype=torch.bool)
    for i, image_cells in enumerate(cells):
        for y, x in image_cells:
            pat[i, y, x] = True
    if neighbours:
        pat = torch.nn.functional.max_pool2d(pat[:, None].float(), 3, 1, 1)[:, 0] > 0
    rnd = torch.zeros_like(pat)
    for i in range(len(cells)):
        free = np.flatnonzero(~pat[i].numpy().ravel())
        pick = rng.choice(free, size=min(int(pat[i].sum()), len(free)), replace=False)
        rnd[i].view(-1)[torch.as_tensor(pick, dtype=torch.long)] = True
    return pat, rnd


def significant(drop: np.ndarray, lo: float, random_hi: float) -> bool:
    """Impact interval above 0 and above the random control's interval, on enough images."""
    return bool(len(drop) >= MIN_SIGNIFICANT and lo > 0 and lo > random_hi)


def summarize(mem: pd.DataFrame, dims: np.ndarray, images: pd.DataFrame, impacts: dict,
              stability: np.ndarray | None = None):  # fmt: skip
    lab = images.set_index("id")["label"]
    mean_dims = dims.mean(axis=0) + 1e-12
    rows = []
    for k, g in mem.groupby("pattern"):
        ids = g["id"].unique()
        n_fake = int((lab.loc[ids] == 1).sum())
        lift = dims[g.index].mean(axis=0) / mean_dims  # where this pattern sits in dimension maps
        top = [DISTILLED_COLUMNS[j] for j in np.argsort(-lift)[:3]]
        drop, rdrop = impacts[k]["drop"], impacts[k]["random_drop"]
        lo, hi = bootstrap_ci(drop)
        rlo, rhi = bootstrap_ci(rdrop)
        ldrop, lrdrop = impacts[k].get("local_drop", []), impacts[k].get("local_random_drop", [])
        (llo, lhi), (_, lrhi) = bootstrap_ci(ldrop), bootstrap_ci(lrdrop)
        rows.append(dict(pattern=k, n_patches=len(g), n_images=len(ids), n_fake_images=n_fake,
                         fake_share=n_fake / len(ids), impact=float(np.mean(drop)) if len(drop)
                         else np.nan, impact_lo=lo, impact_hi=hi,
                         random_impact=float(np.mean(rdrop)) if len(rdrop) else np.nan,
                         random_lo=rlo, random_hi=rhi,
                         local_impact=float(np.mean(ldrop)) if len(ldrop) else np.nan,
                         local_lo=llo, local_hi=lhi,
                         local_random_impact=float(np.mean(lrdrop)) if len(lrdrop) else np.nan,
                         local_random_hi=lrhi, top_dims=",".join(top),
                         mean_gy=g["gy"].mean(), mean_gx=g["gx"].mean(),
                         stability=np.nan if stability is None else float(stability[k]),
                         significant=significant(drop, lo, rhi)))  # fmt: skip
    return pd.DataFrame(rows)


def stage_patterns(cfg: RunConfig, run: RunPaths, images: pd.DataFrame, parts: list, sha: str,
                   client, previous: dict | None = None) -> dict:  # fmt: skip
    """Compute missing patch partitions, then (re)cluster and summarise if anything changed."""
    from .watch import progress

    pcfg = cfg.patterns
    prev = (previous or {}).get("config")
    # per-patch settings changed: recompute those patch files; otherwise only recluster. Each
    # file records its settings (older files: the previous stage's config says)
    prev_stale = prev is not None and any(prev.get(f) != getattr(pcfg, f) for f in PER_PATCH)
    changed = prev is not None and prev != asdict(pcfg)
    for i in range(len(parts)):
        if run.part_patches(i).exists():
            current = patches_current(run, i, pcfg)
            if current is False or (current is None and prev_stale):
                run.part_patches(i).unlink()
                changed = True
    if changed:
        run.patterns.unlink(missing_ok=True)
    todo = [i for i in range(len(parts)) if not run.part_patches(i).exists()]
    paths_of = images.set_index("id")["path_bytes"]
    from .runner import model_resources

    resources = model_resources(client)  # the tasks below run the model: on GPU workers
    futs = []
    for i in todo:
        ids = read_table(run.part_features(i), PART_FEATURE_COLUMNS)["id"]
        futs.append(client.submit(
            patch_partition, i, paths_of.loc[ids].tolist(), str(run.root.resolve()),
            str(run.encoder.resolve()), sha, pcfg, cfg.device, cfg.batch_size,
            [cfg.maps, *cfg.compare_maps], len(parts), pure=False,
            key=f"asap-patches-{sha[:12]}-{i}", resources=resources,
        ))  # fmt: skip
    for f in progress(futs, client, "patches", cfg.progress, "part"):
        f.result()  # re-raise a failed partition here
    if not todo and run.patterns.exists() and run.faithfulness.exists():
        return {"computed": 0, "reused": True}
    ids_parts = list(range(len(parts)))
    k, assigned, stability = cluster(run, ids_parts, pcfg)
    mem, dims = members_table(run, ids_parts, assigned)
    rng = np.random.default_rng(pcfg.seed)
    jobs = {}
    for pk, g in mem.groupby("pattern"):
        img_ids = g["id"].unique()
        img_ids = rng.permutation(img_ids)[: pcfg.impact_images]
        cells = g[g["id"].isin(img_ids)].groupby("id")[["gy", "gx"]]
        cells = {i: list(map(tuple, c.to_numpy())) for i, c in cells}
        jobs[pk] = client.submit(
            pattern_impact, paths_of.loc[img_ids].tolist(), [cells[i] for i in img_ids],
            str(run.encoder.resolve()), sha, cfg.device, pcfg.seed + int(pk), pure=False,
            resources=resources,
        )  # fmt: skip
    for f in progress(list(jobs.values()), client, "pattern impact", cfg.progress, "pattern"):
        f.result()
    impacts = {pk: f.result() for pk, f in jobs.items()}
    table = summarize(mem, dims, images, impacts, stability)
    faith = []
    for i in ids_parts:
        z = load_patches(run, i, tuple(f"faith_{c}" for c in FAITHFULNESS_COLUMNS))
        faith.append(pd.DataFrame({c: z[f"faith_{c}"] for c in FAITHFULNESS_COLUMNS}))
    faith = pd.concat(faith, ignore_index=True)
    summary = faithfulness_summary(faith, cfg.maps)
    write_table(run.pattern_members, mem, PATTERN_MEMBER_COLUMNS)
    write_table(run.faithfulness, faith, FAITHFULNESS_COLUMNS)
    write_table(run.patterns, table, PATTERN_COLUMNS)  # last: marks the stage done
    return {"computed": len(todo), "patterns": k, "patches": len(mem),
            "faithfulness": summary, "config": asdict(pcfg)}  # fmt: skip
