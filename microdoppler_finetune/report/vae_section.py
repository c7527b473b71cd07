"""The VA-VAE part of the report: each fine-tuning stage (status, validation history, loss curves, adaptive weights
λ_vf / λ_adv, reconstruction grids) and step5's before/after metrics, reconstructions and latent map."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from microdoppler_finetune.report.html import (
    DONE,
    NOT_RUN,
    PARTIAL,
    Section,
    details,
    figure,
    fmt,
    kv_list,
    not_run,
    note,
    table,
)
from microdoppler_finetune.report.images import file_uri, line_plot
from microdoppler_finetune.report.readers import natural_key, number, read_csv, read_json

LAMBDAS = (("train_lambda_vf", "λ_vf"), ("train_lambda_adv", "λ_adv"))
HISTORY_COLUMNS = ("val_psnr", "val_loss", "val_lpips", "val_l1", "val_vf", "val_nll")
METRICS = ("psnr", "ssim", "lpips")


def stage_names(vae_dir: Path) -> list[str]:
    """The schedule's stage names (from a stage's resolved config.yaml), else the stage folders found."""
    found = sorted((p.parent.name for p in vae_dir.glob("*/stage_result.json")), key=natural_key)
    for name in found:
        config = vae_dir / name / "config.yaml"
        if config.is_file():
            text = config.read_text(errors="replace")
            block = re.search(r"^  stages:\n((?:  [- ] .*\n)+)", text, re.MULTILINE)
            if block:
                names = re.findall(r"^  - name: (\S+)", block.group(1), re.MULTILINE)
                if names:
                    return names + [n for n in found if n not in names]
    return found


def metric_rows(stage_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(stage_dir.glob("logs/version_*/metrics.csv"), key=lambda p: natural_key(p.parent.name)):
        rows.extend(read_csv(path))
    return rows


def lambda_table(rows: list[dict]) -> str:
    lines = []
    for column, label in LAMBDAS:
        values = [(number(r.get("train_ae_step") or r.get("step")), number(r.get(column))) for r in rows]
        values = [(s, v) for s, v in values if v is not None]
        if not values:
            continue
        ys = [v for _, v in values]
        lines.append([label, len(ys), ys[0], ys[-1], min(ys), max(ys)])
    gan = [number(r.get("train_ae_step") or r.get("step")) for r in rows if number(r.get("train_gan_active")) == 1.0]
    text = table(["adaptive weight", "logged steps", "first", "last", "min", "max"], lines,
                 caption="Adaptive weights (metrics.csv, every logged step)") if lines else ""
    if rows and "train_gan_active" in rows[0]:
        text += note(f"GAN term active from autoencoder step {fmt(gan[0])}." if gan else
                     "GAN term never active in this stage (disc_start not reached).")
    return text


def lambda_plot(rows: list[dict]) -> Optional[str]:
    """λ_vf / λ_adv and the training loss against the autoencoder step (drawn when the stage has no
    loss_curves.png yet)."""
    def xy(column):
        points = [(number(r.get("train_ae_step") or r.get("step")), number(r.get(column))) for r in rows]
        points = sorted((x, y) for x, y in points if x is not None and y is not None)
        return [p[0] for p in points], [p[1] for p in points]

    loss_x, loss_y = xy("train_loss")
    panels = [{"title": "training loss", "xlabel": "autoencoder step", "logy": True,
               "series": [{"label": "train_loss", "x": loss_x, "y": loss_y}]},
              {"title": "adaptive weights", "xlabel": "autoencoder step",
               "series": [{"label": label, "x": xy(c)[0], "y": xy(c)[1]} for c, label in LAMBDAS]}]
    return line_plot(panels)


def history_table(history: list) -> str:
    if not history:
        return note("No validation epoch finished yet.")
    columns = [c for c in HISTORY_COLUMNS if any(c in h for h in history)]
    rows = [[h.get("epoch"), h.get("ae_steps"), *[h.get(c) for c in columns]] for h in history]
    return table(["epoch", "autoencoder steps", *columns], rows, caption="Validation after each epoch")


def stage_block(vae_dir: Path, name: str) -> tuple[str, Optional[dict]]:
    folder = vae_dir / name
    result = read_json(folder / "stage_result.json")
    if not isinstance(result, dict):
        return f"<h3>{name}</h3>" + not_run(f"VA-VAE {name}", "no stage_result.json yet"), None
    config = result.get("stage_config") or {}
    facts = [
        ("status", result.get("status")),
        ("epochs", f"{result.get('epochs_done')} of {config.get('epochs', '?')}"),
        ("autoencoder steps", result.get("ae_steps")),
        ("chosen checkpoint", f"{Path(result.get('chosen_checkpoint') or '–').name} "
                              f"({result.get('monitor')} = {fmt(result.get('chosen_metric'))})"),
        ("stage settings", "; ".join(f"{k}: {fmt(v)}" for k, v in config.items() if k != "name")),
        ("started from", str(result.get("init_from")) + (f" ({result['init_checkpoint']})"
                                                         if result.get("init_checkpoint") else "")),
        ("alignment target", result.get("alignment_target")),
        ("perceptual loss", result.get("perceptual")),
        ("hardware", result.get("hardware")),
        ("non-finite steps skipped", result.get("nonfinite_skipped_total")),
    ]
    if result.get("amp_skipped_steps"):
        facts.append(("fp16 steps skipped by the grad scaler", result.get("amp_skipped_steps")))
    if result.get("message"):
        facts.append(("message", result.get("message")))
    body = f"<h3>{name} <small>({result.get('status')})</small></h3>" + kv_list(facts)
    body += history_table(result.get("val_history") or [])
    rows = metric_rows(folder)
    body += lambda_table(rows)
    curves = folder / "loss_curves.png"
    if curves.is_file():
        body += figure(file_uri(curves), f"{name}: every logged loss term and adaptive weight (loss_curves.png)")
    elif rows:
        body += figure(lambda_plot(rows), f"{name}: training loss and adaptive weights (from metrics.csv)")
    grids = sorted((folder / "reconstructions").glob("epoch_*.png"), key=natural_key)
    if grids:
        body += figure(file_uri(grids[-1]), f"{name}: validation images (top) and reconstructions (bottom), "
                                            f"{grids[-1].stem.replace('_', ' ')}")
        if len(grids) > 1:
            body += details(f"first epoch ({grids[0].stem})", figure(file_uri(grids[0]), grids[0].name))
    return body, result


def validation_runs(work_dir: Path) -> list[tuple[str, dict, Path]]:
    runs = []
    for path in (work_dir / "validation").glob("*/metrics.json"):
        data = read_json(path)
        if isinstance(data, dict):
            runs.append((path.parent.name, data, path.parent))
    runs.sort(key=lambda r: (r[0] != "before_finetuning", r[2].stat().st_mtime))
    return runs


def comparison_table(runs: list) -> str:
    splits = []
    for _, data, _ in runs:
        for split in (data.get("splits") or {}):
            if split not in splits:
                splits.append(split)
    rows = []
    for split in splits:
        for metric in METRICS:
            cells = []
            for _, data, _ in runs:
                overall = ((data.get("splits") or {}).get(split) or {}).get("overall") or {}
                if metric == "lpips" and metric not in overall:
                    cells.append("unavailable" if data.get("lpips_available") is False else "–")
                else:
                    cells.append(overall.get(metric))
            rows.append([split, metric.upper(), *cells])
    names = [n.replace("_", " ") for n, _, _ in runs]
    return table(["split", "metric", *names], rows, caption="Reconstruction of the validation and test splits "
                                                            "(posterior mode; PSNR in dB on uint8 images)")


def latent_block(name: str, folder: Path) -> str:
    body = ""
    stats = read_json(folder / "latent_statistics.json")
    separability = stats.get("person_separability") if isinstance(stats, dict) else None
    if isinstance(separability, dict):
        rows = [[kind, v.get("accuracy"), v.get("chance"), v.get("k")] for kind, v in separability.items()
                if isinstance(v, dict)]
        body += table(["latents", "k-NN accuracy (train → val)", "chance", "k"], rows,
                      caption=f"{name}: how well the latents separate people")
    if (folder / "latent_map.png").is_file():
        body += figure(file_uri(folder / "latent_map.png"), f"{name}: latent map (t-SNE of posterior means; "
                                                            f"latent_map.png)")
    return body


def build(work_dir: Path) -> Section:
    work_dir = Path(work_dir)
    vae_dir = work_dir / "vae"
    names = stage_names(vae_dir)
    body, headline, results = "", [], []
    if not names:
        body += not_run("VA-VAE fine-tuning", f"no stage folder under {vae_dir} (step4 or the pipeline's vae stage)")
    for name in names:
        block, result = stage_block(vae_dir, name)
        body += block
        results.append(result)
        if result:
            headline.append(f"{name}: {result.get('status')}, chosen {result.get('monitor')} "
                            f"{fmt(result.get('chosen_metric'))}")
        else:
            headline.append(f"{name}: not run")
    body += "<h3>Before and after fine-tuning (step5)</h3>"
    runs = validation_runs(work_dir)
    if runs:
        body += comparison_table(runs)
        for name, data, folder in runs:
            lpips = data.get("lpips")
            if lpips and data.get("lpips_available") is False:
                body += note(f"{name}: LPIPS {lpips}", "warn")
            if (folder / "reconstruction_results.png").is_file():
                body += figure(file_uri(folder / "reconstruction_results.png"),
                               f"{name}: reconstructions (reconstruction_results.png)")
            body += latent_block(name, folder)
        for name, data, _ in runs:
            for split, values in (data.get("splits") or {}).items():
                overall = values.get("overall") or {}
                headline.append(f"{name} {split}: PSNR {fmt(overall.get('psnr'))} dB, SSIM {fmt(overall.get('ssim'))}"
                                + (f", LPIPS {fmt(overall['lpips'])}" if "lpips" in overall else ""))
    else:
        body += not_run("validation and export", f"no metrics.json under {work_dir / 'validation'} (step5)")
    export = work_dir / "export" / "vavae_encoder_for_dit"
    if export.is_dir():
        body += note(f"Exported encoder for the DiT: {export}")
    else:
        body += note("The encoder for the DiT was not exported yet (step5 --export).", "warn")
    finished = [r for r in results if r and r.get("status") == "finished"]
    if not names:
        status = NOT_RUN
    elif len(finished) == len(names) and runs and export.is_dir():
        status = DONE
    else:
        status = PARTIAL
    return Section("vae", "VA-VAE", status, body, headline or ["not run"])
