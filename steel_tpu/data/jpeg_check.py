"""Is a JPEG one the pipeline can use? Decoded by the pipeline's own decoder, with libjpeg's warnings refused."""

import io

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

try:
    import simplejpeg
except ImportError:  # Kaggle's and Colab's images lack it: a kit scores there with PIL's stricter-than-TF decode
    simplejpeg = None

from steel_tpu.constants import HEIGHT, WIDTH
from steel_tpu.data.decode import decode_gray

_SOI = b"\xff\xd8"  # every JPEG starts with the start-of-image marker
# JPEG colour spaces the pipeline reads (decode_gray asks libjpeg for the luma plane), by PIL mode. CMYK and YCCK
# (PIL says "CMYK" for both) have no luma plane libjpeg can give: TensorFlow fails with "Unsupported color
# conversion request", after the shard build, in the middle of training.
_READABLE = {"L": "grayscale", "RGB": "YCbCr or RGB"}


def problem(data):
    """Why the pipeline cannot use these JPEG bytes, or None if it decodes them exactly and without a warning.

    Trailing bytes after a complete JPEG are fine (libjpeg stops at the end-of-image marker); a JPEG the decoder
    runs out of data in, or one that decodes only with a libjpeg warning (a corrupt entropy-coded body, a
    premature end of a data segment), is not: TensorFlow only prints the warning and decodes garbage.
    """
    header = _header_problem(data)
    if header:
        return header
    warned = _decoder_reason(data)
    if warned:
        return warned
    try:
        # The pipeline's decoder with its arguments at full size: what passes here decodes in training and predict
        # (each ratio of decode_gray entropy-decodes the same data, only the inverse DCT is scaled).
        decode_gray(data, image_size=(HEIGHT, WIDTH))
    except (tf.errors.InvalidArgumentError, tf.errors.OpError) as error:
        return f"TensorFlow cannot decode it ({error.message.splitlines()[0]})"
    return None


def _header_problem(data):
    try:
        image = Image.open(io.BytesIO(data))
        kind, mode, (width, height) = image.format, image.mode, image.size
    except Image.DecompressionBombError as error:  # a header claiming billions of pixels: e.g. bytes read as a GIF
        return f"not a {WIDTH}x{HEIGHT} JPEG ({error})"
    except UnidentifiedImageError:
        if data.startswith(_SOI):  # a JPEG PIL cannot read (e.g. 12-bit samples): libjpeg says why
            return _decoder_reason(data) or "unreadable JPEG"
        return "not a JPEG (not an image format PIL knows)"
    except (OSError, SyntaxError) as error:  # PIL raises SyntaxError for malformed headers, e.g. 12-bit samples
        return f"unreadable JPEG header ({error})"
    if kind != "JPEG":
        return f"not a JPEG ({kind})"
    if mode not in _READABLE:
        return (f"{mode} JPEG ({len(image.getbands())} channels): the pipeline reads {' or '.join(_READABLE.values())}"
                " JPEGs only; convert it to grayscale")
    if (width, height) != (WIDTH, HEIGHT):
        return f"{width}x{height}, expected {WIDTH}x{HEIGHT}"
    return None


def _decoder_reason(data):
    """libjpeg-turbo's error or first warning on these bytes, as a reason; None if it decodes them cleanly."""
    if simplejpeg is None:
        return _pil_reason(data)
    try:
        # strict: warnings raise. Only 1/8 scale is computed: the entropy decoding, where the warnings come from,
        # is the same at every scale.
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as error:
        message = str(error)
        if "Premature end of JPEG file" in message:
            return "truncated JPEG (the decoder ran out of data)"
        return f"corrupt JPEG data ({message})" if "Corrupt JPEG data" in message else f"unreadable JPEG ({message})"
    return None


def _pil_reason(data):
    """Without simplejpeg: PIL's full decode, which refuses a JPEG it runs out of data in (TensorFlow pads it with
    grey) but, unlike simplejpeg's strict mode, passes a corrupt entropy-coded body that libjpeg only warns about."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if "truncated" in str(error):
            return "truncated JPEG (the decoder ran out of data)"
        return f"unreadable JPEG ({error})"
    return None
