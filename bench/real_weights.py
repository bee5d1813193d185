"""The real loading path at full size, without a download: files on disk → factory → keyframe.

Random weights of the real architectures are written the way users place real ones offline:
Stable Diffusion v1.5's UNet and VAE with diffusers' ``save_pretrained`` (``unet/``, ``vae/``:
``config.json`` + safetensors) plus its CLIP text encoder (``text_encoder/``, Hugging Face
layout), an ``open_clip`` ViT-L-14-336 checkpoint (``open_clip_model.safetensors``, both
towers) and our head checkpoint. A copy of ``models/odise_sd15.yaml`` is pointed at them, and
a fresh process with the hub switched off (``HF_HUB_OFFLINE=1``, an empty cache) builds the
segmenter and its text encoder through ``segmentation.factory.build_segmenter`` — what the node
and replay call — then embeds the ScanNet20 vocabulary and labels one 512×512 keyframe.

Not a test (about 6 GB of files and 8 GB of memory); the same path runs in CI on tiny files
(``tests/diff2scene/segmentation/test_local_weights.py``).

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.real_weights [--dir DIR] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import peak_rss_mb, write_results

DEFAULT_DIR = Path("/tmp/d2s_real_weights")
PROFILE = "odise_sd15"
SIZE_PX = 512


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_files(out_dir: Path) -> dict[str, Any]:
    """Write every weight file and the profile YAML; returns the figures of the writing."""
    from diff2scene.config import load_yaml
    from diff2scene.segmentation.clip import ClipConfig
    from diff2scene.segmentation.local_weights import TextEncoderShape, write_random_weights
    from diff2scene.segmentation.profile_lookup import find_profile
    from diff2scene.segmentation.profiles import (
        SD15_UNET_CONFIG,
        SD15_VAE_CONFIG,
        load_profile,
    )

    profile = load_profile(PROFILE)
    assert profile.weights is not None
    t0 = time.perf_counter()
    files, model = write_random_weights(
        out_dir,
        segmenter=profile.segmenter,
        unet_config=SD15_UNET_CONFIG,
        vae_config=SD15_VAE_CONFIG,
        clip=ClipConfig(model_name=profile.weights.clip.model_name),
        text_encoder=TextEncoderShape(),
    )
    write_s = time.perf_counter() - t0
    del model
    base = load_yaml(find_profile(PROFILE))
    base["name"] = f"{PROFILE}_local"
    base["weights"] = files.weights_section(profile.weights.clip)
    (out_dir / f"{PROFILE}_local.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    return {
        "write_s": write_s,
        "files_mb_unet": _dir_mb(files.sd_dir / "unet"),
        "files_mb_vae": _dir_mb(files.sd_dir / "vae"),
        "files_mb_text_encoder": _dir_mb(files.sd_dir / "text_encoder"),
        "files_mb_clip": files.clip_checkpoint.stat().st_size / 2**20,
        "files_mb_head": files.head_checkpoint.stat().st_size / 2**20,
        "write_peak_rss_mb": peak_rss_mb(),
    }


def load_and_segment(profile_yaml: Path, device: str) -> dict[str, Any]:
    """Build through the factory from the files alone, then one labelled keyframe."""
    import torch

    from bench.gpu import keyframe_image
    from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
    from diff2scene.segmentation.vocabularies import build_vocabulary, get_vocabulary_names

    t0 = time.perf_counter()
    segmenter, encoder = build_segmenter(
        SegmenterConfig(kind="diffusion", profile=str(profile_yaml), device=device)
    )
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vocabulary = build_vocabulary(get_vocabulary_names("scannet20"), encoder)
    vocab_s = time.perf_counter() - t0
    frame = keyframe_image(SIZE_PX)
    t0 = time.perf_counter()
    masks = segmenter.segment(frame, vocabulary)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    keyframe_s = time.perf_counter() - t0
    if masks.class_probs is None or masks.masks.shape[0] == 0:
        raise RuntimeError("the keyframe produced no labelled masks")
    return {
        "load_s": load_s,
        "vocabulary_encode_s_scannet20": vocab_s,
        "vocabulary_classes": len(vocabulary),
        f"keyframe_s_{SIZE_PX}_first": keyframe_s,
        "keyframe_masks": int(masks.masks.shape[0]),
        "keyframe_class_probs_shape": list(masks.class_probs.shape),
        "load_peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the files go")
    parser.add_argument("--device", default="cpu", help="torch device of the loaded model")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    parser.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--load-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Child processes print their figures as JSON on their last line.
    if args.write_only is not None:
        print(json.dumps(write_files(args.write_only)))
        return 0
    if args.load_only is not None:
        print(json.dumps(load_and_segment(args.load_only, args.device)))
        return 0
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    figures: dict[str, Any] = {"profile": PROFILE, "image_px": SIZE_PX, "device": args.device}
    figures["load_avg_1m_start"] = os.getloadavg()[0]
    try:
        # A child process writes, so the loader's peak memory is its own.
        cmd = [sys.executable, "-m", "bench.real_weights", "--write-only", str(args.dir)]
        written = subprocess.run(cmd, check=True, capture_output=True, text=True)
        figures.update(json.loads(written.stdout.strip().splitlines()[-1]))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(args.dir / "empty_hub_cache"))
        profile_yaml = args.dir / f"{PROFILE}_local.yaml"
        cmd = [
            sys.executable,
            "-m",
            "bench.real_weights",
            "--load-only",
            str(profile_yaml),
            "--device",
            args.device,
        ]
        loaded = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        figures.update(json.loads(loaded.stdout.strip().splitlines()[-1]))
    except subprocess.CalledProcessError as exc:
        print(exc.stdout, exc.stderr, sep="\n", file=sys.stderr)
        raise
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    figures["load_avg_1m_end"] = os.getloadavg()[0]
    import torch

    figures["torch_threads"] = torch.get_num_threads()
    path = write_results(
        "real_weights",
        figures,
        title="Real loading path from local files (random weights, real sizes), one keyframe",
        notes=(
            "Files: SD v1.5 UNet + VAE (diffusers save_pretrained, fp32 safetensors), SD's CLIP "
            "text encoder (Hugging Face layout), open_clip ViT-L-14-336 "
            "(open_clip_model.safetensors) and the ODISE-format head, random weights. "
            "load_s = segmentation.factory.build_segmenter on a copy of models/odise_sd15.yaml "
            "pointing at them, in a fresh process with HF_HUB_OFFLINE=1 and an empty hub "
            "cache: reading and building SD + CLIP (image tower for the segmenter, both towers "
            "again for the text encoder), the empty-prompt embedding from text_encoder/, the "
            "head. keyframe_s_512_first = the first segment() call with the ScanNet20 "
            "vocabulary (masks, embeddings, class probabilities), no warm-up. The CPU is shared "
            "with other jobs (see the load averages); figures are indicative."
        ),
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
