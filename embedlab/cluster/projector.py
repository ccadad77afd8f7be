"""TensorBoard Projector export: ``projector/<model>/`` opens with ``tensorboard --logdir projector``.

Each model directory is one TensorBoard run holding ``tensors.tsv`` (the embeddings), ``metadata.tsv`` (label,
class, split, id; a header row, as the Projector expects with several columns), ``sprite.png`` (a square grid of
thumbnails in the same row order), ``projector_config.pbtxt`` pointing at the three, and a minimal event file
(TensorBoard lists only directories holding one as runs; its name and time are fixed, so the export is
byte-reproducible). Points are capped at ``projector.max_points``, drawn evenly per class: the Projector gets slow
past ~10k points with sprites, and a sprite larger than 8192×8192 pixels is not displayed.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from embedlab.core.params import ProjectorParams
from embedlab.data.prepared import Prepared
from embedlab.data.sampling import sample_per_class
from embedlab.embed.embeddings import EmbeddingSet

MAX_SPRITE_SIDE = 8192

CONFIG = """embeddings {{
  tensor_name: "{name}"
  tensor_path: "tensors.tsv"
  metadata_path: "metadata.tsv"
  sprite {{
    image_path: "sprite.png"
    single_image_dim: {thumb}
    single_image_dim: {thumb}
  }}
}}
"""


def sprite(images: np.ndarray, thumb: int) -> Image.Image:
    """A square grid (row-major, as the Projector reads it) of ``thumb``-pixel thumbnails."""
    side = max(1, math.ceil(math.sqrt(len(images))))
    grid = Image.new("RGB", (side * thumb, side * thumb), "white")
    for i, pixels in enumerate(images):
        tile = Image.fromarray(np.asarray(pixels, np.uint8)).resize((thumb, thumb), Image.Resampling.BICUBIC)
        grid.paste(tile, ((i % side) * thumb, (i // side) * thumb))
    return grid


def event_file() -> bytes:
    """A minimal TensorBoard event file (just the format version), so the directory counts as a run."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    RecordWriter(buffer).write(Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString())
    return buffer.getvalue()


def projector_run(emb: EmbeddingSet, prepared: Prepared, name: str, params: ProjectorParams) -> dict[str, bytes]:
    """One model's projector run: file name -> bytes (``stages/projector.py`` writes them as one directory)."""
    max_points = min(params.max_points, (MAX_SPRITE_SIDE // params.thumbnail) ** 2)
    rows = sample_per_class(emb.labels, max_points, params.seed)
    position = {image_id: row for row, image_id in enumerate(prepared.index["id"])}
    images = np.stack([prepared.images[position[image_id]] for image_id in emb.ids[rows]])
    names = np.asarray(emb.class_names)
    tensors = io.BytesIO()
    np.savetxt(tensors, np.asarray(emb.embeddings[rows], np.float32), delimiter="\t", fmt="%.6g")
    metadata = ["label\tclass\tsplit\tid"] + [
        f"{emb.labels[r]}\t{names[emb.labels[r]]}\t{emb.splits[r]}\t{emb.ids[r]}" for r in rows
    ]
    sprite_png = io.BytesIO()
    sprite(images, params.thumbnail).save(sprite_png, format="PNG")
    return {
        "tensors.tsv": tensors.getvalue(),
        "metadata.tsv": ("\n".join(metadata) + "\n").encode(),
        "sprite.png": sprite_png.getvalue(),
        "projector_config.pbtxt": CONFIG.format(name=name, thumb=params.thumbnail).encode(),
        "events.out.tfevents.0.embedlab": event_file(),
    }
