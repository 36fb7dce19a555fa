"""Export a trained student to TorchScript and ONNX, check parity, write a model card.

    python jobs/export.py --checkpoint <run_dir>/student/final --out DIR

DIR gets student.pt (TorchScript), student.onnx, MODEL_CARD.md and model_card.json.
"""
from __future__ import annotations

import argparse
import json

from sskd_ray.deploy.export import export_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained model folder, e.g. <run_dir>/student/final")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    card = export_model(args.checkpoint, args.out)
    print(f"wrote {args.out}/student.pt, student.onnx, MODEL_CARD.md")
    print("parity (max |exported - eager|, batch", card["parity"]["batch"], "):", json.dumps(
        {k: card["parity"][k] for k in ("torchscript", "onnx")}), "->", "OK" if card["parity"]["ok"] else "FAILED")
    if not card["parity"]["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
