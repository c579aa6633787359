"""The classic YOLOv5 model classes (github.com/ultralytics/yolov5, v5.0 to v7.0), re-implemented.

An original YOLOv5 ``.pt`` pickles instances of ``models.yolo.Model`` /
``DetectionModel``, ``models.yolo.Detect`` and ``models.common.Conv``, ``C3``,
``SPPF``, ... Unpickling restores each instance's ``__dict__`` (parameters,
submodules, attributes such as ``f``/``i``/``na``/``stride``) without calling
``__init__``, so these classes only need the same attribute names and the same
``forward`` as YOLOv5's. :mod:`dsxai.adapters.checkpoint` maps the pickle's
``models.*`` names onto them, so no ``yolov5`` package (and none of its
dependencies) is needed. The constructors build the layer layout YOLOv5 does,
for tests and for users who assemble a model by hand.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "C3x", "C3Ghost", "SPP", "SPPF", "Focus",
           "Concat", "Contract", "Expand", "GhostConv", "GhostBottleneck", "CrossConv", "MixConv2d", "Sum",
           "Detect", "DetectionModel", "Model", "PICKLE_NAMES"]


def autopad(k: int | Sequence[int], p: int | Sequence[int] | None = None, d: int = 1) -> Any:
    """'same' padding for kernel ``k`` and dilation ``d`` (YOLOv5's rule)."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation (SiLU by default)."""

    def __init__(self, c1: int, c2: int, k: Any = 1, s: Any = 1, p: Any = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        bn = getattr(self, "bn", None)  # a fused checkpoint has folded the BatchNorm into conv
        x = self.conv(x)
        return self.act(bn(x) if bn is not None else x)


class DWConv(Conv):
    """Depth-wise convolution (groups = gcd of the channel counts)."""

    def __init__(self, c1: int, c2: int, k: Any = 1, s: Any = 1, d: int = 1, act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, plus the input when ``add`` (shortcut with equal channels)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """CSP bottleneck of YOLOv5 up to v4.0."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions (YOLOv5 v5.0+)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3x(C3):
    """C3 whose inner blocks are CrossConvs (same forward)."""


class C3Ghost(C3):
    """C3 whose inner blocks are GhostBottlenecks (same forward)."""


class SPP(nn.Module):
    """Spatial pyramid pooling: parallel max-pools of sizes ``k``."""

    def __init__(self, c1: int, c2: int, k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: one max-pool applied three times in sequence (equals SPP(k=(5, 9, 13)))."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixel blocks to channels) then a Conv (YOLOv5 up to v5.0)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Any = None, g: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along dimension ``d``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[Tensor]) -> Tensor:
        return torch.cat(x, self.d)


class _Regroup(nn.Module):
    """Moves pixels between the channel and spatial axes by a factor ``gain`` (YOLOv5's ``gain`` attribute)."""

    def __init__(self, gain: int = 2):
        super().__init__()
        self.gain = gain


class Contract(_Regroup):
    """Width-height into channels: [B, C, H, W] -> [B, C*g*g, H/g, W/g]."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.size()
        s = self.gain
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(b, c * s * s, h // s, w // s)


class Expand(_Regroup):
    """Channels into width-height: [B, C, H, W] -> [B, C/g/g, H*g, W*g]."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.size()
        s = self.gain
        x = x.view(b, s, s, c // s ** 2, h, w).permute(0, 3, 4, 1, 5, 2).contiguous()
        return x.view(b, c // s ** 2, h * s, w * s)


class GhostConv(nn.Module):
    """Half the channels from a Conv, the other half from a cheap 5x5 depth-wise Conv of them."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool | nn.Module = True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


class GhostBottleneck(nn.Module):
    """Ghost bottleneck: GhostConv, optional strided DWConv, GhostConv, plus a shortcut."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1):
        super().__init__()
        c_ = c2 // 2
        self.conv = nn.Sequential(GhostConv(c1, c_, 1, 1), DWConv(c_, c_, k, s, act=False) if s == 2 else nn.Identity(),
                                  GhostConv(c_, c2, 1, 1, act=False))
        self.shortcut = (nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False))
                         if s == 2 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.shortcut(x)


class CrossConv(nn.Module):
    """(1 x k) then (k x 1) Conv, plus the input when ``add``."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, e: float = 1.0, shortcut: bool = False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, (1, k), (1, s))
        self.cv2 = Conv(c_, c2, (k, 1), (s, 1), g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class MixConv2d(nn.Module):
    """Mixed depth-wise convolution: parallel kernels, concatenated, then BatchNorm + SiLU."""

    def __init__(self, c1: int, c2: int, k: Sequence[int] = (1, 3), s: int = 1):
        super().__init__()
        n = len(k)
        c_ = [c2 // n + (1 if i < c2 % n else 0) for i in range(n)]
        self.m = nn.ModuleList([nn.Conv2d(c1, c_[i], k[i], s, k[i] // 2, groups=math.gcd(c1, c_[i]), bias=False)
                                for i in range(n)])
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([m(x) for m in self.m], 1)))


class Sum(nn.Module):
    """Sum of a list of tensors, optionally weighted by learned ``2 * sigmoid(w)``."""

    def __init__(self, n: int, weight: bool = False):
        super().__init__()
        self.weight = weight
        self.iter = range(n - 1)
        if weight:
            self.w = nn.Parameter(-torch.arange(1.0, n) / 2, requires_grad=True)

    def forward(self, x: list[Tensor]) -> Tensor:
        y = x[0]
        w = torch.sigmoid(self.w) * 2 if self.weight else None
        for i in self.iter:
            y = y + x[i + 1] * w[i] if w is not None else y + x[i + 1]
        return y


class Detect(nn.Module):
    """The anchor-based YOLOv5 head: one 1x1 Conv per level; in eval mode ``(pred [B, N, 5 + nc], raw)``.

    ``pred`` rows hold ``xywh`` in network pixels, then the objectness and class probabilities (sigmoided).
    ``anchors`` (a buffer) are in units of each level's stride, as YOLOv5 stores them. The grids are
    rebuilt on every forward (cheap), so no cached tensor outlives an inference-mode call.
    """

    stride: Tensor | None = None
    export = False

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = (),
                 inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2 if anchors else 0
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[Tensor]) -> Any:
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                grid, anchor_grid = self._make_grid(nx, ny, i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return x
        return (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[Tensor, Tensor]:
        """Cell offsets (minus 0.5, YOLOv5's ``2 * sigmoid - 0.5`` centre) and anchor sizes in pixels."""
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t),
                                indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        stride = torch.as_tensor(self.stride, device=d, dtype=t)[i]
        anchor_grid = (self.anchors[i] * stride).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class DetectionModel(nn.Module):
    """The YOLOv5 detector: ``model`` is the layer Sequential; layer ``m`` takes the outputs named by ``m.f``.

    Each layer carries ``i`` (its index), ``f`` (-1 = the previous layer, or a list of indices) and ``save``
    lists the indices whose outputs later layers read.
    """

    def __init__(self, layers: Sequence[nn.Module] = (), save: Sequence[int] = (), names: Any = None):
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.save = sorted(save)
        self.names = names
        self.inplace = True

    def forward(self, x: Tensor, augment: bool = False, profile: bool = False, visualize: bool = False) -> Any:
        if augment:
            raise ValueError("dsxai's YOLOv5 DetectionModel has no test-time augmentation; use augment=False")
        y: list[Any] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "DetectionModel":
        """Move / cast the head's ``stride`` (a plain tensor attribute, not a buffer) with the weights."""
        self = super()._apply(fn, *args, **kwargs)
        head = self.model[-1] if len(self.model) else None
        if isinstance(head, Detect) and isinstance(head.stride, Tensor):
            head.stride = fn(head.stride)
        return self


class Model(DetectionModel):
    """The name YOLOv5 v5.0 / v6.x checkpoints use for the detector (same class as ``DetectionModel``)."""


#: the YOLOv5 class names (``models.yolo.*``, ``models.common.*``, ``models.experimental.*``) a checkpoint's
#: pickle may name; :mod:`dsxai.adapters.checkpoint` resolves them to the classes above
PICKLE_NAMES = frozenset({"Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "C3x", "C3Ghost", "SPP", "SPPF",
                          "Focus", "Concat", "Contract", "Expand", "GhostConv", "GhostBottleneck", "CrossConv",
                          "MixConv2d", "Sum", "Detect", "DetectionModel", "Model"})
