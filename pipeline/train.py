"""Train the encoder on the train split (supervised BCE), choose the epoch by validation loss, and
fit the temperature of p(fake) on the val split.

From scratch the whole tower trains end to end; a pretrained tower is frozen, so its embeddings are
computed once and only the projection, distiller and head train on them."""

from __future__ import annotations

import copy
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .encoder import ASAPEncoder
from .imageio import ImageRejected, load_for_model, normalize
from .selfblend import patch_targets, self_blend
from .trust import auc_interval

log = logging.getLogger(__name__)


def load_images(paths: list[bytes], size: int, threads: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Decode + resize many files in a thread pool: (n, size, size, 3) uint8, ok mask (n,)."""

    def one(p):
        try:
            return load_for_model(p, size)
        except ImageRejected:
            return None  # ingest checked every file; one that changed since is skipped

    with ThreadPoolExecutor(threads) as pool:
        arrs = list(pool.map(one, paths))
    ok = np.array([a is not None for a in arrs], dtype=bool)
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for i, a in enumerate(arrs):
        if a is not None:
            out[i] = a
    return out, ok


def capped_sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows drawn without replacement, each label keeping its share (at least one row of
    each label present), reproducible from ``seed``; in their original order."""
    if len(rows) <= n:
        return rows
    rng = np.random.default_rng(seed)
    picks = []
    for _, group in rows.groupby("label", sort=True):
        k = max(1, round(n * len(group) / len(rows)))
        picks.append(rng.choice(group.index.to_numpy(), size=min(k, len(group)), replace=False))
    return rows.loc[np.sort(np.concatenate(picks))]


SHIFT = 8  # pixels: one patch of the tiny ViTs


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image: one of the 8 flips/quarter turns and a shift by up to SHIFT whole pixels
    (reflected at the border). Both move pixels without resampling them, so a trace of a few
    grey levels survives intact (no blur, resize or colour jitter), while the detector must
    find it at any offset to its patch grid instead of memorising images (issue 9: without
    this the tiny ViT overfit the planted suite within 7 epochs)."""
    out = np.empty_like(batch)
    size = batch.shape[1]
    pad = np.pad(batch, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)), mode="reflect")
    for i, img in enumerate(pad):
        y, x = (int(v) for v in rng.integers(0, 2 * SHIFT + 1, 2))
        img = np.rot90(img[y : y + size, x : x + size], int(rng.integers(4)))
        out[i] = img[:, ::-1] if rng.random() < 0.5 else img
    return out


DECODE_CHUNK = 1024  # images per decoding task on a worker
LOOKAHEAD = 8  # streamed batches decoded ahead of the training step


class BatchSource:
    """Uint8 image batches for a fixed set of files: from memory when they fit, else decoded
    batch by batch. With a Dask ``client`` the decoding runs on the workers (issue 10: not
    bottlenecked in the driver): the cached set in chunks across all of them, and a streamed
    set ``LOOKAHEAD`` batches ahead of the step that needs them (``plan`` tells the order)."""

    def __init__(self, paths: list[bytes], size: int, cache_bytes: int, client=None):
        self.paths, self.size, self.client = list(paths), size, client
        self.cached = len(paths) * size * size * 3 <= cache_bytes
        self.arrays, self.ok = self._decode_all() if self.cached else (None, None)
        self._planned: list[np.ndarray] = []
        self._inflight: list = []  # (idx, future), in plan order

    def __len__(self) -> int:
        return len(self.paths)

    def _decode_all(self) -> tuple[np.ndarray, np.ndarray]:
        if self.client is None or not self.paths:
            return load_images(self.paths, self.size)
        chunks = [self.paths[s : s + DECODE_CHUNK] for s in range(0, len(self), DECODE_CHUNK)]
        futs = self.client.map(load_images, chunks, size=self.size, threads=1, pure=False)
        parts = self.client.gather(futs)
        return np.concatenate([a for a, _ in parts]), np.concatenate([o for _, o in parts])

    def plan(self, batches: list[np.ndarray]) -> None:
        """The index arrays ``get`` will be asked for next, in order (streamed sets on Dask)."""
        if self.cached or self.client is None:
            return
        for _, f in self._inflight:
            f.cancel()
        self._planned, self._inflight = [np.asarray(b) for b in batches], []
        self._top_up()

    def _top_up(self) -> None:
        while self._planned and len(self._inflight) < LOOKAHEAD:
            idx = self._planned.pop(0)
            paths = [self.paths[i] for i in idx]
            self._inflight.append(
                (idx, self.client.submit(load_images, paths, self.size, 1, pure=False))
            )

    def get(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.cached:
            return self.arrays[idx], self.ok[idx]
        if self._inflight and np.array_equal(self._inflight[0][0], idx):
            _, fut = self._inflight.pop(0)
            self._top_up()
            return fut.result()
        return load_images([self.paths[i] for i in idx], self.size)


def _pixels(model: ASAPEncoder, batch: np.ndarray, device) -> torch.Tensor:
    return normalize(batch, model.preprocess["mean"], model.preprocess["std"]).to(device)


@torch.no_grad()
def _embed_all(model, src: BatchSource, batch_size: int, device) -> tuple[torch.Tensor, np.ndarray]:
    model.eval()
    embs, oks = [], []
    for s in range(0, len(src), batch_size):
        arr, ok = src.get(np.arange(s, min(s + batch_size, len(src))))
        embs.append(model.embed(_pixels(model, arr, device)).cpu())
        oks.append(ok)
    return torch.cat(embs), np.concatenate(oks)


LOG_T_RANGE = (-8.0, 8.0)  # a confident detector may need T far below 1, a timid one far above


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the validation NLL of sigmoid(logit / T): a grid over log T, then
    golden-section refinement around the best grid point. The targets are Platt's (1999):
    (n_fake + 1) / (n_fake + 2) for fakes and 1 / (n_real + 2) for reals, so a detector that
    separates the validation split perfectly gets a finite temperature instead of T -> 0 and
    p(fake) of exactly 0 or 1. The range is wide enough that a confident detector is not pinned
    to its floor (issue 9: exp(-3) was)."""
    if len(logits) == 0 or labels.min() == labels.max():
        return 1.0
    z = torch.tensor(logits, dtype=torch.float64)
    lab = np.asarray(labels)
    n_fake, n_real = int((lab == 1).sum()), int((lab == 0).sum())
    y = torch.tensor(
        np.where(lab == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2)), dtype=torch.float64
    )

    def nll(log_t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(z / math.exp(log_t), y))

    grid = np.linspace(*LOG_T_RANGE, 161)
    i = int(np.argmin([nll(v) for v in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if nll(a) < nll(b) else (a, hi)
    return float(math.exp((lo + hi) / 2))


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, prior: float | None = None
) -> tuple[float, float]:
    """Platt scaling (1999): temperature T and shift b of p(fake) = sigmoid(logit / T + b)
    minimising the validation NLL against Platt's targets (see ``fit_temperature``), i.e. a
    one-feature logistic regression in (1 / T, b), a convex problem, started from the
    temperature-only fit. The shift moves the operating point p = 0.5 to where the validation
    split says fake and real are equally likely: a detector's raw logit 0 lands wherever training
    left the head's bias, which differed from seed to seed (planted suite, issue 9: 6% to 32% of
    real images flagged at about the same AUC), and with it which fakes count as detected.

    ``prior``: the share of fakes the fit assumes, each class's validation images weighted to it
    (None: the validation split's own share). A hash split's val is small and its share drifts
    by chance: in one of three seeds of issue 9's two-family check it held 29% reals where the
    data hold 50%, the shift absorbed that, and 55% of the held-out real photographs were flagged
    (`benchmarks/new_user.py`). Training passes the train split's share, which estimates the data's
    prior from many more images."""
    t0 = fit_temperature(logits, labels)
    if len(logits) == 0 or labels.min() == labels.max():
        return t0, 0.0
    from scipy.optimize import minimize

    z = np.asarray(logits, np.float64)
    lab = np.asarray(labels)
    n_fake, n_real = int((lab == 1).sum()), int((lab == 0).sum())
    y = np.where(lab == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2))
    if prior is None:
        w = np.ones(len(z))
    else:
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {prior}")
        w = np.where(lab == 1, prior / n_fake, (1.0 - prior) / n_real) * len(z)

    def nll(v):
        s = v[0] * z + v[1]
        loss = np.logaddexp(0.0, s) - y * s  # binary cross-entropy with logits, stable
        sig = 0.5 * (1 + np.tanh(0.5 * s))
        r = w * (sig - y)
        return (w * loss).mean(), np.array([(r * z).mean(), r.mean()])

    lo, hi = (math.exp(-v) for v in reversed(LOG_T_RANGE))
    res = minimize(nll, np.array([1 / t0, 0.0]), jac=True, method="L-BFGS-B",
                   bounds=[(lo, hi), (-SHIFT_RANGE, SHIFT_RANGE)])  # fmt: skip
    a, b = (float(v) for v in res.x)
    if not res.success and nll(res.x)[0] > nll(np.array([1 / t0, 0.0]))[0]:
        return t0, 0.0
    return 1 / a, b


def _prior(labels: np.ndarray) -> float | None:
    """The share of fakes among ``labels`` (the train split), None when it holds one class."""
    share = float(np.mean(labels)) if len(labels) else 0.0
    return share if 0.0 < share < 1.0 else None


SHIFT_RANGE = 20.0  # logits: far beyond any shift a sane validation split asks for


class EarlyStopping:
    """Keeps the best validation loss's round; says stop after ``patience`` validation rounds
    without a relative improvement of at least ``min_delta``."""

    def __init__(self, patience: int, min_delta: float = 1e-3):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.bad = float("inf"), -1, 0

    def step(self, epoch: int, loss: float) -> tuple[bool, bool]:
        """(improved, stop) after a validation round (``epoch``: its index) with ``loss``."""
        improved = loss < self.best * (1 - self.min_delta) or self.best_epoch < 0
        if improved:
            self.best, self.best_epoch, self.bad = loss, epoch, 0
        else:
            self.bad += 1
        return improved, self.bad >= self.patience


def val_separation(logits: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """The val ROC-AUC of ``logits`` and the lower end of its 95% interval; (None, None) when
    val lacks one of the labels."""
    labels = np.asarray(labels).astype(int)
    if len(labels) == 0 or labels.min() == labels.max():
        return None, None
    auc, lo, _ = auc_interval(labels, logits)
    return auc, lo


def round_bounds(n: int, val_every: int, batch_size: int) -> list[int]:
    """Where one epoch of ``n`` training images is cut into validation rounds: one round when
    ``n <= val_every``, else ceil(n / val_every) rounds of about equal size, cut at whole
    batches. Returns the cut points [0, ..., n]."""
    rounds = max(1, math.ceil(n / max(val_every, 1)))
    batches = math.ceil(n / batch_size)
    rounds = min(rounds, batches)
    cuts = {round(r * batches / rounds) * batch_size for r in range(rounds)}
    return sorted(c for c in cuts if c < n) + [n]


def train_encoder(
    model: ASAPEncoder,
    images: pd.DataFrame,
    cfg: TrainConfig,
    device: str = "cpu",
    embedder=None,
    client=None,
) -> dict:
    """Train in place on ``images`` rows of split train (val for selection + temperature).
    ``embedder(paths) -> (embeddings (n, E), ok mask)`` computes a frozen tower's embeddings
    elsewhere (the Dask workers: pipeline.embed.DaskEmbedder); by default this process does.
    ``client``: a Dask client whose workers decode the images of a tower trained from scratch
    (by default this process does)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    usable = images[images["duplicate_of"] < 0]
    train = usable[usable["split"] == "train"]
    val = usable[usable["split"] == "val"]
    n_available = len(train)
    if cfg.train_limit is not None and len(train) > cfg.train_limit:
        share = cfg.train_limit / len(train)
        train = capped_sample(train, cfg.train_limit, cfg.seed)
        val = capped_sample(val, max(1, round(len(val) * share)), cfg.seed + 1)
        log.info("train limit: %d of %d train images, %d val", len(train), n_available, len(val))
    if train["label"].nunique() < 2:
        raise ValueError(
            "the train split needs both real and fake images to train the encoder; found labels "
            f"{sorted(train['label'].unique().tolist())}. Add images or pass --encoder CKPT."
        )
    size = model.image_size
    t0 = time.perf_counter()
    frozen = model.cfg.frozen_backbone
    if not frozen:  # decoded here (kept in memory when they fit); a frozen tower needs embeddings
        tr_src = BatchSource(train["path_bytes"].tolist(), size, cfg.cache_bytes, client)
        va_src = BatchSource(val["path_bytes"].tolist(), size, cfg.cache_bytes, client)
    else:
        tr_src = va_src = None
    y_tr = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    y_va = val["label"].to_numpy()
    n_fake = float(y_tr.sum())
    pos_weight = torch.tensor((len(y_tr) - n_fake) / max(n_fake, 1.0), device=device)
    model.to(device)

    embed_where = None
    if frozen:  # embeddings computed once; only the heads train
        if embedder is None:
            embed_where = "driver"

            def embedder(paths):
                src = BatchSource(paths, size, cfg.cache_bytes)
                return _embed_all(model, src, cfg.batch_size, device)

        e_tr, ok_tr = embedder(train["path_bytes"].tolist())
        e_va, ok_va = embedder(val["path_bytes"].tolist())
        embed_where = embed_where or "workers"
        params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
        lr = cfg.lr * 10
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        lr = cfg.lr
    patch_head = None
    if not frozen and cfg.patch_loss > 0:  # the training scaffold of the patch-level loss
        patch_head = torch.nn.Linear(model.visual.transformer.width, 1).to(device)
        params += list(patch_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    # linear warm-up over the first epoch(s), then the rate is halved whenever the validation
    # loss stalls for half the patience (with early stopping, no fixed-length schedule)
    warmup = min(math.ceil(len(train) / cfg.batch_size), 200)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(1, cfg.patience // 2 - 1), threshold=1e-3
    )
    stopper = EarlyStopping(cfg.patience)
    # the weights' moving average (cfg.ema_images), float tensors only; None when off
    ema = (
        None
        if cfg.ema_images <= 0
        else {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    )
    ema_steps = 0

    def ema_update(n_images):
        """Fold this step's weights into the average: decay per step from the half-life in
        images, capped by (1 + k) / (10 + k) over the first k steps so that early steps are
        not averaged with the initial weights."""
        nonlocal ema_steps
        ema_steps += 1
        decay = min(0.5 ** (n_images / cfg.ema_images), (1 + ema_steps) / (10 + ema_steps))
        with torch.no_grad():
            state = model.state_dict()
            for k, v in ema.items():
                v.lerp_(state[k], 1.0 - decay)

    def forward_logits(idx, src, emb_cache, train_mode):
        """Logits (B,), decode mask, and the patch-level logit (B,) when that loss is on."""
        if frozen:
            emb = emb_cache[idx].to(device)
            return model.heads(emb)[1], None, None
        arr, ok = src.get(idx)
        if train_mode:
            arr = augment(arr, rng)
        pixels = _pixels(model, arr, device)
        if train_mode and patch_head is not None:
            *_, logit, tokens = model.forward_with_tokens(pixels)
            # multiple-instance pooling: an image is as fake as its most suspicious patch (a
            # smooth maximum of small logits is their mean, which dilutes a local trace again)
            return logit, ok, patch_head(tokens)[..., 0].amax(dim=1)
        return model(pixels)[2], ok, None

    def blended_step(idx):
        """The loss of one training batch with self-blended copies of cfg.selfblend of its real
        images (each with a random local trace): the image-level losses on the batch's own
        images, plus a per-token loss on the blended copies that says which patches carry the
        trace. The copies do not enter the image-level losses: labelled fake there, they taught
        the head that any local oddity makes an image fake (real images of the planted suite
        flagged in 40%, seed 1), and the maps followed those oddities instead of the traces."""
        arr, ok = tr_src.get(idx)
        arr = augment(arr, rng)
        y = y_tr[idx].numpy()
        pick = np.nonzero((y == 0) & ok)[0]
        pick = pick[rng.random(len(pick)) < cfg.selfblend]
        made = [self_blend(arr[i], rng, model.patch_size) for i in pick]
        made = [(im, m) for im, m in made if m.any()]
        if made:
            arr = np.concatenate([arr, np.stack([im for im, _ in made])])
            ok = np.concatenate([ok, np.ones(len(made), bool)])
            y = np.concatenate([y, np.ones(len(made), y.dtype)])
        *_, logit, tokens = model.forward_with_tokens(_pixels(model, arr, device))
        token_logit = patch_head(tokens)[..., 0]  # (B, tokens)
        keep = torch.as_tensor(ok, device=device)
        keep[len(idx) :] = False  # the blended copies train the tokens only
        yt = torch.as_tensor(y, dtype=torch.float32, device=device)
        loss = (
            F.binary_cross_entropy_with_logits(logit[keep], yt[keep], pos_weight=pos_weight)
            + cfg.ortho_weight * model.orthogonality_penalty()
            + cfg.patch_loss * F.binary_cross_entropy_with_logits(
                token_logit.amax(dim=1)[keep], yt[keep], pos_weight=pos_weight)
        )  # fmt: skip
        if made:
            masks = torch.as_tensor(np.stack([m for _, m in made]), device=device)
            target = patch_targets(masks, model)
            loss = loss + cfg.patch_loss * F.binary_cross_entropy_with_logits(
                token_logit[-len(made) :], target
            )
        return loss

    def val_logits():
        """Validation logits, and which images decoded."""
        model.eval()
        out, oks = [], []
        batches = [np.arange(s, min(s + cfg.batch_size, len(val)))
                   for s in range(0, len(val), cfg.batch_size)]  # fmt: skip
        if not frozen:
            va_src.plan(batches)
        with torch.no_grad():
            for idx in batches:
                logit, ok, _ = forward_logits(idx, va_src, e_va if frozen else None, False)
                out.append(logit.cpu())
                oks.append(ok_va[idx] if frozen else ok)
        if not out:
            return np.zeros(0, dtype=np.float32), np.zeros(0, bool)
        return torch.cat(out).numpy(), np.concatenate(oks)

    # self-blended fakes need the patch tokens' head (a tower trained from scratch)
    blending = patch_head is not None and cfg.selfblend > 0
    history, best_state, stop, stop_reason = [], None, False, None
    signal = False  # whether any validation round told the val fakes from the reals
    # validation every cfg.val_every training images (once per epoch on smaller sets): patience
    # counts these rounds, so a large set gives up after as many updates as a small one
    cuts = round_bounds(len(train), cfg.val_every, cfg.batch_size)
    n_rounds = len(cuts) - 1
    for epoch, r in ((e, r) for e in range(cfg.epochs) for r in range(n_rounds)):
        if stop:
            break
        model.train()
        if frozen:
            model.visual.eval()
        if r == 0:
            perm = rng.permutation(len(train))
        if not frozen:
            tr_src.plan([perm[s : min(s + cfg.batch_size, cuts[r + 1])]
                         for s in range(cuts[r], cuts[r + 1], cfg.batch_size)])  # fmt: skip
        losses = []
        for s in range(cuts[r], cuts[r + 1], cfg.batch_size):
            idx = perm[s : min(s + cfg.batch_size, cuts[r + 1])]
            if blending:
                loss = blended_step(idx)
            else:
                logit, ok, patch_logit = forward_logits(idx, tr_src, e_tr if frozen else None, True)
                keep = torch.as_tensor(ok_tr[idx] if frozen else ok, device=device)
                y = y_tr[idx].to(device)
                loss = (
                    F.binary_cross_entropy_with_logits(logit[keep], y[keep], pos_weight=pos_weight)
                    + cfg.ortho_weight * model.orthogonality_penalty()
                )
                if patch_logit is not None:
                    loss = loss + cfg.patch_loss * F.binary_cross_entropy_with_logits(
                        patch_logit[keep], y[keep], pos_weight=pos_weight
                    )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if ema is not None:
                ema_update(len(idx))
        raw = None
        # validate (and keep) the average, and halve the rate when its loss stalls; the raw
        # weights train on
        if ema is not None:
            raw = {k: v.detach().clone() for k, v in model.state_dict().items() if k in ema}
            model.load_state_dict(ema, strict=False)
        z, ok_v = val_logits()
        v_loss = (
            float(F.binary_cross_entropy_with_logits(
                torch.as_tensor(z[ok_v]), torch.as_tensor(y_va[ok_v], dtype=torch.float32)))
            if len(z) else float(np.mean(losses))
        )  # fmt: skip
        auc, auc_lo = val_separation(z[ok_v], y_va[ok_v]) if len(z) else (None, None)
        signal = signal or (auc_lo is not None and auc_lo > 0.5)
        done = epoch + (r + 1) / n_rounds  # epochs run so far
        history.append({"epoch": round(done, 4), "images": round(done * len(train)),
                        "train_loss": float(np.mean(losses)), "val_loss": v_loss,
                        "val_auc": auc, "val_auc_lo": auc_lo,
                        "lr": opt.param_groups[0]["lr"]})  # fmt: skip
        log.info("epoch %.2f (%d images) train_loss %.4f val_loss %.4f%s", done,
                 history[-1]["images"], history[-1]["train_loss"], v_loss,
                 "" if auc is None else f" val_auc {auc:.3f} (95% CI from {auc_lo:.3f})",
                 )  # fmt: skip
        improved, stop = stopper.step(len(history) - 1, v_loss)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        if raw is not None:
            model.load_state_dict(raw, strict=False)
        if stop:
            stop_reason = "patience"
            log.info("early stop: no improvement for %d validation rounds", cfg.patience)
        elif (cfg.chance_images and not signal and auc is not None
              and history[-1]["images"] >= cfg.chance_images):  # fmt: skip
            stop, stop_reason = True, "no_signal"
            best = max(h["val_auc"] for h in history if h["val_auc"] is not None)
            log.warning(
                "no signal: after %d training images (%d validation rounds) no round told the val "
                "fakes from the reals (best val AUC %.3f; its 95%% interval never cleared 0.5), so "
                "training stops here (--chance-images %d; 0 trains on to --patience)",
                history[-1]["images"], len(history), best, cfg.chance_images)  # fmt: skip
        else:
            plateau.step(v_loss)
    model.load_state_dict(best_state)
    z, ok_v = val_logits()
    z, y_fit = z[ok_v], y_va[ok_v]  # an image that no longer decodes says nothing
    t, shift = (
        fit_calibration(z, y_fit, prior=_prior(y_tr.numpy()))
        if cfg.calibrate_shift
        else (fit_temperature(z, y_fit), 0.0)
    )
    model.temperature.fill_(t)
    model.logit_shift.fill_(shift)
    model.eval()
    return {
        "best_round": stopper.best_epoch,  # index into history
        "best_epoch": history[stopper.best_epoch]["epoch"],  # epochs run when it was reached
        "epochs_run": history[-1]["epoch"],
        "rounds_per_epoch": n_rounds,
        "stopped_early": len(history) < cfg.epochs * n_rounds,
        # "patience" (val loss stalled), "no_signal" (cfg.chance_images) or None (all epochs)
        "stop_reason": stop_reason,
        "val_signal": signal,  # whether any round's val AUC interval cleared 0.5
        "history": history,
        "temperature": float(model.temperature),
        "logit_shift": float(model.logit_shift),
        "n_train": len(train),
        "n_train_available": n_available,
        "n_val": len(val),
        "train_seconds": time.perf_counter() - t0,
        "frozen_backbone": frozen,
        "embedded_on": embed_where,  # a frozen tower's embedding pass: "workers" or "driver"
        "selfblend": cfg.selfblend if blending else 0.0,
    }
