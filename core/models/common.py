"""What both models share: the input-size rule and the pre-processor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from anomalib.pre_processing import PreProcessor

    from core.models.backbones import BackboneSpec

#: Largest square input either model accepts: 4x MVTec AD's 256 px working size already costs 16x
#: the memory and time; beyond that a run fails only after minutes, for lack of memory.
MAX_IMAGE_SIZE = 1024


def check_image_size(value: object, minimum: int, why_minimum: str) -> None:
    """A one-line :class:`ConfigError` unless ``value`` is a whole number of pixels in range."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"--image-size must be a whole number of pixels (got {value!r})")
    if value < minimum:
        raise ConfigError(f"{why_minimum}: --image-size >= {minimum} px needed (got {value})")
    if value > MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be <= {MAX_IMAGE_SIZE} px (got {value}): the models run at 256 px")


def make_pre_processor(spec: BackboneSpec, image_size: int, *, resize: bool = True) -> PreProcessor:
    """Resize the whole image to a square ``image_size`` and normalise with the backbone's statistics.

    Departure from anomalib's default: no centre crop, so defects at the border are still seen.
    ``resize=False`` (tiled models, :mod:`core.models.tiling`): the image keeps its full
    resolution and is only normalised; each tile is resized to ``image_size`` on its own.
    """
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    normalise = Normalize(mean=spec.mean, std=spec.std)
    if not resize:
        return PreProcessor(transform=Compose([normalise]))
    return PreProcessor(transform=Compose([Resize((image_size, image_size), antialias=True), normalise]))
