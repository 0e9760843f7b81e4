"""Tiled inspection: a large camera frame judged tile by tile at the camera's own pixels.

Every model resizes its input to ``image_size`` (256 px): a 10 px scratch on a 2448 x 2048 frame
is then under one pixel and cannot be found at any threshold. A tiled model instead cuts the
full-resolution image into ``tile`` x ``tile`` squares ``stride`` apart, gives each square to the
network (resized to ``image_size``, so ``tile == image_size`` keeps the camera's pixels), and

* **trains** on tiles (PatchCore: one memory bank over every tile's patches, coreset as usual;
  EfficientAD: each training step is one tile drawn at random from the step's image),
* **scores** an image by its highest tile score (PatchCore's and EfficientAD's image score is
  already the highest value of their map, so this is the same rule over more of it),
* **stitches** the map from the tiles' maps at full resolution, averaging where tiles overlap.

Both models' tiled torch models are their own class with :class:`TiledForward` mixed in front
(:func:`make_tiled`): the inference rule above is written once, and the state dict stays the
untiled model's.

Why anomalib's ``Tiler`` (``anomalib.data.utils.tiler``) is not what runs here, although its
rules are kept (overlaps averaged, as ``Tiler.untile`` does; ``tests/test_tiling.py`` checks the
stitched map against ``Tiler.untile`` on a grid both accept):

* ``Tiler.tile`` returns *every* tile of the batch at once and ``Tiler.untile`` needs them all
  back; a 20 MP frame at 512 px tiles is ~100 tiles, and their features would all be held at
  once. Here tiles go through the network :data:`MICRO_BATCH` at a time and only the running sum
  of their maps (one full-size float map) is kept, so memory is bounded whatever the frame size.
* Where the stride does not fit the image, ``Tiler`` pads the image (zeros) or resizes it; padding
  shows the network black borders it never saw on the line, resizing changes the pixels tiling is
  meant to keep. Here the last tile of a row or column is moved back to end at the image's edge
  (it overlaps its neighbour more), so every tile is made of real pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import ConfigError

#: Smallest tile: PatchCore's stride-16 layer needs 4 x 4 positions.
MIN_TILE = 64
#: Largest tile: beyond it the network sees a heavily downsized square again.
MAX_TILE = 4096
#: Tiles per forward pass. A 20 MP frame never holds more than this many tiles' features at once.
MICRO_BATCH = 4


def check_tiling(tile: object, stride: object) -> None:
    """A one-line :class:`ConfigError` unless ``tile`` / ``stride`` are usable (both None: untiled)."""
    if tile is None:
        if stride is not None:
            raise ConfigError(f"--stride {stride} needs --tile (the tile size in pixels, e.g. --tile 512 --stride 448)")
        return
    for flag, value in (("--tile", tile), ("--stride", stride)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{flag} must be a whole number of pixels (got {value!r})")
    if not MIN_TILE <= tile <= MAX_TILE:  # type: ignore[operator]
        raise ConfigError(f"--tile must be between {MIN_TILE} and {MAX_TILE} px (got {tile})")
    if stride is not None and not 1 <= stride <= tile:  # type: ignore[operator]
        raise ConfigError(
            f"--stride must be between 1 and the tile size {tile} px (got {stride}): "
            "a stride larger than the tile leaves pixels no tile sees"
        )


def origins(length: int, tile: int, stride: int) -> list[int]:
    """Where tiles start along one side: every ``stride`` px, the last moved back to end at the edge.

    A side no longer than the tile is one tile: the whole side.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class Box:
    """One tile in image pixels: rows ``top:bottom``, columns ``left:right``."""

    top: int
    left: int
    bottom: int
    right: int


def grid(height: int, width: int, tile: int, stride: int) -> list[Box]:
    """The tiles that cover a ``height`` x ``width`` image, row by row."""
    return [
        Box(y, x, min(y + tile, height), min(x + tile, width))
        for y in origins(height, tile, stride)
        for x in origins(width, tile, stride)
    ]


def micro_batches(boxes: list[Box], size: int = MICRO_BATCH) -> Iterator[list[Box]]:
    for start in range(0, len(boxes), size):
        yield boxes[start : start + size]


def crop_tiles(image: torch.Tensor, boxes: list[Box], image_size: int) -> torch.Tensor:
    """N x C x image_size x image_size: the tiles of one C x H x W image, resized to the model's input."""
    tiles = []
    for box in boxes:
        tile = image[:, box.top : box.bottom, box.left : box.right].unsqueeze(0)
        if tile.shape[-2:] != (image_size, image_size):
            tile = F.interpolate(tile, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        tiles.append(tile)
    return torch.cat(tiles)


class Stitcher:
    """The full-resolution map of one image, from its tiles' maps: overlaps averaged.

    Holds one running sum (C x H x W, C taken from the first tile's map) and one count (H x W),
    never the tiles themselves. Several channels stitch several maps of the same tiles at once
    (EfficientAD's student-teacher and autoencoder maps).
    """

    def __init__(self, height: int, width: int, device: torch.device | None = None) -> None:
        self.height, self.width, self.device = height, width, device
        self.total: torch.Tensor | None = None
        self.count = torch.zeros((height, width), dtype=torch.float32, device=device)

    def add(self, box: Box, tile_map: torch.Tensor) -> None:
        """Add one tile's map, (C x) h x w of any size: resized to the box's pixels."""
        h, w = box.bottom - box.top, box.right - box.left
        tile_map = tile_map.reshape(1, -1, *tile_map.shape[-2:]).float()
        if tile_map.shape[-2:] != (h, w):
            tile_map = F.interpolate(tile_map, size=(h, w), mode="bilinear", align_corners=False)
        if self.total is None:
            self.total = torch.zeros((tile_map.shape[1], self.height, self.width), dtype=torch.float32, device=self.device)
        self.total[:, box.top : box.bottom, box.left : box.right] += tile_map[0]
        self.count[box.top : box.bottom, box.left : box.right] += 1

    def result(self) -> torch.Tensor:
        """C x H x W: the average of the tiles' maps at every pixel."""
        if self.total is None:
            return self.count.unsqueeze(0)  # no tile added: zeros
        return self.total / self.count.clamp_min(1)


@dataclass
class TiledOutput:
    """One image's tiled result: the highest tile score, the stitched map and where that tile is."""

    score: torch.Tensor  # 0-d
    anomaly_map: torch.Tensor  # C x H x W (C: the channels of the tiles' maps, usually 1)
    best: Box


def run_tiled(
    image: torch.Tensor,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None],
    *,
    tile: int,
    stride: int,
    image_size: int,
    micro_batch: int = MICRO_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> TiledOutput | None:
    """Run ``forward`` over the tiles of one C x H x W ``image``, :data:`MICRO_BATCH` at a time.

    ``forward(tiles)`` returns (scores N, maps N x 1 x h x w), or None while training (the model
    keeps what it needs, e.g. PatchCore's embeddings); then this returns None too. ``progress(done,
    total)`` is told the tiles done after each micro-batch (a 20 MP frame takes many seconds).
    """
    height, width = image.shape[-2:]
    boxes = grid(height, width, tile, stride)

    def scored() -> Iterator[tuple[list[Box], torch.Tensor, torch.Tensor]]:
        done = 0
        for batch in micro_batches(boxes, micro_batch):
            out = forward(crop_tiles(image, batch, image_size))
            done += len(batch)
            if progress is not None:
                progress(done, len(boxes))
            if out is not None:
                yield batch, *out

    return combine_tiles(height, width, scored())


def combine_tiles(height: int, width: int, scored: Iterable[tuple[list[Box], torch.Tensor, torch.Tensor]]) -> TiledOutput | None:
    """The tiled rule over one image's scored tiles: the highest tile score, the maps stitched.

    ``scored`` yields (boxes, their scores N, their maps N x C x h x w), a micro-batch at a time,
    however they were computed (the network on cropped tiles, or a memory bank on tiles' stored
    patches); None when it yields nothing.
    """
    stitcher: Stitcher | None = None
    best_score: torch.Tensor | None = None
    best: Box | None = None
    for batch, scores, maps in scored:
        if stitcher is None:
            stitcher = Stitcher(height, width, device=maps.device)
        for box, score, tile_map in zip(batch, scores.reshape(-1), maps, strict=True):
            stitcher.add(box, tile_map)
            if best_score is None or score > best_score:
                best_score, best = score, box
    if stitcher is None or best_score is None or best is None:
        return None
    return TiledOutput(best_score, stitcher.result(), best)


class TiledForward:
    """What a model's torch model gains when it is tiled: the tiling and the tiled inference rule.

    Mixed in front of the model's own torch class (:func:`make_tiled` swaps the instance's class),
    so it adds no parameter or buffer: the state dict, and every method it does not override, are
    the untiled model's. :meth:`tiled_inference` is the rule of this module (highest tile score,
    stitched map); how a tiled model *trains* differs per model and stays with the model.
    """

    #: (tile, stride, image_size), set by :func:`make_tiled`
    tiling: tuple[int, int, int]
    #: the highest-scoring tile of each image of the last inference call (similarity descriptors)
    last_best: list
    #: told (tiles done, tiles) of the image being judged; set for one call by the detector
    progress: Any = None

    def run_tiles(
        self, image: torch.Tensor, forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]
    ) -> TiledOutput | None:
        """:func:`run_tiled` over one C x H x W image with this model's tiling and progress."""
        tile, stride, image_size = self.tiling
        return run_tiled(image, forward, tile=tile, stride=stride, image_size=image_size, progress=self.progress)

    def tiled_inference(self, images: torch.Tensor, untiled: Callable[[torch.Tensor], Any]) -> Any:
        """anomalib's ``InferenceBatch`` for B full-resolution images, ``untiled`` run on their tiles.

        ``untiled(tiles)`` is the model's own forward (an ``InferenceBatch`` per batch of tiles). The
        score of each image has the shape of one tile's score (PatchCore: 0-d, EfficientAD: 1), so
        anomalib's post-processor and metrics see the untiled model's shapes.
        """
        from anomalib.data import InferenceBatch

        score_shape: list[torch.Size] = []

        def forward_tiles(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = untiled(tiles)
            score_shape[:] = [out.pred_score.shape[1:]]
            return out.pred_score, out.anomaly_map

        scores, maps, best = [], [], []
        for image in images:
            out = self.run_tiles(image, forward_tiles)
            if out is None:  # an image with no tile cannot happen: grid() always gives one
                continue
            scores.append(out.score)
            maps.append(out.anomaly_map)
            best.append(out.best)
        self.last_best = best
        pred_score = torch.stack(scores).reshape(len(scores), *score_shape[0])
        return InferenceBatch(pred_score=pred_score, anomaly_map=torch.stack(maps))


def make_tiled(model: torch.nn.Module, tiled_class: type[TiledForward], tile: int, stride: int | None, image_size: int) -> None:
    """Turn ``model`` (an untiled torch model) into ``tiled_class``: :class:`TiledForward` in front of its class."""
    if not (issubclass(tiled_class, TiledForward) and issubclass(tiled_class, type(model))):
        raise TypeError(f"{tiled_class.__name__} does not tile a {type(model).__name__}")
    model.__class__ = tiled_class
    model.tiling = (tile, int(stride or tile), image_size)
    model.last_best = []
