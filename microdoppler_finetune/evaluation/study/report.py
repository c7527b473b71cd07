"""The study's results: results.json (every row as mean ± std over seeds, the choices made on validation, the
goals reached or not), results.md (the same as tables, each row with the command that reproduces it) and the
plots (accuracy against guidance, amount and filter; per condition; per person; across conditions)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from microdoppler_finetune.evaluation.study.stats import compare, format_row, summarise
from microdoppler_finetune.utils.files import atomic_write_json, atomic_write_text
from microdoppler_finetune.utils.plain import to_plain

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
GOAL_WITHHELD_GAIN = 0.10  # real + generated over real only, on the withheld pairs' test images
GOAL_CAS_RATIO = 0.8  # classification accuracy score / the real-trained classifier's accuracy


def cells_accuracy(cells: Dict[str, list], persons: Optional[Sequence[str]] = None,
                   conditions: Optional[Sequence[str]] = None) -> Optional[float]:
    """Accuracy over the "person|condition" cells of a scores() result, restricted to some people / conditions."""
    correct = total = 0
    for key, (ok, count) in cells.items():
        person, condition = key.split("|", 1)
        if (persons is None or person in persons) and (conditions is None or condition in conditions):
            correct, total = correct + ok, total + count
    return correct / total if total else None


def _over_seeds(runs: List[dict], part: str, pick=lambda s: s["accuracy"]) -> dict:
    return summarise([pick(r[part]) for r in runs if r.get(part) and r[part].get("images")])


def row_summary(name: str, runs: List[dict], data) -> dict:
    conditions = data.condition_names
    return {
        "name": name,
        "seeds": [r["spec"]["seed"] for r in runs],
        "real_images": runs[0]["real_images"], "generated_images": runs[0]["generated_images"],
        "test": _over_seeds(runs, "test"),
        "test_withheld": _over_seeds(runs, "test_withheld"),
        "test_not_withheld": _over_seeds(runs, "test_not_withheld"),
        "per_condition": {c: _over_seeds(runs, "test", lambda s, c=c: cells_accuracy(s["cells"], conditions=[c]))
                          for c in conditions},
        "per_person": {p: _over_seeds(runs, "test", lambda s, p=p: cells_accuracy(s["cells"], persons=[p]))
                       for p in data.person_names},
        "run_files": [f"runs/{_run_key(r)}.json" for r in runs],
    }


def _run_key(result: dict) -> str:
    from microdoppler_finetune.evaluation.study.runs import GeneratedSpec, RunSpec

    spec = dict(result["spec"])
    if spec.get("generated"):
        spec["generated"] = GeneratedSpec(**spec["generated"])
    if spec.get("train_conditions"):
        spec["train_conditions"] = tuple(spec["train_conditions"])
    return RunSpec(**spec).key()


def cross_matrix(cross: Dict[str, List[dict]], data) -> dict:
    """src -> dst accuracy over the test images of the people who have src training images (mean ± std)."""
    matrix = {}
    for source, runs in cross.items():
        people = sorted({data.entry(k)["person"] for k in data.subset("train", conditions=[source]).keys})
        matrix[source] = {dst: _over_seeds(runs, "test", lambda s, d=dst: cells_accuracy(s["cells"], people, [d]))
                          for dst in data.condition_names}
    return matrix


def goals(rows: Dict[str, dict], cas: Optional[dict], best_generated: str) -> dict:
    real, gen, aug = rows["real"], rows["real+generated"], rows["real+augmentation"]
    best = rows["real+generated+augmentation" if best_generated == "generated+augmentation" else "real+generated"]
    withheld_gain = gen["test_withheld"]["mean"] - real["test_withheld"]["mean"]
    overall = compare(best["test"], aug["test"])
    result = {
        "withheld_gain": {"goal": f"real + generated beats real only by {GOAL_WITHHELD_GAIN:.0%} or more on the "
                                  f"withheld pairs", "difference": withheld_gain,
                          "reached": bool(withheld_gain >= GOAL_WITHHELD_GAIN)},
        "overall_vs_augmentation": {"goal": "the best generated variant (chosen on validation) beats real + "
                                            "conventional augmentation by more than one standard deviation",
                                    "variant": best_generated, **overall,
                                    "reached": overall["verdict"] == "better"},
    }
    if cas is not None:
        ratio = cas["cas"]["mean"] / real["test_withheld"]["mean"] if real["test_withheld"]["mean"] else None
        result["classification_accuracy_score"] = {
            "goal": f"classification accuracy score at least {GOAL_CAS_RATIO:.0%} of the real-trained classifier's "
                    f"accuracy (on the withheld pairs' test images)", "ratio": ratio,
            "reached": bool(ratio is not None and ratio >= GOAL_CAS_RATIO)}
    return result


def results_markdown(results: dict) -> str:
    rows = results["rows"]
    lines = ["# Augmentation study: does generated data help person identification?", "",
             f"Work dir `{results['work_dir']}`; {len(results['seeds'])} seeds "
             f"({', '.join(map(str, results['seeds']))}) "
             f"per row; every knob chosen on validation, the test split used once. Withheld: "
             f"{', '.join(results['withheld']['conditions'])} of {', '.join(results['withheld']['test_people'])} "
             f"(test), of {', '.join(results['withheld']['val_people']) or '-'} (validation stand-ins).", "",
             "## Test rows (mean ± std over seeds)", "",
             "| row | all test images | withheld pairs | other test images | vs real | vs real + augmentation |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        vs_real = compare(row["test_withheld"], rows["real"]["test_withheld"])["verdict"] if name != "real" else ""
        vs_aug = (compare(row["test"], rows["real+augmentation"]["test"])["verdict"]
                  if name != "real+augmentation" else "")
        lines.append(f"| {name} | {format_row(row['test'])} | {format_row(row['test_withheld'])} | "
                     f"{format_row(row['test_not_withheld'])} | {vs_real} (withheld) | {vs_aug} (all) |")
    if results.get("classification_accuracy_score"):
        cas = results["classification_accuracy_score"]
        lines += ["", f"Classification accuracy score (trained on the generated unseen-pair images only, tested on the "
                      f"withheld pairs): {format_row(cas['cas'])}."]
    lines += ["", "## Goals", ""]
    for goal in results["goals"].values():
        lines.append(f"- {'REACHED' if goal['reached'] else 'NOT reached'}: {goal['goal']} "
                     f"({', '.join(f'{k} {v:.3f}' for k, v in goal.items() if isinstance(v, float))}).")
    lines += ["", "## Per condition (test, mean ± std)", "",
              "| row | " + " | ".join(results["condition_names"]) + " |",
              "|---|" + "---|" * len(results["condition_names"])]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(format_row(row["per_condition"][c])
                                                 for c in results["condition_names"]) + " |")
    if results.get("cross_condition"):
        names = results["condition_names"]
        lines += ["", "## Across conditions (real only: train on one condition, test on each; people with "
                      "training images of the source condition)", "", "| train \\ test | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for source, by_dst in results["cross_condition"].items():
            lines.append(f"| {source} | " + " | ".join(format_row(by_dst[d]) for d in names) + " |")
    lines += ["", "## Choices made on validation", ""]
    for group, curve in results["tuning"].items():
        cells = "; ".join(f"{c['label']}: {c['val']['mean']:.3f}"
                          + (f" / withheld {c['val_withheld']['mean']:.3f}" if c['val_withheld']['n'] else "")
                          for c in curve["candidates"])
        lines.append(f"- {group} (on {curve['chosen_by']}): **{curve['chosen']}** — {cells}")
    if results["choices"].get("filter_pass_rate"):
        rates = results["choices"]["filter_pass_rate"]
        lines.append("- filter pass rate at the chosen threshold: " + ", ".join(
            f"{k} {v:.2f}" for k, v in rates.items() if v is not None))
    lines += ["", "## Reproduce", "", f"`{results['command']}` (resumes run by run; each run's JSON is listed in "
              f"results.json under run_files)."]
    if results.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in results["plots"]]
    return "\n".join(lines) + "\n"


def assemble_results(study, test_rows: Dict[str, List[dict]], cross: Dict[str, List[dict]], cas_runs=None, *,
                     seconds: float) -> dict:
    data = study.data
    rows = {name: row_summary(name, runs, data) for name, runs in test_rows.items()}
    cas = ({"cas": _over_seeds(cas_runs, "test_withheld"), "seeds": [r["spec"]["seed"] for r in cas_runs]}
           if cas_runs else None)
    results = {
        "work_dir": str(study.work_dir), "command": study.command, "seconds": round(seconds, 1),
        "seeds": list(study.s.seeds), "tune_seeds": list(study.s.tune_seeds),
        "condition_names": data.condition_names, "person_names": data.person_names,
        "withheld": data.withholding.to_dict(), "choices": study.choices, "tuning": study.curves,
        "rows": rows, "classification_accuracy_score": cas,
        "cross_condition": cross_matrix(cross, data) if cross else {},
        "goals": goals(rows, cas, study.choices["best_generated_variant"]),
    }
    from microdoppler_finetune.evaluation.study.plots import write_plots

    results["plots"] = [str(p) for p in write_plots(results, study.out)]
    atomic_write_json(study.out / RESULTS_JSON, to_plain(results, finite=True))
    atomic_write_text(study.out / RESULTS_MD, results_markdown(results))
    study.log(f"Wrote {study.out / RESULTS_JSON} and {study.out / RESULTS_MD}")
    return results
