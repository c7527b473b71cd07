"""The one line each long step prints when it ends: what it did, its headline numbers, where its outputs are.

The step scripts print these instead of a JSON dump (the full summaries stay in the JSON files they write), so a
notebook cell or a terminal ends with one readable line naming the folder to look in:

    step2 done: vavae, dinov2 ready; index /kaggle/working/pretrained/pretrained_index.json
    step5 done (metrics, stats, export, cache) in 57.1 s: val PSNR 22.91 dB, SSIM 0.697; ...; outputs: ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from microdoppler_finetune.report.html import fmt
from microdoppler_finetune.report.readers import read_json


def step2_line(ready: Mapping, requested: Sequence[str], index_path, ok: bool) -> str:
    names = ", ".join(ready) or "nothing"
    if ok:
        return f"step2 done: {names} ready; index {index_path}"
    return (f"step2 stopped: files missing (listed above); ready: {names} of {', '.join(requested)}; index "
            f"{index_path}")


def step3_line(manifest_path) -> str:
    folder = Path(manifest_path).parent
    summary = read_json(folder / "split_summary.json") or {}
    counts = summary.get("counts") or {}
    labels = read_json(folder / "user_labels.json") or {}
    people = len(labels.get("person_names") or []) or "?"
    split = " / ".join(f"{s} {counts[s]}" for s in ("train", "val", "test") if s in counts)
    return (f"step3 done: {people} people, {split or 'split'} images; outputs in {folder} (manifest.csv, "
            f"problems.csv, split_summary.txt)")


def step5_line(summary: Mapping) -> str:
    splits = (summary.get("metrics") or {}).get("summary") or {}
    scores = "; ".join(f"{split} PSNR {fmt(v.get('psnr'))} dB, SSIM {fmt(v.get('ssim'), 3)}"
                       + (f", LPIPS {fmt(v['lpips'], 3)}" if "lpips" in v else "") for split, v in splits.items())
    outputs = [summary.get("validation_dir"), (summary.get("export") or {}).get("export"),
               (summary.get("cache") or {}).get("latent_cache")]
    parts = ", ".join(summary.get("parts") or [])
    return (f"step5 done ({parts}) for {summary.get('name')} in {fmt(summary.get('seconds'))} s"
            f"{': ' + scores if scores else ''}; outputs: {', '.join(str(o) for o in outputs if o)}")


def dit_line(result: Mapping) -> str:
    status = result.get("status")
    what = "finished" if status == "finished" else f"stopped ({status}): rerun the same command to continue"
    return (f"DiT training {what} at step {result.get('step')}, best EMA validation loss "
            f"{fmt(result.get('best_val_loss'))}; checkpoints in {Path(str(result.get('run_dir'))) / 'checkpoints'}"
            + (f", EMA model in {result['pretrained']}" if result.get("pretrained") else ""))


def sample_line(info: Mapping, out_dir) -> str:
    files = info.get("files")
    count = len(files) if isinstance(files, list) else files
    unseen = sum(1 for f in files if f.get("seen_in_training") is False) if isinstance(files, list) else 0
    return (f"sampling done: {count} images ({fmt(info.get('seconds_per_image'))} s each"
            + (f", {unseen} of unseen person x condition pairs" if unseen else "")
            + f") from step {info.get('checkpoint_step')} in {out_dir} (generation_info.json, __grid_by_person.jpg)")


def step6_line(summary: Mapping, out_dir) -> str:
    accuracy = summary.get("identification_test_accuracy") or {}
    shown = "; ".join(f"{k} {fmt(v, 3)}" for k, v in list(accuracy.items())[:6])
    ident = summary.get("generated_identified_by_real_classifier") or {}
    extra = (f"; generated images identified {fmt(ident.get('accuracy'), 3)} (chance {fmt(ident.get('chance'), 3)})"
             if ident else "")
    return (f"step6 done: test accuracy {shown or 'not run'}{extra}; tables in {Path(out_dir)} "
            f"(identification/identification_results.md, generation/generation_metrics.md)")
