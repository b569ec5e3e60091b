"""The SCRL, GTSA and equivariance heads learn what they should, on small CPU problems.

* GTSA's rotation head on a tiny ViT reads the rotation of generated scenes well above chance, and
  stays at chance on constant-colour images (a rotated flat image is the same image: no label leak).
* The equivariance decoders, on patch features that hold the views' pixels, reconstruct the
  intermediate states better than copying the second view.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wherevit.base.image import IMAGENET_MEAN, IMAGENET_STD
from wherevit.train.backbone import BackboneFeatures, backbone_features, create_backbone
from wherevit.train.data.synthetic import render_scene
from wherevit.train.plugins.equivariance import Equivariance, EquivarianceConfig, EquiViewSampler
from wherevit.train.plugins.gtsa import GTSAConfig, GTSAViewSampler, rotation_head

STEPS = 150
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def _norm(x: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(x).float() - MEAN) / STD


def _rotation_views(images, n_per_image: int, seed: int):
    """GTSA views (globals and locals resized to 32 px) with their quarter-turn labels."""
    cfg = GTSAConfig(n_local=n_per_image - 2, global_size=32, local_size=32, local_scale=(0.2, 0.4))
    sampler = GTSAViewSampler(cfg)
    xs, ys = [], []
    for i, img in enumerate(images):
        out = sampler(img, np.random.default_rng([seed, i]))
        for g in ("gtsa_global", "gtsa_local"):
            xs.append(out[g]["images"])
            ys.append(out[g]["rot"])
    return _norm(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _train_rotation(train_imgs, test_imgs, steps: int = 150):
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                          drop_path_rate=0.0)
    head = rotation_head(64, 64, 16)
    x, y = _rotation_views(train_imgs, 4, 0)
    xt, yt = _rotation_views(test_imgs, 4, 1)
    opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(head(backbone_features(vit, x[idx]).patch.mean(1)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        vit.eval()
        pred = head(backbone_features(vit, xt).patch.mean(1)).argmax(1)
    return float((pred == yt).float().mean())


@pytest.mark.slow
def test_rotation_is_learned_on_scenes_and_not_on_flat_images():
    scenes = [render_scene(s, 64) for s in range(96)]
    held_out = [render_scene(s, 64) for s in range(1000, 1064)]
    acc = _train_rotation(scenes, held_out)
    assert acc > 0.6, acc  # chance is 0.25
    rng = np.random.default_rng(0)
    flat = lambda n: [np.full((64, 64, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(n)]  # noqa: E731
    acc_flat = _train_rotation(flat(96), flat(64))
    assert acc_flat < 0.36, acc_flat


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, (S/p)^2, 3 p p): features that hold every pixel of the view."""
    B, C, S, _ = x.shape
    return x.reshape(B, C, S // p, p, S // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (S // p) ** 2, C * p * p)


def test_reconstruction_beats_copying_the_second_view():
    p, S = 4, 16
    cfg = EquivarianceConfig(mode="decoupled", features="projection", crop_size=S, transform="se2", d_equi=32, decoder_dim=64, scale=(0.3, 0.6),
                             color_jitter_p=0.0, grayscale_p=0.0)
    torch.manual_seed(0)
    plugin = Equivariance(cfg, embed_dim=3 * p * p)
    plugin.setup(SimpleNamespace(patch_size=p))
    sampler = EquiViewSampler(cfg)

    def samples(seeds):
        groups = [sampler(render_scene(s, 48), np.random.default_rng(s))["equi"] for s in seeds]
        return {k: torch.from_numpy(np.stack([g[k] for g in groups])) for k in ("images", "targets")}

    def step_inputs(batch):
        v = batch["images"]  # (B, 2, 3, S, S)
        x = torch.cat([_norm(v[:, 0].numpy()), _norm(v[:, 1].numpy())])  # view-major
        patch = _patchify(x, p)
        return {"equi": BackboneFeatures(patch.mean(1), patch, (S // p, S // p))}, {"equi": batch}

    train, test = samples(range(256)), samples(range(5000, 5064))
    opt = torch.optim.Adam(plugin.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        idx = torch.randint(0, 256, (32,), generator=g)
        feats, batch = step_inputs({k: v[idx] for k, v in train.items()})
        loss, _ = plugin(feats, {}, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        feats, batch = step_inputs(test)
        loss, logs = plugin(feats, {}, batch)
    assert float(loss) < 0.8 * float(logs["equivariance/copy_baseline"]), (float(loss), float(logs["equivariance/copy_baseline"]))
