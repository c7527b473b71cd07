"""The pieces the augmentation study rests on: withheld person x condition pairs and their guard, cross-condition
planning for any condition names, mean ± std over seeds. (The whole study on a tiny work dir: test_pipeline.py.)"""
from __future__ import annotations

import csv
import json
import math

import pytest
from test_classifier import write_dataset

from microdoppler_finetune.data import load_manifest, prepare_dataset
from microdoppler_finetune.data.withhold import WithheldPairError, WithholdSpec, choose_withheld, refuse_withheld_pairs
from microdoppler_finetune.evaluation.identification.experiments import cross_condition_pairs, plan_variants
from microdoppler_finetune.evaluation.study.stats import compare, format_row, summarise

CONDITIONS = ["Normal_line", "Backpack_line", "Bag_free"]


@pytest.fixture(scope="module")
def withheld_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("withhold")
    write_dataset(root / "data", persons=6, recordings=3, frames=2, conditions=CONDITIONS)
    prepare_dataset(root / "data", root / "dataset", withhold="backpack", log=None)
    return root


def test_withhold_spec_parses_names_prefixes_and_fractions():
    assert WithholdSpec.parse(None) is None and WithholdSpec.parse(" ") is None
    assert WithholdSpec.parse("Backpack") == WithholdSpec("Backpack", 0.5)
    assert WithholdSpec.parse("Bag_free:0.25") == WithholdSpec("Bag_free", 0.25)
    spec = WithholdSpec.parse("bag")
    assert spec.conditions_in(["Bag_free", "Bag_Phone_line", "Normal"]) == ["Bag_free", "Bag_Phone_line"]
    assert WithholdSpec.parse("bag_free").conditions_in(["Bag_free", "Bag_freestyle"]) == ["Bag_free"]  # exact wins
    for bad in ("Backpack:1", "Backpack:0", "Backpack:x"):
        with pytest.raises(WithheldPairError, match="fraction"):
            WithholdSpec.parse(bad)


def test_withheld_people_are_seeded_disjoint_and_leave_the_condition_to_someone():
    people = {f"ID_{i}": {"Normal", "Backpack"} for i in range(1, 9)}
    people["ID_9"] = {"Normal"}  # never recorded with a backpack: cannot be withheld
    chosen = choose_withheld(WithholdSpec("Backpack"), people, ["Normal", "Backpack"], seed=3)
    assert chosen == choose_withheld(WithholdSpec("Backpack"), people, ["Normal", "Backpack"], seed=3)
    assert len(chosen.test_people) == 4 and len(chosen.val_people) == 2
    assert not set(chosen.test_people) & set(chosen.val_people) and "ID_9" not in chosen.test_people
    kept = set(people) - set(chosen.test_people) - set(chosen.val_people) - {"ID_9"}
    assert kept  # someone still teaches the condition
    assert choose_withheld(WithholdSpec("Backpack"), people, ["Normal", "Backpack"], seed=4) != chosen
    with pytest.raises(WithheldPairError, match="no condition"):
        choose_withheld(WithholdSpec("Phone"), people, ["Normal", "Backpack"], seed=0)


def test_step3_puts_withheld_pairs_in_test_and_validation_only(withheld_dataset):
    manifest = load_manifest(withheld_dataset / "dataset")
    withholding = manifest.withholding
    assert withholding.conditions == ("Backpack_line",) and len(withholding.test_people) == 3
    for entry in manifest.entries:
        role = withholding.role(entry["person"], entry["condition"])
        assert entry["withheld"] == role
        if role:
            assert entry["split"] == role  # every image of the pair, whole
    summary = json.loads((withheld_dataset / "dataset" / "split_summary.json").read_text())
    assert summary["withheld"]["test_people"] == list(withholding.test_people)


def test_a_planted_withheld_training_image_is_refused_by_every_training_set(withheld_dataset, tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name in ("user_labels.json",):
        (dataset / name).write_text((withheld_dataset / "dataset" / name).read_text())
    with open(withheld_dataset / "dataset" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    planted = next(r for r in rows if r["withheld"] == "test")
    planted["split"], planted["withheld"] = "train", ""  # a hand edit: one withheld image moved into training
    with open(dataset / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # Every stage reads the split through load_manifest (VA-VAE, latent cache, classifier): refused there.
    with pytest.raises(WithheldPairError, match=planted["person"]):
        load_manifest(dataset)
    # A latent cache (or any training set) built before the withholding: refused by the DiT's data check.
    withholding = load_manifest(withheld_dataset / "dataset").withholding
    with pytest.raises(WithheldPairError, match="withheld"):
        refuse_withheld_pairs([(withholding.test_people[0], "Backpack_line")], withholding, "The latent cache")
    refuse_withheld_pairs([(withholding.test_people[0], "Normal_line")], withholding, "The latent cache")


def test_cross_condition_rows_are_planned_for_whatever_conditions_the_data_has():
    names = ["Walk_A", "carrying-box", "Phone"]
    available = {("train", "Walk_A"), ("val", "Walk_A"), ("test", "carrying-box"), ("test", "Phone"),
                 ("train", "Phone"), ("val", "Phone"), ("test", "Walk_A")}
    pairs = cross_condition_pairs(names, lambda split, c: (split, c) in available)
    assert pairs == [("Walk_A", "carrying-box"), ("Walk_A", "Phone"), ("Phone", "Walk_A"), ("Phone", "carrying-box")]
    variants, notes = plan_variants(["real"], [1.0], has_generated=True, cross_pairs=pairs,
                                    generated_conditions=["carrying-box"])
    names_planned = [v.name for v in variants]
    assert "cross-condition:Walk_A->carrying-box" in names_planned
    assert "cross-condition:Walk_A+generated-carrying-box->carrying-box" in names_planned
    assert "cross-condition:Walk_A+generated-Phone->Phone" not in names_planned  # no generated Phone images
    _, notes = plan_variants(["real"], [1.0], has_generated=False, cross_pairs=[])
    assert any("fewer than two walking conditions" in n for n in notes)


def test_rows_are_mean_and_std_over_seeds_and_small_differences_are_called_so():
    row = summarise([0.80, 0.84, 0.82])
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.82) and row["std"] == pytest.approx(0.02)
    assert summarise([0.5])["std"] == 0.0 and math.isnan(summarise([])["mean"])
    assert format_row(row) == "0.820 ± 0.020 (n=3)"
    assert compare(summarise([0.83, 0.835, 0.825]), row)["verdict"] == "no measurable difference"
    better = compare(summarise([0.90, 0.91, 0.92]), row)
    assert better["verdict"] == "better" and better["difference"] == pytest.approx(0.09)
    assert compare(summarise([0.70, 0.72, 0.71]), row)["verdict"] == "worse"
