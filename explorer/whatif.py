"""What-if masking in the explorer: a person masks chosen patches of one image and sees p(fake)
change, or checks the shown map against occlusion (the causal reference, computed on demand for
that image). The run's encoder is loaded lazily, on the first re-score, so that opening the
explorer never imports torch; masking is the pipeline's own (pipeline.perturb: blurred-copy
fill)."""

from __future__ import annotations

import base64
from functools import lru_cache

import numpy as np
import panel as pn
import param
from panel.custom import JSComponent

from .datastore import DataStore
from .render import ImageAccessError, overlay, to_png
from .views import TabView


class PatchPicker(JSComponent):
    """An image on the model's patch grid: clicking a patch sends its flat index back
    (``clicks`` counts, so that clicking the same patch again still counts)."""

    src = param.String(default="", doc="the image as a PNG data URL")
    size = param.Integer(default=256)
    grid = param.Tuple(default=(8, 8), length=2, doc="patch rows, columns")
    clicked = param.Integer(default=-1, doc="flat index (row * columns + column) clicked last")
    clicks = param.Integer(default=0)

    _esm = """
    export function render({ model }) {
      const img = document.createElement('img');
      img.className = 'asap-patch-picker';
      img.src = model.src;
      img.width = model.size;
      img.height = model.size;
      img.style.cursor = 'crosshair';
      img.title = 'click a patch to mask it (again to unmask)';
      img.addEventListener('click', (event) => {
        const box = img.getBoundingClientRect();
        const [rows, cols] = model.grid;
        const col = Math.min(cols - 1, Math.floor((event.clientX - box.left) / box.width * cols));
        const row = Math.min(rows - 1, Math.floor((event.clientY - box.top) / box.height * rows));
        model.clicked = row * cols + col;
        model.clicks = model.clicks + 1;
      });
      model.on('src', () => { img.src = model.src; });
      return img;
    }
    """

    def pixels(self) -> bytes:
        """The PNG shown (for tests and exports)."""
        return base64.b64decode(self.src.split("base64,", 1)[1])


@lru_cache(maxsize=2)
def _model(encoder_path: str, mtime_ns: int):
    from pipeline.encoder import load_encoder

    return load_encoder(encoder_path, "cpu").eval().requires_grad_(False)


RANDOM_DRAWS = 8  # random-patch baselines per re-score


def _model_and_pixels(store: DataStore, image_id: int):
    """The run's encoder (cached) and one image as it sees it: (model, (1, 3, S, S) tensor)."""
    from pipeline.imageio import load_for_model, normalize

    path = store.run.paths.encoder
    model = _model(str(path), path.stat().st_mtime_ns)
    arr = load_for_model(store.images.path(image_id), model.image_size)
    return model, normalize(arr[None], model.preprocess["mean"], model.preprocess["std"])


def occlusion_check(store: DataStore, image_id: int, shown: np.ndarray):
    """Occlusion's fake map of one image (pipeline.explain.occlusion: each patch with its
    neighbours masked and the image re-scored, one forward pass per patch) and how the ``shown``
    fake map (gh, gw) agrees with it: (occlusion map, Spearman correlation over the patches, rank
    of the shown map's top patch in occlusion's order, 1 being occlusion's own top patch). The
    correlation is NaN and the rank 0 when no masking lowered the fake logit (nothing to rank)."""
    from scipy.stats import spearmanr

    from pipeline.explain import get_method

    model, x = _model_and_pixels(store, image_id)
    occ = get_method("occlusion").fn(model, x, 2).maps[0, 0].numpy().astype(np.float64)
    if occ.shape != shown.shape:
        raise ValueError(f"occlusion grid {occ.shape} differs from the map's {shown.shape}")
    if not occ.any():
        return occ, float("nan"), 0
    flat = occ.ravel()
    rank = 1 + int((flat > flat[int(np.argmax(shown))]).sum())
    if np.ptp(shown) == 0:
        return occ, float("nan"), rank
    return occ, float(spearmanr(shown.ravel(), flat).statistic), rank


def rescore(store: DataStore, image_id: int, cells: list[tuple[int, int]]):
    """p(fake) of one image as it is, with ``cells`` (grid row, column) masked, and with as many
    random patches masked instead (RANDOM_DRAWS draws, seeded by the image id): the baseline
    that says whether the chosen patches matter more than any."""
    import torch

    from pipeline.perturb import blurred, masked, p_fake

    model, x = _model_and_pixels(store, image_id)
    gh, gw = store.run.relevance.map_shape[1:]
    grids = torch.zeros(1 + RANDOM_DRAWS, gh, gw, dtype=torch.bool)
    for y, x_ in cells:
        grids[0, y, x_] = True
    rng = np.random.default_rng(int(image_id))
    for d in range(1, 1 + RANDOM_DRAWS):
        for i in rng.choice(gh * gw, size=len(cells), replace=False):
            grids[d, i // gw, i % gw] = True
    xs = x.expand(1 + RANDOM_DRAWS, *x.shape[1:])
    before = float(p_fake(model, x)[0])
    scores = p_fake(model, masked(xs, blurred(model, xs), grids)).tolist()
    return before, float(scores[0]), [float(v) for v in scores[1:]]


class WhatIfView(TabView):
    """Pick patches of the first selected image to mask them; re-score on demand."""

    STORE_DEPS = ("selection_version", "filter_version", "opacity", "cmap", "sort_by",
                  "map_method", "map_scale")  # fmt: skip

    cells = param.ListSelector(default=[], objects=[], doc="masked patches (row, column)")
    result = param.String(default="")
    occlusion = param.Parameter(default=None, doc="(image id, map method, occlusion map) shown")
    check = param.String(default="", doc="how the shown map agrees with occlusion")

    def __init__(self, store: DataStore, **params):
        super().__init__(store=store, **params)
        gh, gw = store.run.relevance.map_shape[1:]
        self.param.cells.objects = [(y, x) for y in range(gh) for x in range(gw)]
        store.param.watch(lambda *_: self.param.update(cells=[], result="", occlusion=None,
                                                       check=""),
                          ["selection_version", "filter_version", "sort_by"])  # fmt: skip
        store.param.watch(lambda *_: self.param.update(occlusion=None, check=""), "map_method")

    def current_row(self) -> int | None:
        rows = self.store.sorted_rows(self.store.selected, 1)
        return int(rows[0]) if len(rows) else None

    def mask_top(self, k: int = 3):
        """Mask the k most relevant patches of the fake map shown (its method: map_method)."""
        row = self.current_row()
        if row is None:
            return
        fake = self.store.maps([row], 0)[0]
        top = np.argsort(-fake.ravel())[:k]
        self.cells = [(int(i // fake.shape[1]), int(i % fake.shape[1])) for i in top]

    def run_rescore(self, *_):
        row = self.current_row()
        if row is None:
            return
        try:
            before, after, rand = rescore(
                self.store, int(self.store.points.id[row]), list(self.cells)
            )
        except (ImageAccessError, OSError) as e:
            self.result = f"cannot re-score: {e}"
            return
        n = len(self.cells)
        self.result = (
            f"p(fake) **{before:.3f}** → **{after:.3f}** with {n} patch(es) masked. "
            f"Masking {n} random patch(es) instead: {np.mean(rand):.3f} on average "
            f"({min(rand):.3f}–{max(rand):.3f} over {len(rand)} draws); the chosen patches "
            "matter when they lower p(fake) more than that."
        )

    def run_check(self, *_):
        """Compute occlusion for the first selected image and say how the shown map agrees."""
        row = self.current_row()
        if row is None:
            return
        image_id = int(self.store.points.id[row])
        shown = self.store.maps([row], 0)[0]
        try:
            occ, rho, rank = occlusion_check(self.store, image_id, shown)
        except (ImageAccessError, OSError, ValueError) as e:
            self.param.update(occlusion=None, check=f"cannot check: {e}")
            return
        n = occ.size
        method = self.store.map_method
        if rank == 0:
            text = (
                f"Occlusion ({n} re-scorings): masking no patch lowered this image's fake "
                "score, so its evidence is not local and no patch map can be checked here."
            )
        else:
            agree = "no correlation (the shown map is flat)" if np.isnan(rho) else f"ρ = {rho:.2f}"
            text = (f"Occlusion, the causal reference ({n} re-scorings of this image): the "
                    f"{method} map's top patch is occlusion's **#{rank} of {n}**; rank "
                    f"correlation over the patches {agree}. Trust the shown map here when its "
                    "top patch is among occlusion's first few.")  # fmt: skip
        self.param.update(occlusion=(image_id, method, occ), check=text)

    @param.depends("occlusion", "version")
    def occlusion_image(self):
        """The first selected image with occlusion's fake map, once checked."""
        row = self.current_row()
        if self.occlusion is None or row is None:
            return pn.pane.Markdown("")
        image_id, method, occ = self.occlusion
        if image_id != int(self.store.points.id[row]) or method != self.store.map_method:
            return pn.pane.Markdown("")
        try:
            rgb = self.store.images.thumbnail(image_id, 256).copy()
        except ImageAccessError as e:
            return pn.pane.Alert(str(e), alert_type="warning")
        vmax = float(occ.max()) or 1.0
        rgb = overlay(rgb, occ, self.store.opacity, self.store.cmap, vmax)
        caption = f"image #{image_id} · occlusion's fake map (drop of the fake logit)"
        return pn.Column(pn.pane.PNG(to_png(rgb), width=256, height=256), caption)

    @param.depends("cells", "version")
    def image(self):
        """The first selected image with its fake map (by the store's map_method), masked
        patches greyed out."""
        row = self.current_row()
        if row is None:
            return pn.pane.Markdown("Select an image (tap the overview) to try masking it.")
        p = self.store.points
        try:
            rgb = self.store.images.thumbnail(int(p.id[row]), 256).copy()
        except ImageAccessError as e:
            return pn.pane.Alert(str(e), alert_type="warning")
        heat = self.store.maps([row], 0)[0]
        rgb = overlay(rgb, heat, self.store.opacity, self.store.cmap, self.store.map_vmax(0))
        gh, gw = heat.shape
        for y, x in self.cells:  # grey out masked patches
            ys = slice(y * 256 // gh, (y + 1) * 256 // gh)
            xs = slice(x * 256 // gw, (x + 1) * 256 // gw)
            rgb[ys, xs] = (rgb[ys, xs] * 0.3 + 160).astype(np.uint8)
        caption = (
            f"image #{p.id[row]} · p(fake) {p.p_fake[row]:.3f} · fake map by "
            f"{self.store.map_method} · {len(self.cells)} of {gh * gw} patches masked"
        )
        png = base64.b64encode(to_png(rgb)).decode()
        picker = PatchPicker(src=f"data:image/png;base64,{png}", size=256, grid=(gh, gw),
                             width=256, height=256)  # fmt: skip
        picker.param.watch(lambda _: self.toggle(divmod(picker.clicked, gw)), "clicks")
        return pn.Column(picker, caption)

    def toggle(self, cell: tuple[int, int]) -> None:
        """Mask patch ``cell`` (grid row, column) if it is not masked, else unmask it."""
        cell = (int(cell[0]), int(cell[1]))
        if cell not in self.param.cells.objects:
            return
        others = [c for c in self.cells if c != cell]
        self.cells = others if cell in self.cells else [*self.cells, cell]

    def __panel__(self):
        score = pn.widgets.Button(name="Re-score", button_type="primary")
        score.on_click(self.run_rescore)
        top = pn.widgets.Button(name="Mask top 3 patches")
        top.on_click(lambda *_: self.mask_top(3))
        clear = pn.widgets.Button(name="Clear mask")
        clear.on_click(lambda *_: self.param.update(cells=[], result=""))
        check = pn.widgets.Button(name="Check the map with occlusion")
        check.on_click(self.run_check)
        return pn.Column(
            pn.pane.Markdown(
                "Click patches of the first image of the selection to mask them (blurred fill, "
                'as the pattern impact; click again to unmask), then re-score. "Mask top 3" '
                "takes the fake map shown (switch its method in the Images tab or the sidebar). "
                "The result compares with as many random patches masked instead. "
                '"Check the map with occlusion" computes the causal reference for this image '
                "(one re-scoring per patch) and says where the shown map's top patch ranks in it."
            ),  # fmt: skip
            pn.Row(self.image, self.occlusion_image),
            pn.Row(top, clear, score, check),
            pn.pane.Markdown(self.param.result, css_classes=["asap-whatif"]),
            pn.pane.Markdown(self.param.check, css_classes=["asap-occlusion"]),
        )
