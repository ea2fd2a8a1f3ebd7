"""CanvasAttention under DistributedDataParallel: 2 CPU processes, gloo backend."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import gc, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.nn.parallel import DistributedDataParallel as DDP

    def worker(rank, init_file):
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
        from canvas_core.schema import CanvasLayout, CanvasTopology
        from canvas_core.runtime.canvas_attention import CanvasAttention
        layout = CanvasLayout(T=3, H=2, W=3, d_model=8,
                              regions={"v": (0, 3, 0, 2, 0, 2), "a": (0, 3, 0, 2, 2, 3)})
        torch.manual_seed(0)
        mod = CanvasAttention(CanvasTopology.causal_temporal(["v", "a"]), layout, n_heads=2)
        ddp = DDP(mod)
        torch.manual_seed(100 + rank)
        x = torch.randn(2, layout.num_positions, 8)
        ddp(x).square().mean().backward()
        g = torch.cat([p.grad.flatten() for p in ddp.parameters()])
        other = [torch.zeros_like(g) for _ in range(2)]
        dist.all_gather(other, g)
        assert torch.allclose(other[0], other[1]), "gradients differ across ranks"
        assert g.abs().sum() > 0
        # DDP's reducer holds the group: without it, destroy_process_group frees gloo now rather
        # than at interpreter exit, where gloo's threads can abort the process (SIGABRT)
        del ddp, mod
        gc.collect()
        dist.barrier()  # both ranks done with gloo before either tears it down
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)  # the checks above passed; skip interpreter teardown

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1],), nprocs=2, join=True)
        print("DDP-OK")
''')


def test_ddp_two_process_gloo(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "init")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DDP-OK" in res.stdout
