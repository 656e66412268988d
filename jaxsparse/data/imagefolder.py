"""ImageNet-style image folders read through grain: ``<dir>/train/<class>/*`` and
``<dir>/val/<class>/*`` (JPEG or PNG), decoded in grain worker processes.

Classes are the sorted folder names, as torchvision's ``ImageFolder`` orders them, so labels
match torchvision-trained weights. Preprocessing is the standard ResNet one: training takes a
random-resized crop (scale 0.08-1, aspect 3/4-4/3) of ``image_size`` and a random horizontal
flip; evaluation resizes the short side to ``resize`` (256 for 224) and takes the centre crop;
both normalise with the ImageNet mean and standard deviation. The order of an epoch is a pure
function of ``(seed, epoch)`` and each image's augmentation of ``(seed, epoch, position)``, so a
resumed run sees exactly the batches an uninterrupted one would; each process of a multi-host
run reads a disjoint shard of every epoch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from jaxsparse.data.datasets import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet, RGB in [0, 1].
STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """One split of an image folder: the files, their labels and the preprocessing.

    Attributes:
        root: the split's folder (``<dir>/train`` or ``<dir>/val``).
        classes: class names, sorted (label ``i`` is ``classes[i]``).
        files: image paths, sorted by class then name.
        labels: int32 label of each file.
        train: random-resized crop + flip (else resize + centre crop).
        image_size: the side of the square crop.
        resize: evaluation's short side before the centre crop.
    """

    root: str
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray
    train: bool
    image_size: int = 224
    resize: int = 256

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def load(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The preprocessed ``(image_size, image_size, 3)`` float32 image of file ``index``.

        Raises:
            DatasetError: for a file that is not a readable image, naming it.
        """
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.load()
        except Exception as e:  # noqa: BLE001  (PIL raises many types)
            raise DatasetError(f"{path}: not a readable image ({e}).") from None
        if self.train:
            rng = rng if rng is not None else np.random.default_rng(0)
            im = _random_resized_crop(im, self.image_size, rng)
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            im = _center_crop(im, self.resize, self.image_size)
        x = np.asarray(im, np.float32) / 255.0
        return (x - MEAN) / STD


def _random_resized_crop(im, size: int, rng: np.random.Generator):
    from PIL import Image

    w, h = im.size
    area = w * h
    for _ in range(10):  # torchvision's RandomResizedCrop: 10 tries, then the centre crop.
        target = area * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return im.resize((size, size), Image.Resampling.BILINEAR,
                             box=(x0, y0, x0 + cw, y0 + ch))
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return im.resize((size, size), Image.Resampling.BILINEAR,
                     box=(x0, y0, x0 + side, y0 + side))


def _center_crop(im, resize: int, size: int):
    from PIL import Image

    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                   Image.Resampling.BILINEAR)
    w, h = im.size
    x0, y0 = (w - size) // 2, (h - size) // 2
    return im.crop((x0, y0, x0 + size, y0 + size))


def scan(root: str, split: str, *, image_size: int = 224, resize: int = 256) -> ImageFolder:
    """The ``split`` (``"train"``/``"val"``) of the image folder ``root``.

    Raises:
        DatasetError: for a missing or empty folder, a folder without class subfolders, a
            class folder without images, or a file that is not a JPEG/PNG, naming the path.
    """
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DatasetError(f"data.dir={root!r} has no {split}/ folder ({path}); an image folder "
                           f"holds {split}/<class>/<image>.jpg|png.")
    entries = sorted(os.listdir(path))
    classes = tuple(e for e in entries if os.path.isdir(os.path.join(path, e)))
    if not classes:
        what = "is empty" if not entries else "has no class subfolders"
        raise DatasetError(f"{path} {what}; an image folder holds {split}/<class>/<image>.")
    loose = [e for e in entries if e not in classes]
    if loose:
        raise DatasetError(f"{os.path.join(path, loose[0])}: a file beside the class folders "
                           f"of {path}; put images in {split}/<class>/.")
    files, labels = [], []
    for label, c in enumerate(classes):
        names = sorted(os.listdir(os.path.join(path, c)))
        if not names:
            raise DatasetError(f"{os.path.join(path, c)} holds no images.")
        for n in names:
            full = os.path.join(path, c, n)
            if not n.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(full):
                raise DatasetError(f"{full}: not a {'/'.join(IMAGE_EXTENSIONS)} image file.")
            files.append(full)
            labels.append(label)
    return ImageFolder(path, classes, tuple(files), np.asarray(labels, np.int32),
                       train=split == "train", image_size=image_size, resize=resize)


def load_image_folder(root: str, *, image_size: int = 224, num_classes: int | None = None,
                      train_limit: int = 0, val_limit: int = 0,
                      ) -> tuple[ImageFolder, ImageFolder]:
    """``(train, val)`` of an image folder, checked to have the same classes (and
    ``num_classes`` of them when given); a limit keeps that many files, evenly spread over the
    sorted list (so every class keeps some).

    Raises:
        DatasetError: as :func:`scan`, or when train and val class sets differ or their count
            is not ``num_classes``.
    """
    resize = int(round(image_size * 256 / 224))
    train = scan(root, "train", image_size=image_size, resize=resize)
    val = scan(root, "val", image_size=image_size, resize=resize)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DatasetError(f"data.dir={root!r}: train/ and val/ have different classes (only in "
                           f"one: {only[:5]}); both need the same class folders.")
    if num_classes is not None and train.num_classes != num_classes:
        raise DatasetError(f"data.dir={root!r} has {train.num_classes} classes but "
                           f"data.num_classes={num_classes}; set data.num_classes="
                           f"{train.num_classes}.")
    return _limit(train, train_limit), _limit(val, val_limit)


def _limit(folder: ImageFolder, limit: int) -> ImageFolder:
    if not limit or limit >= len(folder):
        return folder
    keep = np.unique(np.round(np.linspace(0, len(folder) - 1, limit)).astype(int))
    return dataclasses.replace(folder, files=tuple(folder.files[i] for i in keep),
                               labels=folder.labels[keep])


class _Positions:
    """A grain source: item ``k`` is image ``indices[k]`` (``-1``: padding, a zero image with
    ``mask`` 0), its augmentation seeded by ``(seed, epoch, keys[k])``."""

    def __init__(self, folder: ImageFolder, indices: np.ndarray, keys: np.ndarray, seed: int,
                 epoch: int):
        self.folder, self.indices, self.keys, self.seed, self.epoch = \
            folder, indices, keys, seed, epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        i = int(self.indices[k])
        if i < 0:
            return {"image": np.zeros(self.folder.image_shape, np.float32),
                    "label": np.int32(0), "mask": np.float32(0.0)}
        rng = np.random.default_rng((self.seed, self.epoch, int(self.keys[k]))) \
            if self.folder.train else None
        return {"image": self.folder.load(i, rng), "label": self.folder.labels[i],
                "mask": np.float32(1.0)}


def local_positions(num_batches: int, batch_size: int, first_batch: int = 0,
                    process: int = 0, processes: int = 1) -> np.ndarray:
    """The positions of an epoch's order that ``process`` reads: its ``batch_size /
    processes`` slice of each global batch from ``first_batch`` on (the slice
    ``jax.make_array_from_process_local_data`` expects from it)."""
    local = batch_size // processes
    starts = np.arange(first_batch, num_batches)[:, None] * batch_size + process * local
    return (starts + np.arange(local)[None, :]).ravel()


def batches(folder: ImageFolder, indices: np.ndarray, keys: np.ndarray, batch_size: int, *,
            seed: int = 0, epoch: int = 0, workers: int = 0,
            ) -> Iterator[dict[str, np.ndarray]]:
    """Batches ``{"image", "label", "mask"}`` of ``folder``'s images ``indices`` (``-1``:
    padding), augmented by ``(seed, epoch, keys)``, decoded by ``workers`` grain worker
    processes (0: in this process)."""
    import grain
    from absl import flags

    ds = grain.MapDataset.source(_Positions(folder, indices, keys, seed, epoch))
    ds = ds.batch(batch_size, drop_remainder=False).to_iter_dataset()
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags: outside an absl
            flags.FLAGS.mark_as_parsed()  # app (a library call, a test) use their defaults.
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    yield from ds


def measure_loader(folder: ImageFolder, batch_size: int, workers: int, num_batches: int,
                   seed: int = 0) -> dict[str, float]:
    """Images/s of ``folder``'s training pipeline (decode, random-resized crop, flip,
    normalise) with ``workers`` grain worker processes, timed from the iterator's creation to
    the last of ``num_batches`` batches (start-up included: grain reads ahead, so a warm-up
    batch would hide work done before the clock starts): ``{"workers", "images_per_sec",
    "images_per_sec_per_worker"}``."""
    import time

    order = np.random.default_rng(seed).permutation(len(folder))
    order = np.tile(order, -(-num_batches * batch_size // len(folder)))[:num_batches * batch_size]
    t0 = time.perf_counter()
    it = batches(folder, order, np.arange(len(order)), batch_size, seed=seed, workers=workers)
    for _ in range(num_batches):
        next(it)
    ips = num_batches * batch_size / (time.perf_counter() - t0)
    return {"workers": workers, "images_per_sec": ips,
            "images_per_sec_per_worker": ips / max(workers, 1)}
