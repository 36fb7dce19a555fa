"""Convert Cityscapes or ADE20K instance annotations to COCO, with seeded labeled-split files.

    python jobs/convert_dataset.py cityscapes --root <root with gtFine/ and leftImg8bit/> --split train|val --out FILE.json
    python jobs/convert_dataset.py ade20k --root <root with images/ and annotations_instance/> --split training|validation --out FILE.json

For a training split, split files listing 5 / 10 / 20 / 30 % of the images (seeded, one file name
per line, as Guided Distillation's lists) go to <out dir>/splits/; point `data.split_file` at one.
"""
from __future__ import annotations

import argparse

from sskd_ray import storage
from sskd_ray.data.convert.ade20k import convert_ade20k
from sskd_ray.data.convert.cityscapes import convert_cityscapes
from sskd_ray.data.splits import split_by_fraction, write_split_file

FRACTIONS = (0.05, 0.10, 0.20, 0.30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("cityscapes", "ade20k"))
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    convert = convert_cityscapes if args.dataset == "cityscapes" else convert_ade20k
    summary = convert(args.root, args.split, args.out)
    print(f"{args.out}: {summary['images']} images, {summary['annotations']} instances, {len(summary['skipped'])} skipped")
    for item in summary["skipped"][:10]:
        print(f"  skipped {item['file']}: {item['reason']}")
    if args.split in ("train", "training"):
        images = storage.read_json(args.out)["images"]
        for fraction in FRACTIONS:
            labeled, _ = split_by_fraction([im["id"] for im in images], fraction, args.seed)
            path = write_split_file(storage.join(storage.parent(args.out), "splits", f"perc_{round(fraction * 100)}.txt"),
                                    images, labeled)
            print(f"  {path}: {len(labeled)} labeled images")


if __name__ == "__main__":
    main()
