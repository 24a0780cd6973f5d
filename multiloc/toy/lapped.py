"""An exact audio autoencoder for the toy audio model: the MDCT, written into stock
``AutoencoderOobleck`` weights.

Stable Audio's pipeline decodes its latents with an Oobleck VAE. Training one to reconstruct tones on
a CPU would cost more than the denoiser, so the toy model's VAE is *set* instead: its one
down/up-sampling stage becomes the modified discrete cosine transform (a sine window of 2N samples,
hop N, N coefficients a frame, perfect reconstruction by overlap-add), and every other layer becomes
the identity (residual branches zeroed, Snake activations flattened by a huge beta). Encoding is then
the MDCT and decoding its exact inverse, through the real class's forward code, and the denoiser is
the only part that learns.

The VAE's config must have one stage: ``downsampling_ratios: [N]``, ``channel_multiples: [1]``,
``decoder_input_channels: N``, ``decoder_channels: N``, ``encoder_hidden_size: 2N``, mono.

Example::

    vae = AutoencoderOobleck(encoder_hidden_size=64, downsampling_ratios=[32], channel_multiples=[1],
                             decoder_channels=32, decoder_input_channels=32, audio_channels=1)
    set_mdct(vae, scale=2.0)
    z = vae.encode(x).latent_dist.mean     # (B, 32, T/32): 2 x the MDCT of x
    vae.decode(z).sample                   # x again (away from the first and last 16 samples)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_FLAT_BETA = 40.0  # Snake: x + sin^2(a x) / e^beta; e^40 leaves x unchanged in float32


def mdct_basis(n: int) -> torch.Tensor:
    """``(n, 2n)``: row k is the k-th MDCT basis function (sine window, orthonormal scaling)."""
    i = torch.arange(2 * n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    window = torch.sin(math.pi * (i + 0.5) / (2 * n))
    return math.sqrt(2 / n) * window * torch.cos(math.pi / n * (i + 0.5 + n / 2) * (k + 0.5))


def _set(conv: nn.Module, weight: torch.Tensor, bias: float | torch.Tensor | None = 0.0) -> None:
    """Give a weight-normed conv the plain ``weight``: v = weight, g = its norm per output slice
    (dim 0); an all-zero slice gets v = 1, g = 0, so no norm is ever zero."""
    w = weight.to(conv.weight_v.dtype)
    norm = w.flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1))
    zero = norm == 0
    with torch.no_grad():
        conv.weight_v.copy_(torch.where(zero, torch.ones_like(w), w))
        conv.weight_g.copy_(norm)
        if conv.bias is not None:
            conv.bias.copy_(torch.as_tensor(bias, dtype=w.dtype).expand_as(conv.bias))


def _identity_taps(out_ch: int, in_ch: int, k: int, pairs: int) -> torch.Tensor:
    """A ``(out, in, k)`` kernel passing channel c to channel c (c < pairs) at the centre tap."""
    w = torch.zeros(out_ch, in_ch, k)
    for c in range(pairs):
        w[c, c, k // 2] = 1.0
    return w


def _flatten(module: nn.Module) -> None:
    """Every Snake to the identity, every residual branch to zero."""
    for sub in module.modules():
        if type(sub).__name__ == "Snake1d":
            with torch.no_grad():
                sub.alpha.zero_()
                sub.beta.fill_(_FLAT_BETA)
        elif type(sub).__name__ == "OobleckResidualUnit":
            for conv in (sub.conv1, sub.conv2):
                _set(conv, torch.zeros_like(conv.weight_v))


def set_mdct(vae: nn.Module, scale: float | Sequence[float] = 1.0) -> nn.Module:
    """Write the MDCT (latent channel k = ``scale[k]`` x coefficient k; one float scales all) into
    ``vae``; returns it. See the module docstring for the config it needs."""
    cfg = vae.config
    n = cfg.downsampling_ratios[0]
    if (len(cfg.downsampling_ratios) != 1 or list(cfg.channel_multiples) != [1] or cfg.decoder_input_channels != n or cfg.decoder_channels != n
            or cfg.encoder_hidden_size != 2 * n or cfg.audio_channels != 1):
        raise ValueError("set_mdct needs a one-stage mono Oobleck VAE with N latent channels (see lapped.py)")
    basis = mdct_basis(n).float()
    scale = torch.as_tensor(scale, dtype=torch.float32).expand(n)[:, None]
    enc, dec = vae.encoder, vae.decoder
    _flatten(vae)
    # Encoder: the audio into channel 0, the MDCT of channel 0 into channels [0, n), those as the mean;
    # the log-scale half gets a bias of -30, so the posterior's std is its floor (1e-4).
    _set(enc.conv1, _identity_taps(2 * n, 1, 7, 1))
    analysis = torch.zeros(2 * n, 2 * n, 2 * n)
    analysis[:n, 0, :] = scale * basis
    _set(enc.block[0].conv1, analysis)
    conv2 = _identity_taps(2 * n, 2 * n, 3, n)
    _set(enc.conv2, conv2, torch.cat([torch.zeros(n), torch.full((n,), -30.0)]))
    # Decoder: latents through unchanged, overlap-added by the transposed MDCT into channel 0, out.
    _set(dec.conv1, _identity_taps(n, n, 7, n))
    synthesis = torch.zeros(n, n, 2 * n)  # ConvTranspose1d: (in, out, k)
    synthesis[:, 0, :] = basis / scale
    _set(dec.block[0].conv_t1, synthesis)
    _set(dec.conv2, _identity_taps(1, n, 7, 1), None)
    return vae
