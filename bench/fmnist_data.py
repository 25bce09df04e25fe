"""The Fashion-MNIST files for the peer scripts, found where fmnist finds them."""
import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def data_dir() -> Path:
    """The first of $FMNIST_DATA, fmnist's cache and Debian's directory that holds the files."""
    candidates = [os.environ.get("FMNIST_DATA"), Path.home() / ".cache/fmnist/fashion-mnist",
                  "/usr/share/datasets/fashion-mnist"]
    for d in filter(None, candidates):
        d = Path(d)
        if all((d / f"{f}.gz").is_file() or (d / f).is_file() for f in FILES):
            return d
    sys.exit("error: Fashion-MNIST not found: run `fmnist data download` or set FMNIST_DATA")


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_arrays():
    """The four arrays as stored: train images [60000, 28, 28] and labels, test images and labels."""
    d = data_dir()
    return [read_idx(d / f"{f}.gz" if (d / f"{f}.gz").is_file() else d / f) for f in FILES]
