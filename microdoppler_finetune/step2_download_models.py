"""Step 2: get the pretrained weights (released VA-VAE, DINOv2, optionally LightningDiT-XL), verified and indexed.

    python microdoppler_finetune/step2_download_models.py --kaggle
    python microdoppler_finetune/step2_download_models.py --what vavae,dinov2,lightningdit-xl --local_dir ~/weights

Looks for the files in --local_dir folders, the Hugging Face cache and (with --kaggle) the notebook's inputs
before downloading them into the Hugging Face cache; converts the pickled VA-VAE release (discriminator included)
to safetensors once; writes pretrained_index.json, which later steps read through
microdoppler_finetune.weights.locate.find_pretrained. Offline and with files missing, it stops within seconds and
says how to provide them (exit code 2).
"""
from __future__ import annotations

import argparse
import sys

from microdoppler_finetune.environment import running_on_kaggle
from microdoppler_finetune.report.lines import step2_line
from microdoppler_finetune.utils.cli import run_main
from microdoppler_finetune.utils.hub import HUB_PROBE_TIMEOUT_S
from microdoppler_finetune.weights.download import download_pretrained, missing_files_message
from microdoppler_finetune.weights.locate import default_cache_dir
from microdoppler_finetune.weights.registry import ALIASES, DEFAULT_WHAT, REGISTRY


def parse_args(argv=None) -> argparse.Namespace:
    items = ", ".join(f"{k} ({v.description})" for k, v in REGISTRY.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaggle", action="store_true",
                        help="Kaggle notebook: cache in /kaggle/working/pretrained and search /kaggle/input.")
    parser.add_argument("--what", default=",".join(DEFAULT_WHAT),
                        help=f"Comma-separated items. Known: {items}. Aliases: "
                             f"{', '.join(f'{a}={b}' for a, b in ALIASES.items())}. Default: %(default)s.")
    parser.add_argument("--cache_dir", default=None,
                        help="Where pretrained_index.json and the VA-VAE conversion are written; downloads go to "
                             "the Hugging Face cache ($HF_HOME/hub). Default: $MDF_PRETRAINED_DIR, "
                             f"/kaggle/working/pretrained with --kaggle, else {default_cache_dir(False)}.")
    parser.add_argument("--local_dir", action="append", default=[],
                        help="Folder (searched recursively) or file holding already downloaded weights. Repeatable.")
    parser.add_argument("--trust_pickle", action="store_true",
                        help="Allow unpickling the released VA-VAE .pt for conversion even if its sha256 could not "
                             "be checked against the Hub. Unpickling runs code from the file: trusted copies only.")
    parser.add_argument("--timeout", type=float, default=HUB_PROBE_TIMEOUT_S,
                        help="Seconds to wait for the Hugging Face Hub before treating the machine as offline.")
    parser.add_argument("--rehash", action="store_true",
                        help="Re-compute every sha256 even when size and modification time are unchanged.")
    parser.add_argument("--remove_pickled", action="store_true",
                        help="Delete the downloaded VA-VAE .pt (from the Hugging Face cache) after its safetensors "
                             "conversion (saves 2 GB); copies from --local_dir or Kaggle inputs are never deleted.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    what = [w for w in args.what.split(",") if w.strip()]
    try:
        result = download_pretrained(what, cache_dir=args.cache_dir, kaggle=args.kaggle, local_dirs=args.local_dir,
                                     trust_pickle=args.trust_pickle, timeout=args.timeout, rehash=args.rehash,
                                     remove_pickled=args.remove_pickled)
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        # Verification failures, refused unpickling, download errors: each message says what to do.
        print(f"step2 failed: {exc}", file=sys.stderr)
        return 2
    for name, path in result.ready.items():
        print(f"  {name}: {path}")
    if not result.ok:
        print(missing_files_message(result, args.local_dir, args.kaggle or running_on_kaggle()), file=sys.stderr)
    print(step2_line(result.ready, what, result.index_path, result.ok), flush=True)
    return 0 if result.ok else 2


if __name__ == "__main__":
    sys.exit(run_main(main))
