"""The DiT part of the report: training curves from train_log.csv, and generated samples next to real images of
the same person and walking condition (withheld / unseen pairs marked)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from microdoppler_finetune.report.html import (
    DONE,
    NOT_RUN,
    PARTIAL,
    Raw,
    Section,
    esc,
    figure,
    fmt,
    kv_list,
    not_run,
    note,
)
from microdoppler_finetune.report.images import file_uri, line_plot, strip_uri
from microdoppler_finetune.report.readers import (
    ManifestView,
    dig,
    latest_rows_by_step,
    natural_key,
    number,
    read_csv,
    read_json,
    read_yaml,
    series,
)

PER_ROW = 6  # images per side of a sample comparison row
MAX_PAIRS = 40  # person x condition rows shown (unseen pairs first)
THUMB = 64


def checkpoint_steps(run_dir: Path) -> list[int]:
    steps = []
    for path in (run_dir / "checkpoints").glob("*.pt"):
        if path.stem.isdigit():
            steps.append(int(path.stem))
    return sorted(steps)


def training_plot(rows: list[dict]) -> Optional[str]:
    train = [r for r in rows if r.get("event") == "train"]
    val = [r for r in rows if r.get("event") == "val"]
    loss_series = [{"label": "train loss", "x": series(train, "step", "train_loss")[0],
                    "y": series(train, "step", "train_loss")[1]}]
    if any(number(r.get("flow_loss")) is not None and r.get("flow_loss") != r.get("train_loss") for r in train):
        x, y = series(train, "step", "flow_loss")
        loss_series.append({"label": "flow (velocity) loss", "x": x, "y": y})
    val_series = []
    for key, label in (("val_loss", "val loss"), ("val_loss_ema", "val loss (EMA)")):
        x, y = series(val, "step", key)
        val_series.append({"label": label, "x": x, "y": y, "style": "dots"})
    lr_x, lr_y = series(train, "step", "lr")
    gn_x, gn_y = series(train, "step", "grad_norm")
    return line_plot([
        {"title": "training loss", "xlabel": "step", "logy": True, "series": loss_series},
        {"title": "validation loss (fixed noise and timesteps)", "xlabel": "step", "series": val_series},
        {"title": "learning rate and gradient norm", "xlabel": "step", "logy": True,
         "series": [{"label": "lr", "x": lr_x, "y": lr_y}, {"label": "grad norm", "x": gn_x, "y": gn_y}]},
    ])


def training_block(work_dir: Path) -> tuple[str, str, list]:
    run_dir = work_dir / "dit"
    rows = latest_rows_by_step(read_csv(run_dir / "train_log.csv"))
    config = read_yaml(run_dir / "config.yaml") or {}
    steps = checkpoint_steps(run_dir)
    if not rows and not steps:
        return not_run("DiT training", f"no train_log.csv or checkpoint under {run_dir} (train_conditional_dit.py "
                                       f"or the pipeline's dit stage)"), NOT_RUN, ["not run"]
    train = [r for r in rows if r.get("event") == "train"]
    val = [r for r in rows if r.get("event") == "val"]
    target = dig(config, "dit", "train", "steps")
    last_step = int(max(number(r.get("step")) or 0 for r in rows)) if rows else 0
    best = min((number(r.get("val_loss_ema")) for r in val if number(r.get("val_loss_ema")) is not None),
               default=None)
    speed = [number(r.get("steps_per_s")) for r in train[-5:] if number(r.get("steps_per_s")) is not None]
    skipped = number(train[-1].get("skipped_steps")) if train else None
    facts = [
        ("model", dig(config, "dit", "model", default="unknown")),
        ("steps", f"{last_step} logged of {target if target is not None else '?'}; checkpoints at "
                  f"{', '.join(str(s) for s in steps[-5:]) or 'none'}"),
        ("batch size / learning rate", f"{dig(config, 'dit', 'train', 'batch_size', default='?')} / "
                                       f"{fmt(dig(config, 'dit', 'train', 'learning_rate'))}"),
        ("precision", dig(config, "dit", "train", "precision", default="unknown")),
        ("fine-tuned from", dig(config, "dit", "finetune", "init_from") or "nothing (trained from scratch)"),
        ("best validation loss (EMA)", best),
        ("speed (last logs)", f"{fmt(sum(speed) / len(speed))} steps/s" if speed else "–"),
        ("non-finite steps skipped", int(skipped) if skipped is not None else "–"),
        ("run folder", str(run_dir)),
    ]
    body = kv_list(facts)
    plot = training_plot(rows)
    body += figure(plot, "DiT training (train_log.csv): loss, validation loss, learning rate and gradient norm") \
        if plot else note("train_log.csv has no logged step yet.")
    grids = sorted((run_dir / "samples").glob("grid_*.jpg"), key=natural_key)
    if grids:
        body += figure(file_uri(grids[-1]), f"Samples drawn during training ({grids[-1].name})", width=420)
    finished = target is not None and last_step >= int(target)
    headline = [f"{facts[0][1]}, step {last_step} of {target}, best EMA validation loss {fmt(best)}"]
    return body, DONE if finished else PARTIAL, headline


def _pair_key(entry: dict) -> tuple:
    return entry.get("person") or "", entry.get("condition")


def sample_pairs(info: dict, samples_dir: Path, view: ManifestView) -> list[dict]:
    """One row per (person, condition) in generation_info.json: generated files, real files of the same pair."""
    groups: dict = {}
    for entry in info.get("files") or []:
        groups.setdefault(_pair_key(entry), []).append(entry)
    withheld = view.withheld_pairs()
    pairs = []
    for (person, condition), entries in groups.items():
        seen = {e.get("seen_in_training") for e in entries}
        role = withheld.get((person, condition))
        real_rows = view.rows_of(person, condition, ("train",))
        real_from = "train"
        if not real_rows:  # a withheld pair: its real images are only in the test (or val) split
            real_rows = view.rows_of(person, condition, ("test", "val"))
            real_from = role or "test/val"
        real_rows = _spread(real_rows, PER_ROW)
        real_paths = [p for p in (view.image_path(r) for r in real_rows) if p is not None and p.is_file()]
        pairs.append({
            "person": person, "condition": condition, "count": len(entries),
            "unseen": False in seen or role is not None, "withheld": role,
            "generated": [samples_dir / e["file"] for e in entries[:PER_ROW]],
            "real": real_paths, "real_from": real_from,
        })
    pairs.sort(key=lambda p: (not p["unseen"], natural_key(p["person"]), natural_key(p["condition"] or "")))
    return pairs


def _spread(rows: list, k: int) -> list:
    """k rows spread over the list (different recordings rather than k neighbouring frames)."""
    if len(rows) <= k:
        return rows
    step = len(rows) / k
    return [rows[int(i * step)] for i in range(k)]


def pairs_table(pairs: list[dict]) -> str:
    lines = []
    for pair in pairs[:MAX_PAIRS]:
        generated = strip_uri(pair["generated"], THUMB)
        real = strip_uri(pair["real"], THUMB)
        label = esc(pair["person"]) + (f"<br><small>{esc(pair['condition'])}</small>" if pair["condition"] else
                                       "<br><small>condition-free</small>")
        if pair["unseen"]:
            why = f"withheld ({pair['withheld']})" if pair["withheld"] else "not in training"
            label += f"<br><span class=\"tag\">unseen pair: {esc(why)}</span>"
        real_cell = (f"<img src=\"{real}\" alt=\"real {esc(pair['person'])}\"><small>{len(pair['real'])} real, "
                     f"{esc(pair['real_from'])} split</small>") if real else "<small>no real image found</small>"
        gen_cell = (f"<img src=\"{generated}\" alt=\"generated {esc(pair['person'])}\"><small>"
                    f"{min(pair['count'], PER_ROW)} of {pair['count']} generated</small>") if generated else \
            "<small>generated files missing</small>"
        klass = " class=\"unseen\"" if pair["unseen"] else ""
        lines.append(f"<tr{klass}><td>{label}</td><td>{real_cell}</td><td>{gen_cell}</td></tr>")
    more = (f"<p class=\"note info\">{len(pairs) - MAX_PAIRS} more person × condition pairs are in the samples "
            f"folder.</p>") if len(pairs) > MAX_PAIRS else ""
    return Raw("<div class=\"scroll\"><table class=\"pairs\"><thead><tr><th>person / condition</th><th>real</th>"
               "<th>generated</th></tr></thead><tbody>" + "".join(lines) + "</tbody></table></div>" + more)


def samples_block(work_dir: Path, dataset_dir: Path) -> tuple[str, str, list]:
    samples_dir = work_dir / "samples"
    info = read_json(samples_dir / "generation_info.json")
    if not isinstance(info, dict):
        return not_run("sampling", f"no generation_info.json in {samples_dir} (sample_dit.py or the pipeline's "
                                   f"sample stage)"), NOT_RUN, ["not run"]
    sampler = info.get("sampler") or {}
    files = info.get("files") or []
    unseen = sum(1 for f in files if f.get("seen_in_training") is False)
    facts = [
        ("images", f"{len(files)} ({info.get('per_person')} per person"
                   f"{' and condition' if info.get('conditions_used') else ''}); {unseen} of unseen pairs"),
        ("checkpoint", f"{Path(str(info.get('checkpoint', ''))).name} (step {info.get('checkpoint_step')}, "
                       f"{info.get('weights')} weights)"),
        ("sampler", f"{sampler.get('sampler')}, {sampler.get('num_sampling_steps')} grid points "
                    f"({sampler.get('ode_steps')} steps), guidance {fmt(sampler.get('cfg_scale'))} from "
                    f"t ≥ {fmt(sampler.get('cfg_interval_start'))}, shift {fmt(sampler.get('shift'))}, seed "
                    f"{sampler.get('seed')}"),
        ("conditions", "each image conditioned on its walking condition" if info.get("conditions_used") else
         "condition-free (null condition)" if info.get("null_condition") else "model without conditions"),
        ("time", f"{fmt(info.get('seconds'))} s ({fmt(info.get('seconds_per_image'))} s per image on "
                 f"{info.get('device')})"),
        ("folder", str(samples_dir)),
    ]
    view = ManifestView(dataset_dir)
    pairs = sample_pairs(info, samples_dir, view)
    body = kv_list(facts)
    body += note("Each row: real images of one person (and walking condition) beside images generated for the same "
                 "person (and condition). Highlighted rows are pairs the DiT never saw in training (withheld "
                 "person × condition pairs): their real images come from the split they were held out to.")
    body += pairs_table(pairs)
    headline = [f"{len(files)} images for {len(pairs)} person/condition pairs ({unseen} images of unseen pairs), "
                f"{fmt(info.get('seconds_per_image'))} s per image"]
    return body, DONE, headline


def build(work_dir: Path, dataset_dir: Path) -> tuple[Section, Section]:
    work_dir = Path(work_dir)
    train_body, train_status, train_headline = training_block(work_dir)
    sample_body, sample_status, sample_headline = samples_block(work_dir, dataset_dir)
    return (Section("dit", "DiT training", train_status, train_body, train_headline),
            Section("samples", "Generated samples", sample_status, sample_body, sample_headline))
