"""Frozen configuration dataclasses for the encoder, its training and a pipeline run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STEMS = ("forensic", "patch", "bank", "lines", "highpass", "none")
MAX_TILES = 8  # tiles per side (64 tiles of the tower's input per image)


@dataclass(frozen=True)
class EncoderConfig:
    # any open_clip model name (ViT-B-32, ...) or one of ASAP's own (pipeline/model_configs)
    model_name: str = "asap-tiny-vit-64"
    # None: random init, trained from scratch; an open_clip tag ("openai"); or a checkpoint path
    pretrained: str | None = None
    # width of the text-disentangling projection (paper: 512 -> 256)
    proj_dim: int = 256
    # number of distilled dimensions (paper: 16)
    distilled_dim: int = 16
    # optional .pt file holding a (proj_dim, embed_dim) text-disentangling matrix to start from
    text_projection: str | None = None
    # what the tower sees: "bank" (the residual of the image minus a blurred copy, where
    # generator traces live, as forensic detectors' SRM/residual stems; each ViT patch's residual
    # energy relative to its neighbouring patches; and the same patch energy of a learned bank of
    # 5x5 filters of the residual, i.e. the energy in a trace's own frequency band and
    # orientation, which stands out where the whole band's energy follows the content: 14
    # channels), "lines" (opt-in: "bank" plus 4 channels of pixel-sharp grey ridges along rows
    # and columns, pipeline.encoder.grey_ridges; on the planted suite it made the photographs
    # worse, README), "patch" (the same without the bank: 6
    # channels; the committed demo encoder's),
    # "forensic" (a pixel-wise energy against a blurred surround, which spreads a trace into
    # neighbouring patches; issue 9), "highpass" (the residual alone) or "none" (the pixels, as
    # CLIP was trained). None: "bank" for towers trained from scratch, "none" for pretrained ones
    # (whose first layer takes 3 channels). "bank" against "patch", side by side on the planted
    # suite (seeds 0-2, 40 epochs, README): held-out accuracy 0.732 +- 0.017 -> 0.823 +- 0.014,
    # the fake map's pointing at the trace 0.78 +- 0.14 -> 0.92 +- 0.05 (photographs 0.49 ->
    # 0.83), reals flagged on the photographs 7-75% -> 13-27%.
    stem: str | None = None
    # native-resolution analysis: the image is resized (shorter side) to `tiles` x the tower's
    # input size, centre-cropped, and cut into tiles x tiles tiles the tower sees at that
    # resolution; the image's score pools the tiles' (a smooth maximum: a local trace in one tile
    # makes the image fake) and its maps are the tiles' maps side by side. 1: the whole image is
    # resized to the tower's input, which averages away traces of a pixel or two in images much
    # larger than the input (issue 9; forensic detectors crop or tile at native resolution).
    tiles: int = 1

    def __post_init__(self):
        if not isinstance(self.tiles, int) or not 1 <= self.tiles <= MAX_TILES:
            raise ValueError(f"tiles must be an integer from 1 to {MAX_TILES}, got {self.tiles!r}")
        if self.tiles > 1 and self.pretrained:
            raise ValueError(
                "--tiles > 1 needs a tower trained from scratch: a frozen pretrained tower's "
                "embeddings are cached per image, not per tile (use --tiles 1 with --pretrained)"
            )
        stem = self.stem or ("none" if self.pretrained else "bank")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if stem in ("forensic", "patch", "bank", "lines") and self.pretrained:
            raise ValueError(
                f"the {stem} stem has more than 3 channels, a pretrained tower's first layer "
                "takes 3: use stem 'highpass' or 'none' with --pretrained"
            )
        object.__setattr__(self, "stem", stem)

    @property
    def frozen_backbone(self) -> bool:
        """Pretrained CLIP towers are frozen; towers trained from scratch are not."""
        return self.pretrained is not None


@dataclass(frozen=True)
class TrainConfig:
    # at most this many passes over the train split; training stops earlier when the validation
    # loss has not improved for `patience` validation rounds (the best round's weights are kept).
    # Validation runs once per epoch, or every `val_every` training images when an epoch holds
    # more: without that, giving up on a set of 4,000 images cost 13 epochs of 4,000 images
    # (650 s here, issue 10), 2.4x the updates the 1,700-image planted suite needs to give up.
    # 150 / 30 (60 / 12 before): on small sets the validation loss is noisy and improves slowly,
    # and patience 12 stopped on its noise. Measured side by side on the same data (README): the
    # demo, test accuracy 0.834 -> 0.916 (patience 12 stopped at epoch 28, best 16; these values
    # ran 148 epochs, best 118); the planted suite, seeds 0-2, held-out accuracy 0.721 -> 0.801,
    # 0.737 -> 0.786 and 0.749 -> 0.741 (40 epochs against 150; seed 2 stopped at 79)
    epochs: int = 150
    patience: int = 30
    val_every: int = 2048
    batch_size: int = 32
    # AdamW learning rate (heads use 10x when the backbone is frozen). 5e-4 left the tiny ViT
    # stuck near chance on local traces for many epochs; 1.5e-4 learned them faster in
    # side-by-side runs on the planted suite and the demo (issue 9; README)
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    ortho_weight: float = 1e-2  # keeps the text projection close to orthogonal
    seed: int = 0
    # cache decoded, resized images in memory while training when they fit in this many bytes
    cache_bytes: int = 2 << 30
    # train on at most this many images of the train split (each label keeping its share; val
    # shrinks in proportion), drawn from the seed: for sets too large to train on whole
    train_limit: int | None = None
    # weight of the patch-level (multiple-instance) auxiliary loss for towers trained from scratch:
    # a linear probe on every patch token of the last block, pooled by the maximum, is
    # trained on the image's label beside the CLS head (a training scaffold, not saved). A local
    # trace then reaches the patch tokens directly instead of through the CLS token's average of
    # 64 tokens, where it was diluted below the noise (issue 9). 0 turns it off.
    patch_loss: float = 1.0
    # share of each batch's real images that are added again as self-blended fakes (one random
    # local trace, labelled fake, its patches labelled by the patch loss; pipeline/selfblend.py)
    # when the tower trains from scratch. 0 turns it off.
    selfblend: float = 0.5
    # Platt scaling: fit a shift of the logit beside its temperature on the val split, so that
    # p(fake) = 0.5 is where val says fake and real are equally likely (pipeline.train.
    # fit_calibration; val weighted to the train split's share of fakes, so a small val's chance
    # share does not move the operating point); off: the temperature alone, the operating point
    # where training left it
    calibrate_shift: bool = True
    # give up when this many training images have passed (repeats counted) and no validation
    # round has told the val fakes from the val reals (the 95% interval of the val ROC-AUC above
    # 0.5; pipeline.trust): a detector with no signal at all, not one still improving. On
    # 100,000 256 px JPEGs whose faint trace the resize averages away, the tiny detector stayed at
    # chance for all 34 rounds (68,000 images, 10 minutes, half of the run; issue 10); on the
    # demo and the planted suite the interval clears 0.5 within a few thousand (README). Counted
    # in images, not rounds, so that a small set gets as many updates as a large one. 0: off.
    chance_images: int = 25_000
    # exponential moving average of the weights, its half-life in training images (0: off).
    # Validation, early stopping and the kept weights use the average, which smooths the
    # noise of small batches on small sets; the first steps average over fewer (bias-free
    # warm-up), so a short run is not pulled back to the initial weights.
    ema_images: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1 or self.val_every < 1:
            raise ValueError(
                f"epochs, patience, batch size and --val-every must be >= 1 (got epochs="
                f"{self.epochs}, patience={self.patience}, batch size={self.batch_size}, "
                f"val_every={self.val_every})"
            )
        if self.ema_images < 0:
            raise ValueError(f"--ema-images must be >= 0 (0: off), got {self.ema_images}")
        if self.chance_images < 0:
            raise ValueError(f"--chance-images must be >= 0 (0: off), got {self.chance_images}")
        if self.train_limit is not None and self.train_limit < 2:
            raise ValueError(f"--train-limit must be >= 2 images, got {self.train_limit}")
        if not self.patch_loss >= 0:
            raise ValueError(f"the patch loss weight must be >= 0, got {self.patch_loss}")
        if not 0 <= self.selfblend <= 1:
            raise ValueError(f"the self-blend share must be in [0, 1], got {self.selfblend}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be > 0, got {self.lr}")


@dataclass(frozen=True)
class PatternConfig:
    enabled: bool = True  # run the pattern stage after the layout
    patches_per_image: int = 6  # at most this many of each image's most relevant patches (fake map)
    min_relative: float = 0.25  # ... and only those with relevance >= this share of the image's max
    # clusters (over-cluster; ranked by impact); 0: the largest k in 2..max whose every pattern
    # is stable (pipeline.patterns.choose_k)
    n_patterns: int = 8
    max_patterns: int = 12
    feature: str = "both"  # patch descriptor: "spectrum" (residual FFT), "token" (last block), both
    sample: int = 20000  # patches in the sample that initialises k-means and picks k
    # k-means fits on random 80% subsets of the sample: the medoid fit starts the refinement, the
    # others measure each pattern's stability (issue 9: a single fit regrouped under 1e-7 changes)
    stability_runs: int = 10
    impact_images: int = 64  # member images re-scored per pattern (and as many random controls)
    # images (in all, spread evenly over the partitions) with deletion/insertion curves: bounded,
    # so that the pattern stage's cost does not grow with the run (issue 10)
    faithfulness_images: int = 128
    steps: int = 10  # deletion/insertion steps from 0 to 100% of the patches
    seed: int = 0

    def __post_init__(self):
        if self.feature not in ("token", "spectrum", "both"):
            raise ValueError(
                f"pattern feature must be token, spectrum or both, got {self.feature!r}"
            )
        if self.patches_per_image < 1 or self.steps < 1:
            raise ValueError("patches_per_image and steps must be >= 1")
        if self.n_patterns < 0 or self.n_patterns == 1:
            raise ValueError(
                f"--patterns must be 0 (the finest stable k) or >= 2, got {self.n_patterns}"
            )
        if self.stability_runs < 2:
            raise ValueError(
                f"--stability-runs must be >= 2 (one fit to start from, one to compare with), "
                f"got {self.stability_runs}"
            )
        if self.impact_images < 1 or self.faithfulness_images < 0 or self.sample < 1:
            raise ValueError(
                f"--impact-images must be >= 1 and --faithfulness-images >= 0 (got "
                f"{self.impact_images}, {self.faithfulness_images})"
            )


@dataclass(frozen=True)
class ColumnsConfig:
    """Column names of a manifest or Parquet image shards, when ASAP's detection by name is not
    enough (None: detected; see pipeline.columns), and the label values that mean real."""

    path_col: str | None = None
    image_col: str | None = None
    label_col: str | None = None
    generator_col: str | None = None
    source_col: str | None = None
    split_col: str | None = None
    # label values meaning "real" (every other value is then fake); () : 0/real/nature/... = real
    real_values: tuple[str, ...] = ()

    def __post_init__(self):
        vals = self.real_values
        vals = (vals,) if isinstance(vals, str) else vals
        object.__setattr__(
            self, "real_values", tuple(str(v).strip() for v in vals if str(v).strip())
        )


@dataclass(frozen=True)
class RunConfig:
    source: str  # image folder, or a CSV/Parquet manifest
    out: str  # run directory
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    patterns: PatternConfig = field(default_factory=PatternConfig)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    encoder_checkpoint: str | None = None  # reuse a trained ASAP encoder instead of training
    partition_size: int = 512  # images per Dask task / output file
    # images per forward pass inside a partition; None: each worker's default for its device and
    # threads (pipeline.devices.default_batch_size: 32 per torch thread on a CPU, 128 on a GPU)
    batch_size: int | None = None
    # explanation method of the fake and real maps (pipeline.explain; None: its DEFAULT_METHOD);
    # the 16 dimension maps always use the cheap last-block rule
    maps: str | None = None
    # methods whose fake map is also stored, for comparison in the explorer and faithfulness
    compare_maps: tuple[str, ...] = ("chefer_last", "attention")
    layout: str = "umap"  # "umap" or "pca"
    seed: int = 0
    scheduler: str | None = None  # address of an existing Dask scheduler; None: LocalCluster
    # LocalCluster workers; None: one per GPU, else one per core up to 4 (pipeline.runner)
    workers: int | None = None
    # CPU-only workers beside the GPU workers of ASAP's own GPU cluster (ingest, layout chunks,
    # clustering); None: the cores left after 4 per GPU worker (pipeline.runner)
    cpu_workers: int | None = None
    device: str | None = None  # "cpu", "cuda"; None: cuda when the worker has one
    # arithmetic of the encoder and its maps (pipeline.precision): auto = tf32 on a GPU, else fp32
    precision: str = "auto"
    # image decoding for the model (pipeline.batchread): pil = PIL on the CPU for every image;
    # nvjpeg = plain JPEGs decoded by nvJPEG on a worker's GPU, the rest by PIL (PIL on a CPU)
    decode: str = "pil"
    max_pixels: int = 64_000_000  # decompression-bomb guard
    min_side: int = 8  # smaller images are rejected
    progress: bool = True

    def __post_init__(self):
        from .explain import DEFAULT_METHOD, get_method

        # canonical names (aliases resolved), so that a resumed run compares like with like
        object.__setattr__(self, "maps", get_method(self.maps or DEFAULT_METHOD).name)
        compare = tuple(dict.fromkeys(get_method(m).name for m in self.compare_maps))
        object.__setattr__(self, "compare_maps", tuple(m for m in compare if m != self.maps))
        from .precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        from .batchread import DECODERS

        if self.decode not in DECODERS:
            raise ValueError(f"--decode {self.decode!r}: choose one of {', '.join(DECODERS)}")
        if self.layout not in ("umap", "pca"):
            raise ValueError(f"layout must be 'umap' or 'pca', got {self.layout!r}")
        if self.partition_size < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(
                f"--partition-size and --batch-size must be >= 1 (got {self.partition_size}, "
                f"{self.batch_size})"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.cpu_workers is not None and self.cpu_workers < 0:
            raise ValueError(f"--cpu-workers must be >= 0, got {self.cpu_workers}")
        if self.max_pixels < 1 or self.min_side < 1:
            raise ValueError(
                f"--max-pixels and --min-side must be >= 1 (got {self.max_pixels}, {self.min_side})"
            )
        if not self.out:
            raise ValueError("--out must name a folder")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """The inverse of to_dict (run.json's "config"); unknown keys are an error."""
        nested = {"encoder": EncoderConfig, "train": TrainConfig, "patterns": PatternConfig,
                  "columns": ColumnsConfig}  # fmt: skip
        kw = {
            k: (nested[k](**v) if k in nested and isinstance(v, dict) else v) for k, v in d.items()
        }
        return cls(**kw)
