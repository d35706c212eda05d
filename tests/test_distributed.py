"""Scaling out: draws keyed per image, DataLoader workers, and two processes under torchrun.

The 2-process tests start real processes (``python -m torch.distributed.run``, gloo on the CPU)
and compare with one process at the same global batch.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssn import LowRankLogitDistribution, ssn_loss
from ssn.apps.cli import main
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic
from ssn.distributed import World
from ssn.engine.loading import EpochBatches
from ssn.inference import predict_batches
from ssn.models import ModelSpec, build
from ssn.randomness import derive_seed, generators_for


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("distributed") / "synthetic.npz"
    save_arrays(path, make_synthetic(48, size=32, seed=0))
    return path


def _distribution(batch=3, classes=3, size=6, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LowRankLogitDistribution(
        torch.randn(batch, classes, size, size, generator=g),
        torch.randn(batch, rank, classes, size, size, generator=g),
        torch.rand(batch, classes, size, size, generator=g) + 0.1,
    )


def test_an_images_draws_do_not_depend_on_its_batch():
    dist = _distribution()
    together = dist.rsample((4,), generator=generators_for(7, [10, 11, 12]))
    for b, key in enumerate([10, 11, 12]):
        single = LowRankLogitDistribution(dist.loc[b : b + 1], dist.cov_factor[b : b + 1], dist.cov_diag[b : b + 1])
        alone = single.rsample((4,), generator=generators_for(7, [key]))
        torch.testing.assert_close(together[:, b : b + 1], alone)
    noise = dist.draw_noise(3, generators_for(7, [10, 11, 12]))
    assert noise.z.shape == (3, 3, 2) and noise.eps.shape == (3, 3, 3, 6, 6)
    with pytest.raises(ValueError, match="one per batch element"):
        dist.rsample((2,), generator=generators_for(7, [1, 2]))


@pytest.mark.parametrize("chunk_above", [None, 0, 1000])
def test_the_loss_of_a_batch_is_the_mean_of_its_images_losses_with_keyed_noise(monkeypatch, chunk_above):
    import ssn.losses

    # 0: every image in chunks (the checkpointed path rewinds the generators for its second
    # draw); 1000: between one image's 8 x 3 x 36 logit values and the batch's, where the choice
    # must follow the image, not the batch
    if chunk_above is not None:
        monkeypatch.setattr(ssn.losses, "CHUNK_ABOVE", chunk_above)
    dist = _distribution(classes=3)
    loc = dist.loc.clone().requires_grad_()
    dist = LowRankLogitDistribution(loc, dist.cov_factor, dist.cov_diag)
    target = torch.randint(0, 3, (3, 6, 6), generator=torch.Generator().manual_seed(1))
    batch = ssn_loss(dist, target, num_samples=8, generator=generators_for(3, [0, 1, 2]))
    (grad,) = torch.autograd.grad(batch, loc)
    singles = []
    for b in range(3):
        one = LowRankLogitDistribution(loc[b : b + 1], dist.cov_factor[b : b + 1], dist.cov_diag[b : b + 1])
        singles.append(ssn_loss(one, target[b : b + 1], num_samples=8, generator=generators_for(3, [b])))
    mean = torch.stack(singles).mean()
    torch.testing.assert_close(batch, mean)
    torch.testing.assert_close(grad, torch.autograd.grad(mean, loc)[0])


def test_predicted_samples_do_not_depend_on_the_batch_size():
    model = build(
        ModelSpec(
            method="ssn",
            backbone="unet",
            spatial_dims=2,
            in_channels=1,
            num_classes=2,
            backbone_kwargs={"features": [4, 8]},
        )
    )
    images = np.random.default_rng(0).integers(0, 255, (5, 1, 16, 16), dtype=np.uint8)
    by_one = np.concatenate(
        [labels.numpy() for _, labels in predict_batches(model, images, np.arange(5), 6, 1, seed=3)]
    )
    by_four = np.concatenate(
        [labels.numpy() for _, labels in predict_batches(model, images, np.arange(5), 6, 4, seed=3)]
    )
    np.testing.assert_array_equal(by_one, by_four)
    assert len({by_one[i].tobytes() for i in range(5)}) == 5  # and each image has its own draws


def test_processes_share_each_global_batch_exactly():
    order = np.random.default_rng(0).permutation(11)
    whole = [[key[1] for key in batch] for batch in EpochBatches(order, 0, 4)]
    assert whole == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    shares = [list(EpochBatches(order, 0, 4, world=World(rank, 2))) for rank in range(2)]
    for k, positions in enumerate(whole):
        assert sorted(key[1] for share in shares for key in share[k]) == positions
        assert all(key[2] == order[key[1]] for share in shares for key in share[k])
    # a last batch smaller than the number of processes would leave one without work: dropped
    assert len(EpochBatches(order, 0, 5, world=World(0, 2))) == 2 and len(EpochBatches(order, 0, 5)) == 3
    assert [k[1] for k in next(iter(EpochBatches(order, 0, 4, start=2)))] == [8, 9, 10]


def test_seeds_are_keyed_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, e, p) for e in range(20) for p in range(50)}) == 1000
    assert 0 <= derive_seed(2**40, 3) < 2**63


def _train(data, out, *extra):
    # 8-16 channels: at 4-8, a nearly constant channel under instance normalisation amplifies
    # rounding (the order of sums) to 1e-3 of a gradient, which is not what is tested here
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--features",
        "8",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "8",
        "--val-images",
        "8",
        "--val-every",
        "4",
        "--overwrite",
        *extra,
    ]


def test_data_loader_workers_do_not_change_the_run(data, tmp_path):
    assert main(_train(data, tmp_path / "w0", "--workers", "0")) == 0
    assert main(_train(data, tmp_path / "w2", "--workers", "2")) == 0
    a, b = load_file(str(tmp_path / "w0" / "last.safetensors")), load_file(str(tmp_path / "w2" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "w2" / "config.json").read_text())["workers"] == 2


def _torchrun(args, processes=2, timeout=300, no_python=False):
    """``torchrun ... -m ssn ARGS``, or ``torchrun ... --no-python ssn ARGS`` (the console script)."""
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    program = ["--no-python", "ssn"] if no_python else ["-m", "ssn"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        *program,
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: dict, b: dict, lr: float, steps: int) -> None:
    """Two runs' weights agree up to the rounding of the order of sums, at any thread count.

    Two processes sum each half batch's gradient and then add the halves; one process sums the
    whole batch at once, and the thread count changes the order again. The first convolution's
    weight gradient is a sum over every pixel of the batch that nearly cancels, so float32
    rounding changes its last three or four digits, and Adam, dividing by the running RMS, turns
    a relative error of the gradient into an error of the update of up to lr times it. The
    tolerance, 1% of the most Adam can move a weight (lr per step), allows that (measured: up to
    1e-5 with OMP_NUM_THREADS=1, 1e-7 elsewhere) and is 100 times below what a real fault
    gives: a process training on its own gradients alone moves weights by about lr per step.
    """
    assert a.keys() == b.keys()
    tolerance = 0.01 * lr * steps
    for key in a:
        difference = float((a[key] - b[key]).abs().max())
        assert difference <= tolerance, (
            f"{key}: the weights differ by up to {difference:.3g} (tolerance {tolerance:.3g})"
        )


@pytest.mark.parametrize("method", ["ssn", "deterministic", "prob-unet"])
def test_two_processes_train_the_model_one_process_trains(data, tmp_path, method):
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ["--encoder-features", "8", "16"] if method == "prob-unet" else []
    assert main(_train(data, one, "--method", method, "--workers", "0", *extra)) == 0
    done = _torchrun(_train(data, two, "--method", method, "--workers", "0", *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "find_unused_parameters" not in done.stderr  # DDP's note on the warm-up's idle head is not shown
    a, b = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    assert a.keys() == b.keys()
    _assert_same_weights(a, b, lr=1e-3, steps=8)
    first, second = _metrics(one), _metrics(two)
    assert [m["step"] for m in first] == [m["step"] for m in second] == [4, 8]
    for m1, m2 in zip(first, second):  # the losses and the validation shared between processes
        assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-6)
        # GED^2 of argmax samples is a step function of the weights: rounding-level differences
        # (above) flip a few pixels of a few samples: 1e-4 of GED^2 on these 8 images, measured
        # with OMP_NUM_THREADS=1. A fault scores other images (one process's share alone, or
        # another subset), a change of the order of the spread between images.
        assert m1["val_ged"] == pytest.approx(m2["val_ged"], abs=2e-3), (m1["val_ged"], m2["val_ged"])
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["world_size"] == 1


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed-run") / "run"
    assert main(_train(data, out, "--workers", "0")) == 0
    return out


def test_two_processes_evaluate_as_one(data, run, tmp_path):
    args = ["evaluate", "--run-dir", str(run), "--data", str(data), "--samples", "6", "--batch-size", "5"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    done = _torchrun([*args, "--batch-size", "3", "--out", str(tmp_path / "two.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["num_images"] == two["num_images"] == 48
    for key in ("ged", "diversity", "dice"):
        assert one[key]["mean"] == pytest.approx(two[key]["mean"], abs=1e-9), key
        assert one[key]["stderr"] == pytest.approx(two[key]["stderr"], rel=1e-6), key
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()  # every image, in order


def test_a_process_without_images_still_takes_part(run, tmp_path):
    """One image on two processes: the second has nothing to evaluate, and the figures are still one process's."""
    one_image = tmp_path / "one.npz"
    save_arrays(one_image, make_synthetic(1, size=32, seed=5))
    args = ["evaluate", "--run-dir", str(run), "--data", str(one_image), "--samples", "4"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    done = _torchrun([*args, "--out", str(tmp_path / "two.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["num_images"] == 1 and one["ged"]["mean"] == pytest.approx(two["ged"]["mean"], abs=1e-12)


def test_two_processes_sample_as_one(data, run, tmp_path):
    args = ["sample", "--run-dir", str(run), "--input", str(data), "--samples", "4", "--figures", "1"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    done = _torchrun([*args, "--out", str(tmp_path / "two")], no_python=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert one["samples"].shape == (48, 4, 32, 32)
    np.testing.assert_array_equal(one["samples"], two["samples"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["image_0000.png", "samples.npz"]


def test_mixed_precision_trains_with_the_head_and_loss_in_float32(data, tmp_path):
    assert main(_train(data, tmp_path / "fp32", "--workers", "0")) == 0
    assert main(_train(data, tmp_path / "bf16", "--workers", "0", "--precision", "bf16")) == 0
    full, half = _metrics(tmp_path / "fp32"), _metrics(tmp_path / "bf16")
    for a, b in zip(full, half):  # bf16 rounds the backbone's activations: close, not equal
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)
    weights = load_file(str(tmp_path / "bf16" / "last.safetensors"))
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights.values())
    assert any(
        not torch.equal(t, load_file(str(tmp_path / "fp32" / "last.safetensors"))[k]) for k, t in weights.items()
    )


def test_fp16_trains_with_a_gradient_scaler_whose_state_is_kept(data, tmp_path):
    assert main(_train(data, tmp_path / "fp16", "--workers", "0", "--precision", "fp16")) == 0
    state = torch.load(tmp_path / "fp16" / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    weights = load_file(str(tmp_path / "fp16" / "last.safetensors"))
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights.values())
    assert all(m["bad_steps"] == 0 and np.isfinite(m["train_loss"]) for m in _metrics(tmp_path / "fp16"))


def test_a_compiled_step_trains_the_same_model(data, tmp_path):
    args = ("--workers", "0", "--method", "deterministic", "--max-steps", "2", "--val-every", "2")
    assert main(_train(data, tmp_path / "eager", *args)) == 0
    assert main(_train(data, tmp_path / "compiled", *args, "--compile")) == 0
    a, b = (load_file(str(tmp_path / n / "last.safetensors")) for n in ("eager", "compiled"))
    for key in a:  # the compiler fuses and reorders arithmetic: float tolerance
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


_OVERFLOW_ON_ONE_PROCESS = """
import numpy as np, torch, torch.distributed as dist
from ssn.distributed import join
from ssn.distributions import NonFiniteError
from ssn.engine.config import TrainConfig
from ssn.engine.sources import ValidationSet
from ssn.engine.trainer import _validate
from ssn.models import ModelSpec, build

world, device = join("cpu")
torch.manual_seed(0)
model = build(ModelSpec(method="ssn", backbone="unet", spatial_dims=2, in_channels=1, num_classes=2,
                        backbone_kwargs={"features": [4, 8]}))
images = np.zeros((2, 1, 16, 16), np.float32)
images[1] = 3e38  # the second process's only image overflows the network
config = TrainConfig(data="d.npz", out="o", num_classes=2, val_samples=4, batch_size=1)
try:
    _validate(model, ValidationSet(images, np.zeros((2, 2, 16, 16), np.uint8)), config, device, world)
    outcome = "no error"
except NonFiniteError:
    outcome = "raised"
open(__file__ + f".{world.rank}", "w").write(outcome)
dist.barrier()
"""


def test_an_overflow_in_one_processs_validation_reaches_every_process(tmp_path):
    script = tmp_path / "overflow.py"
    script.write_text(_OVERFLOW_ON_ONE_PROCESS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / f"overflow.py.{rank}").read_text() for rank in (0, 1)] == ["raised", "raised"]


_SPAWNED = """
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp


def work(rank, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
    dist.init_process_group("gloo", rank=rank, world_size=2)  # set up by the caller, not by torchrun
    from ssn.engine import TrainConfig, train

    train(TrainConfig(data=data, out=out, features=[8, 16], batch_size=8, max_steps=4, val_images=8, workers=0),
          log=lambda *_: None)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_a_process_group_set_up_by_the_caller_is_joined(data, tmp_path):
    import socket

    script = tmp_path / "spawned.py"
    script.write_text(_SPAWNED)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "two"), str(port)],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "one"),
                "--features",
                "8",
                "16",
                "--batch-size",
                "8",
                "--max-steps",
                "4",
                "--val-images",
                "8",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    a, b = (load_file(str(tmp_path / n / "last.safetensors")) for n in ("one", "two"))
    _assert_same_weights(a, b, lr=1e-3, steps=4)
