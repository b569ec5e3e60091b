"""The losses' cross-rank paths, in two gloo processes on the CPU (seconds, no training): split over
two ranks unevenly, Sinkhorn-Knopp, the centre updates, SCRL's batch norm and box mean give what one
process computes on everything. The slow tests check whole training runs; these pin each piece.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

ROWS = (3, 5)  # rank 0 holds 3 rows, rank 1 holds 5


def _data():
    g = torch.Generator().manual_seed(0)
    return {"logits": torch.randn(8, 6, generator=g), "feats": torch.randn(8, 4, generator=g),
            "boxes_feats": torch.randn(8, 2, 16, generator=g)}


def _split(x, rank):
    return x[: ROWS[0]] if rank == 0 else x[ROWS[0]:]


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from wherevit.train.losses import DINOLoss, IBOTPatchLoss, sinkhorn_knopp
        from wherevit.train.plugins.scrl import GlobalBatchNorm1d, _world_size, global_count

        d = _data()
        out = {"world": _world_size(), "count": float(global_count(torch.tensor(float(ROWS[rank]))))}
        out["sinkhorn"] = sinkhorn_knopp(_split(d["logits"], rank), 0.3, 3)
        ib = IBOTPatchLoss(6, center_momentum=0.5)
        ib.update_center(_split(d["logits"], rank))
        out["ibot_center"] = ib.center.clone()
        dl = DINOLoss(6, center_momentum=0.5)
        half = d["logits"][:4] if rank == 0 else d["logits"][4:]  # the DINO batch splits evenly
        dl.update_center(half)
        out["dino_center"] = dl.center.clone()
        torch.manual_seed(0)
        bn = GlobalBatchNorm1d(4)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
            bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.2]))
        x = _split(d["feats"], rank).clone().requires_grad_(True)
        y = bn(x)
        (y * torch.arange(1.0, 5.0)).sum().backward()
        out["bn"], out["bn_grad"] = y.detach(), x.grad.clone()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_counts_and_world_size(ranks):
    assert [r["world"] for r in ranks] == [2, 2] and [r["count"] for r in ranks] == [8.0, 8.0]


def test_sinkhorn_over_uneven_ranks_equals_one_process(ranks):
    from wherevit.train.losses import sinkhorn_knopp

    full = sinkhorn_knopp(_data()["logits"], 0.3, 3)
    torch.testing.assert_close(torch.cat([ranks[0]["sinkhorn"], ranks[1]["sinkhorn"]]), full, rtol=1e-5, atol=1e-7)


def test_centres_over_ranks_equal_one_process(ranks):
    from wherevit.train.losses import DINOLoss, IBOTPatchLoss

    logits = _data()["logits"]
    ib, dl = IBOTPatchLoss(6, center_momentum=0.5), DINOLoss(6, center_momentum=0.5)
    ib.update_center(logits)
    dl.update_center(logits)
    for r in ranks:  # every rank ends with the global centre (masked tokens weighted by count)
        torch.testing.assert_close(r["ibot_center"], ib.center, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(r["dino_center"], dl.center, rtol=1e-6, atol=1e-7)


def test_scrl_batch_norm_over_uneven_ranks_equals_one_process(ranks):
    from wherevit.train.plugins.scrl import GlobalBatchNorm1d

    bn = GlobalBatchNorm1d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.2]))
    x = _data()["feats"].clone().requires_grad_(True)
    y = bn(x)
    (y * torch.arange(1.0, 5.0)).sum().backward()
    torch.testing.assert_close(torch.cat([ranks[0]["bn"], ranks[1]["bn"]]), y.detach(), rtol=1e-5, atol=1e-6)
    # the statistics' gradients cross ranks too (autograd-aware all-reduce): input gradients match
    torch.testing.assert_close(torch.cat([ranks[0]["bn_grad"], ranks[1]["bn_grad"]]), x.grad, rtol=1e-4, atol=1e-5)
