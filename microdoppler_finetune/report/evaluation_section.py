"""The evaluation part of the report: identification with and without generated data (table, data-size curve,
confusion matrices, per-person accuracy) and the generation metrics (FID/KID, precision/recall, identifiability,
classification accuracy score, memorisation, per person)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from microdoppler_finetune.report.html import (
    DONE,
    NOT_RUN,
    PARTIAL,
    Section,
    bullet_list,
    code,
    details,
    figure,
    fmt,
    heat_table,
    kv_list,
    not_run,
    note,
    table,
)
from microdoppler_finetune.report.images import line_plot
from microdoppler_finetune.report.readers import natural_key, read_json

DISTRIBUTION = ("fid", "kid", "precision", "recall", "density", "coverage", "generated_images")


def value_of(cell) -> Optional[float]:
    """A number, or the mean of a {'mean', 'std', 'n'} cell (multi-seed rows)."""
    if isinstance(cell, Mapping):
        cell = cell.get("mean")
    return float(cell) if isinstance(cell, (int, float)) and not isinstance(cell, bool) else None


def identification_table(rows: list) -> str:
    lines = []
    for row in rows:
        target = row.get("target_accuracy")
        lines.append([row.get("variant", ""), fmt((value_of(row.get("real_fraction")) or 0) * 100) + " %",
                      f"{row.get('real_images', '–')} ({row.get('real_recordings', '–')})",
                      row.get("generated_images", 0), row.get("best_epoch"), fmt(row.get("val_accuracy")),
                      fmt(row.get("test_accuracy")),
                      f"{fmt(target)} ({row.get('target_test_images')})" if target is not None else "–"])
    return table(["variant", "real data", "real images (recordings)", "generated images", "best epoch",
                  "val accuracy", "test accuracy", "target accuracy"], lines,
                 caption="Person identification on the test split (the same images for every row)")


def data_size_plot(rows: list) -> Optional[str]:
    by_method: dict = {}
    for row in rows:
        if row.get("cross_condition"):
            continue
        x, y = value_of(row.get("real_fraction")), value_of(row.get("test_accuracy"))
        if x is not None and y is not None:
            by_method.setdefault(row.get("method", row.get("variant")), []).append((x * 100, y))
    if not any(len(points) > 1 for points in by_method.values()):
        return None
    panel = {"title": "test accuracy vs share of the real training recordings", "xlabel": "real data (%)",
             "ylabel": "test accuracy",
             "series": [{"label": m, "x": [p[0] for p in sorted(ps)], "y": [p[1] for p in sorted(ps)],
                         "style": "dots"} for m, ps in by_method.items()]}
    return line_plot([panel], width=6.0, height=3.4)


def per_group_table(rows: list, key: str, what: str, names: list) -> str:
    """Test accuracy per person (or condition) of the rows trained on all the real training data."""
    chosen = [r for r in rows if isinstance(r.get(key), Mapping)
              and value_of(r.get("real_fraction")) == 1.0 and not r.get("cross_condition")]
    if not chosen:
        return ""
    names = names or sorted({p for r in chosen for p in r[key]}, key=natural_key)
    lines = [[p, *[fmt(r[key].get(p)) for r in chosen]] for p in names]
    return table([what, *[r.get("variant", "") for r in chosen]], lines,
                 caption=f"Test accuracy per {what} (rows with all the real training data)")


def confusion_blocks(rows: list, people: list) -> str:
    out = ""
    for row in rows:
        matrix = row.get("confusion_matrix")
        if not matrix or value_of(row.get("real_fraction")) != 1.0 or row.get("cross_condition"):
            continue
        names = people if len(people) == len(matrix) else [str(i) for i in range(len(matrix))]
        block = heat_table(matrix, names, names, corner="true \\ predicted")
        out += details(f"Confusion matrix: {row.get('variant')} (rows: true person; shade: share of the row)",
                       block, open_=not out)
    return out


def identification_block(work_dir: Path) -> tuple[str, list, bool]:
    results = read_json(work_dir / "evaluation" / "identification" / "identification_results.json")
    if not isinstance(results, dict) or not results.get("rows"):
        return not_run("identification experiments", "no identification_results.json (step6)"), ["not run"], False
    rows, people = results["rows"], list(results.get("person_names") or [])
    config, test_set = results.get("config") or {}, results.get("test_set") or {}
    body = kv_list([
        ("test set", f"{test_set.get('images')} images of the test split (fingerprint {test_set.get('fingerprint')})"),
        ("classifier", f"{config.get('preset')} at {config.get('image_size')} px, at most {config.get('epochs')} "
                       f"epochs (best epoch chosen on validation), seed {config.get('seed')}"),
        ("people", f"{results.get('num_persons')} (chance {fmt(1 / max(int(results.get('num_persons') or 1), 1))})"),
        ("generated folder", results.get("generated_dir") or "none"),
    ])
    body += identification_table(rows)
    plot = data_size_plot(rows)
    if plot:
        body += figure(plot, "Test accuracy over the share of real training recordings, per method")
    if any(r.get("cross_condition") for r in rows):
        body += note("Cross-condition rows A->B train and validate on condition A's recordings only; target accuracy "
                     "is on condition B's test images; A+generated-B adds the generated images of condition B.")
    if results.get("notes"):
        body += "<p>Notes:</p>" + bullet_list(results["notes"])
    conditions = list(results.get("condition_names") or [])
    if len(conditions) > 1:
        body += per_group_table(rows, "per_condition_test_accuracy", "condition", conditions)
    body += per_group_table(rows, "per_person_test_accuracy", "person", people)
    body += confusion_blocks(rows, people)
    body += details("Commands that reproduce each row",
                    bullet_list([f"{r.get('variant')}: {r.get('command', '')}" for r in rows]))
    headline = [f"{r.get('variant')}: test accuracy {fmt(r.get('test_accuracy'))}" for r in rows]
    return body, headline, True


def distribution_row(label: str, metrics: Optional[Mapping]) -> Optional[list]:
    if not isinstance(metrics, Mapping):
        return None
    if "fid" not in metrics:
        return [label, metrics.get("skipped", "–"), *[""] * (len(DISTRIBUTION) - 1)]
    return [label, *[metrics.get(k) for k in DISTRIBUTION]]


def identifiability_lines(metrics: dict) -> list[tuple[str, str]]:
    lines = []
    ident = metrics.get("real_classifier_on_generated")
    if isinstance(ident, Mapping):
        lines.append(("identifiability (real-trained classifier names the person of each generated image)",
                      f"{fmt(ident.get('accuracy'))} on {ident.get('images')} images; "
                      f"chance {fmt(ident.get('chance'))}; "
                      f"the same classifier on real test images {fmt(ident.get('real_test_accuracy'))}"))
    trip = metrics.get("reconstruction_classifier_on_generated")
    if isinstance(trip, Mapping):
        lines.append(("identifiability behind the VA-VAE (classifier trained on round-tripped real images)",
                      f"{fmt(trip.get('accuracy'))}; ceiling on round-tripped real test images "
                      f"{fmt(trip.get('real_test_accuracy'))}"))
    cas = metrics.get("classification_accuracy_score")
    if isinstance(cas, Mapping):
        lines.append(("classification accuracy score (train on generated only, test on real)",
                      f"{fmt(cas.get('test_accuracy'))} on {cas.get('test_images')} test images"))
    fid = metrics.get("inception_fid")
    if isinstance(fid, Mapping):
        lines.append(("Inception FID", fmt(fid.get("value")) if fid.get("value") is not None else
                      str(fid.get("status", "not computed"))))
    memo = (metrics.get("overall") or {}).get("memorisation")
    if isinstance(memo, Mapping):
        shown = {k: v for k, v in memo.items() if not isinstance(v, (list, Mapping))}
        lines.append(("memorisation (nearest training image in feature space)",
                      "; ".join(f"{k}: {fmt(v)}" for k, v in shown.items()) or "see generation_metrics.json"))
    return lines


def per_person_generation(metrics: dict) -> str:
    per_person = metrics.get("per_person") or {}
    if not per_person:
        return ""
    ident = (metrics.get("real_classifier_on_generated") or {}).get("per_person") or {}
    lines = []
    for name in sorted(per_person, key=natural_key):
        entry = per_person[name] or {}
        generated = entry.get("generated") or {}
        baseline = entry.get("real_val_baseline") or {}
        lines.append([name, generated.get("fid"), baseline.get("fid"), generated.get("precision"),
                      generated.get("recall"), ident.get(name), entry.get("cas_test_accuracy")])
    return details("Per person", table(["person", "FID (generated)", "FID (real val baseline)", "precision",
                                        "recall", "identifiability", "CAS test accuracy"], lines), open_=True)


def generation_block(work_dir: Path) -> tuple[str, list, bool]:
    metrics = read_json(work_dir / "evaluation" / "generation" / "generation_metrics.json")
    if not isinstance(metrics, dict):
        return not_run("generation metrics", "no generation_metrics.json (step6 with --generated)"), ["not run"], False
    overall = metrics.get("overall") or {}
    rows = [r for r in (distribution_row("generated", overall.get("generated")),
                        distribution_row("generated, as many as the baseline",
                                         overall.get("generated_at_baseline_size")),
                        distribution_row("real val (baseline)", overall.get("real_val_baseline"))) if r]
    body = kv_list([("feature space", metrics.get("feature_space", "–")),
                    ("reference / baseline", f"{metrics.get('reference')} / {metrics.get('baseline')}"),
                    ("generated images", metrics.get("generated_images"))])
    body += table(["set", "FID", "KID", "precision", "recall", "density", "coverage", "images"], rows,
                  caption="Distribution metrics in the classifier's feature space (lower FID/KID is better)")
    body += kv_list(identifiability_lines(metrics))
    if metrics.get("people_without_generated_images"):
        body += note("People without generated images: " + ", ".join(metrics["people_without_generated_images"]),
                     "warn")
    body += per_person_generation(metrics)
    if metrics.get("command"):
        body += details("Command", f"<p>{code(metrics['command'])}</p>")
    ident = metrics.get("real_classifier_on_generated") or {}
    generated = overall.get("generated") or {}
    headline = [f"FID {fmt(generated.get('fid'))} (real val baseline "
                f"{fmt((overall.get('real_val_baseline') or {}).get('fid'))}); identifiability "
                f"{fmt(ident.get('accuracy'))} (chance {fmt(ident.get('chance'))})"]
    return body, headline, True


def build(work_dir: Path) -> Section:
    work_dir = Path(work_dir)
    ident_body, ident_headline, ident_done = identification_block(work_dir)
    gen_body, gen_headline, gen_done = generation_block(work_dir)
    body = "<h3>Does generated data help person identification?</h3>" + ident_body
    body += "<h3>How good are the generated images?</h3>" + gen_body
    status = DONE if ident_done and gen_done else PARTIAL if ident_done or gen_done else NOT_RUN
    return Section("evaluation", "Evaluation", status, body, ident_headline + gen_headline)
