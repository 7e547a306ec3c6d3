"""AMT-S, the frame interpolator VBench's motion smoothness uses (Li et al., "AMT: All-Pairs
Multi-Field Transforms for Efficient Frame Interpolation", CVPR 2023), written from its published
architecture (MCG-NKU/AMT ``networks/AMT-S.py`` and its blocks, as VBench vendors them): a RAFT-style
small feature encoder and bidirectional correlation pyramid (4 levels, radius 3), an IFRNet-style
pyramid encoder (channels 20/32/44/56) and coarse-to-fine decoders with a small update block per level,
and 3 flow fields per side merged by a small conv block. Module names follow the original so that
``amt-s.pth`` (``{'state_dict': ...}``) loads as published; no package ships this model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AMTS", "load_amt"]


def resize(x, scale_factor):
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


def warp(img, flow):
    b, _, h, w = flow.shape
    xx = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(b, -1, h, -1)
    yy = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(b, -1, -1, w)
    grid = torch.cat([xx, yy], 1).to(img)
    flow_ = torch.cat([flow[:, 0:1] / ((w - 1.0) / 2.0), flow[:, 1:2] / ((h - 1.0) / 2.0)], 1)
    return F.grid_sample(img, (grid + flow_).permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def coords_grid(b, h, w, device):
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=0).float()[None].repeat(b, 1, 1, 1)


def bilinear_sampler(img, coords):
    h, w = img.shape[-2:]
    xg, yg = coords.split([1, 1], dim=-1)
    return F.grid_sample(img, torch.cat([2 * xg / (w - 1) - 1, 2 * yg / (h - 1) - 1], dim=-1), align_corners=True)


class Bottleneck(nn.Module):
    """RAFT's bottleneck residual block with instance norm (no parameters in the norms)."""

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes // 4, 1, padding=0)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, 3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, 1, padding=0)
        self.norm1, self.norm2 = nn.InstanceNorm2d(planes // 4), nn.InstanceNorm2d(planes // 4)
        self.norm3 = nn.InstanceNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 else nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride),
                                                                 nn.InstanceNorm2d(planes))

    def forward(self, x):
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        return self.relu((x if self.downsample is None else self.downsample(x)) + y)


class SmallEncoder(nn.Module):
    def __init__(self, output_dim=84):
        super().__init__()
        self.norm1 = nn.InstanceNorm2d(32)
        self.conv1 = nn.Conv2d(3, 32, kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(32, 32, 1), Bottleneck(32, 32))
        self.layer2 = nn.Sequential(Bottleneck(32, 64, 2), Bottleneck(64, 64))
        self.layer3 = nn.Sequential(Bottleneck(64, 96, 2), Bottleneck(96, 96))
        self.conv2 = nn.Conv2d(96, output_dim, kernel_size=1)

    def forward(self, xs):
        n = xs[0].shape[0]
        x = self.relu1(self.norm1(self.conv1(torch.cat(xs, dim=0))))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        return torch.split(x, [n, n], dim=0)


class BidirCorr:
    def __init__(self, f0, f1, num_levels=4, radius=3):
        self.levels, self.radius = num_levels, radius
        b, d, h, w = f0.shape
        corr = torch.matmul(f0.view(b, d, h * w).transpose(1, 2), f1.view(b, d, h * w)).view(b, h, w, 1, h, w)
        corr = corr / torch.sqrt(torch.tensor(d).float())
        corr_t = corr.clone().permute(0, 4, 5, 3, 1, 2).reshape(b * h * w, 1, h, w)
        corr = corr.reshape(b * h * w, 1, h, w)
        self.pyr, self.pyr_t = [corr], [corr_t]
        for _ in range(num_levels - 1):
            self.pyr.append(F.avg_pool2d(self.pyr[-1], 2, stride=2))
            self.pyr_t.append(F.avg_pool2d(self.pyr_t[-1], 2, stride=2))

    def __call__(self, c0, c1):
        r = self.radius
        c0, c1 = c0.permute(0, 2, 3, 1), c1.permute(0, 2, 3, 1)
        b, h, w, _ = c0.shape
        d = torch.linspace(-r, r, 2 * r + 1, device=c0.device)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out, out_t = [], []
        for i in range(self.levels):
            out.append(bilinear_sampler(self.pyr[i], c0.reshape(b * h * w, 1, 1, 2) / 2**i + delta).view(b, h, w, -1))
            out_t.append(bilinear_sampler(self.pyr_t[i], c1.reshape(b * h * w, 1, 1, 2) / 2**i + delta)
                         .view(b, h, w, -1))
        return (torch.cat(out, -1).permute(0, 3, 1, 2).contiguous().float(),
                torch.cat(out_t, -1).permute(0, 3, 1, 2).contiguous().float())


def _lrelu_pair(cin, hidden, cout):
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                         nn.Conv2d(hidden, cout, 3, padding=1))


class SmallUpdateBlock(nn.Module):
    def __init__(self, cdim, hidden_dim=76, flow_dim=20, corr_dim=64, fc_dim=68, corr_levels=4, radius=3,
                 scale_factor=None):
        super().__init__()
        planes = corr_levels * (2 * radius + 1) ** 2
        self.scale_factor = scale_factor
        self.convc1 = nn.Conv2d(2 * planes, corr_dim, 1, padding=0)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)
        self.gru = _lrelu_pair(fc_dim + 4 + cdim, hidden_dim, hidden_dim)
        self.feat_head = _lrelu_pair(hidden_dim, hidden_dim, cdim)
        self.flow_head = _lrelu_pair(hidden_dim, hidden_dim, 4)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, net, flow, corr):
        net = resize(net, 1 / self.scale_factor) if self.scale_factor is not None else net
        cor = self.lrelu(self.convc1(corr))
        flo = self.lrelu(self.convf2(self.lrelu(self.convf1(flow))))
        inp = self.lrelu(self.conv(torch.cat([cor, flo], dim=1)))
        out = self.gru(torch.cat([inp, flow, net], dim=1))
        dnet, dflow = self.feat_head(out), self.flow_head(out)
        if self.scale_factor is not None:
            dnet = resize(dnet, scale_factor=self.scale_factor)
            dflow = self.scale_factor * resize(dflow, scale_factor=self.scale_factor)
        return dnet, dflow


def convrelu(cin, cout, k=3, s=1, p=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=True), nn.PReLU(cout))


class ResBlock(nn.Module):
    def __init__(self, cin, side):
        super().__init__()
        self.side = side
        self.conv1, self.conv2 = convrelu(cin, cin), convrelu(side, side)
        self.conv3, self.conv4 = convrelu(cin, cin), convrelu(side, side)
        self.conv5 = nn.Conv2d(cin, cin, 3, 1, 1, bias=True)
        self.prelu = nn.PReLU(cin)

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv3(torch.cat([out[:, :-self.side], self.conv2(out[:, -self.side:])], 1))
        out = self.conv5(torch.cat([out[:, :-self.side], self.conv4(out[:, -self.side:])], 1))
        return self.prelu(x + out)


class Encoder(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.n, prev = len(channels), 3
        for i, ch in enumerate(channels, 1):
            self.register_module(f"pyramid{i}", nn.Sequential(convrelu(prev, ch, 3, 2, 1), convrelu(ch, ch, 3, 1, 1)))
            prev = ch

    def forward(self, x):
        fs = []
        for i in range(self.n):
            x = getattr(self, f"pyramid{i + 1}")(x)
            fs.append(x)
        return fs


class Decoder(nn.Module):
    """IFRNet's decoders: ``first`` (InitDecoder: features + time), else IntermediateDecoder, or with
    ``num_flows`` the MultiFlowDecoder of the finest level."""

    def __init__(self, cin, cout, skip, first=False, num_flows=0):
        super().__init__()
        mult, self.first, self.num_flows = (2 if first else 3), first, num_flows
        width = cin * mult
        head = 8 * num_flows if num_flows else cout + 4
        self.convblock = nn.Sequential(convrelu(width + (1 if first else 4), width), ResBlock(width, skip),
                                       nn.ConvTranspose2d(width, head, 4, 2, 1, bias=True))

    def forward(self, ft_, f0, f1, flow0=None, flow1=None, embt=None):
        if self.first:
            out = self.convblock(torch.cat([f0, f1, embt.repeat(1, 1, *f0.shape[2:])], 1))
            flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
            return flow0, flow1, out[:, 4:]
        out = self.convblock(torch.cat([ft_, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        if self.num_flows:
            n = self.num_flows
            d0, d1, mask, res = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
            up0 = 2.0 * resize(flow0, scale_factor=2.0).repeat(1, n, 1, 1)
            up1 = 2.0 * resize(flow1, scale_factor=2.0).repeat(1, n, 1, 1)
            return d0 + up0, d1 + up1, torch.sigmoid(mask), res
        d0, d1 = torch.chunk(out[:, :4], 2, 1)
        return d0 + 2.0 * resize(flow0, scale_factor=2.0), d1 + 2.0 * resize(flow1, scale_factor=2.0), out[:, 4:]


class AMTS(nn.Module):
    def __init__(self, corr_radius=3, corr_lvls=4, num_flows=3, channels=(20, 32, 44, 56), skip_channels=20):
        super().__init__()
        self.radius, self.levels, self.num_flows = corr_radius, corr_lvls, num_flows
        c = channels
        self.feat_encoder = SmallEncoder(output_dim=84)
        self.encoder = Encoder(c)
        self.decoder4 = Decoder(c[3], c[2], skip_channels, first=True)
        self.decoder3 = Decoder(c[2], c[1], skip_channels)
        self.decoder2 = Decoder(c[1], c[0], skip_channels)
        self.decoder1 = Decoder(c[0], 0, skip_channels, num_flows=num_flows)
        self.update4 = SmallUpdateBlock(44, corr_levels=corr_lvls, radius=corr_radius)
        self.update3 = SmallUpdateBlock(32, corr_levels=corr_lvls, radius=corr_radius, scale_factor=2)
        self.update2 = SmallUpdateBlock(20, corr_levels=corr_lvls, radius=corr_radius, scale_factor=4)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    @staticmethod
    def _lookup(corr_fn, coord, flow0, flow1, embt, downsample=1):
        if downsample != 1:
            inv = 1 / downsample
            flow0, flow1 = inv * resize(flow0, scale_factor=inv), inv * resize(flow1, scale_factor=inv)
        corr0, corr1 = corr_fn(coord + flow1 * (1.0 / embt), coord + flow0 * (1.0 / (1.0 - embt)))
        return torch.cat([corr0, corr1], dim=1), torch.cat([flow0, flow1], dim=1)

    def _refine(self, update, ft, flow0, flow1, corr_fn, coord, embt, downsample):
        corr, flow = self._lookup(corr_fn, coord, flow0, flow1, embt, downsample)
        dft, dflow = update(ft, flow, corr)
        d0, d1 = torch.chunk(dflow, 2, 1)
        return flow0 + d0, flow1 + d1, ft + dft

    def forward(self, img0, img1, embt, scale_factor=1.0):
        """The interpolated frame at time ``embt`` (images in [0, 1], [B, 3, H, W]), clamped to [0, 1]."""
        mean_ = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean_, img1 - mean_
        i0 = resize(img0, scale_factor) if scale_factor != 1.0 else img0
        i1 = resize(img1, scale_factor) if scale_factor != 1.0 else img1
        b, _, h, w = i0.shape
        coord = coords_grid(b, h // 8, w // 8, img0.device)
        fmap0, fmap1 = self.feat_encoder([i0, i1])
        corr_fn = BidirCorr(fmap0, fmap1, radius=self.radius, num_levels=self.levels)
        f0_1, f0_2, f0_3, f0_4 = self.encoder(i0)
        f1_1, f1_2, f1_3, f1_4 = self.encoder(i1)
        u0, u1, ft = self.decoder4(None, f0_4, f1_4, embt=embt)
        u0, u1, ft = self._refine(self.update4, ft, u0, u1, corr_fn, coord, embt, 1)
        u0, u1, ft = self.decoder3(ft, f0_3, f1_3, u0, u1)
        u0, u1, ft = self._refine(self.update3, ft, u0, u1, corr_fn, coord, embt, 2)
        u0, u1, ft = self.decoder2(ft, f0_2, f1_2, u0, u1)
        u0, u1, ft = self._refine(self.update2, ft, u0, u1, corr_fn, coord, embt, 4)
        u0, u1, mask, res = self.decoder1(ft, f0_1, f1_1, u0, u1)
        if scale_factor != 1.0:
            inv = 1.0 / scale_factor
            u0, u1 = resize(u0, scale_factor=inv) * inv, resize(u1, scale_factor=inv) * inv
            mask, res = resize(mask, scale_factor=inv), resize(res, scale_factor=inv)
        return torch.clamp(self._combine(img0, img1, u0, u1, mask, res, mean_), 0, 1)

    def _combine(self, img0, img1, flow0, flow1, mask, img_res, mean):
        b, c, h, w = flow0.shape
        n = c // 2
        flow0, flow1 = flow0.reshape(-1, 2, h, w), flow1.reshape(-1, 2, h, w)
        mask, img_res = mask.reshape(-1, 1, h, w), img_res.reshape(-1, 3, h, w)
        img0 = torch.stack([img0] * n, 1).reshape(-1, 3, h, w)
        img1 = torch.stack([img1] * n, 1).reshape(-1, 3, h, w)
        mean = torch.stack([mean] * n, 1).reshape(-1, 1, 1, 1)
        warps = mask * warp(img0, flow0) + (1 - mask) * warp(img1, flow1) + mean + img_res
        warps = warps.reshape(b, n, 3, h, w)
        return warps.mean(1) + self.comb_block(warps.view(b, -1, h, w))


def load_amt(path, device="cpu") -> AMTS:
    """AMT-S from ``amt-s.pth`` (a checkpoint ``{'state_dict': ...}`` or a bare state dict)."""
    from fademem.eval.extractors import load_file

    ck = load_file(path, "an AMT-S checkpoint")
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    model = AMTS()
    if not isinstance(sd, dict) or set(sd) != set(model.state_dict()):
        keys = set(sd or {})
        raise ValueError(f"{path}: not an AMT-S checkpoint (missing {sorted(set(model.state_dict()) - keys)[:4]}, "
                         f"unexpected {sorted(keys - set(model.state_dict()))[:4]})")
    model.load_state_dict(sd)
    return model.to(device).eval()
