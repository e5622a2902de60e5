"""The three ContextDesc networks (Luo et al., CVPR'19) in PyTorch, named like the TF1 release.

- ``LocalModel``: GeoDesc conv-BN stack on 32×32 patches, raw 128-d ``conv6`` feature, and
  the matchability head ``kpt_m`` on ``conv5``.
- ``RegionalResNet50``: ResNet50 fully convolutional to ``res5c`` (pre-ReLU, 2048-d).
- ``AugmentationModel``: visual context (regional map → 1×1 convs with context
  normalisation → 3-NN interpolation at the keypoints → MLP with the local feature) and
  geometric context (residual context-normalisation blocks over [matchability, x, y]).

Every parameter's name maps one-to-one to the TF variable: ``a/b/kernel`` ↔ ``a.b.weight``
(see ``tf_variable_names``), so conversion and "missing variable" messages use TF names.
TF ``SAME`` padding is reproduced exactly (it is asymmetric for stride 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5


def _same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TF 'SAME' padding: total ``max((ceil(n/s)-1)*s + k - n, 0)``, the extra pixel after."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class BatchNorm(nn.Module):
    """Inference batch norm; ``affine`` adds gamma/beta (TF ``center``/``scale``)."""

    def __init__(self, channels: int, affine: bool = False) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # channels on dim 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, BN_EPS)

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """The same on channels-last point features ``B×N×C`` (no transposes)."""
        x = (x - self.running_mean) * torch.rsqrt(self.running_var + BN_EPS)
        return x * self.weight + self.bias if self.weight is not None else x


class Conv(nn.Module):
    """``tf.layers.conv2d`` (+ optional BN without gamma/beta, as ``conv_bn``), OIHW weight."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: str = "SAME",
                 bias: bool = False, bn: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.bn = BatchNorm(cout) if bn else None
        self.kernel, self.stride, self.padding = kernel, stride, padding

        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None

    def fold_bn(self) -> None:
        """Fold the (inference) BN into the conv weights: one op instead of two, for speed.
        Call again after loading new weights."""
        if self.bn is None or self.bn.weight is not None:
            return
        with torch.no_grad():
            scale = torch.rsqrt(self.bn.running_var + BN_EPS)
            bias = self.bias if self.bias is not None else torch.zeros_like(scale)
            weight = self.weight * scale[:, None, None, None]
            self._folded = (weight.contiguous(memory_format=torch.channels_last),
                            (bias - self.bn.running_mean) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = 0
        if self.padding == "SAME":
            total = self.kernel - 1
            if self.stride == 1 and total % 2 == 0:
                padding = total // 2            # symmetric: let the conv pad
            else:
                x = _same_pad(x, self.kernel, self.stride)
        if self._folded is not None:
            return F.conv2d(x, *self._folded, self.stride, padding)
        x = F.conv2d(x, self.weight, self.bias, self.stride, padding)
        return self.bn(x) if self.bn is not None else x


class PointConv(Conv):
    """A 1×1 conv applied to point sets ``B×N×C`` (channels last, as the TF graph)."""

    def __init__(self, cin: int, cout: int, bias: bool = True, bn: bool = False) -> None:
        super().__init__(cin, cout, 1, bias=bias, bn=bn)

    def fold_bn(self) -> None:
        if self.bn is None:
            return
        with torch.no_grad():
            scale = torch.rsqrt(self.bn.running_var + BN_EPS)
            bias = self.bias if self.bias is not None else torch.zeros_like(scale)
            self._folded = (self.weight[:, :, 0, 0] * scale[:, None],
                            (bias - self.bn.running_mean) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._folded is not None:
            return F.linear(x, *self._folded)
        x = F.linear(x, self.weight[:, :, 0, 0], self.bias)
        return self.bn.last(x) if self.bn is not None else x


def standardize(patches: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-patch ``(x - mean) / sqrt(var + eps)`` over H, W (population variance)."""
    mean = patches.mean(dim=(-2, -1), keepdim=True)
    var = (patches - mean).square().mean(dim=(-2, -1), keepdim=True)
    return (patches - mean) * torch.rsqrt(var + eps)


def context_norm(x: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """Context normalisation of ``B×N×C`` point features: standardise each channel over the
    N points of each set (population variance)."""
    mean = x.mean(dim=1, keepdim=True)
    var = (x - mean).square().mean(dim=1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def context_norm_bn_relu(x: torch.Tensor, bn: "BatchNorm") -> torch.Tensor:
    """``relu(bn(context_norm(x)))`` on ``B×N×C`` as one affine map per set and channel."""
    if x.shape[1] == 0:
        return x
    var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)
    inv = torch.rsqrt(var + BN_EPS)
    bn_inv = torch.rsqrt(bn.running_var + BN_EPS)
    scale = inv * bn_inv
    shift = (-mean * inv - bn.running_mean) * bn_inv
    if bn.weight is not None:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return torch.addcmul(shift, x, scale).relu_()


class Matchability(nn.Module):
    """``kpt_m``: conv5 (8×8×128) → 8×8 VALID conv-BN → two 1×1 conv-BN → 1×1 conv → fc → tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.kpt_m_conv0 = Conv(128, 128, 8, padding="VALID", bn=True)
        self.kpt_m_conv1 = Conv(128, 32, 1, padding="VALID", bn=True)
        self.kpt_m_conv2 = Conv(32, 32, 1, padding="VALID", bn=True)
        self.kpt_m = Conv(32, 1, 1, padding="VALID", bias=True)
        self.fc_1 = nn.Linear(1, 1)

    def forward(self, conv5: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.kpt_m_conv0(conv5))
        x = F.relu(self.kpt_m_conv1(x))
        x = F.relu(self.kpt_m_conv2(x))
        x = self.kpt_m(x).flatten(1)
        return torch.tanh(self.fc_1(x))


class LocalModel(nn.Module):
    """GeoDesc on ``N×1×32×32`` patches -> (raw conv6 feature N×128, matchability N×1)."""

    def __init__(self) -> None:
        super().__init__()
        widths = [(1, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
        for i, (cin, cout, stride) in enumerate(widths):
            self.add_module(f"conv{i}", Conv(cin, cout, 3, stride, bn=True))
        self.conv6 = Conv(128, 128, 8, padding="VALID")
        self.kpt_m = Matchability()

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = standardize(patches)
        if self.conv6._folded is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        for i in range(6):
            x = F.relu(getattr(self, f"conv{i}")(x), inplace=True)
        return self.conv6(x).flatten(1), self.kpt_m(x)

    def fold_bn(self) -> "LocalModel":
        """Fold the BNs into the convs and keep the weights channels-last (about 1.5× faster
        on CPU with oneDNN); inputs are then converted to channels-last too."""
        for module in self.modules():
            if isinstance(module, Conv):
                module.fold_bn()
        self.conv6._folded = (self.conv6.weight.contiguous(memory_format=torch.channels_last),
                              None)
        return self


class RegionalResNet50(nn.Module):
    """ResNet50 (Caffe naming) to ``res5c``: the pre-ReLU sum of the last block, 2048-d, /32."""

    STAGES = (("2", "abc", 64, 1), ("3", "abcd", 128, 2), ("4", "abcdef", 256, 2),
              ("5", "abc", 512, 2))

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv(3, 64, 7, 2, padding="VALID", bias=True)
        self.bn_conv1 = BatchNorm(64, affine=True)
        self.blocks: list[tuple[str, int, bool]] = []
        cin = 64
        for stage, letters, width, stride in self.STAGES:
            for k, letter in enumerate(letters):
                name = f"{stage}{letter}"
                first = k == 0
                s = stride if first else 1
                if first:
                    self._conv_bn(f"{name}_branch1", cin, 4 * width, 1, s)
                self._conv_bn(f"{name}_branch2a", cin, width, 1, s)
                self._conv_bn(f"{name}_branch2b", width, width, 3, 1)
                self._conv_bn(f"{name}_branch2c", width, 4 * width, 1, 1)
                self.blocks.append((name, s, first))
                cin = 4 * width

    def _conv_bn(self, name: str, cin: int, cout: int, kernel: int, stride: int) -> None:
        self.add_module(f"res{name}", Conv(cin, cout, kernel, stride))
        self.add_module(f"bn{name}", BatchNorm(cout, affine=True))

    def fold_bn(self) -> "RegionalResNet50":
        """Fold every BN into the conv before it, for speed; call again after loading."""
        with torch.no_grad():
            for name, (conv, bn) in self._pairs().items():
                scale = bn.weight * torch.rsqrt(bn.running_var + BN_EPS)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                weight = conv.weight * scale[:, None, None, None]
                conv._folded = (weight.contiguous(memory_format=torch.channels_last),
                                (bias - bn.running_mean) * scale + bn.bias)
        self._bn_folded = True
        return self

    def _pairs(self) -> dict[str, tuple[Conv, BatchNorm]]:
        pairs = {"conv1": (self.conv1, self.bn_conv1)}
        for name, _, first in self.blocks:
            for branch in (["branch1"] if first else []) + ["branch2a", "branch2b", "branch2c"]:
                key = f"{name}_{branch}"
                pairs[key] = (getattr(self, f"res{key}"), getattr(self, f"bn{key}"))
        return pairs

    def _branch(self, name: str, x: torch.Tensor, relu: bool) -> torch.Tensor:
        x = getattr(self, f"res{name}")(x)
        if not getattr(self, "_bn_folded", False):
            x = getattr(self, f"bn{name}")(x)
        return F.relu(x, inplace=True) if relu else x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` mean-subtracted RGB (0–255 scale) -> ``B×2048×h×w`` res5c."""
        if getattr(self, "_bn_folded", False):
            image = image.contiguous(memory_format=torch.channels_last)
        x = self.conv1(F.pad(image, (3, 3, 3, 3)))
        if not getattr(self, "_bn_folded", False):
            x = self.bn_conv1(x)
        x = F.max_pool2d(_same_pad(F.relu(x, inplace=True), 3, 2, value=-math.inf), 3, 2)
        out = x
        for name, _, first in self.blocks:
            if name != "2a":
                x = F.relu(out)
            shortcut = self._branch(f"{name}_branch1", x, False) if first else x
            y = self._branch(f"{name}_branch2a", x, True)
            y = self._branch(f"{name}_branch2b", y, True)
            out = shortcut + self._branch(f"{name}_branch2c", y, False)
        return out


def grid_points(height: int, width: int, device=None) -> torch.Tensor:
    """The regional map cells as ``(h·w)×2`` points in [-1, 1]² (x across, y down, row-major)."""
    ys = torch.linspace(-1.0, 1.0, height, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device)
    yv, xv = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xv, yv], dim=-1).reshape(-1, 2)


def interpolate_3nn(query: torch.Tensor, points: torch.Tensor, values: torch.Tensor,
                    inverse_distance: bool = False) -> torch.Tensor:
    """Values at ``query`` (``B×N×2``) from their 3 nearest ``points`` (``B×M×2``, values
    ``B×M×C``).

    ``inverse_distance=True`` weighs the neighbours by 1/d. The official TF code clamps the
    *negated* distances returned by ``top_k`` at 1e-10, so its weights are always 1/3: that
    is the default here, as the released weights were trained with it.
    """
    dot = query @ points.transpose(1, 2)
    sq_q = query.square().sum(-1, keepdim=True)
    sq_p = points.square().sum(-1, keepdim=True)
    dist = torch.sqrt((sq_q - 2 * dot + sq_p.transpose(1, 2) + 1e-6).clamp_min(0))
    k = min(3, points.shape[1])
    dist, index = torch.topk(dist, k, dim=-1, largest=False, sorted=True)
    if inverse_distance:
        inv = 1.0 / dist.clamp_min(1e-10)
    else:
        inv = 1.0 / torch.full_like(dist, 1e-10)
    weight = inv / inv.sum(-1, keepdim=True)
    batch, n, _ = index.shape
    channels = values.shape[-1]
    flat = index + (torch.arange(batch, device=index.device) * values.shape[1])[:, None, None]
    gathered = values.reshape(-1, channels)[flat.reshape(-1)].reshape(batch, n, k, channels)
    return (weight[..., None] * gathered).sum(-2)


class VisualContext(nn.Module):
    def __init__(self, reg_dim: int = 2048, inverse_distance: bool = False) -> None:
        super().__init__()
        self.conv1 = PointConv(reg_dim, 1024)
        self.conv1_bn = BatchNorm(1024)
        self.conv2 = PointConv(1024, 512)
        self.conv2_bn = BatchNorm(512)
        for i, (cin, cout) in enumerate([(640, 512), (512, 256), (256, 128)]):
            self.add_module(f"fuse_photo_context_{i}", PointConv(cin, cout, bias=False, bn=True))
        self.inverse_distance = inverse_distance

    def forward(self, local_feat: torch.Tensor, regional: torch.Tensor,
                kpt_xy: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = regional.shape
        x = regional.flatten(2).transpose(1, 2)                      # B×(h·w)×C, row-major
        for conv, bn in ((self.conv1, self.conv1_bn), (self.conv2, self.conv2_bn)):
            x = context_norm_bn_relu(conv(x), bn)
        grid = grid_points(height, width, x.device).expand(batch, -1, -1)
        context = interpolate_3nn(kpt_xy, grid, x, self.inverse_distance)
        x = torch.cat([context, local_feat], dim=-1)
        for i in range(3):
            x = F.relu(getattr(self, f"fuse_photo_context_{i}")(x))
        return x


class GeometricContext(nn.Module):
    """``LightContextNormalization``: residual CN-BN-ReLU-conv blocks over [m, x, y]."""

    def __init__(self) -> None:
        super().__init__()
        self.dim_control = PointConv(3, 128)
        for i in range(1, 5):
            self.add_module(f"cn{i}_bn1", BatchNorm(128))
            self.add_module(f"cn{i}_conv1", PointConv(128, 128))
        self.context_trans = PointConv(128, 128)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = self.dim_control(points)
        for i in range(1, 5):
            y = context_norm_bn_relu(x, getattr(self, f"cn{i}_bn1"))
            x = x + getattr(self, f"cn{i}_conv1")(y)
        return self.context_trans(x)


class AugmentationModel(nn.Module):
    """``l2norm(local + visual context + geometric context)``."""

    def __init__(self, inverse_distance: bool = False) -> None:
        super().__init__()
        self.vis_context = VisualContext(inverse_distance=inverse_distance)
        self.geo_context = GeometricContext()

    def fold_bn(self) -> "AugmentationModel":
        """Fold the BNs that follow a conv (the fusion MLP) into it, for speed."""
        for module in self.modules():
            if isinstance(module, PointConv):
                module.fold_bn()
        return self

    def forward(self, local_feat: torch.Tensor, regional: torch.Tensor, kpt_m: torch.Tensor,
                kpt_xy: torch.Tensor) -> torch.Tensor:
        """``local_feat`` B×N×128 (raw conv6), ``regional`` B×2048×h×w, ``kpt_m`` B×N×1,
        ``kpt_xy`` B×N×2 in [-1, 1] -> B×N×128 unit vectors."""
        visual = self.vis_context(local_feat, regional, kpt_xy)
        geometric = self.geo_context(torch.cat([kpt_m, kpt_xy], dim=-1))
        out = local_feat + visual + geometric
        return out * torch.rsqrt(out.square().sum(-1, keepdim=True).clamp_min(1e-12))


class ContextDescNet(nn.Module):
    """The local model and the augmentation model: the contents of one converted file."""

    def __init__(self, inverse_distance: bool = False) -> None:
        super().__init__()
        self.local = LocalModel()
        self.aug = AugmentationModel(inverse_distance)


_PARAM_TO_TF = {"running_mean": "moving_mean", "running_var": "moving_variance"}


def tf_variable_names(module: nn.Module) -> dict[str, tuple[str, str]]:
    """State-dict key -> (TF variable name, layout) for every tensor of ``module``.

    Layout "conv" is HWIO in TF (OIHW here), "dense" is [in, out] (``[out, in]`` here),
    "vector" is unchanged. Top-level submodules ``local``/``aug`` add no TF scope.
    """
    names: dict[str, tuple[str, str]] = {}
    for prefix, sub in module.named_modules():
        for param, _ in list(sub.named_parameters(recurse=False)) + \
                list(sub.named_buffers(recurse=False)):
            key = f"{prefix}.{param}" if prefix else param
            scope = [p for p in prefix.split(".") if p] if prefix else []
            if scope and scope[0] in ("local", "aug") and isinstance(module, ContextDescNet):
                scope = scope[1:]
            if isinstance(sub, BatchNorm):
                leaf = _PARAM_TO_TF.get(param, {"weight": "gamma", "bias": "beta"}.get(param))
                layout = "vector"
            elif isinstance(sub, nn.Linear):
                leaf = "kernel" if param == "weight" else "bias"
                layout = "dense" if param == "weight" else "vector"
            else:
                leaf = "kernel" if param == "weight" else "bias"
                layout = "conv" if param == "weight" else "vector"
            names[key] = ("/".join(scope + [leaf]), layout)
    return names
