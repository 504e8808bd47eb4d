"""Building blocks of NVAE (Vahdat & Kautz 2020) that know nothing of the whole model.

Weight-normalised convolution, squeeze-and-excitation, the residual cells of the encoder
(BN-Swish-conv x2) and decoder (inverted bottleneck with a depthwise 5x5 conv), the combiner
cells, the soft clamp, the residual Normal posterior and its closed-form KL, the spectral-norm
power iteration and BN-gamma penalty used as regularisers, the mixture of discretised logistics
for 8-bit pixels, and BatchNorm-statistics re-estimation.

Letters: B batch, C channels, H/W height/width, Z latent channels of one group, M mixture
components, P parameter channels of an output distribution, N stacked weight matrices,
R/Q rows/columns of a weight matrix.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_MOMENTUM = 0.05  # the official code's BatchNorm momentum (PyTorch convention)
BN_EPS = 1e-5
SIGMA_MIN = 1e-2  # added to exp(log sigma) of every Normal, as in the official code


def soft_clamp(x: Tensor, bound: float = 5.0) -> Tensor:
    """The official differentiable clamp to (-bound, bound): bound * tanh(x / bound)."""
    return bound * torch.tanh(x / bound)


# ----------------------------------------------------------------------------- convolutions


class WNConv2d(nn.Conv2d):
    """Conv2d with weight normalisation, w = exp(log_norm) * v / |v| per output channel.

    Carries the power-iteration vectors `sr_u` (R,) and `sr_v` (Q,) of its weight matrix
    (R = out channels, Q = in/groups * kh * kw) as buffers, so they follow the module's device
    and are saved with it. `weight_norm=False` keeps the plain weight (used inside the
    inverted-bottleneck cells, as in the official code) but still takes part in the spectral
    regulariser.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True, weight_norm: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=bias, device=device)
        self.log_weight_norm: nn.Parameter | None = None
        if weight_norm:
            with torch.no_grad():
                init = self.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (R, 1, 1, 1)
            self.log_weight_norm = nn.Parameter(torch.log(init + 1e-2))
        rows, cols = c_out, self.weight[0].numel()
        self.register_buffer("sr_u", F.normalize(torch.randn(rows, device=device), dim=0, eps=1e-3))
        self.register_buffer("sr_v", F.normalize(torch.randn(cols, device=device), dim=0, eps=1e-3))

    def normalized_weight(self) -> Tensor:
        """The weight actually used by the convolution."""
        if self.log_weight_norm is None:
            return self.weight
        norm = self.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (R, 1, 1, 1)
        return torch.exp(self.log_weight_norm) * self.weight / (norm + 1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class BNSwish(nn.Sequential):
    """BatchNorm followed by Swish (SiLU)."""

    def __init__(self, c: int) -> None:
        super().__init__(nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM), nn.SiLU())


class SE(nn.Module):
    """Squeeze-and-excitation: channel gates from a 2-layer MLP over the spatial mean."""

    def __init__(self, c: int) -> None:
        super().__init__()
        hidden = max(c // 16, 4)
        self.gate = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x.mean(dim=(2, 3)))  # (B, C)
        return x * g[:, :, None, None]  # (B, C, H, W)


class FactorizedReduce(nn.Module):
    """Skip path of a stride-2 cell: Swish, then four 1x1 stride-2 convs on shifted grids."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        quarter = c_out // 4
        sizes = [quarter, quarter, quarter, c_out - 3 * quarter]
        self.convs = nn.ModuleList(WNConv2d(c_in, s, 1, stride=2) for s in sizes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(x)
        views = [x, x[:, :, 1:, 1:], x[:, :, :, 1:], x[:, :, 1:, :]]
        return torch.cat([conv(v) for conv, v in zip(self.convs, views)], dim=1)  # (B, C', H/2, W/2)


class UpSkip(nn.Module):
    """Skip path of an upsampling cell: bilinear x2, then a 1x1 conv to the new width."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = WNConv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(x)  # (B, C', 2H, 2W)


def _bn_swish_conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BNSwish(c_in), WNConv2d(c_in, c_out, 3, stride=stride, padding=1))


def _inverted_bottleneck(c_in: int, c_out: int, *, expand: int, kernel: int,
                         upsample: bool) -> nn.Sequential:
    hidden = c_in * expand
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
    layers += [
        nn.BatchNorm2d(c_in, eps=BN_EPS, momentum=BN_MOMENTUM),
        WNConv2d(c_in, hidden, 1, bias=False, weight_norm=False),
        BNSwish(hidden),
        WNConv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, bias=False,
                 weight_norm=False),
        BNSwish(hidden),
        WNConv2d(hidden, c_out, 1, bias=False, weight_norm=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    return nn.Sequential(*layers)


class ResidualCell(nn.Module):
    """out = skip(x) + 0.1 * SE(f(x)), the residual cell of every NVAE tower.

    kind "enc": f = (BN-Swish-conv3x3) x2; stride 2 halves H, W and the skip is a factorised
    reduction. kind "dec": f = BN, 1x1 expand, BN-Swish, depthwise kxk, BN-Swish, 1x1, BN;
    `up=True` upsamples x2 (nearest) first and the skip is bilinear-up + 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, *, kind: str, down: bool = False, up: bool = False,
                 expand: int = 6, kernel: int = 5, use_se: bool = True) -> None:
        super().__init__()
        if kind == "enc":
            stride = 2 if down else 1
            self.f = nn.Sequential(_bn_swish_conv(c_in, c_out, stride), _bn_swish_conv(c_out, c_out, 1))
            self.skip = FactorizedReduce(c_in, c_out) if down else nn.Identity()
        elif kind == "dec":
            self.f = _inverted_bottleneck(c_in, c_out, expand=expand, kernel=kernel, upsample=up)
            self.skip = UpSkip(c_in, c_out) if up else nn.Identity()
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
        if not (down or up) and c_in != c_out:
            raise ValueError("a cell that keeps the resolution must keep the width")
        self.se = SE(c_out) if use_se else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + 0.1 * self.se(self.f(x))


class EncCombiner(nn.Module):
    """Encoder feature + 1x1 conv(decoder state): the input of a posterior's parameters."""

    def __init__(self, c_enc: int, c_dec: int) -> None:
        super().__init__()
        self.conv = WNConv2d(c_dec, c_enc, 1)

    def forward(self, enc: Tensor, dec: Tensor) -> Tensor:
        return enc + self.conv(dec)  # (B, C, H, W)


class DecCombiner(nn.Module):
    """Inject a latent group into the decoder state: 1x1 conv over concat(state, z)."""

    def __init__(self, c_dec: int, z_channels: int) -> None:
        super().__init__()
        self.conv = WNConv2d(c_dec + z_channels, c_dec, 1)

    def forward(self, dec: Tensor, z: Tensor) -> Tensor:
        return self.conv(torch.cat([dec, z], dim=1))  # (B, C, H, W)


# ----------------------------------------------------------------------------- residual Normal


def normal_from_params(mu: Tensor, log_sigma: Tensor, *, temperature: float = 1.0
                       ) -> torch.distributions.Normal:
    """Normal(soft_clamp(mu), (exp(soft_clamp(log_sigma)) + 1e-2) * temperature)."""
    sigma = (torch.exp(soft_clamp(log_sigma)) + SIGMA_MIN) * temperature
    return torch.distributions.Normal(soft_clamp(mu), sigma, validate_args=False)


def residual_posterior(prior: torch.distributions.Normal, d_mu: Tensor, d_log_sigma: Tensor
                       ) -> tuple[torch.distributions.Normal, Tensor, Tensor]:
    """The residual Normal q = N(mu_p + dmu, sigma_p * dsigma), deltas soft-clamped.

    Returns q and the clamped deltas (dmu, log dsigma), which `residual_kl` takes.
    """
    d_mu = soft_clamp(d_mu)
    d_log_sigma = soft_clamp(d_log_sigma)
    q = torch.distributions.Normal(prior.loc + d_mu, prior.scale * torch.exp(d_log_sigma),
                                   validate_args=False)
    return q, d_mu, d_log_sigma


def residual_kl(d_mu: Tensor, d_log_sigma: Tensor, prior_sigma: Tensor) -> Tensor:
    """KL(q || p) per dimension for q = N(mu_p + dmu, sigma_p * dsigma), p = N(mu_p, sigma_p).

    The paper's closed form 0.5 * (dmu^2 / sigma_p^2 + dsigma^2 - log dsigma^2 - 1); it does not
    depend on mu_p and is exactly 0 when both deltas are 0.
    """
    return 0.5 * ((d_mu / prior_sigma) ** 2 + torch.exp(2 * d_log_sigma) - 2 * d_log_sigma - 1)


# ----------------------------------------------------------------------------- regularisers


def power_iteration(weights: Tensor, u: Tensor, v: Tensor, *, n_iter: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Largest singular value of each matrix by power iteration.

    Args:
        weights: (N, R, Q) matrices; gradients flow into the returned sigma only.
        u, v: (N, R) and (N, Q) current estimates of the singular vectors.
        n_iter: number of (v, u) update pairs.
    Returns:
        sigma (N,) = u^T W v, and the updated u (N, R), v (N, Q) (detached).
    """
    with torch.no_grad():
        w = weights.detach()
        for _ in range(n_iter):
            v = F.normalize(torch.bmm(u.unsqueeze(1), w).squeeze(1), dim=1, eps=1e-3)  # (N, Q)
            u = F.normalize(torch.bmm(w, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-3)  # (N, R)
    sigma = torch.bmm(u.unsqueeze(1), torch.bmm(weights, v.unsqueeze(2))).view(-1)  # (N,)
    return sigma, u, v


class SpectralRegularizer:
    """Sum of the largest singular values of every WNConv2d's weight matrix (NVAE's "SR").

    Matrices of the same shape are stacked and iterated together (as the official code does);
    each call runs `n_iter` power-iteration steps (10x that on the first call unless
    `warm_start=False`, as after a resume, when the buffers hold converged vectors) and writes
    the singular-vector estimates back into each conv's `sr_u`/`sr_v` buffers.
    """

    def __init__(self, model: nn.Module, *, n_iter: int = 4, warm_start: bool = True) -> None:
        self.n_iter = n_iter
        self.groups: dict[tuple[int, int], list[WNConv2d]] = {}
        for m in model.modules():
            if isinstance(m, WNConv2d):
                w = m.weight
                self.groups.setdefault((w.shape[0], w[0].numel()), []).append(m)
        self._first = warm_start

    def __call__(self) -> Tensor:
        total: Tensor | None = None
        n_iter = self.n_iter * (10 if self._first else 1)
        self._first = False
        for convs in self.groups.values():
            w = torch.stack([c.normalized_weight().flatten(1) for c in convs])  # (N, R, Q)
            u = torch.stack([c.sr_u for c in convs])  # (N, R)
            v = torch.stack([c.sr_v for c in convs])  # (N, Q)
            sigma, u, v = power_iteration(w, u, v, n_iter=n_iter)
            for i, c in enumerate(convs):
                c.sr_u.copy_(u[i])
                c.sr_v.copy_(v[i])
            total = sigma.sum() if total is None else total + sigma.sum()
        assert total is not None, "no WNConv2d in the model"
        return total


def bn_gamma_penalty(model: nn.Module) -> Tensor:
    """Sum over BatchNorm layers of max |gamma| (NVAE's BN regulariser)."""
    terms = [m.weight.abs().max() for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    return torch.stack(terms).sum()


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, run: Callable[[], object], *, iters: int) -> None:
    """Recompute the running statistics of the BatchNorm layers that `run()` uses, as a plain
    average over `iters` calls in train mode (NVAE's `--readjust_bn` before sampling); layers
    `run()` never reaches keep their statistics. Leaves the model in eval mode."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(),
              m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for _ in range(iters):
        run()
    for m, (momentum, mean, var, count) in zip(bns, saved):
        m.momentum = momentum
        if int(m.num_batches_tracked) == 0:  # not on the path run() takes: put it back
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
    model.eval()


# ----------------------------------------------------------------------------- pixel likelihoods


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d > 0, stable at both ends (Maechler 2012); each branch sees only its
    own range, so the branch torch.where discards cannot send inf/NaN into the gradient."""
    ln2 = math.log(2.0)
    small = torch.log(-torch.expm1(-d.clamp(min=1e-12, max=ln2)))
    large = torch.log1p(-torch.exp(-d.clamp(min=ln2)))
    return torch.where(d < ln2, small, large)


def _n_coupling(c: int) -> int:
    return c * (c - 1) // 2


def disc_mix_logistic_channels(c: int, n_mix: int) -> int:
    """Parameter channels P of a C-channel mixture: logits, means, log-scales, couplings."""
    return n_mix * (1 + 2 * c + _n_coupling(c))


def _split_mix(params: Tensor, c: int, n_mix: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b, _, h, w = params.shape
    logits = params[:, :n_mix]  # (B, M, H, W)
    rest = params[:, n_mix:].reshape(b, 2 * c + _n_coupling(c), n_mix, h, w)
    means = rest[:, :c]  # (B, C, M, H, W)
    log_scales = torch.clamp(rest[:, c:2 * c], min=-7.0)  # (B, C, M, H, W)
    coeffs = torch.tanh(rest[:, 2 * c:])  # (B, C(C-1)/2, M, H, W)
    return logits, means, log_scales, coeffs


def _coupled_means(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
    """Channel c's mean gets sum_{j<c} coeff_{c,j} * x_j (PixelCNN++'s RGB coupling, any C)."""
    c = means.shape[1]
    out, k = [means[:, 0]], 0
    for ch in range(1, c):
        m = means[:, ch]
        for j in range(ch):
            m = m + coeffs[:, k] * x[:, j]
            k += 1
        out.append(m)
    return torch.stack(out, dim=1)  # (B, C, M, H, W)


def disc_mix_logistic_log_prob(params: Tensor, x: Tensor, *, n_mix: int, n_bits: int = 8) -> Tensor:
    """log p(x) per pixel under a mixture of discretised logistics (PixelCNN++, NVAE).

    Written by hand (no maintained library has it) and exact: each bin's mass is
    log(sigmoid(a) - sigmoid(b)) computed as logsigmoid(a) + logsigmoid(-b) + log1mexp(a - b),
    with the end bins open, so the 2**n_bits masses of a component sum to 1 (the official code
    switches to a density approximation for small masses and folds bin 254 into the top bin).

    Args:
        params: (B, P, H, W) with P = disc_mix_logistic_channels(C, n_mix).
        x: (B, C, H, W) pixel values in [0, 1] on the grid k / (2**n_bits - 1).
    Returns:
        (B, H, W) log-probabilities in nats.
    """
    c = x.shape[1]
    max_val = 2.0**n_bits - 1
    logits, means, log_scales, coeffs = _split_mix(params, c, n_mix)
    xs = (2 * x - 1).unsqueeze(2)  # (B, C, 1, H, W) in [-1, 1]
    centered = xs - _coupled_means(means, coeffs, xs)  # (B, C, M, H, W)
    inv_s = torch.exp(-log_scales)
    plus = inv_s * (centered + 1 / max_val)
    minus = inv_s * (centered - 1 / max_val)
    mid = F.logsigmoid(plus) + F.logsigmoid(-minus) + _log1mexp(plus - minus)
    bottom = xs < -1 + 1 / max_val  # the bin of value 0 is open to -inf
    top = xs > 1 - 1 / max_val  # the bin of value max_val is open to +inf
    logp = torch.where(bottom, F.logsigmoid(plus), torch.where(top, F.logsigmoid(-minus), mid))
    logp = logp.sum(dim=1) + F.log_softmax(logits, dim=1)  # (B, M, H, W)
    return torch.logsumexp(logp, dim=1)  # (B, H, W)


def disc_mix_logistic_sample(params: Tensor, c: int, *, n_mix: int, n_bits: int = 8,
                             temperature: float = 1.0, mean: bool = False,
                             generator: torch.Generator | None = None) -> Tensor:
    """Pixels (B, C, H, W) in [0, 1] on the 2**n_bits grid drawn from the mixture; with
    `mean=True`, the mixture-weighted means instead (no noise), as NVAE's `mean()`."""
    logits, means, log_scales, coeffs = _split_mix(params, c, n_mix)
    max_val = 2.0**n_bits - 1
    if mean:
        sel = torch.softmax(logits, dim=1).unsqueeze(1)  # (B, 1, M, H, W)
        noise = torch.zeros_like(means[:, :, 0])  # (B, C, H, W)
    else:
        probs = torch.softmax(logits.movedim(1, -1).reshape(-1, n_mix), dim=-1)  # (B*H*W, M)
        idx = torch.multinomial(probs, 1, generator=generator).view(logits.shape[0], *logits.shape[2:])
        sel = F.one_hot(idx, n_mix).movedim(-1, 1).unsqueeze(1).to(means.dtype)  # (B, 1, M, H, W)
        u = torch.rand(means[:, :, 0].shape, generator=generator, device=params.device,
                       dtype=params.dtype).clamp(1e-5, 1 - 1e-5)  # (B, C, H, W)
        noise = torch.exp((log_scales * sel).sum(2)) * temperature * (torch.log(u) - torch.log1p(-u))
    base = (means * sel).sum(2)  # (B, C, H, W)
    cf = (coeffs * sel).sum(2)  # (B, C(C-1)/2, H, W)
    xs: list[Tensor] = []
    k = 0
    for ch in range(c):
        m = base[:, ch] + noise[:, ch]
        for j in range(ch):
            m = m + cf[:, k] * xs[j]
            k += 1
        xs.append(m.clamp(-1, 1))
    x = (torch.stack(xs, dim=1) + 1) / 2  # (B, C, H, W)
    return torch.round(x * max_val) / max_val


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x) per pixel of binary x (B, C, H, W) under Bernoulli(logits); summed over C."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)  # (B, H, W)
