"""PyTorch modules matching fmnist's exported safetensors (`fmnist export --format safetensors`).

    import json, torch
    from safetensors.torch import load_file
    from fmnist_torch import build
    model = build(json.load(open("model.json")))
    model.load_state_dict(load_file("model.safetensors"))
    logits = model(images)   # images: float [N, 1, 28, 28], pixels / 255

`build` reads the architecture JSON that fmnist writes beside the weights; the modules' parameter
names and layouts are those of the file, so `load_state_dict` (strict) takes it as it is. The
run's input normalisation is part of the module.
"""
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU, "leaky-relu": lambda: nn.LeakyReLU(0.01),
}


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


class Mlp(nn.Module):
    """Flatten -> (Linear -> [BatchNorm1d] -> activation)* -> Linear; `hidden=[]` is the linear model."""

    def __init__(self, hidden, activation, batch_norm):
        super().__init__()
        widths = [784] + list(hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden) if batch_norm else nn.ModuleList()
        self.activation = ACTIVATIONS[activation]()
        self.output = nn.Linear(widths[-1], 10)

    def forward(self, x):
        x = x.flatten(1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = self.activation(x)
        return self.output(x)


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out, kernel, padding, batch_norm):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else None

    def forward(self, x):
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x


class ConvNet(nn.Module):
    """`cnn` (3x3 valid convolutions, one per stage) and `cnn-bn` (two 3x3 same ones per stage)."""

    def __init__(self, channels, dense, stacked, batch_norm):
        super().__init__()
        per_stage, padding = (2, 1) if stacked else (1, 0)
        c_in, side, stages = 1, 28, []
        for c in channels:
            blocks = []
            for _ in range(per_stage):
                blocks.append(ConvBlock(c_in, c, 3, padding, batch_norm))
                c_in, side = c, side - 2 * (1 - padding)
            stages.append(nn.ModuleList(blocks))
            side //= 2
        self.stages = nn.ModuleList(stages)
        flat = c_in * side * side
        self.hidden = nn.Linear(flat, dense) if dense > 0 else None
        self.output = nn.Linear(dense if dense > 0 else flat, 10)

    def forward(self, x):
        for stage in self.stages:
            for i, block in enumerate(stage):
                x = block(x)
                if i + 1 == len(stage):
                    x = F.max_pool2d(x, 2)
                x = F.relu(x)
        x = x.flatten(1)
        if self.hidden is not None:
            x = F.relu(self.hidden(x))
        return self.output(x)


class Residual(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.first = ConvBlock(c_in, c_out, 3, 1, True)
        self.second = ConvBlock(c_out, c_out, 3, 1, True)
        self.projection = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        shortcut = self.projection(x) if self.projection is not None else x
        return F.relu(self.second(F.relu(self.first(x))) + shortcut)


class ResNet(nn.Module):
    def __init__(self, channels, blocks):
        super().__init__()
        self.stem = ConvBlock(1, channels[0], 3, 1, True)
        c_in, stages = channels[0], []
        for c, n in zip(channels, blocks):
            stage = []
            for _ in range(max(n, 1)):
                stage.append(Residual(c_in, c))
                c_in = c
            stages.append(nn.ModuleList(stage))
        self.stages = nn.ModuleList(stages)
        self.output = nn.Linear(c_in, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            for block in stage:
                x = block(x)
        return self.output(x.mean((2, 3)))


class Exported(nn.Module):
    """The input normalisation, then the network; `state_dict` keys are the network's."""

    def __init__(self, normalize, net):
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, x):
        return self.net(self.normalize(x))

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict=True, **kwargs):
        return self.net.load_state_dict(state, strict=strict, **kwargs)


def build(architecture: dict) -> nn.Module:
    """The module of fmnist's architecture JSON, in evaluation mode."""
    m, n = architecture["model"], architecture["normalization"]
    arch = m["arch"]
    if arch in ("linear", "mlp"):
        net = Mlp(m["hidden"] if arch == "mlp" else [], m["activation"], m["batch_norm"])
    elif arch in ("cnn", "cnn-bn"):
        net = ConvNet(m["channels"], m["dense"], arch == "cnn-bn", arch == "cnn-bn" or m["batch_norm"])
    elif arch == "resnet":
        net = ResNet(m["channels"], m["blocks"])
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    return Exported(Normalize(n["mean"], n["std"]), net).eval()


__all__ = ["build"]
