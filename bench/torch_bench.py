#!/usr/bin/env python3
"""PyTorch peer of `fmnist bench` (see WORKLOADS.md).

    torch_bench.py {linear,mlp,cnn} [EPOCHS]            train a workload, a line per epoch, then JSON
    torch_bench.py {speedrun,resnet} [--steps N] [--bf16] [--channels-last]
                                                        time N training steps of an fmnist recipe
"""
import argparse
import json
import os
import platform
import resource
import statistics
import time

THREADS = int(os.environ.get("PEER_THREADS", "2"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
from fmnist_data import load_arrays  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

def load():
    """(train images, train labels, test images, test labels): images [N, 1, 28, 28] in [0, 1]."""
    arrays = load_arrays()
    images = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return images(arrays[0]), labels(arrays[1]), images(arrays[2]), labels(arrays[3])


def keras_init(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, as Keras and fmnist initialise them."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def workload_model(name: str) -> nn.Module:
    if name == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 60), nn.ReLU(), nn.Linear(60, 60), nn.ReLU(),
                             nn.Linear(60, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(128, 10))


def versions() -> dict:
    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def evaluate(model, x, y, batch):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return loss / len(x), correct / len(x)


def train_workload(name: str, epochs: int) -> dict:
    torch.manual_seed(42)
    x_train, y_train, x_test, y_test = load()
    model = keras_init(workload_model(name))
    if name == "cnn":
        batch, optimizer = 128, torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    else:
        batch, optimizer = 1024, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.95)
    train_secs, eval_secs = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(x_train))
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y_train[idx]).sum().item()
        train_secs.append(time.perf_counter() - started)
        started = time.perf_counter()
        test_loss, test_acc = evaluate(model, x_test, y_test, batch)
        eval_secs.append(time.perf_counter() - started)
        print(f"epoch {epoch}: train {train_secs[-1]:.3f}s eval {eval_secs[-1]:.3f}s "
              f"loss {loss_sum / len(order):.4f} acc {correct / len(order):.4f} "
              f"test_loss {test_loss:.4f} test_acc {test_acc:.4f}", flush=True)
    steady = statistics.median(train_secs[1:] or train_secs)
    return {"framework": "pytorch", "workload": name, "epochs": epochs, "batch_size": batch,
            "sec_per_epoch_median": steady, "images_per_sec": len(x_train) / steady,
            "eval_sec": statistics.median(eval_secs[1:] or eval_secs), "test_acc": test_acc,
            "test_loss": test_loss, "train_secs": train_secs, "peak_rss_kb": peak_rss_kb(),
            "threads": torch.get_num_threads(), "versions": versions()}


class ConvBnRelu(nn.Sequential):
    def __init__(self, c_in, c_out, relu=True):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)]
        super().__init__(*(layers + [nn.ReLU()] if relu else layers))


class Residual(nn.Module):
    """Conv BN ReLU, Conv BN, plus the input (or its 1x1 convolution), ReLU: fmnist's block."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(ConvBnRelu(c_in, c_out), ConvBnRelu(c_out, c_out, relu=False))
        self.projection = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.projection(x))


def recipe_model(name: str) -> nn.Module:
    if name == "speedrun":
        return nn.Sequential(nn.Conv2d(1, 32, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.MaxPool2d(2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(1600, 256), nn.ReLU(), nn.Dropout(0.3),
                             nn.Linear(256, 10))
    layers, c_in = [ConvBnRelu(1, 64)], 64
    for stage, c in enumerate([64, 128, 256]):
        if stage > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(2):
            layers.append(Residual(c_in, c))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def augment(x: torch.Tensor, shift: int, erase: float, gen: torch.Generator) -> torch.Tensor:
    """Random flips, shifts of up to `shift` pixels (zero fill) and random erasing, per image."""
    n = len(x)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    for i in torch.nonzero(torch.rand(n, generator=gen) < erase).flatten().tolist():
        h, w = torch.randint(4, 16, (2,), generator=gen).tolist()
        y0, x0 = torch.randint(0, 28 - h, (1,), generator=gen).item(), torch.randint(0, 28 - w, (1,), generator=gen).item()
        out[i, :, y0:y0 + h, x0:x0 + w] = 0.0
    return out


def time_recipe(name: str, steps: int, bf16: bool, channels_last: bool) -> dict:
    torch.manual_seed(42)
    gen = torch.Generator().manual_seed(42)
    x_train, y_train, _, _ = load()
    model = keras_init(recipe_model(name))
    if name == "speedrun":
        optimizer = torch.optim.Adam(model.parameters(), lr=0.002, eps=1e-7)
        shift, erase = 1, 0.0
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        shift, erase = 2, 0.5
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    average = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999))
    model.train()
    step_secs = []
    for step in range(steps + 2):  # two warm-up steps
        idx = torch.randint(0, len(x_train), (128,), generator=gen)
        started = time.perf_counter()
        x = augment(x_train[idx], shift, erase, gen).contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average.update_parameters(model)
        if step >= 2:
            step_secs.append(time.perf_counter() - started)
            print(f"step {step - 1}: {step_secs[-1]:.4f}s loss {loss.item():.4f}", flush=True)
    median = statistics.median(step_secs)
    return {"framework": "pytorch", "workload": name, "steps": steps, "batch_size": 128, "bf16": bf16,
            "channels_last": channels_last, "sec_per_step_median": median,
            "sec_per_epoch_implied": median * 469, "peak_rss_kb": peak_rss_kb(),
            "threads": torch.get_num_threads(), "versions": versions()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=["linear", "mlp", "cnn", "speedrun", "resnet"])
    parser.add_argument("epochs", nargs="?", type=int, help="epochs (W1, W2: 10; W3: 3)")
    parser.add_argument("--steps", type=int, default=30, help="training steps to time (speedrun, resnet)")
    parser.add_argument("--bf16", action="store_true", help="forward and loss under bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="NHWC images and weights")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.workload in ("speedrun", "resnet"):
        result = time_recipe(args.workload, args.steps, args.bf16, args.channels_last)
    else:
        result = train_workload(args.workload, args.epochs or (3 if args.workload == "cnn" else 10))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
