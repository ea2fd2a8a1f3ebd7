"""``loop_counts`` / ``loop_stats`` after a forward that ran in ``DataParallel`` replicas: the
replicas' records go with them, so reading the model's own (older) record is refused instead of
reported as that forward's. Replication is emulated on CPU as ``torch.nn.parallel.replicate``
does it (``_replicate_for_data_parallel`` per module, parameters set as plain tensors), since
``DataParallel`` over CPU or one device runs the model itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import CanvasTypeError

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


def _replicate(network: nn.Module) -> nn.Module:
    modules = list(network.modules())
    copies = {id(m): m._replicate_for_data_parallel() for m in modules}
    for m in modules:
        r = copies[id(m)]
        for k, child in m._modules.items():
            r._modules[k] = None if child is None else copies[id(child)]
        for k, p in m._parameters.items():
            if p is not None:
                setattr(r, k, p.detach().clone())
    return copies[id(network)]


@pytest.mark.parametrize("scope", ["block", "model"])
@pytest.mark.parametrize("read", [cc.loop_counts, cc.loop_stats])
def test_record_of_a_replica_forward_is_refused(scope, read):
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=3)
    x = torch.randn(4, 5, 3)
    with torch.no_grad():
        m(x)
        own = cc.loop_counts(m)
        cc.set_loops(m, 2)
        _replicate(m)(x[:2])  # one replica's forward: the model's record is still the 3-loop one
    with pytest.raises(CanvasTypeError, match="DataParallel replicas.*dp.module"):
        read(m)
    assert own.tolist() == [3, 3, 3, 3]
    with torch.no_grad():
        m(x)  # a forward of the model itself: its record is current again
    assert cc.loop_counts(m).tolist() == [2, 2, 2, 2]
    assert read(m) is not None


def test_replica_forward_before_any_forward_is_refused_the_same_way():
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=2, scope="model", latent_channels=3)
    with torch.no_grad():
        _replicate(m)(torch.randn(2, 5, 3))
    with pytest.raises(CanvasTypeError, match="DataParallel replicas"):
        cc.loop_counts(m)


def test_data_parallel_without_devices_runs_the_model_and_reports_it():
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=3, scope=(1, 3), latent_channels=3)
    x = torch.randn(3, 5, 3)
    if torch.cuda.is_available():  # one device: DataParallel runs the model itself there too
        m, x = m.cuda(), x.cuda()
        dp = nn.DataParallel(m, device_ids=[0])
    else:
        dp = nn.DataParallel(m)
    cc.set_loops(dp, 2)
    with torch.no_grad():
        dp(x)
    assert cc.loop_counts(dp).tolist() == [2, 2, 2]
    assert cc.loop_stats(dp)["iterations"] == 2
