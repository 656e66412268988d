"""Measures the image-folder loader (grain workers decoding JPEGs, ResNet train preprocessing)
on a generated folder of ImageNet-sized JPEGs, or on --dir; prints one line per worker count.

    python scripts/bench_loader.py [--dir=DIR] [--workers=0,1,2] [--batch=64] [--batches=30] \
        [--out=docs/results/bench_loader_cpu.md]
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxsparse.data import imagefolder  # noqa: E402
from jaxsparse.training.summary import environment  # noqa: E402


def make_jpegs(root: str, n: int = 256, size=(500, 375)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(4):
            os.makedirs(os.path.join(root, split, f"c{c}"), exist_ok=True)
        for i in range(n if split == "train" else 4):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(img).save(os.path.join(root, split, f"c{i % 4}", f"{i}.jpg"),
                                      quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--out", default="", help="also write the lines to this file")
    a = p.parse_args()
    lines = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory() as tmp:
        root = a.dir or tmp
        if not a.dir:
            make_jpegs(root)
        train, _ = imagefolder.load_image_folder(root)
        env = environment()
        say(f"image-folder loader, {env['host_cpu']} ({env['host_cpu_count']} cores), "
              f"{len(train)} training JPEGs {'in ' + a.dir if a.dir else '(500x375, made here)'}"
              f", 224 px random-resized crop + flip, batch {a.batch}, {a.batches} batches timed "
              f"from the loader's start")
        for w in (int(x) for x in a.workers.split(",")):
            r = imagefolder.measure_loader(train, a.batch, w, a.batches)
            say(f"- workers {w}: {r['images_per_sec']:.0f} images/s "
                f"({r['images_per_sec_per_worker']:.0f} per worker)")
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# Image-folder loader throughput\n\n`python scripts/bench_loader.py "
                    f"{' '.join(sys.argv[1:])}`, jax {env['jax']}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
