"""The study, start to end: tune the real-data baseline and the conventional augmentation, choose the
generated-data knobs (guidance, amount, quality filter) on validation, then test every row over seeds once.

Reads a work dir the pipeline made (manifest with withheld pairs, the exported VA-VAE, the trained DiT); writes
``<work_dir>/study/``: runs/ (one JSON per classifier training, so a rerun resumes run by run), generated/ (one
folder per guidance scale and sampling seed), results.json, results.md and the plots.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from omegaconf import DictConfig

from microdoppler_finetune.dit.sampling import SamplerSettings
from microdoppler_finetune.evaluation.identification.training import IdentificationConfig, predict_logits
from microdoppler_finetune.evaluation.study.data import StudyData, load_pool, load_study_data, take_per_pair
from microdoppler_finetune.evaluation.study.generation import generate_pool, per_pair_for, pool_folder
from microdoppler_finetune.evaluation.study.runs import GeneratedSpec, RunBook, RunSpec
from microdoppler_finetune.evaluation.study.stats import summarise

STUDY_DIRNAME = "study"


class Study:
    def __init__(self, cfg: DictConfig, work_dir: Path, *, command: str = "", log: Callable[[str], None] = print):
        from microdoppler_finetune.dit.data import export_dir_of, run_dir_of
        from microdoppler_finetune.dit.export import resolve_trained_dit

        self.cfg, self.work_dir, self.command, self.log = cfg, Path(work_dir), command, log
        self.out = self.work_dir / STUDY_DIRNAME
        self.s = cfg.study
        e = cfg.evaluate
        self.base = IdentificationConfig(preset=str(e.classifier), image_size=int(e.image_size), epochs=int(e.epochs),
                                         patience=int(e.patience), batch_size=int(e.batch_size),
                                         learning_rate=float(e.learning_rate), device=str(e.device))
        dataset_dir = Path(cfg.data.dataset_dir) if cfg.data.dataset_dir else self.work_dir / "dataset"
        self.data: StudyData = load_study_data(dataset_dir, self.base.image_size)
        self.trained = resolve_trained_dit(run_dir_of(cfg))
        self.vae_encoder = export_dir_of(cfg)
        self.book = RunBook(self.out / "runs", self.data, self.base, log=log)
        self.pools: Dict[tuple, object] = {}
        self.choices: dict = {}
        self.curves: dict = {}

    # ------------------------------------------------------------------------------------------- helpers

    def tune(self, group: str, label: str, **spec) -> dict:
        """Mean validation scores of one candidate over the tuning seeds."""
        results = [self.book.run(RunSpec(group, label, seed=seed, **spec["run"]), spec.get("generated_data", {})
                                 .get(seed)) for seed in self.s.tune_seeds]
        return {"label": label, "val": summarise([r["val"]["accuracy"] for r in results]),
                "val_withheld": summarise([r["val_withheld"]["accuracy"] for r in results]),
                "generated_images": results[0]["generated_images"]}

    def choose(self, group: str, candidates: List[dict], target: str) -> dict:
        """The best candidate on validation (``target``: val or val_withheld; ties: the earlier, simpler one)."""
        key = target if any(c[target]["n"] for c in candidates) else "val"
        best = max(candidates, key=lambda c: (round(c[key]["mean"], 6), -candidates.index(c)))
        self.curves[group] = {"chosen_by": key, "candidates": candidates, "chosen": best["label"]}
        self.log(f"[{group}] chosen on {key}: {best['label']} ({best[key]['mean']:.3f})")
        return best

    def sampler(self, scale: float, seed: int) -> SamplerSettings:
        s = self.cfg.dit.sample
        return SamplerSettings(num_sampling_steps=int(self.s.num_sampling_steps), sampler=str(self.s.sampler),
                               cfg_scale=float(scale), cfg_interval_start=float(s.cfg_interval_start),
                               shift=float(s.shift), seed=int(seed), batch_size=int(self.s.sample_batch_size))

    def pool(self, scale: float, seed: int, per_pair: int):
        key = (float(scale), int(seed))
        have = self.pools.get(key)
        if have is not None and have[0] >= per_pair:
            return have[1]
        folder = generate_pool(self.trained, self.vae_encoder, pool_folder(self.out / "generated", scale, seed),
                               per_pair=per_pair, conditions="all", pairs=str(self.s.generated_pairs),
                               settings=self.sampler(scale, seed), image_size=self.base.image_size,
                               device=str(self.cfg.dit.train.device))
        images = load_pool(folder, self.data)
        self.pools[key] = (per_pair, images)
        return images

    def generated(self, g: GeneratedSpec, seed: int):
        pairs = self.data.unseen_pairs() if g.pairs == "unseen" else None
        if pairs is None:
            raise ValueError("generated_pairs 'all' is not supported by the study yet: use 'unseen'.")
        per_pair = per_pair_for(g.amount, len(self.data.splits["train"]), pairs)
        # At least the guidance sweep's amount, so the amounts below it are subsets of one pool.
        needed = max(per_pair, per_pair_for(self.s.amount_for_guidance, len(self.data.splits["train"]), pairs))
        pool = self.pool(g.scale, seed, needed)
        keep = self.filter_mask(pool, g.threshold) if g.threshold > 0 else None
        return take_per_pair(pool, per_pair, keep)

    def filter_mask(self, pool, threshold: float) -> torch.Tensor:
        probabilities = torch.softmax(predict_logits(self.filter_model, pool), dim=1)
        intended = probabilities[torch.arange(len(pool)), pool.person_ids]
        return intended >= threshold

    # ------------------------------------------------------------------------------------------- the study

    def run(self) -> dict:
        started = time.time()
        s, data = self.s, self.data
        if not data.unseen_pairs():
            raise ValueError("The manifest withholds no person x condition pair: rerun step3 with --withhold "
                             "CONDITION (the pipeline: --set data.withhold=CONDITION) in a new work dir.")
        self.log(f"Study of {self.work_dir}: {len(data.person_names)} people, conditions "
                 f"{', '.join(data.condition_names)}; withheld {data.withholding.to_dict()}")
        # 1. The real-data baseline: the classifier recipe, then the conventional augmentation.
        recipes = [self.tune("tune:recipe", name, run={"recipe": dict(r)}) for name, r in s.recipes.items()]
        recipe = dict(s.recipes[self.choose("tune:recipe", recipes, "val")["label"]])
        augs = [self.tune("tune:augmentation", name, run={"recipe": recipe, "augmentation": dict(a) if name != "none"
                                                         else None}) for name, a in s.augmentations.items()]
        aug_name = self.choose("tune:augmentation", augs, "val")["label"]
        augmentation = None if aug_name == "none" else dict(s.augmentations[aug_name])
        self.choices.update(recipe=recipe, augmentation=aug_name)
        self.filter_model = self.book.train_model(RunSpec("filter", "real", recipe=recipe, augmentation=augmentation,
                                                          seed=0), self.out / "filter_classifier")
        # 2. Generated data, each knob on validation on top of that baseline: guidance, amount, quality filter;
        #    then whether the augmentation still helps once generated data is there.
        def gen_candidate(group, label, g: GeneratedSpec, aug=augmentation):
            return self.tune(group, label, run={"recipe": recipe, "augmentation": aug, "generated": g},
                             generated_data={seed: self.generated(g, seed) for seed in s.tune_seeds})

        scales = [gen_candidate("tune:guidance", f"{x:g}", GeneratedSpec(float(x), float(s.amount_for_guidance)))
                  for x in s.guidance_scales]
        scale = float(self.choose("tune:guidance", scales, "val_withheld")["label"])
        amounts = [gen_candidate("tune:amount", f"{a:g}", GeneratedSpec(scale, float(a))) for a in s.amounts]
        amount = float(self.choose("tune:amount", amounts, "val_withheld")["label"])
        filters = [gen_candidate("tune:filter", f"{t:g}", GeneratedSpec(scale, amount, float(t)))
                   for t in s.filter_thresholds]
        threshold = float(self.choose("tune:filter", filters, "val_withheld")["label"])
        chosen = GeneratedSpec(scale, amount, threshold)
        with_aug = filters[[f["label"] for f in filters].index(f"{threshold:g}")]
        variants = [gen_candidate("tune:best_generated", "generated", chosen, None),
                    with_aug | {"label": "generated+augmentation"}] if augmentation is not None else \
            [with_aug | {"label": "generated"}]
        best_generated = self.choose("tune:best_generated", variants, "val")["label"]
        self.choices.update(guidance=scale, amount=amount, filter_threshold=threshold,
                            best_generated_variant=best_generated)
        self.choices["filter_pass_rate"] = self.pass_rates(chosen)
        # 3. The test rows, once, over every seed.
        rows = {
            "real": {"recipe": recipe},
            # "none" chosen on validation: the conventional-augmentation baseline is real only (same runs).
            "real+augmentation": {"recipe": recipe, "augmentation": augmentation},
            "real+generated": {"recipe": recipe, "generated": chosen},
            "real+generated+augmentation": {"recipe": recipe, "generated": chosen, "augmentation": augmentation},
        }
        test_rows = {name: [self.book.run(RunSpec("test", name, seed=seed, test=True, **spec),
                                          self.generated(spec["generated"], seed) if "generated" in spec else None)
                            for seed in s.seeds] for name, spec in rows.items()}
        cas_runs = [self.book.run(RunSpec("test", "generated only", recipe=recipe, generated=chosen, real=False,
                                          seed=seed, test=True), self.generated(chosen, seed)) for seed in s.seeds]
        cross = self.cross_condition(recipe) if s.cross_condition else {}
        from microdoppler_finetune.evaluation.study.report import assemble_results

        results = assemble_results(self, test_rows, cross, cas_runs, seconds=time.time() - started)
        return results

    def pass_rates(self, g: GeneratedSpec) -> dict:
        """Share of generated images the filter keeps, overall and per person (first tuning seed's pool)."""
        pool = self.generated(GeneratedSpec(g.scale, g.amount, 0.0, g.pairs), self.s.tune_seeds[0])
        keep = self.filter_mask(pool, g.threshold)
        rates = {"overall": float(keep.float().mean()) if len(pool) else None}
        for pid, name in enumerate(self.data.person_names):
            mask = pool.person_ids == pid
            if mask.any():
                rates[name] = float(keep[mask].float().mean())
        return rates

    def cross_condition(self, recipe: dict) -> dict:
        """Train on one condition's real images, test on every other condition (every ordered pair the data has)."""
        out = {}
        names = self.data.condition_names
        for source in names:
            if not self.data.positions("train", conditions=[source]):
                continue
            runs = [self.book.run(RunSpec("cross", f"{source}", recipe=recipe, seed=seed, test=True,
                                          train_conditions=(source,))) for seed in self.s.seeds]
            out[source] = runs
        return out


def run_augmentation_study(cfg: DictConfig, work_dir: Path, *, command: str = "", log=print) -> dict:
    return Study(cfg, work_dir, command=command, log=log).run()


def study_config(work_dir: Path, config_file=None, overrides=()) -> DictConfig:
    """The work dir's own resolved pipeline config (so the study uses the run's classifier size and sampler),
    with a YAML and overrides on top."""
    from omegaconf import OmegaConf

    from microdoppler_finetune.config import PipelineConfig, merge_config

    saved = sorted(Path(work_dir).glob("pipeline_*_config.yaml"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise FileNotFoundError(f"{work_dir} holds no pipeline_<mode>_config.yaml: run the pipeline there first "
                                f"(bash scripts/quick_start_finetune.sh demo --work_dir {work_dir}).")
    cfg = merge_config(OmegaConf.structured(PipelineConfig), OmegaConf.load(saved[-1]), str(saved[-1]))
    if config_file:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"--config {config_file} does not exist.")
        cfg = merge_config(cfg, OmegaConf.load(config_file), str(config_file))
    for item in overrides:  # replace, not merge: --set study.recipes={...} gives exactly those candidates
        key = item.split("=", 1)[0]
        OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([item]), key), merge=False)
    cfg.run.work_dir = str(work_dir)
    return cfg
