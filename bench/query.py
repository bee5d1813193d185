"""Text query and vocabulary labelling over a 1M-voxel map at the real embedding sizes.

The map is procedural (100 box-shaped objects of 10k voxels, 20 classes) because what is timed
is the query path, not mapping: 100 keyframes × 100 masks = 10k masks with 256-d diffusion
and 768-d CLIP embeddings, top-8 memberships per voxel, fp16 3D features in both spaces, and
the ViT-L/14-336 text tower with random weights (real architecture, so real text cost).
Masks are classified by the oracle segmenter's fusion (the same ``classify`` a diffusion
segmenter exposes); their embeddings are the class names' text embeddings plus noise, so a
class-name query finds its objects. Cold = the query phrase is not in the text cache (the
background is embedded when the engine is built); warm = it is.

Run: ``PYTHONPATH=src:. python bench/query.py`` (``--quick`` shrinks the map for a smoke run).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import numpy as np
import torch

from bench.common import peak_rss_mb, write_results
from diff2scene.query.engine import QueryConfig, QueryEngine
from diff2scene.query.ensemble import EnsembleConfig, EnsembleScorer, GeometricIndex
from diff2scene.query.labelling import LabellingConfig, label_map
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.oracle import OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig, ensemble_embeddings
from diff2scene.segmentation.vocabularies import get_vocabulary_names

CLASSES = get_vocabulary_names("scannet20")


def build_map(
    encoder: ClipTextEncoder, oracle: OracleSegmenter, *, objects: int, keyframes: int, seed: int
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(objects)))
    cube = np.stack(np.meshgrid(np.arange(25), np.arange(20), np.arange(20), indexing="ij"), -1)
    cube = cube.reshape(-1, 3).astype(np.int32)  # 10,000 voxels per object
    coords = np.concatenate(
        [cube + np.array([40 * (j % side), 40 * (j // side), 0], np.int32) for j in range(objects)]
    )
    owner = np.repeat(np.arange(objects), cube.shape[0])
    obj_class = np.arange(objects) % len(CLASSES)
    masks_per_kf = 100
    k_masks = keyframes * masks_per_kf
    mask_obj = rng.integers(0, objects, k_masks)
    templates = QueryConfig().templates or encoder.config.templates
    # One class per forward, as a query phrase is encoded: with random weights the class
    # embeddings are nearly parallel, and batch-dependent float rounding would otherwise decide
    # whether a class-name query matches its own masks.
    text = np.concatenate([ensemble_embeddings(encoder, [c], templates) for c in CLASSES])
    clip = text[obj_class[mask_obj]] + 0.02 * rng.standard_normal((k_masks, text.shape[1]))
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    diff = clip @ oracle.projection
    diff /= np.linalg.norm(diff, axis=1, keepdims=True)
    emb = {"clip": clip.astype(np.float32), "diffusion": diff.astype(np.float32)}
    # Each voxel: 8 random masks of its own object.
    by_obj = [np.flatnonzero(mask_obj == j) for j in range(objects)]
    member_ids = np.full((coords.shape[0], 8), -1, np.int32)
    for j in range(objects):
        rows = np.flatnonzero(owner == j)
        if by_obj[j].size:
            member_ids[rows] = rng.choice(by_obj[j], size=(rows.size, 8))
    member_weights = np.where(member_ids >= 0, rng.uniform(0.3, 1.0, member_ids.shape), 0.0).astype(
        np.float32
    )
    feats: dict[str, np.ndarray] = {}
    for space, e in emb.items():
        proto = np.stack([e[by_obj[j]].mean(axis=0) for j in range(objects)])
        centre = proto.mean(axis=0)
        f = np.empty((coords.shape[0], e.shape[1]), np.float16)
        for j in range(objects):  # per object so no (M, D) float64 temporary exists
            f[owner == j] = (10.0 * (proto[j] - centre)).astype(np.float16)
        feats[space] = f
    return {
        "coords": coords,
        "member_ids": member_ids,
        "member_weights": member_weights,
        "embeddings": emb,
        "features_3d": feats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 objects, 10 keyframes")
    args = parser.parse_args()
    torch.set_num_threads(2)
    objects, keyframes = (10, 10) if args.quick else (100, 100)
    t0 = time.perf_counter()
    text_cfg = TextEncoderConfig(clip=ClipConfig(model_name="ViT-L-14-336", pretrained=None))
    encoder = ClipTextEncoder(build_clip(text_cfg.clip), text_cfg)
    build_clip_s = time.perf_counter() - t0
    oracle = OracleSegmenter({}, encoder)
    t0 = time.perf_counter()
    data = build_map(encoder, oracle, objects=objects, keyframes=keyframes, seed=0)
    make_map_s = time.perf_counter() - t0
    coords = data["coords"]
    emb = data["embeddings"]
    feats = data["features_3d"]
    assert isinstance(coords, np.ndarray) and isinstance(emb, dict) and isinstance(feats, dict)
    cfg = EnsembleConfig()
    t0 = time.perf_counter()
    index = GeometricIndex.build(feats, emb, cfg)
    index_s = time.perf_counter() - t0
    scorer = EnsembleScorer(
        data["member_ids"],  # type: ignore[arg-type]
        data["member_weights"],  # type: ignore[arg-type]
        int(emb["clip"].shape[0]),
        geometric=index,
        config=cfg,
    )
    points = (coords.astype(np.float64) * 0.02).astype(np.float32)
    t0 = time.perf_counter()
    engine = QueryEngine(
        scorer,
        coords=coords,
        points_m=points,
        bank_embeddings=emb,
        encoder=encoder,
        classifier=oracle,
        config=QueryConfig(),
    )
    engine_s = time.perf_counter() - t0

    cold_words = ["chair", "table", "bookshelf", "door", "sofa"]
    cold, warm, found = [], [], []
    stages: dict[str, list[float]] = {}
    for word in cold_words:
        # The engine holds the background's embeddings itself; clearing the encoder's cache
        # makes the query phrase a cache miss (the class names are also background names).
        encoder.clear_cache()
        t0 = time.perf_counter()
        result = engine.query(word)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        again = engine.query(word)
        warm.append(time.perf_counter() - t0)
        found.append(len(result.instances))
        for stage, ms in again.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    rel = engine.query("chair next to the table")
    t0 = time.perf_counter()
    engine.query("chair next to the table")
    rel_warm = time.perf_counter() - t0
    print("last query stage timings (ms):", {k: round(v, 1) for k, v in result.timings_ms.items()})

    vocab200 = get_vocabulary_names("scannet200")
    # Labelling uses the queries' single prompt template (one text forward per class); the
    # classes are embedded first so labelling is timed with a warm text cache, text cost apart.
    templates = QueryConfig().templates or encoder.config.templates
    t0 = time.perf_counter()
    ensemble_embeddings(encoder, vocab200, templates)
    text200_s = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    lab = label_map(
        scorer,
        emb,
        encoder,
        oracle,
        LabellingConfig(vocabulary="scannet200", templates=templates),
    )
    label_s = time.perf_counter() - t0
    _, label_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    suffix = "" if not args.quick else "_quick"
    figures: dict[str, float | int | str | list[Any]] = {
        "num_voxels": int(coords.shape[0]),
        "num_masks": int(emb["clip"].shape[0]),
        "embedding_dims": f"diffusion {emb['diffusion'].shape[1]}, clip {emb['clip'].shape[1]}",
        "text_tower": "open_clip ViT-L-14-336 (random weights)",
        f"query_ms_cold_1m{suffix}": round(1e3 * float(np.median(cold)), 1),
        f"query_ms_warm_1m{suffix}": round(1e3 * float(np.median(warm)), 1),
        "relation_query_ms_warm": round(1e3 * rel_warm, 1),
        "query_warm_score_ms": round(float(np.median(stages["score"])), 1),
        "query_warm_instances_ms": round(float(np.median(stages["instances"])), 1),
        "query_instances_found": found,
        "relation_query_instances": len(rel.instances),
        f"label_200cls_1m_s{suffix}": round(label_s, 2),
        f"label_200cls_1m_peak_mem_mb{suffix}": round(label_peak / 2**20, 1),
        "label_200cls_text_encode_s": round(text200_s, 2),
        "labelled_fraction": round(float((lab.labels >= 0).mean()), 3),
        "geometric_index_build_s": round(index_s, 1),
        "query_engine_build_s": round(engine_s, 2),
        "build_clip_s": round(build_clip_s, 1),
        "make_map_s": round(make_map_s, 1),
        "process_peak_rss_mb": round(peak_rss_mb(), 0),
        "torch_threads": torch.get_num_threads(),
    }
    print(figures)
    write_results(
        "query" + suffix,
        figures,
        title="Text query and labelling over a 1M-voxel map (CPU)",
        notes=(
            "Query time includes parsing, text encoding (one prompt template; cold ="
            " not cached), classifying every mask of the bank against the query + ScanNet20"
            " background, both ensemble branches over all voxels, and instance clustering."
            " Labelling peak memory is the largest traced (numpy) working set during labelling,"
            " beyond the map itself; the process peak RSS includes the map's 2 GB of fp16"
            " features and the ViT-L model."
        ),
    )


if __name__ == "__main__":
    main()
