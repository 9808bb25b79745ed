"""The decode-once cache: same pixels as decoding directly, reused, rebuilt when the data changes."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import cxr.data.batches
from cxr.data.batches import ImageBatches
from cxr.data.cache import cached_images, load_split_images, resolve_cache_dir
from cxr.errors import DatasetError


@pytest.fixture()
def files(sample):
    names = sorted(p.relative_to(sample).as_posix() for p in sample.glob("*/images/*.png"))
    return names[::15]  # 30 real images from all three classes


def test_cached_images_equal_direct_decoding_and_are_a_read_only_memory_map(sample, files, tmp_path):
    messages = []
    cached = cached_images(tmp_path, sample, files, 48, progress=False, echo=messages.append)
    direct = load_split_images(None, sample, files, 48, progress=False)
    assert isinstance(cached, np.memmap) and cached.shape == (30, 48, 48, 1) and cached.dtype == np.uint8
    assert np.array_equal(cached, direct)
    assert not cached.flags.writeable
    [npy] = tmp_path.glob("*.npy")
    assert npy.name.startswith("48px-") and npy.stat().st_size == 30 * 48 * 48 + 128  # pixels + .npy header
    assert messages == [f"decode cache: {npy} ({npy.stat().st_size / 2**20:.1f} MiB)"]
    sidecar = json.loads(npy.with_suffix(".json").read_text())
    assert sidecar["files"] == files and sidecar["size"] == 48 and sidecar["root"] == str(sample)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_second_use_reads_the_cache_without_decoding(sample, files, tmp_path, monkeypatch):
    first = cached_images(tmp_path, sample, files, 40, progress=False, echo=lambda _: None)
    monkeypatch.setattr(cxr.data.cache, "load_image", lambda *a: pytest.fail("decoded again"))
    messages = []
    again = cached_images(tmp_path, sample, files, 40, progress=False, echo=messages.append)
    assert np.array_equal(first, again) and len(list(tmp_path.glob("*.npy"))) == 1
    assert messages == [f"decode cache: reusing {next(tmp_path.glob('*.npy'))}"]


def test_another_size_file_list_or_a_changed_file_gets_its_own_cache(sample, files, tmp_path):
    data = tmp_path / "data"
    for name in files:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes((sample / name).read_bytes())
    cache = tmp_path / "cache"
    quiet = dict(progress=False, echo=lambda _: None)
    cached_images(cache, data, files, 40, **quiet)
    cached_images(cache, data, files, 36, **quiet)
    cached_images(cache, data, files[:10], 40, **quiet)
    assert len(list(cache.glob("*.npy"))) == 3
    # Replace one image by another (new bytes and time): the old cache is not trusted.
    os.utime(data / files[0], ns=(0, 0))
    (data / files[0]).write_bytes((sample / files[-1]).read_bytes())
    changed = cached_images(cache, data, files, 40, **quiet)
    assert len(list(cache.glob("*.npy"))) == 4
    assert np.array_equal(changed[0], changed[-1])


def test_a_damaged_cache_is_decoded_again_and_a_missing_file_is_named(sample, files, tmp_path):
    cached_images(tmp_path, sample, files, 40, progress=False, echo=lambda _: None)
    [npy] = tmp_path.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:1000])  # truncated, as by a full disk
    messages = []
    repaired = cached_images(tmp_path, sample, files, 40, progress=False, echo=messages.append)
    assert messages[0].startswith(f"decode cache {npy} is damaged") and messages[0].endswith("decoding again")
    assert np.array_equal(repaired, load_split_images(None, sample, files, 40, progress=False))
    with pytest.raises(DatasetError, match=r"1 image\(s\) in the split cannot be read:\n  .*nowhere.png: No such"):
        cached_images(tmp_path, sample, [*files, "COVID/images/nowhere.png"], 40, progress=False)


def test_batches_from_the_cache_equal_batches_from_decoded_images(sample, files, tmp_path):
    cached = cached_images(tmp_path, sample, files, 32, progress=False, echo=lambda _: None)
    direct = load_split_images(None, sample, files, 32, progress=False)
    labels = np.arange(len(files)) % 3
    for epoch in (0, 1, 5):
        a = ImageBatches(cached, labels, 3, 8, shuffle=True, seed=7)
        b = ImageBatches(direct, labels, 3, 8, shuffle=True, seed=7)
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for index in range(len(a)):
            for x, y in zip(a[index], b[index], strict=True):
                assert np.array_equal(x, y)
    # Each epoch is a new permutation of all the images, a function of (seed, epoch) only.
    batches = ImageBatches(cached, labels, 3, 8, shuffle=True, seed=7)
    orders = []
    for epoch in (0, 1, 0):
        batches.set_epoch(epoch)
        orders.append(batches.order.copy())
    assert sorted(orders[0]) == list(range(30)) and not np.array_equal(orders[0], orders[1])
    assert np.array_equal(orders[0], orders[2])


def test_cache_setting(tmp_path):
    assert resolve_cache_dir("auto", tmp_path) == tmp_path / "cache"
    assert resolve_cache_dir("none", tmp_path) is None
    assert resolve_cache_dir(str(tmp_path / "x"), "runs") == tmp_path / "x"


@pytest.mark.slow
def test_training_from_the_cache_equals_training_from_memory(phantoms, tmp_path):
    from cxr.config import resolve
    from cxr.training.loop import train

    histories = []
    for cache in ("none", "auto"):
        config = resolve(recipe="reference", data=str(phantoms), runs_dir=str(tmp_path / cache), backbone="tiny",
                         weights="none",
                         image_size=32, epochs=2, batch_size=8, seed=1, deterministic=True, cache_dir=cache,
                         bootstrap=100)
        run = train(config, progress=False, echo=lambda _: None)
        histories.append(pd.read_csv(run / "history.csv").drop(columns=["seconds"]))
    assert not (tmp_path / "none" / "cache").exists()
    assert len(list((tmp_path / "auto" / "cache").glob("32px-*.npy"))) == 3  # train, val, test
    pd.testing.assert_frame_equal(histories[0], histories[1])
