"""Images in, network tensors out, and the exact way back to original pixels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageLike", "MAX_PIXELS", "IMAGE_SUFFIXES", "find_image_files", "load_image", "load_images", "read_orientation", "apply_orientation",
           "Geometry", "letterbox", "resize_to"]

ImageLike = Any  # path, HxWx{1,3,4} uint8/float array, PIL image, or CxHxW / HxWxC tensor

#: Largest image (height x width) loaded unless the caller raises it (``max_pixels=``, ``--max-pixels``).
#: Maps are kept per detection at the original resolution: a 100-megapixel image took 9 GB and minutes
#: for a handful of boxes, so bigger images are refused up front rather than exhausting memory midway.
MAX_PIXELS = 40_000_000

_EXIF_ORIENTATION = 0x0112


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_image_files(specs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files named by paths, folders (their image files, sorted) and glob patterns, resolved and
    without repeats; FileNotFoundError names a spec that gives none."""
    import glob

    found: list[Path] = []
    for spec in [specs] if isinstance(specs, (str, Path)) else specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += files
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(spec)):
            files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
            if not files:
                raise FileNotFoundError(f"no files match {str(spec)!r}")
            found += files
        else:
            raise FileNotFoundError(f"image not found: {path} (give a folder, an image file or a glob)")
    return list(dict.fromkeys(p.resolve() for p in found))


def load_image(image: ImageLike, max_pixels: int | None = None) -> np.ndarray:
    """Any supported image as an ``H x W x 3`` uint8 RGB array (grayscale and RGBA converted).

    Files: the EXIF orientation of a JPEG is applied (as PIL's ``exif_transpose``; see
    :func:`read_orientation`), a truncated JPEG is refused, and an unreadable file says why.
    Images above ``max_pixels`` (default :data:`MAX_PIXELS`) pixels are refused.
    """
    if isinstance(image, (str, Path)):
        array = _read_file(Path(image))
        what = str(image)
    elif type(image).__module__.startswith("PIL"):
        array = _to_rgb_uint8(np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")), "PIL image")
        what = "PIL image"
    elif isinstance(image, Tensor):
        data = image.detach().cpu()
        if data.ndim == 3 and data.shape[0] in (1, 3, 4) and data.shape[-1] not in (1, 3, 4):
            data = data.permute(1, 2, 0)
        array, what = _to_rgb_uint8(data.numpy(), "tensor"), "tensor"
    elif isinstance(image, np.ndarray):
        array, what = _to_rgb_uint8(image, "array"), "array"
    else:
        raise TypeError(
            f"unsupported image type {type(image).__name__}; give a file path, an HxWx3 uint8 array, "
            "a PIL image or a CxHxW tensor"
        )
    _check_pixels(array, what, max_pixels)
    return array


def _check_pixels(array: np.ndarray, what: str, max_pixels: int | None) -> None:
    """Refuse an image above the pixel limit, naming the way to raise it."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    h, w = array.shape[:2]
    if h * w > limit:
        raise ValueError(f"{what} is {w}x{h} = {h * w / 1e6:.1f} megapixels, above the limit of "
                         f"{limit / 1e6:g}; downscale it or raise the limit (max_pixels=)")


def _read_file(path: Path) -> np.ndarray:
    """Decode an image file: clear errors for missing, unreadable, truncated or corrupt files."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise PermissionError(f"cannot read {path}: permission denied (check the file's permissions)") from None
    if raw[:2] == b"\xff\xd8" and not _jpeg_complete(raw):
        raise ValueError(f"{path} is truncated or damaged (the JPEG stops before its end marker); "
                         "re-export or re-download it")
    data = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"cannot read {path} as an image (unsupported or corrupt file)")
    if data.ndim == 3 and data.shape[2] == 4:
        data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA)
    elif data.ndim == 3:
        data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    return apply_orientation(_to_rgb_uint8(data, str(path)), _exif_orientation(raw))


def _jpeg_complete(raw: bytes) -> bool:
    """A JPEG whose end-of-image marker follows its last scan (libjpeg only warns and pads grey).

    Entropy-coded data never holds an unstuffed 0xFF 0xD9 or 0xFF 0xDA, so an EOI after the last
    start-of-scan is the real end even when trailing bytes follow it; an EXIF thumbnail's EOI lies
    before the first scan and does not count.
    """
    return raw.rfind(b"\xff\xd9") > raw.rfind(b"\xff\xda") > 0


def read_orientation(image: ImageLike) -> int:
    """The EXIF orientation (1..8) of a JPEG file that :func:`load_image` applies; 1 for anything else."""
    if not isinstance(image, (str, Path)) or not Path(image).is_file():
        return 1
    try:
        with open(image, "rb") as f:
            return _exif_orientation(f.read(1 << 16))
    except OSError:
        return 1


def _exif_orientation(raw: bytes) -> int:
    """The orientation tag of a JPEG's EXIF block (1 when absent or unreadable)."""
    if raw[:2] != b"\xff\xd8":
        return 1
    pos = 2
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker, length = raw[pos + 1], int.from_bytes(raw[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: no more header segments
            return 1
        segment = raw[pos + 4:pos + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            return _tiff_orientation(segment[6:])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """Tag 0x0112 of IFD0 of a TIFF-structured EXIF block."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == _EXIF_ORIENTATION:
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an ``H x W x C`` array as EXIF ``orientation`` says (the transforms of PIL's ``exif_transpose``)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }.get(int(orientation))
    return image if turned is None else np.ascontiguousarray(turned(image))


def _to_rgb_uint8(data: np.ndarray, what: str) -> np.ndarray:
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an image of shape HxW, HxWx1, HxWx3 or HxWx4; got {data.shape}")
    if data.shape[0] < 1 or data.shape[1] < 1:
        raise ValueError(f"{what}: the image is empty (shape {data.shape})")
    if data.dtype == np.uint8:
        pass
    elif data.dtype == np.uint16:
        data = (data / 257).round().astype(np.uint8)
    elif np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise ValueError(f"{what}: the image contains NaN or infinite values")
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"{what}: float images must hold values in [0, 1]; got [{data.min():.3g}, {data.max():.3g}]")
        data = (data * 255).round().astype(np.uint8)
    else:
        raise ValueError(f"{what}: unsupported dtype {data.dtype}; use uint8 (0..255) or float (0..1)")
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    elif data.shape[2] == 4:
        alpha = data[..., 3:].astype(np.float32) / 255
        data = (data[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)  # onto white
    return np.ascontiguousarray(data)


def load_images(images: ImageLike | Sequence[ImageLike], max_pixels: int | None = None) -> list[np.ndarray]:
    """One image or a sequence of them, each as ``H x W x 3`` uint8 RGB (see :func:`load_image`)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        return [load_image(i, max_pixels) for i in images]
    if isinstance(images, Tensor) and images.ndim == 4:
        return [load_image(i, max_pixels) for i in images]
    return [load_image(images, max_pixels)]


@dataclass(frozen=True)
class Geometry:
    """Where an original image sits inside the network tensor.

    The image of ``original_size`` (H, W) was resized to ``content_size`` and placed
    at ``offset`` (top, left) inside a tensor of ``network_size``.
    """

    original_size: tuple[int, int]
    content_size: tuple[int, int]
    offset: tuple[int, int]
    network_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        return (self.content_size[0] / self.original_size[0], self.content_size[1] / self.original_size[1])

    def boxes_to_original(self, boxes: Tensor) -> Tensor:
        """xyxy boxes in network pixels -> original pixels, clipped to the image."""
        sy, sx = self.scale
        top, left = self.offset
        shift = boxes.new_tensor([left, top, left, top])
        scale = boxes.new_tensor([sx, sy, sx, sy])
        out = (boxes - shift) / scale
        h, w = self.original_size
        return torch.stack([out[:, 0].clamp(0, w), out[:, 1].clamp(0, h),
                            out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], 1)

    def boxes_to_network(self, boxes: Tensor) -> Tensor:
        sy, sx = self.scale
        top, left = self.offset
        return boxes * boxes.new_tensor([sx, sy, sx, sy]) + boxes.new_tensor([left, top, left, top])

    def maps_to_original(self, maps: Tensor) -> Tensor:
        """``[..., Hn, Wn]`` maps over the network tensor -> ``[..., H, W]`` over the original image."""
        if tuple(maps.shape[-2:]) != self.network_size:
            maps = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=self.network_size,
                                 mode="bilinear", align_corners=False).reshape(*maps.shape[:-2], *self.network_size)
        top, left = self.offset
        ch, cw = self.content_size
        crop = maps[..., top:top + ch, left:left + cw]
        lead = crop.shape[:-2]
        if crop.numel() == 0:
            return maps.new_zeros(*lead, *self.original_size)
        out = F.interpolate(crop.reshape(-1, 1, ch, cw).float(), size=self.original_size, mode="bilinear",
                            align_corners=False)
        return out.reshape(*lead, *self.original_size)


def letterbox(image: np.ndarray, size: int | tuple[int, int], fill: int = 114) -> tuple[np.ndarray, Geometry]:
    """Resize keeping the aspect ratio and pad to ``size`` (centred), as Ultralytics does."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    ratio = min(th / h, tw / w)
    ch, cw = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
    top, left = int(round((th - ch) / 2 - 0.1)), int(round((tw - cw) / 2 - 0.1))
    resized = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_LINEAR) if (ch, cw) != (h, w) else image
    canvas = np.full((th, tw, 3), fill, dtype=np.uint8)
    canvas[top:top + ch, left:left + cw] = resized
    return canvas, Geometry((h, w), (ch, cw), (top, left), (th, tw))


def resize_to(image: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, Geometry]:
    """Plain resize to ``size`` (H, W) (aspect not kept); None keeps the image as it is."""
    h, w = image.shape[:2]
    if size is None or tuple(size) == (h, w):
        return image, Geometry((h, w), (h, w), (0, 0), (h, w))
    th, tw = size
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)
    return resized, Geometry((h, w), (th, tw), (0, 0), (th, tw))
