"""The pixels Imp's own code feeds SigLIP, rebuilt from MILVLG/imp, independently of imp_gguf.images.

- `mm_utils.process_images`: with `image_aspect_ratio == "pad"`, `expand2square` centres the image on a
  square of colour `int(0.5 * 255)` per channel; any other value leaves it as is.
- `ImpImageProcessor` (siglip/image_processing_imp.py): convert to RGB, resize with
  `get_resize_output_image_size(default_to_square=True)` (a squash to size x size), bicubic, rescale
  by 1/255, normalise with mean = std = 0.5, channels first. No crop.
- The size: the vision tower's config, `SiglipVisionConfig.from_pretrained(mm_vision_tower)`, so
  the checkpoint's `vision_tower_config.image_size`, else SigLIP-SO400M-patch14-384's own 384.

transformers' own image transforms do the work, so the parity tests compare two implementations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SIGLIP_SO400M_384_IMAGE_SIZE = 384  # google/siglip-so400m-patch14-384/config.json: vision_config.image_size
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


def imp_image_size(config: dict[str, Any]) -> int:
    vtc = config.get("vision_tower_config") or {}
    if isinstance(vtc, dict) and isinstance(vtc.get("vision_config"), dict):
        vtc = vtc["vision_config"]
    return int(vtc.get("image_size") or SIGLIP_SO400M_384_IMAGE_SIZE)


def _expand2square(img: Any, background: tuple[int, ...]) -> Any:
    from PIL import Image

    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background)
    if width > height:
        result.paste(img, (0, (width - height) // 2))
    else:
        result.paste(img, ((height - width) // 2, 0))
    return result


def imp_pixel_values(image: str | Path, config: dict[str, Any]) -> np.ndarray:
    """[3, S, S] float32, as Imp's process_images + ImpImageProcessor produce for this config."""
    from PIL import Image
    from transformers.image_transforms import normalize, rescale, resize, to_channel_dimension_format
    from transformers.image_utils import ChannelDimension, PILImageResampling

    with Image.open(image) as im:
        img = im.convert("RGB")
    if config.get("image_aspect_ratio") == "pad":
        img = _expand2square(img, tuple(int(x * 255) for x in IMAGE_MEAN))
    size = imp_image_size(config)
    arr = np.asarray(img)  # HWC uint8, as to_numpy_array gives
    arr = resize(arr, (size, size), resample=PILImageResampling.BICUBIC, input_data_format=ChannelDimension.LAST)
    arr = rescale(arr, 1 / 255, input_data_format=ChannelDimension.LAST)
    arr = normalize(arr, IMAGE_MEAN, IMAGE_STD, input_data_format=ChannelDimension.LAST)
    return np.asarray(to_channel_dimension_format(arr, ChannelDimension.FIRST, ChannelDimension.LAST), dtype=np.float32)
