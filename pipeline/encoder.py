"""ASAP's encoder: an open_clip ViT image tower -> text-disentangling projection (512->256,
orthogonal init) -> distiller (256->16, the "distilled" representation) -> real/fake head (16->1).

Built by ``create_encoder`` from an EncoderConfig; saved with its config by ``save_encoder`` and
rebuilt offline by ``load_encoder`` (the checkpoint holds the tower's weights too)."""

from __future__ import annotations

import hashlib
import io
import math
import os
import socket
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from .config import EncoderConfig

ASAP_MODEL_CONFIGS = Path(__file__).parent / "model_configs"
HIGHPASS_GAIN = 4.0  # the residual's std is a fraction of the pixels'; keep inputs O(1)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Where a quick TCP probe checks that the model hub can be reached before open_clip tries (it
# otherwise retries for most of a minute when offline). Override for tests or mirrors.
HUB_PROBE_ENV = "ASAP_HUB_PROBE"
DEFAULT_HUB_PROBE = "huggingface.co:443"


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def _register_configs() -> None:
    import open_clip

    if "asap-tiny-vit-64" not in open_clip.list_models():
        open_clip.add_model_config(ASAP_MODEL_CONFIGS)


ENERGY_CLAMP = 4.0  # log-ratio bound: e^4 ~ 55x the surrounding residual energy
ENERGY_SURROUND = 6.0  # px: sigma of the surround a pixel's residual energy is compared with


def local_energy(residual: torch.Tensor) -> torch.Tensor:
    """Per channel, log of the residual's local energy (squared residual blurred over ~3x3 px)
    over the energy of its surround (blurred with sigma ENERGY_SURROUND, about two patches of the
    tiny ViT), clamped to +-ENERGY_CLAMP: ~0 where a region is as noisy as its surroundings,
    positive where it is noisier (speckle, a ring, a pasted or re-generated region), negative
    where smoother. Why: the ViT's patch embedding is linear and ln_pre normalises each token, so
    a trace whose residual has random sign (speckle) or is weak against the image's noise
    differs from clean patches only in *amount*, which the norm removes; as a log-ratio it is a
    consistent direction that survives. Side by side on the planted suite (seed 0, 40 epochs;
    README): speckle detected in 4% -> 57% of held-out fakes, ring 21% -> 66%, accuracy 0.70 ->
    0.76. A ratio to the whole image's median instead detected every family on smooth textures
    but almost nothing on photographs, whose energy varies with their content."""
    energy = TF.gaussian_blur(residual * residual, [5, 5], [1.0, 1.0]) + 1e-3
    k = 2 * math.ceil(2 * ENERGY_SURROUND) + 1
    surround = TF.gaussian_blur(energy, [k, k], [ENERGY_SURROUND, ENERGY_SURROUND])
    return torch.log(energy / surround).clamp(-ENERGY_CLAMP, ENERGY_CLAMP)


PATCH_NEIGHBOURS = 5  # side, in patches, of the neighbourhood a patch's energy is compared with


def patch_energy(residual: torch.Tensor, patch: int) -> torch.Tensor:
    """Per channel, log of each ViT patch's mean residual energy over the median of its
    PATCH_NEIGHBOURS x PATCH_NEIGHBOURS neighbourhood of patches (reflected at the border),
    clamped to +-ENERGY_CLAMP, constant within each patch. Like ``local_energy`` it turns "more
    (or less) noise here than around" into a consistent direction the patch embedding can read,
    but token by token: a trace changes only its own patches' value (the median ignores one odd
    patch among 25), so the evidence stays in the tokens where it is. ``local_energy``'s blurred
    surround lowers the value of every pixel within ~12 px of a trace, which let the tower read
    it from neighbouring patches (issue 9: gradient maps pointed at the trace in 22% of detected
    fakes, occlusion in 73%)."""
    b, c, h, w = residual.shape
    log_e = torch.log(F.avg_pool2d(residual * residual, patch) + 1e-3)  # (B, C, h/p, w/p)
    gh, gw = log_e.shape[-2:]
    k = min(PATCH_NEIGHBOURS, 2 * min(gh, gw) - 1) // 2 * 2 + 1  # odd, reflect-padding allows
    pad = k // 2
    padded = F.pad(log_e.reshape(b * c, 1, gh, gw), (pad, pad, pad, pad), mode="reflect")
    ref = F.unfold(padded, k).median(dim=1).values.reshape(b, c, gh, gw)
    ratio = (log_e - ref).clamp(-ENERGY_CLAMP, ENERGY_CLAMP)
    return F.interpolate(ratio, size=(h, w), mode="nearest")


# temperature of the smooth maximum over tiles, in logit units: a tile 3 logits above 15 others
# carries 96% of the weight
TILE_POOL_T = 0.5

# the "bank" stem's learned filters of the residual (each adds one patch-energy channel)
BANK_FILTERS = 8
BANK_SIZE = 5
BANK_LINES = 4  # of them, initialised as grey ridge detectors at 0, 90, 45 and 135 degrees
BANK_CHROMA = 2  # the next ones, initialised as opponent-colour detectors (R - G, B - G)


def ridge_filters(size: int = BANK_SIZE) -> torch.Tensor:
    """(4, 3, size, size) unit-norm matched filters of a 1 px grey line in the stem's residual,
    horizontal, vertical and the two diagonals: along the line they average ``size`` pixels of
    the three channels; across it they follow the residual's profile of a line (a delta minus
    the stem's sigma-1 Gaussian). A faint seam (+8 grey levels on noise of std 6) changes its
    patches' residual energy by about as much as the noise does, but these filters' energy by
    several times that (benchmarks and issue 9: with random filters the bank never learned it)."""
    half = size // 2
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    profile = -torch.exp(-(x**2) / 2)
    profile = profile / -profile.sum()
    profile[half] += 1.0  # delta - Gaussian(sigma 1), as the residual makes of a line
    across = profile[:, None].expand(size, size)  # rows vary: a horizontal line
    d = torch.arange(size)[:, None] - torch.arange(size)[None, :]
    diag = torch.where(d.abs() <= half, profile[(d + half).clamp(0, size - 1)],
                       torch.zeros(()))  # fmt: skip
    w = torch.stack([across, across.T, diag, diag.flip(1)])[:, None].expand(4, 3, size, size)
    w = w / w.flatten(1).norm(dim=1)[:, None, None, None]
    return w.float().contiguous()


def chroma_filters(size: int = BANK_SIZE) -> torch.Tensor:
    """(2, 3, size, size) unit-norm opponent-colour filters of the residual at the centre pixel,
    red minus green and blue minus green: a photograph's fine detail is mostly luminance, its
    three channels' residuals moving together, so these respond to little of it, while colour
    noise and a colour-shifted edge (speckle, a ring; a generator's per-channel upsampling)
    change them fully. As an image statistic (the largest patch energy, no training) they lift
    the AUC of colour speckle on photographs from 0.55 with the residual's energy to 0.79, of a
    thin colour ring from 0.55 to 0.71 (issue 9)."""
    w = torch.zeros(2, 3, size, size)
    c = size // 2
    w[0, 0, c, c], w[0, 1, c, c] = 1.0, -1.0
    w[1, 2, c, c], w[1, 1, c, c] = 1.0, -1.0
    return w / 2**0.5


# the "lines" stem's extra channels: grey ridges one pixel wide, along rows and columns, bright
# and dark; a ridge's response is averaged along LINE_LENGTH pixels of its direction and divided
# by the response's RMS within LINE_SURROUND pixels (a CFAR detector), then each patch keeps its
# largest value
LINE_LENGTH = 8
LINE_SURROUND = 15
LINE_FLOOR = 0.5 / 255  # half a grey level: flat regions do not divide by ~0
STEM_CHANNELS = {"none": 3, "highpass": 3, "forensic": 6, "patch": 6, "bank": 6 + BANK_FILTERS,
                 "lines": 6 + BANK_FILTERS + 4}  # fmt: skip


def grey_ridges(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] units (any per-channel offset) -> (B, 4, H, W): per ViT
    patch, the strongest 1 px ridge that all three channels share, horizontal or vertical, bright
    or dark, relative to its surround (constant within each patch). The ridge at a pixel is the
    smallest over the channels of the second difference across the line (a grey line raises every
    channel's alike; a photograph's own edges are mostly luminance too, but smoothed by its optics
    and resampling over more than a pixel, and not exactly alike in the three channels), so a
    pixel-sharp grey seam, grid line or paste boundary stands out where the ``bank`` stem's
    patch energy, a mean over the patch's 64 pixels, dilutes it. As a statistic with no training
    (the image's largest value; ``benchmarks/visibility.py``, issue 9) it finds the planted 1 px
    seam at AUC 0.969 on smooth textures and 0.627 on photographs (a grey matched filter of the
    seam's exact 20 px: 0.945 and 0.615), and the unseen families' JPEG-like block grid (+5 grey
    levels every 8th row and column) at 0.939 and 0.589."""
    out = []
    k = LINE_SURROUND
    h, w = x.shape[-2:]
    for dim in (2, 3):  # across rows (a horizontal line), across columns (a vertical one)
        if dim == 2:
            d = 2 * x[:, :, 1:-1] - x[:, :, :-2] - x[:, :, 2:]  # (B, 3, H - 2, W)
            kernel = (1, LINE_LENGTH)
        else:
            d = 2 * x[..., 1:-1] - x[..., :-2] - x[..., 2:]  # (B, 3, H, W - 2)
            kernel = (LINE_LENGTH, 1)
        for sign in (1.0, -1.0):
            m = (sign * d).amin(dim=1, keepdim=True)  # all three channels rise (or fall)
            y = F.avg_pool2d(m, kernel, 1)  # only where the whole window lies in the image
            rms = F.avg_pool2d(F.pad(y * y, (k // 2,) * 4, mode="reflect"), k, 1).sqrt()
            r = y / (rms + LINE_FLOOR)
            # back on the image's grid, each window at its centre; the border, where no window
            # fits, never wins a patch's maximum (padding there made the reals' borders win)
            top, left = (h - r.shape[-2]) // 2, (w - r.shape[-1]) // 2
            r = F.pad(r, (left, w - r.shape[-1] - left, top, h - r.shape[-2] - top), value=-1e4)
            out.append(F.interpolate(F.max_pool2d(r, patch), size=(h, w), mode="nearest"))
    return torch.cat(out, dim=1)


class ASAPEncoder(nn.Module):
    def __init__(self, visual: nn.Module, embed_dim: int, cfg: EncoderConfig, preprocess: dict):
        super().__init__()
        self.cfg = cfg
        self.visual = visual
        self.preprocess = preprocess  # image_size, mean, std
        self.text_projection = nn.Linear(embed_dim, cfg.proj_dim, bias=False)
        nn.init.orthogonal_(self.text_projection.weight)
        self.distiller = nn.Linear(cfg.proj_dim, cfg.distilled_dim)
        self.head = nn.Linear(cfg.distilled_dim, 1)
        # Platt scaling of p(fake) = sigmoid(logit / T + shift), both fitted on the val split
        # (pipeline.train.fit_calibration); checkpoints from before the shift load with 0.
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("logit_shift", torch.zeros(()))
        # the "bank" stem's filters, trained with the tower (saved with it; absent otherwise)
        if cfg.stem in ("bank", "lines"):
            self.bank = nn.Conv2d(3, BANK_FILTERS, BANK_SIZE, padding=BANK_SIZE // 2,
                                  padding_mode="reflect", bias=False)  # fmt: skip
            with torch.no_grad():  # the rest keep torch's random start and learn what they can
                self.bank.weight[:BANK_LINES] = ridge_filters(BANK_SIZE)
                self.bank.weight[BANK_LINES : BANK_LINES + BANK_CHROMA] = chroma_filters(BANK_SIZE)

    @property
    def tower_size(self) -> int:
        """The tower's input side in pixels (one tile)."""
        return int(self.preprocess["image_size"])

    @property
    def tiles(self) -> int:
        return int(self.cfg.tiles)

    @property
    def image_size(self) -> int:
        """The side every loader resizes and crops an image to: ``tiles`` x the tower's input."""
        return self.tower_size * self.tiles

    def to_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, k*S, k*S) -> (B*k*k, C, S, S), tiles in row-major order within each image."""
        k = self.tiles
        if k == 1:
            return x
        B, C, H, W = x.shape
        s = H // k
        return x.reshape(B, C, k, s, k, s).permute(0, 2, 4, 1, 3, 5).reshape(B * k * k, C, s, s)

    def pool_heads(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tiles' CLIP embeddings (B*k*k, E) -> the image's embedding (B, E), distilled (B, 16)
        and fake logit (B,). Tiles are weighted by softmax(tile logit / TILE_POOL_T), a smooth
        maximum: one fake-looking tile makes the image fake, a real image needs every tile real.
        The image's distilled vector is the weighted mean of the tiles', and its logit is the head
        on it, i.e. the weighted mean of the tiles' logits (the head is linear), so the 16
        dimensions still explain the score."""
        distilled, logit = self.heads(emb)
        k2 = self.tiles**2
        if k2 == 1:
            return emb, distilled, logit
        B = emb.shape[0] // k2
        w = torch.softmax(logit.view(B, k2) / TILE_POOL_T, dim=1)[..., None]  # (B, k2, 1)
        distilled = (w * distilled.view(B, k2, -1)).sum(dim=1)
        emb = (w * emb.view(B, k2, -1)).sum(dim=1)
        return emb, distilled, self.head(distilled).squeeze(-1)

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the tower sees. "highpass": the residual of the normalised image after a Gaussian
        blur (sigma 1 px), gained x4: content (std ~50 grey levels) no longer drowns traces of a
        few grey levels. Without it the tiny ViT trained from scratch did not learn a +-12
        checkerboard in 12 epochs (train loss at chance; issue 9). "forensic": that residual plus
        its local energy relative to the image's own (``local_energy``), 6 channels. "bank": "patch"
        plus ``patch_energy`` of BANK_FILTERS learned 5x5 filters of the residual: a matched
        filter's band (a grating's period, a seam's orientation) carries the trace's energy
        where the residual's whole band also carries the content's. The first BANK_LINES
        filters start as ridge detectors (``ridge_filters``), the next BANK_CHROMA as
        opponent-colour detectors (``chroma_filters``), the rest at random. "lines" (opt-in):
        "bank" plus 4 channels of pixel-sharp grey ridges per patch (``grey_ridges``)."""
        if self.cfg.stem == "none":
            return pixels
        residual = HIGHPASS_GAIN * (pixels - TF.gaussian_blur(pixels, [5, 5], [1.0, 1.0]))
        if self.cfg.stem == "highpass":
            return residual
        if self.cfg.stem == "patch":
            return torch.cat([residual, patch_energy(residual, self.patch_size)], dim=1)
        if self.cfg.stem in ("bank", "lines"):
            p = self.patch_size
            bands = patch_energy(self.bank(residual), p)
            parts = [residual, patch_energy(residual, p), bands]
            if self.cfg.stem == "lines":  # grey 1 px ridges, in [0, 1] units per channel
                std = torch.tensor(self.preprocess["std"], dtype=pixels.dtype, device=pixels.device)
                parts.append(grey_ridges(pixels * std.view(1, 3, 1, 1), p))
            return torch.cat(parts, dim=1)
        return torch.cat([residual, local_energy(residual)], dim=1)

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    def tower_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, k*S, k*S) -> what the tower sees, tile by tile (B*k*k, C, S, S). The
        stem runs on the whole image, so a tile's border patches have their real neighbours."""
        return self.to_tiles(self.stem(pixels))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) -> CLIP embedding (B, E) (a frozen tower's pass: one tile)."""
        if self.tiles != 1:
            raise ValueError("embed() reads whole images; a tiled encoder pools in forward()")
        return self.visual(self.stem(pixels))

    def heads(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP embedding (B, E) -> distilled (B, 16), fake logit (B,)."""
        distilled = self.distiller(F.gelu(self.text_projection(emb)))
        return distilled, self.head(distilled).squeeze(-1)

    def forward(self, pixels: torch.Tensor):
        """Pixels (B, 3, k*S, k*S) -> embedding (B, E), distilled (B, 16), fake logit (B,)."""
        return self.pool_heads(self.visual(self.tower_input(pixels)))

    def forward_with_tokens(self, pixels: torch.Tensor):
        """forward(), plus the last block's patch tokens after ln_post (B, k*k*(T-1), width), every
        tile's: what the patch-level training loss reads (the same computation as ``visual``, via
        the adapter)."""
        from .explain import adapter as A

        x = A.run_blocks(self, A.embed_tokens(self, pixels), A.blocks(self))
        emb, distilled, logit = self.pool_heads(A.pooled(self, x[:, 0]))
        tokens = self.visual.ln_post(x[:, 1:])
        return emb, distilled, logit, tokens.reshape(len(pixels), -1, tokens.shape[-1])

    def p_fake(self, logit: torch.Tensor) -> torch.Tensor:
        # The temperature lives with the model (maybe on a GPU); the logit may come back on the CPU.
        t, b = self.temperature.to(logit.device), self.logit_shift.to(logit.device)
        return torch.sigmoid(logit / t + b)

    def orthogonality_penalty(self) -> torch.Tensor:
        w = self.text_projection.weight  # (P, E)
        eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
        return ((w @ w.T - eye) ** 2).mean()


def _check_vit(visual: nn.Module, model_name: str) -> None:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"{model_name} has a {type(visual).__name__} image tower; ASAP's attention relevance "
            "needs an open_clip VisionTransformer (ViT-*)."
        )
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ValueError(
            f"{model_name} pools with {visual.pool_type!r}/attn_pool; ASAP needs CLS-token pooling."
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    host, _, port = os.environ.get(HUB_PROBE_ENV, DEFAULT_HUB_PROBE).rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_pretrained(cfg: dict, cache_dir: str | None) -> str | None:
    """The already-downloaded file for an open_clip pretrained cfg, without touching the network."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else [
            "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
        ]  # fmt: skip
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        path = os.path.join(root, os.path.basename(url.split("?")[0]))
        if os.path.isfile(path):
            return path
    return None


def _resolve_pretrained(
    model_name: str, pretrained: str, cache_dir: str | None, download: bool = True
) -> str | None:
    """A local checkpoint path for ``pretrained`` (a tag or a file), downloading only if online.
    With ``download=False``, only check that it could be had (None when it would be downloaded)."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    if os.path.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"checkpoint file {pretrained} (--pretrained) does not exist")
        return pretrained
    cfg = get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == model_name]
        raise ValueError(
            f"{pretrained!r} is not a pretrained tag of {model_name}; known tags: {tags}, or pass "
            "a checkpoint file path"
        )
    cached = _cached_pretrained(cfg, cache_dir)
    if cached:
        return cached
    if not _hub_reachable():
        raise PretrainedUnavailable(
            f"pretrained weights {model_name}/{pretrained} are not cached and the model hub cannot "
            "be reached. Download the checkpoint on a machine that is online (e.g. "
            f"open_clip.create_model('{model_name}', pretrained='{pretrained}')) and pass the "
            f"file with `--pretrained /path/to/{model_name}.bin`."
        )
    return download_pretrained(cfg, cache_dir=cache_dir) if download else None


def _model_config(name: str) -> dict:
    import open_clip

    _register_configs()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(
            f"unknown model {name!r}; choose one of open_clip.list_models() "
            f"(e.g. ViT-B-32) or {sorted(p.stem for p in ASAP_MODEL_CONFIGS.glob('*.json'))}"
        )
    return model_cfg


def preflight(cfg: EncoderConfig, cache_dir: str | None = None) -> None:
    """Everything about ``cfg`` that can fail, checked before any work starts: the model name,
    its tower, and where its pretrained weights would come from (nothing is downloaded)."""
    vision = _model_config(cfg.model_name).get("vision_cfg", {})
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(
            f"{cfg.model_name} does not have an open_clip ViT image tower (timm or ResNet); ASAP's "
            "attention relevance needs a ViT-* model"
        )
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
        raise ValueError(
            f"{cfg.model_name} pools with {vision.get('pool_type')!r}/attentional_pool; ASAP needs "
            "CLS-token pooling"
        )
    if cfg.pretrained:
        _resolve_pretrained(cfg.model_name, cfg.pretrained, cache_dir, download=False)


def _build_visual(cfg: EncoderConfig, load_weights: bool, cache_dir: str | None):
    import open_clip
    from open_clip.model import _build_vision_tower

    model_cfg = _model_config(cfg.model_name)
    embed_dim = model_cfg["embed_dim"]
    if cfg.pretrained and load_weights:
        ckpt = _resolve_pretrained(cfg.model_name, cfg.pretrained, cache_dir)
        clip = open_clip.create_model(cfg.model_name, pretrained=ckpt)
        visual = clip.visual
    else:
        visual = _build_vision_tower(
            embed_dim, model_cfg["vision_cfg"], quick_gelu=model_cfg.get("quick_gelu", False)
        )
    _check_vit(visual, cfg.model_name)
    if STEM_CHANNELS[cfg.stem] != visual.conv1.in_channels:  # a from-scratch tower (config checks)
        old = visual.conv1
        visual.conv1 = nn.Conv2d(STEM_CHANNELS[cfg.stem], old.out_channels, old.kernel_size,
                                 old.stride, bias=old.bias is not None)  # fmt: skip
    from .explain.adapter import check_tower

    check_tower(visual)
    pp = getattr(visual, "preprocess_cfg", {}) or {}
    size = visual.image_size
    preprocess = {
        "image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
        "mean": tuple(pp.get("mean", OPENAI_MEAN)),
        "std": tuple(pp.get("std", OPENAI_STD)),
    }
    return visual, embed_dim, preprocess


def create_encoder(cfg: EncoderConfig, cache_dir: str | None = None) -> ASAPEncoder:
    """Build an encoder; pretrained towers are loaded (cache, hub, or file) and frozen."""
    visual, embed_dim, preprocess = _build_visual(cfg, load_weights=True, cache_dir=cache_dir)
    model = ASAPEncoder(visual, embed_dim, cfg, preprocess)
    if cfg.text_projection:
        w = torch.load(cfg.text_projection, map_location="cpu", weights_only=True)
        if tuple(w.shape) != tuple(model.text_projection.weight.shape):
            raise ValueError(
                f"text projection {cfg.text_projection} has shape {tuple(w.shape)}, expected "
                f"{tuple(model.text_projection.weight.shape)} (proj_dim, embed_dim)"
            )
        model.text_projection.weight.data.copy_(w)
    if cfg.frozen_backbone:
        model.visual.requires_grad_(False)
    return model


def save_encoder(model: ASAPEncoder, path: Path, extra: dict | None = None) -> str:
    """Save weights + config atomically; returns the file's sha256."""
    from .schema import atomic_write

    blob = {
        "config": asdict(model.cfg),
        "preprocess": model.preprocess,
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    # serialised in memory: torch.save names the archive's records after the file it writes, so
    # saving straight to a temporary file would make identical models hash differently
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buf.getvalue()))
    return file_sha256(path)


def _config_of(blob: dict) -> EncoderConfig:
    # checkpoints from before the stem existed saw the plain pixels
    return EncoderConfig(**{"stem": "none", **blob["config"]})


def read_encoder_config(path: str | Path) -> EncoderConfig:
    """A saved encoder's config, without building the model (the weights are memory-mapped)."""
    return _config_of(torch.load(path, map_location="cpu", weights_only=False, mmap=True))


def load_encoder(path: str | Path, device: str = "cpu") -> ASAPEncoder:
    """Rebuild a saved encoder without any download."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = _config_of(blob)
    visual, embed_dim, _ = _build_visual(cfg, load_weights=False, cache_dir=None)
    model = ASAPEncoder(visual, embed_dim, cfg, blob["preprocess"])
    state = blob["state_dict"]
    if "logit_shift" not in state:  # saved before Platt's shift existed: p(fake) as it was
        state = {**state, "logit_shift": torch.zeros(())}
    model.load_state_dict(state)
    return model.to(device).eval()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
