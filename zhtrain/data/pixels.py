"""Decoded images as 8-bit RGB, the one form the image processors get, in training and in serving alike."""

import numpy as np


def to_rgb(image):
    """Any PIL image as 8-bit RGB: grayscale, CMYK, palette, 16-bit and transparent ones (composited on white)."""
    # PIL here, not at the top: the caller already holds a PIL image, and serve.py, which imports this module,
    # stays light to import (PIL comes with the model it loads)
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit grayscale (PNG, TIFF): convert("RGB") would clip everything above 255 to white
        array = np.asarray(image, dtype=np.float64)
        scale = 1 / 257 if image.mode.startswith("I") and array.max() > 255 else (255 if array.max() <= 1 else 1)
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # dropping alpha leaves whatever colour the transparent pixels happen to store (often black)
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        return background.convert("RGB")
    return image.convert("RGB")
