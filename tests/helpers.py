"""Builders of small test inputs shared by the test modules (imported, not fixtures)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from oodlab.data.shard_writer import ShardWriter, make_key


def jpeg_bytes(rng: np.random.Generator, size: int = 64) -> bytes:
    """A random but smooth image (so JPEG keeps it recognisable), as JPEG bytes."""
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(folder: Path, n_shards: int, per_shard: int, seed: int = 0) -> list[Path]:
    """img2dataset-style shards with jpg/txt/json members; captions 'a photo of item N'."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_shards):
        with ShardWriter(folder, f"{s:05d}") as w:
            for i in range(per_shard):
                key = make_key(s, i)
                caption = f"a photo of item {s * per_shard + i}"
                meta = {"key": key, "caption": caption, "status": "success", "label": int(i % 3)}
                w.write(key, {"jpg": jpeg_bytes(rng), "txt": caption.encode(), "json": json.dumps(meta).encode()},
                        {"caption": caption, "status": "success"})
        paths.append(folder / f"{s:05d}.tar")
    return paths


def write_image_folder(root: Path, classes: dict[str, int], seed: int = 0, ext: str = ".jpg") -> None:
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{name}_{i:03d}{ext}").write_bytes(jpeg_bytes(rng))


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_clip_retrieval_folder(root: Path, parts: list[np.ndarray], keys: list[list[str]], key_column: str = "image_path",
                                width: int = 2) -> None:
    """A store exactly as clip-retrieval writes it: fp16 npy + metadata parquet, no sidecar."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir(parents=True)
    for i, (emb, k) in enumerate(zip(parts, keys)):
        np.save(root / "img_emb" / f"img_emb_{i:0{width}d}.npy", emb.astype(np.float16))
        table = pa.table({key_column: k, "caption": [f"caption {x}" for x in k]})
        pq.write_table(table, root / "metadata" / f"metadata_{i:0{width}d}.parquet")


def zero_shot_reference(world: Path, checkpoint: Path, dataset: str, architecture: str = "tiny-vit") -> dict:
    """Zero-shot logits of a synthetic world's ``dataset`` (``eval/val``) computed directly:
    open_clip model + transform, torchvision ImageFolder, open_clip's zero-shot classifier builder
    with the 80 OpenAI templates and the world's class names.

    Returns:
        {"keys": [n] paths relative to the dataset folder, "labels": int [n],
         "logits": float32 [n, classes] (cosine similarities)}.
    """
    import open_clip
    import torch
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from torchvision.datasets import ImageFolder

    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(architecture)
    info = json.loads((world / "world.json").read_text())
    subset = info["datasets"][dataset]["classes"]
    classes = [info["classes"][i] for i in subset]
    folder = ImageFolder(str(world / dataset), transform=preprocess)
    assert folder.classes == [c["wnid"] for c in classes]  # world wnids sort in index order
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            model, tokenizer=tokenizer, classnames=[c["name"] for c in classes],
            templates=OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=4, device="cpu", use_tqdm=False)
        images = torch.stack([folder[i][0] for i in range(len(folder))])
        feats = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        logits = (feats @ weights).numpy()
    keys = [Path(p).relative_to(world / dataset).as_posix() for p, _ in folder.samples]
    return {"keys": keys, "labels": np.array(folder.targets), "logits": logits}


def kill_9_midway(cmd: list[str], progress, at_least: int, cwd: Path, timeout: float = 120.0) -> int:
    """Start ``cmd``, SIGKILL it once ``progress()`` (a count of completed units) reaches
    ``at_least``, and return the count found after the kill."""
    import os
    import signal
    import subprocess
    import time

    env = dict(os.environ, OODLAB_QUIET="1")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and progress() < at_least and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return progress()


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to compare two outputs exactly."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
