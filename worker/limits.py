"""Input limits of the worker, as plain constants the bot can mirror (its limits must be at least as strict).

Importing this module must stay free: no Pillow, no TensorFlow, nothing of ours.
"""

from __future__ import annotations

#: largest accepted image file or download, in bytes
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: largest accepted image, in pixels (width x height), against decompression bombs
MAX_IMAGE_PIXELS = 40_000_000
#: Pillow format names accepted as input
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
#: the image is scaled down to at most this many pixels on its longest side before segmentation;
#: the result image has that size (the network itself sees at most --max-dim pixels)
MAX_OUTPUT_DIM = 2048
#: URL download limits
URL_TIMEOUT_S = 20.0
URL_CONNECT_TIMEOUT_S = 5.0
URL_MAX_REDIRECTS = 3
#: accepted --max-dim values (Mask R-CNN needs multiples of 64)
MIN_MAX_DIM = 256
MAX_MAX_DIM = 1536
DEFAULT_MAX_DIM = 1024
DEFAULT_MIN_CONFIDENCE = 0.7
BACKBONES = ("resnet101", "resnet50")
OUTPUT_FORMATS = ("png", "jpeg")
#: most input files (pictures) in one task: a Telegram album holds at most 10
MAX_ALBUM_PICTURES = 10
