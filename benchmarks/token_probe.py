"""Where does a kept suite detector hold a trace: in its tokens, or nowhere? (issue 9)

A detector that misses a family (the planted suite's 1 px seam) either carries the evidence in
its patch tokens and fails to read it out into the image's score, or never represents it. This
script regenerates the suite for a seed exactly as ``benchmarks/faithfulness.py`` does, loads that
seed's detector (``--encoder``: a file, or a ``faithfulness.py --keep`` folder), and probes the
patch tokens after the stem's embedding and after every block: a linear probe per token (logistic
regression on standardised tokens, trained on the train split with the truth: a token is positive
when its patch holds any pixel of the trace), an image's probe score the largest over its tokens.
Held-out ROC-AUC of each family's fakes against the reals of the same base, for the image head's
p(fake) and for each block's probe. The probe uses the trace's masks, which no detector has: it
is a diagnostic upper bound on what a linear read-out of the tokens can find, not a method.

    python benchmarks/token_probe.py --seed 1 --encoder DIR               # probe on all families
    python benchmarks/token_probe.py --seed 1 --encoder DIR --only line   # the seam's fakes only

Last line: ``head=A probe_best=B block=K`` for the ``--report`` family on the photographs (the
image head's AUC, the best probe's, and its block; 0: the embedding).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faithfulness import _pixels  # noqa: E402

from pipeline import ingest  # noqa: E402
from pipeline.encoder import load_encoder  # noqa: E402
from pipeline.explain import adapter as A  # noqa: E402
from pipeline.synthetic import SUITE_FAMILIES, make_suite  # noqa: E402


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def block_tokens(model, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Patch tokens (N, T, D) after the stem's embedding and after each block."""
    out = []
    with torch.no_grad():
        x = A.embed_tokens(model, pixels)
        out.append(x[:, 1:].clone())
        for blk in A.blocks(model):
            x = A.run_blocks(model, x, [blk])
            out.append(x[:, 1:].clone())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="the suite's seed (as faithfulness.py)")
    ap.add_argument("--encoder", required=True, help="a kept encoder, or a --keep folder")
    ap.add_argument("--n-real", type=int, default=600, help="real images per base")
    ap.add_argument("--n-fake", type=int, default=120, help="fakes per base and family")
    ap.add_argument("--only", default=None, help="train the probe on this family's fakes only")
    ap.add_argument("--report", default="line", help="the family of the last line")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = Path(args.encoder)
    src = src / f"seed-{args.seed}.pt" if src.is_dir() else src
    if not src.is_file():
        sys.exit(f"error: no encoder at {src}: pass a file or a faithfulness.py --keep folder")
    if args.only is not None and args.only not in SUITE_FAMILIES:
        sys.exit(f"error: --only must be one of {', '.join(SUITE_FAMILIES)}, got {args.only!r}")

    model = load_encoder(src)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        truth, masks = make_suite(Path(tmp) / "imgs", args.n_real, args.n_fake, seed=args.seed)
        found = ingest.inspect_candidates(ingest.discover(Path(tmp) / "imgs"), 10**8, 8)[0]
        images = ingest.finalize(found)
        images["path"] = images["path_bytes"].map(bytes.decode)
        images = images.merge(truth[["path", "family", "base"]], on="path")
        images = images[images["duplicate_of"] < 0].reset_index(drop=True)
        pixels = _pixels(model, images["path_bytes"].tolist())
    blank = np.zeros(pixels.shape[-2:], bool)
    mk = np.stack([masks.get(p, blank) for p in images["path"]])
    with torch.no_grad():
        p_fake = model.p_fake(model(pixels)[2]).numpy()
    cover = F.avg_pool2d(torch.as_tensor(mk[:, None]).float(), model.patch_size).flatten(1)
    target = (cover.numpy() > 0).astype(int)  # (N, tokens): the patch holds trace pixels

    lab = images["label"].to_numpy()
    fam = images["family"].fillna("").to_numpy()
    base = images["base"].to_numpy()
    train = images["split"].to_numpy() == "train"
    held = ~train
    fams = [f for f in SUITE_FAMILIES if (fam == f).any()]
    bases = list(dict.fromkeys(base))

    def aucs(score: np.ndarray) -> dict:
        return {(b, f): _auc(score[held & (fam == f) & (base == b)],
                             score[held & (lab == 0) & (base == b)])
                for b in bases for f in fams}  # fmt: skip

    rows = {"image head p(fake)": aucs(p_fake)}
    fit_on = train & ((lab == 0) | (fam == args.only)) if args.only else train
    from sklearn.linear_model import LogisticRegression

    for i, tok in enumerate(block_tokens(model, pixels)):
        X = tok.numpy()
        n, t, d = X.shape
        flat = X[fit_on].reshape(-1, d)
        X = (X - flat.mean(0)) / (flat.std(0) + 1e-6)
        clf = LogisticRegression(C=1.0, max_iter=300, class_weight="balanced")
        clf.fit(X[fit_on].reshape(-1, d), target[fit_on].reshape(-1))
        score = clf.decision_function(X.reshape(-1, d)).reshape(n, t).max(axis=1)
        rows["embedding probe" if i == 0 else f"block {i} probe"] = aucs(score)

    print(f"seed {args.seed}, {src}; probe trained on "
          f"{'reals and ' + args.only if args.only else 'every family'}; held-out ROC-AUC "
          f"against the same base's reals ({int(held.sum())} images)")  # fmt: skip
    cols = [(b, f) for b in bases for f in fams]
    print("| read-out | " + " | ".join(f"{b} {f}" for b, f in cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, a in rows.items():
        print(f"| {name} | " + " | ".join(f"{a[c]:.3f}" for c in cols) + " |")
    key = ("photo", args.report)
    if key in rows["image head p(fake)"]:
        probes = {k: v[key] for k, v in rows.items() if k != "image head p(fake)"}
        best = max(probes, key=probes.get)
        print(
            f"head={rows['image head p(fake)'][key]:.3f} probe_best={probes[best]:.3f} "
            f"block={0 if best.startswith('emb') else best.split()[1]}"
        )


if __name__ == "__main__":
    main()
