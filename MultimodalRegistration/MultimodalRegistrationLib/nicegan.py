"""NICE-GAN networks (Chen et al., CVPR 2020, "Reusing Discriminators for Encoding"), sized for CPUs.

NICE-GAN has no separate generator encoder: each domain's discriminator starts with an encoder
(two strided convolutions + a CAM attention block) whose output ``z`` is both fed to the
discriminator's multi-scale classifier heads and *reused* by the other domain's generator, which is
therefore only a decoder (AdaLIN residual blocks + ILN up-sampling).

Per domain X in {A, B}:

* ``Discriminator`` D_X: ``encode(x) -> (z, cam_logit, heatmap)`` and ``forward(x)`` returning the
  three scale logits (local / middle / global receptive field), the CAM logit, heatmap and ``z``.
* ``Decoder`` G_{->X}: ``forward(z) -> image`` in [-1, 1].

Translation A->B is ``G_{->B}(D_A.encode(a).z)``: inference needs the encoders of both
discriminators and both decoders (``INFERENCE_PREFIXES``), not the classifier heads.

Deviations from the published configuration (documented in docs/GAN.md):
single-channel images; ``ch`` (=ngf=ndf) 16-32 instead of 64; ``n_res`` 2-4 AdaLIN blocks instead of 6;
128 px slices instead of 256; the classifier heads use 4x4/stride-2/pad-1 down-sampling and 3x3
stride-1 zero-padded convolutions so that 32 px test images still produce a 1x1 global logit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

DOMAINS = ("A", "B")  # A = ceT1, B = T2
#: State-dict prefixes needed for inference (encoders of both discriminators + both decoders).
INFERENCE_PREFIXES = ("encA.", "encB.", "decA.", "decB.")


@dataclass(frozen=True)
class NiceGanConfig:
    ch: int = 24            # ngf = ndf (paper: 64)
    n_res: int = 3          # AdaLIN residual blocks in each decoder (paper: 6)
    img_size: int = 128     # slice size in px (paper: 256)
    in_ch: int = 1          # single-channel MRI slices (paper: RGB)
    max_mult: int = 8       # channel cap in the discriminator heads, as multiples of ch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NiceGanConfig":
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: d[k] for k in keys if k in d})


# ----------------------------------------------------------------------------- normalisation layers

def _mix_instance_layer(x, rho, eps: float):
    """rho * instance-normalised x + (1 - rho) * layer-normalised x (rho clamped to [0, 1])."""
    in_mean, in_var = torch.mean(x, dim=[2, 3], keepdim=True), torch.var(x, dim=[2, 3], keepdim=True)
    out_in = (x - in_mean) / torch.sqrt(in_var + eps)
    ln_mean, ln_var = torch.mean(x, dim=[1, 2, 3], keepdim=True), torch.var(x, dim=[1, 2, 3], keepdim=True)
    out_ln = (x - ln_mean) / torch.sqrt(ln_var + eps)
    rho = rho.clamp(0.0, 1.0)
    return rho * out_in + (1 - rho) * out_ln


class AdaLIN(nn.Module):
    """Adaptive Layer-Instance Normalisation (U-GAT-IT / NICE-GAN)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.full((1, num_features, 1, 1), 0.9))

    def forward(self, x, gamma, beta):
        out = _mix_instance_layer(x, self.rho, self.eps)
        return out * gamma.unsqueeze(2).unsqueeze(3) + beta.unsqueeze(2).unsqueeze(3)


class ILN(nn.Module):
    """Instance-Layer Normalisation with learned affine parameters."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.gamma = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, x):
        out = _mix_instance_layer(x, self.rho, self.eps)
        return out * self.gamma + self.beta


class ResnetAdaILNBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 0, bias=False)
        self.norm1 = AdaLIN(dim)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 0, bias=False)
        self.norm2 = AdaLIN(dim)

    def forward(self, x, gamma, beta):
        out = F.relu(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
        return out + x


# ----------------------------------------------------------------------------- encoder / discriminator

class Encoder(nn.Module):
    """The discriminator's first layers + CAM attention: image -> latent ``z`` (2*ch channels, 1/4 size)."""

    def __init__(self, cfg: NiceGanConfig):
        super().__init__()
        ch = cfg.ch
        self.model = nn.Sequential(
            nn.ReflectionPad2d(1), spectral_norm(nn.Conv2d(cfg.in_ch, ch, 4, 2, 0, bias=True)), nn.LeakyReLU(0.2, True),
            nn.ReflectionPad2d(1), spectral_norm(nn.Conv2d(ch, ch * 2, 4, 2, 0, bias=True)), nn.LeakyReLU(0.2, True),
        )
        # Class activation map (CAM) attention, as in NICE-GAN's discriminator
        self.fc = spectral_norm(nn.Linear(ch * 2 * 2, 1, bias=False))
        self.conv1x1 = nn.Conv2d(ch * 2 * 2, ch * 2, 1, 1, bias=True)
        self.lamda = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = self.model(x)
        x_0 = x
        gap = F.adaptive_avg_pool2d(x, 1)
        gmp = F.adaptive_max_pool2d(x, 1)
        x = torch.cat([x, x], 1)
        cam_logit = self.fc(torch.cat([gap, gmp], 1).view(x.shape[0], -1))
        weight = self.fc.weight  # spectral-normalised weight
        x = x * weight.unsqueeze(2).unsqueeze(3)
        x = self.conv1x1(x)
        x = self.lamda * x + x_0
        x = F.leaky_relu(x, 0.2)
        heatmap = torch.sum(x, dim=1, keepdim=True)
        return x, cam_logit, heatmap


def _down(cin, cout):
    return [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1, bias=True)), nn.LeakyReLU(0.2, True)]


def _same(cin, cout):
    return [spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1, bias=True)), nn.LeakyReLU(0.2, True)]


class DiscriminatorHeads(nn.Module):
    """Multi-scale classifier on ``z``: local (1/8), middle (1/16) and global (1/32) patch logits."""

    def __init__(self, cfg: NiceGanConfig):
        super().__init__()
        ch, cap = cfg.ch, cfg.ch * cfg.max_mult
        c0 = ch * 2
        c1, c2, c3 = min(c0 * 2, cap), min(c0 * 4, cap), min(c0 * 8, cap)
        self.dis0_0 = nn.Sequential(*_down(c0, c1))
        self.dis1_0 = nn.Sequential(*_down(c1, c2))
        self.dis2_0 = nn.Sequential(*_down(c2, c3))
        self.dis0_1 = nn.Sequential(*_same(c1, c1))
        self.dis1_1 = nn.Sequential(*_same(c2, c2))
        self.dis2_1 = nn.Sequential(*_same(c3, c3))
        self.conv0 = spectral_norm(nn.Conv2d(c1, 1, 3, 1, 1, bias=False))
        self.conv1 = spectral_norm(nn.Conv2d(c2, 1, 3, 1, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(c3, 1, 3, 1, 1, bias=False))

    def forward(self, z):
        x0 = self.dis0_0(z)
        x1 = self.dis1_0(x0)
        x2 = self.dis2_0(x1)
        return self.conv0(self.dis0_1(x0)), self.conv1(self.dis1_1(x1)), self.conv2(self.dis2_1(x2))


# ----------------------------------------------------------------------------- decoder (generator)

class Decoder(nn.Module):
    """NICE-GAN generator: latent z (2*ch, 1/4 size) -> image, AdaLIN residual blocks + ILN up-sampling."""

    def __init__(self, cfg: NiceGanConfig):
        super().__init__()
        ch = cfg.ch
        dim = ch * 2
        # "light" NICE-GAN variant: the gamma/beta MLP works on globally pooled features
        self.fc = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(True),
                                nn.Linear(dim, dim, bias=False), nn.ReLU(True))
        self.gamma = nn.Linear(dim, dim, bias=False)
        self.beta = nn.Linear(dim, dim, bias=False)
        self.blocks = nn.ModuleList([ResnetAdaILNBlock(dim) for _ in range(cfg.n_res)])
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
            nn.Conv2d(dim, ch, 3, 1, 0, bias=False), ILN(ch), nn.ReLU(True),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch // 2, 3, 1, 0, bias=False), ILN(ch // 2), nn.ReLU(True),
            nn.ReflectionPad2d(3), nn.Conv2d(ch // 2, cfg.in_ch, 7, 1, 0, bias=False), nn.Tanh(),
        )

    def forward(self, z):
        x_ = F.adaptive_avg_pool2d(z, 1).view(z.shape[0], -1)
        x_ = self.fc(x_)
        gamma, beta = self.gamma(x_), self.beta(x_)
        x = z
        for blk in self.blocks:
            x = blk(x, gamma, beta)
        return self.up(x)


# ----------------------------------------------------------------------------- the whole model

class NiceGan(nn.Module):
    """Both domains: encoders (= discriminator front ends), discriminator heads, decoders.

    ``encA``/``headsA`` form D_A (judges ceT1), ``decA`` generates ceT1; likewise for B (T2).
    """

    def __init__(self, cfg: NiceGanConfig | None = None):
        super().__init__()
        self.cfg = cfg or NiceGanConfig()
        self.encA, self.encB = Encoder(self.cfg), Encoder(self.cfg)
        self.headsA, self.headsB = DiscriminatorHeads(self.cfg), DiscriminatorHeads(self.cfg)
        self.decA, self.decB = Decoder(self.cfg), Decoder(self.cfg)

    def enc(self, domain: str):
        return self.encA if domain == "A" else self.encB

    def dec(self, domain: str):
        return self.decA if domain == "A" else self.decB

    def heads(self, domain: str):
        return self.headsA if domain == "A" else self.headsB

    def discriminate(self, domain: str, x):
        """D_domain(x): (local, middle, global logits, cam_logit, heatmap, z)."""
        z, cam, heat = self.enc(domain)(x)
        l0, l1, l2 = self.heads(domain)(z)
        return l0, l1, l2, cam, heat, z

    def translate(self, x, src: str, dst: str):
        """x in [-1, 1], (N, 1, H, W) -> image of domain ``dst`` (A->B, B->A, or A->A reconstruction)."""
        z, _, _ = self.enc(src)(x)
        return self.dec(dst)(z)

    def generator_parameters(self):
        return list(self.decA.parameters()) + list(self.decB.parameters())

    def discriminator_parameters(self):
        return (list(self.encA.parameters()) + list(self.encB.parameters())
                + list(self.headsA.parameters()) + list(self.headsB.parameters()))


class InferenceModel(nn.Module):
    """The inference part only (encoders + decoders); its state-dict keys match ``NiceGan``'s."""

    def __init__(self, cfg: NiceGanConfig):
        super().__init__()
        self.cfg = cfg
        self.encA, self.encB = Encoder(cfg), Encoder(cfg)
        self.decA, self.decB = Decoder(cfg), Decoder(cfg)

    def translate(self, x, src: str, dst: str):
        enc = self.encA if src == "A" else self.encB
        dec = self.decA if dst == "A" else self.decB
        z, _, _ = enc(x)
        return dec(z)


def plain_state_dict(module: nn.Module, prefixes=None) -> dict:
    """A state dict with spectral-norm parametrisation folded into plain tensors, contiguous, float32.

    ``spectral_norm`` (the hook version) stores ``weight_orig``, ``weight_u``, ``weight_v``; we keep all
    three so that a loaded model reproduces the exact normalised weight.
    """
    sd = {k: v.detach().to("cpu").float().contiguous().clone() for k, v in module.state_dict().items()}
    if prefixes:
        sd = {k: v for k, v in sd.items() if k.startswith(tuple(prefixes))}
    return sd
