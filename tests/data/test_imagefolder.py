"""Image folders through grain, on a small folder the test makes: labels, preprocessing,
deterministic and resumable order, per-process shards, bad input, and a training run."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxsparse.data import DatasetError, eval_batches, train_batches
from jaxsparse.data import imagefolder as imf
from tests.helpers import make_image_folder as make_folder
from tests.helpers import run_cli


def test_labels_follow_sorted_folder_names(tmp_path):
    train, val = imf.load_image_folder(str(make_folder(tmp_path)), image_size=32)
    assert train.classes == val.classes == ("ant", "bee", "cat")
    assert [f.split("/")[-2] for f in train.files[:4]] == ["ant"] * 4
    assert list(train.labels) == [0] * 4 + [1] * 4 + [2] * 4
    assert len(val) == 6 and val.image_shape == (32, 32, 3)


def test_preprocessing_shapes_and_values(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.full((40, 70, 3), 255, np.uint8)).save(tmp_path / "val" / "ant" / "w.png")
    train, val = imf.load_image_folder(str(tmp_path), image_size=32)
    white = val.load(val.files.index(str(tmp_path / "val" / "ant" / "w.png")))
    assert white.shape == (32, 32, 3) and white.dtype == np.float32
    np.testing.assert_allclose(white, np.broadcast_to((1 - imf.MEAN) / imf.STD, white.shape),
                               rtol=1e-6)
    a = train.load(0, np.random.default_rng(1))
    b = train.load(0, np.random.default_rng(1))
    c = train.load(0, np.random.default_rng(2))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    lo, hi = (0 - imf.MEAN) / imf.STD, (1 - imf.MEAN) / imf.STD
    assert np.all(a >= lo.min() - 1e-5) and np.all(a <= hi.max() + 1e-5)


def _collect(it):
    return [{k: np.asarray(v) for k, v in b.items()} for b in it]


def test_order_is_deterministic_and_resumes_exactly(tmp_path):
    train, _ = imf.load_image_folder(str(make_folder(tmp_path)), image_size=16)
    full = _collect(train_batches(train, 4, seed=3, start_step=0, num_steps=6))
    assert len(full) == 6 and full[0]["image"].shape == (4, 16, 16, 3)
    again = _collect(train_batches(train, 4, seed=3, start_step=0, num_steps=6))
    resumed = _collect(train_batches(train, 4, seed=3, start_step=4, num_steps=6))
    for x, y in zip(full, again, strict=True):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
    for x, y in zip(full[4:], resumed, strict=True):  # Mid-run resume: the same batches.
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
    epoch0 = np.concatenate([b["label"] for b in full[:3]])
    assert sorted(epoch0) == sorted(train.labels)  # An epoch sees every image once.
    other = _collect(train_batches(train, 4, seed=4, start_step=0, num_steps=3))
    assert not all(np.array_equal(x["label"], y["label"])
                   for x, y in zip(full[:3], other, strict=True))


def test_two_process_shards_are_disjoint_and_complete():
    parts = [imf.local_positions(5, 8, 1, p, 2) for p in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(np.concatenate(parts)) == list(range(8, 40))  # Batches 1..4, all of them.
    assert list(parts[0][:4]) == [8, 9, 10, 11] and list(parts[1][:4]) == [12, 13, 14, 15]


def test_eval_covers_every_image_once_with_a_masked_last_batch(tmp_path):
    _, val = imf.load_image_folder(str(make_folder(tmp_path)), image_size=16)
    batches = _collect(eval_batches(val, 4))
    assert [b["mask"].tolist() for b in batches] == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert np.concatenate([b["label"] for b in batches])[:6].tolist() == list(val.labels)


@pytest.mark.parametrize("setup, match", [
    (lambda r: (r / "train").mkdir() or (r / "val").mkdir(), "train is empty"),
    (lambda r: [(r / s).mkdir() or (r / s / "x.jpg").write_text("") for s in ("train", "val")],
     "train has no class subfolders"),
    (lambda r: make_folder(r) and (r / "train" / "ant" / "notes.txt").write_text("hi"),
     "notes.txt: not a"),
    (lambda r: make_folder(r) and (r / "val" / "cat").rename(r / "val" / "dog"),
     "different classes"),
    (lambda r: make_folder(r) and (r / "train" / "bee" / "bad.jpg").write_text("no image"),
     None),
    (lambda r: None, "has no train/ folder"),
])
def test_bad_folders_give_one_clear_error(tmp_path, setup, match):
    setup(tmp_path)
    if match is None:  # A file that is not an image: named when it is read.
        train, _ = imf.load_image_folder(str(tmp_path), image_size=16)
        with pytest.raises(DatasetError, match=r"bad\.jpg: not a readable image"):
            train.load(train.files.index(str(tmp_path / "train" / "bee" / "bad.jpg")))
        return
    with pytest.raises(DatasetError, match=match):
        imf.load_image_folder(str(tmp_path), image_size=16)


def test_wrong_class_count_is_named(tmp_path):
    with pytest.raises(DatasetError, match="set data.num_classes=3"):
        imf.load_image_folder(str(make_folder(tmp_path)), num_classes=10)


def test_training_run_on_an_image_folder(tmp_path):
    make_folder(tmp_path / "data", per_class=8)
    proc = run_cli(["-m", "experiments.run", "--config=experiments/configs/smoke.py",
                    f"--workdir={tmp_path}/w", "--config.data.name=imagefolder",
                    f"--config.data.dir={tmp_path}/data", "--config.data.shape=(32,32,3)",
                    "--config.data.num_classes=3", "--config.train.batch_size=8",
                    "--config.train.epochs=1", "--config.eval.batch_size=4",
                    "--config.bench.enabled=False", "--config.progress=False"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["steps"] == 3 and 0.0 <= results["accuracy"] <= 1.0
