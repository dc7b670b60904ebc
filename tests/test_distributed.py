"""Two DDP workers (gloo, CPU processes): model weights and every method's own state (adaptive w, TA-VAT's
table, InfoBERT's critic, SMART's anchor) stay identical."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distat.config import parse_trial_config

from helpers import free_port, shared_data_dir

METHODS = ["adaptive_pgd", "freelb", "fgm", "trades", "tavat", "adaptive_tavat", "infobert", "smart"]




def _state_sum(state) -> float:
    """Every tensor of a method's state summed (nested dicts included): equal on every rank or not."""
    total = 0.0
    for value in state.values():
        if isinstance(value, dict):
            total += _state_sum(value)
        elif isinstance(value, torch.Tensor):
            total += float(value.double().sum())
    return total


def _worker(rank: int, port: int, backbone: str, data: str, out: str) -> None:
    from distat.training import run_trial

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {}
        for name in METHODS:
            cfg = parse_trial_config({
                "seed": 11,
                "data": {"path": data, "max_train_examples": 32, "max_dev_examples": 8, "max_length": 24},
                "model": {"backbone": backbone, "device": "cpu"},
                "method": {"name": name, **({"adv_steps": 2} if name not in ("fgm", "smart", "flooding") else {}),
                           **({"w_lr": 30.0} if name.startswith("adaptive") else {})},
                "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
                "output_dir": f"{out}/{name}",
            })
            info = {}
            result = run_trial(cfg, on_start=info.update)
            results[name] = {
                "metrics": {k: v for k, v in result.metrics.items() if k != "epoch_time_s"},
                "weights_sum": float(sum(p.double().sum() for p in result.model.parameters())),
                "method_state_sum": _state_sum(result.method.state_dict()),
                "wrapper": type(info["model"]).__name__,
                "world_size": info["world_size"],
            }
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_workers_end_the_epoch_with_the_same_w_and_weights(tmp_path, tiny_model_dir):
    port = free_port()
    mp.spawn(_worker, args=(port, str(tiny_model_dir), str(shared_data_dir() / "sst2"), str(tmp_path)),
             nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    for name in METHODS:
        assert r0[name]["wrapper"] == "DistributedDataParallel" and r0[name]["world_size"] == 2
        assert r0[name]["weights_sum"] == r1[name]["weights_sum"], name  # DDP kept replicas equal
        # and each method's own state (adaptive w, TA-VAT's table) too: DDP alone would not keep it equal
        assert r0[name]["method_state_sum"] == r1[name]["method_state_sum"], name
    w0 = [r0["adaptive_pgd"]["metrics"][f"w_{i}"] for i in (1, 2)]
    w1 = [r1["adaptive_pgd"]["metrics"][f"w_{i}"] for i in (1, 2)]
    assert w0 == w1
    assert w0 != [0.5, 0.5]  # w moved during the epoch, on both workers alike
    assert (tmp_path / "adaptive_pgd" / "checkpoints" / "epoch_001").is_dir()  # rank 0 wrote it
