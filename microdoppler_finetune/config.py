"""The one config schema of the pipeline.

Every default lives in a dataclass below. A run's config is built in this order, later wins:
schema defaults <- hardware preset (configs/<preset>.yaml) <- user YAML (--config) <- dotlist overrides
(``data.image_size=64``). The resolved config is written into each run folder (``save_config``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from microdoppler_finetune.utils.files import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO_ROOT / "configs"
PRESETS = ("cpu_demo", "p100", "t4x2", "gpu")


@dataclass
class RunConfig:
    work_dir: str = "work_dir"  # every stage writes under here; --kaggle moves it to /kaggle/working
    seed: int = 42
    preset: str = "cpu_demo"


@dataclass
class SimulateConfig:
    people: int = 31
    per_person: int = 150
    image_size: int = 256
    layout: str = "flat"  # flat: ID_n/*.jpg; conditions: <Condition>/ID_n/*.jpg
    seed: int = 0
    conditions: Optional[list] = None  # None: the simulator's default set
    recordings_per_person: int = 6  # per person and condition; more recordings = more independent variation
    band: str = "24GHz"  # radar carrier: 24GHz, 5.8GHz or 77GHz (microdoppler_finetune.simulator.radar.BANDS)


@dataclass
class DataConfig:
    data_root: Optional[str] = None  # None: the demo simulates a dataset into <work_dir>/simulated
    dataset_dir: Optional[str] = None  # manifest folder; None: <work_dir>/dataset
    image_size: int = 256  # size the models see; images are resized on load
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    split_unit: str = "auto"  # auto | recording | block (step3 --split_unit)
    split_strict: bool = False  # stop when the content check finds a probable leak (step3 --strict)
    # "CONDITION[:FRACTION]": for a seeded FRACTION (default 0.5) of the people, every recording in CONDITION is
    # kept out of every training stage and tested on only (step3 --withhold); "" or None: nothing withheld.
    withhold: Optional[str] = None
    num_workers: int = 2
    # Off by default: a flipped spectrogram is time-reversed or Doppler-inverted, i.e. not a real sample.
    flip: bool = False


@dataclass
class VAEModelConfig:
    """The VA-VAE that is fine-tuned and the frozen model it is aligned to."""

    # Size preset (models.vavae.VAVAE_PRESETS) of a model built from scratch; loaded weights bring their own config.
    preset: str = "f16d32"
    # Released .pt, one of our .ckpt files or an exported folder. None: weights.locate.find_pretrained finds it.
    pretrained_path: Optional[str] = None
    trust_pickle: bool = False  # allow loading pickled (non weights-only) files: only for files you trust
    # When no pretrained weights are found, stage 1 starts from random weights instead of stopping (CPU demo).
    allow_random_init: bool = False
    # Alignment target: a timm model name or a local checkpoint. The release aligns to DINOv2-L.
    vf_model: str = "vit_large_patch14_dinov2.lvd142m"
    vf_pretrained: bool = True
    # When the target's weights cannot be loaded, align to a randomly initialised target (said loudly) instead
    # of stopping. Only sensible for demos and tests.
    allow_random_vf: bool = False
    vf_imagenet_norm: bool = False  # the release feeds DINOv2 the [-1,1] image without ImageNet normalisation
    # The alignment target's token grid (None: the latent grid, as released). The CPU demo uses 8: DINOv2 sees a
    # 112 px image instead of 224 px (~4x less work for the first epoch's features) and its features are
    # upsampled to the 16x16 latent grid. Capped at the latent grid.
    vf_token_grid: Optional[int] = None
    freeze_encoder_levels: int = 0  # freeze the first N encoder levels (the guide suggests 3-4 for <5k images)


@dataclass
class VAELossConfig:
    """Generator/discriminator loss weights (DESIGN.md section 3)."""

    perceptual_weight: float = 1.0
    lpips_net: str = "vgg"
    # LPIPS backbone weights missing (offline): use random backbone weights (said loudly) instead of stopping.
    allow_random_lpips: bool = False
    kl_weight: float = 1.0e-6
    disc_weight: float = 0.5
    disc_num_layers: int = 3
    disc_channels: int = 64
    distmat_weight: float = 1.0
    cos_weight: float = 1.0
    # Gradient-norm-ratio weight for the VF loss. Off for fine-tuning: it blew the loss up on spectrograms.
    adaptive_vf: bool = False


@dataclass
class VAEStageConfig:
    """One fine-tuning stage. No defaults here: the schedule file states every value of every stage."""

    name: str = MISSING
    epochs: int = MISSING
    learning_rate: float = MISSING
    vf_weight: float = MISSING
    distmat_margin: float = MISSING
    cos_margin: float = MISSING
    # Autoencoder optimizer steps before the generator's GAN term starts (the discriminator learns from one step
    # earlier). The official config counts Lightning global steps (two per batch): its D is our (D + 1) // 2.
    disc_start: int = MISSING
    init_from: str = MISSING  # "pretrained", "random" or the name of an earlier stage


@dataclass
class VAETrainConfig:
    """How the VA-VAE is fine-tuned: schedule, optimisation and hardware."""

    # The stage schedule (data, not code). Used when `stages` below is empty.
    schedule: str = "vae_training/vavae_microdoppler_config.yaml"
    stages: List[VAEStageConfig] = field(default_factory=list)
    # Per-stage changes keyed by stage name, e.g. {stage1: {epochs: 3}} (presets use this for short runs).
    stage_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    learning_rate: Optional[float] = None  # set: every stage of this run uses it (--learning_rate)
    epochs: Optional[int] = None  # set: every stage of this run trains this many epochs (--epochs)
    batch_size: int = 8  # per device
    gradient_accumulation: int = 1
    gradient_clip_val: Optional[float] = None  # None/0: no clipping (as released); applied under manual optimisation
    gradient_clip_algorithm: str = "norm"
    precision: str = "32-true"  # 32-true | 16-mixed (T4) | bf16-mixed (Ampere or newer)
    amp_init_scale: float = 1.0  # 16-mixed: first grad-scaler scale (a pixel-sum loss overflows fp16 at 65536)
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count ("2") or GPU ids ("0,1")
    strategy: str = "auto"  # auto: DDP when more than one device
    detect_anomaly: bool = False
    max_nonfinite_in_a_row: int = 5  # skipped steps with a non-finite loss or gradient before training stops
    time_budget: Optional[str] = None  # e.g. "11h30m": stop cleanly with a checkpoint; rerun to continue
    stop_after_ae_steps: Optional[int] = None  # stop a stage cleanly at this autoencoder step (debugging, tests)
    feature_cache: bool = True  # compute each image's alignment features once per flip (memory + <work_dir>/vae)
    feature_cache_dtype: str = "float16"  # storage of cached features; float16 halves memory (a cosine target)
    val_seed: int = 1234  # validation posterior samples use generators seeded from this and the batch index
    grid_images: int = 8  # fixed validation images in the per-epoch reconstruction grid
    log_every_n_steps: int = 10  # autoencoder steps between log rows (CSV + TensorBoard) and progress-bar metrics
    checkpoint_every_n_steps: int = 200  # also write last.ckpt every N autoencoder steps (0: epoch ends only)
    save_top_k: int = 2  # best checkpoints by validation PSNR (weights only)
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    # The stage's tqdm bar in autoencoder steps (microdoppler_finetune.utils.progress: live in a terminal or
    # notebook, a plain line every 30 s in a log file) and one validation line per epoch; false: neither.
    progress_bar: bool = True


@dataclass
class ExportConfig:
    """step5: validation metrics, latent statistics, the encoder exported for the DiT and the latent cache."""

    batch_size: int = 16
    max_images: Optional[int] = None  # per split, spread over the split; None: all. A limited cache is marked so
    device: str = "auto"  # auto: cuda when available
    # Posterior samples of the latent statistics and of the cache: eps seeded per image from this and its
    # manifest row, so a sample does not depend on batch size or device.
    sample_seed: int = 0
    shard_size: int = 2048  # images per latent-cache shard
    lpips_net: str = "alex"  # LPIPS backbone of the reported metric (alex: the usual choice for reporting)
    lpips_download: bool = True  # one short download attempt of the LPIPS backbone when it is not cached
    figure_images: int = 8  # images in reconstruction_results.png
    knn_k: int = 5  # neighbours of the person-separability k-NN
    map_max_points: int = 3000  # latents drawn in the t-SNE map (a fixed random subset beyond this)


@dataclass
class DiTUnfreezeStep:
    """One entry of a gradual-unfreeze schedule: from ``step`` on, the last ``last_blocks`` blocks train."""

    step: int = MISSING
    last_blocks: int = MISSING  # 0: no transformer block trains; a number >= depth: every block trains


@dataclass
class DiTFinetuneConfig:
    """Fine-tuning a pretrained DiT (the released LightningDiT-XL or one of our checkpoints)."""

    init_from: Optional[str] = None  # released LightningDiT .pt or our {step:07d}.pt; None: random init
    init_weights: str = "ema"  # which weights of init_from: ema (as released for sampling) or model
    trust_pickle: bool = False  # allow a pickled init_from file: only for files you trust
    # Freeze every parameter except `always_trainable` (plus LoRA adapters and the unfreeze schedule's blocks).
    freeze_backbone: bool = False
    always_trainable: List[str] = field(default_factory=lambda: ["y_embedder", "condition_embedder"])
    lora_rank: int = 0  # > 0: train LoRA adapters (peft) on `lora_targets` of the frozen backbone
    lora_alpha: Optional[float] = None  # None: equal to the rank (scale 1)
    lora_targets: List[str] = field(default_factory=lambda: ["qkv", "proj", "w12", "w3"])
    # Dropout (the guide uses 0.15 against over-fitting): on the LoRA adapters' inputs, and on attention/MLP
    # outputs when the DiT has dropout settings.
    dropout: float = 0.0
    contrastive_weight: float = 0.0  # supervised-contrastive loss on pooled DiT features (the guide: 0.3)
    contrastive_temperature: float = 0.1
    # Gradual unfreezing, as data: e.g. [{step: 0, last_blocks: 0}, {step: 5000, last_blocks: 4}].
    unfreeze_schedule: List[DiTUnfreezeStep] = field(default_factory=list)


@dataclass
class DiTTrainConfig:
    """How the DiT is trained (plain PyTorch loop; DDP under torchrun)."""

    steps: int = 100000  # optimizer steps in total (a resumed run continues to this number)
    batch_size: int = 32  # per device
    learning_rate: float = 1.0e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 0  # linear warm-up of the learning rate, then constant
    grad_clip: float = 1.0  # max gradient norm; 0: no clipping
    ema_decay: float = 0.9999
    # > 0: add this x (1 - cosine(predicted, true velocity)) per position to the velocity MSE. The released
    # LightningDiT trains with it on at weight 1 (use_cosine_loss); logged apart as cosine_loss.
    cosine_loss_weight: float = 1.0
    # auto: fp16 + GradScaler on CUDA GPUs without bf16 (T4, P100), bf16 where supported, fp32 on the CPU.
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    device: str = "auto"  # auto: cuda (one GPU per torchrun process) when available, else cpu (gloo for DDP)
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% slower
    # torch.compile the blocks (models.dit.LightningDiT.compile_blocks): ~1.4x faster steps of the demo's DiT on
    # the CPU after ~30 s of compiling; needs a C++ compiler (CPU) or Triton (GPU, not the P100).
    compile_blocks: bool = False
    resample_latents: bool = True  # draw a fresh posterior sample of each latent every time it is read
    time_budget: Optional[str] = None  # e.g. "11h30m": save and stop cleanly; rerun to continue
    seed: int = 0
    num_workers: int = 0  # latents live in memory: loader workers rarely help
    log_every: int = 50
    val_every: int = 1000
    sample_every: int = 5000  # sample grid (one row per person); 0: never
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2  # newest {step:07d}.pt files kept (an XL fine-tune checkpoint is several GB)
    val_seed: int = 1234  # fixed noise and timesteps of the validation loss
    val_timesteps: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    max_nonfinite_in_a_row: int = 5  # skipped steps with a non-finite loss before training stops
    grid_steps: int = 50  # Euler steps of the training-time sample grids (= their num_sampling_steps - 1)
    grid_per_person: int = 4


@dataclass
class DiTSampleConfig:
    """Generation with a trained DiT (sample_dit.py). Guidance, interval and shift are the release's; the sampler is
    UniPC over 26 grid points (25 model evaluations), not the release's Euler over 250 (249): on the demo's DiT
    it matched 250-point Euler in classifier-feature FID and identifiability (192 images per setting) with 10x
    fewer evaluations (README, benchmarks/bench_samplers.py). ``sampler=euler num_sampling_steps=250`` is the
    release's."""

    per_person: int = 16
    # GRID POINTS of the ODE, counted as the release's num_sampling_steps: 250 points = 249 Euler steps.
    num_sampling_steps: int = 26
    # DEPRECATED (configs written before num_sampling_steps): Euler steps; when set, num_sampling_steps = steps + 1.
    steps: Optional[int] = None
    sampler: str = "unipc"  # models.transport.SAMPLING_METHODS: euler (the release's), heun, dpm++2m, unipc, ...
    cfg_scale: float = 6.7  # <= 1: no guidance (the release's rule)
    cfg_interval_start: float = 0.125  # guidance only for t above this (t=0 is noise)
    shift: float = 0.3  # timestep shift s: t' = s*t / (1 + (s-1)*t); <= 0: no shift (the release's rule)
    seed: int = 0
    batch_size: int = 16
    image_size: Optional[int] = None  # None: the size the latent cache was encoded at
    use_ema: bool = True
    # With walking conditions: "all" or a comma list of conditions to generate for every person (None: the null
    # condition), and which person x condition pairs: all | seen | unseen (unseen = withheld from training).
    conditions: Optional[str] = "all"
    pairs: str = "all"


@dataclass
class DiTConfig:
    """The person- (and walking-condition-) conditioned DiT on the VA-VAE latent cache."""

    model: str = "S/2"  # models.dit.DIT_PRESETS name; our users' working model was S/2-like
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # e.g. {qk_norm: true}
    use_conditions: Optional[bool] = None  # None: when the latent cache has more than one walking condition
    vae_encoder: Optional[str] = None  # exported encoder folder; None: <work_dir>/export/vavae_encoder_for_dit
    latent_cache: Optional[str] = None  # None: <work_dir>/latents (built by step5's cache part when missing)
    run_dir: Optional[str] = None  # None: <work_dir>/dit
    train: DiTTrainConfig = field(default_factory=DiTTrainConfig)
    finetune: DiTFinetuneConfig = field(default_factory=DiTFinetuneConfig)
    sample: DiTSampleConfig = field(default_factory=DiTSampleConfig)


@dataclass
class EvaluateConfig:
    """step6: person identification with and without generated data, and the generation metrics."""

    classifier: str = "tiny"  # models.classifier preset: tiny (CPU, 64 px), small (128 px), standard (ResNet-18)
    image_size: int = 64
    epochs: int = 30  # upper bound; the best validation epoch is kept
    patience: int = 8
    batch_size: int = 64
    learning_rate: float = 2.0e-3
    seed: int = 0
    device: str = "auto"
    fractions: List[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])  # of the real train recordings
    methods: List[str] = field(default_factory=lambda: ["real", "real+generated", "real+augmentation"])
    cross_condition: bool = True  # Normal -> Backpack rows when the data has walking conditions
    generation_metrics: bool = True
    classification_accuracy_score: bool = True
    max_generated_per_person: Optional[int] = None


@dataclass
class StudyConfig:
    """The augmentation study (run_augmentation_study.py): every knob is chosen on validation, then tested once.

    Defaults are sized for the CPU demo's work dir (about an hour on 2 cores after the demo's stages).
    """

    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # classifier init + data order + sampling seed
    # Seeds averaged for each choice on validation (one seed is not enough: on the demo, the real-only classifier's
    # validation accuracy spans 0.67-0.80 over three seeds).
    tune_seeds: List[int] = field(default_factory=lambda: [0, 1])
    # Classifier recipes tried on real data (IdentificationConfig fields); the best on validation is kept for every
    # later row. The evaluate section gives the starting point (classifier preset, image size, batch size).
    recipes: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "lr5e-3_30ep": {"learning_rate": 5.0e-3, "epochs": 30, "patience": 10},
        "lr2e-3_80ep": {"learning_rate": 2.0e-3, "epochs": 80, "patience": 20},
    })
    # Conventional augmentations tried on top of the chosen recipe ("none": no augmentation).
    augmentations: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "none": {},
        "time_roll": {"max_time_shift": 0.25, "max_doppler_shift": 0.0, "intensity_jitter": 0.0},
        "time_roll+mirror": {"max_time_shift": 0.25, "max_doppler_shift": 0.0, "intensity_jitter": 0.0,
                             "doppler_flip": 0.5},
        "standard": {"max_time_shift": 0.25, "max_doppler_shift": 0.04, "intensity_jitter": 0.1},
    })
    # The generated-data knobs are chosen on top of the chosen recipe and augmentation.
    guidance_scales: List[float] = field(default_factory=lambda: [1.0, 2.0, 3.5, 6.7])
    amounts: List[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])  # generated / real training images
    amount_for_guidance: float = 1.0  # the amount while the guidance scale is chosen
    filter_thresholds: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.6])
    generated_pairs: str = "unseen"  # unseen: only the withheld person x condition pairs; all: every pair
    # Sampler of the study's generated images (few grid points: the study samples thousands of images).
    num_sampling_steps: int = 26
    sampler: str = "euler"
    sample_batch_size: int = 64
    cross_condition: bool = True  # train on one condition, test on each other (real only), for every pair


@dataclass
class PipelineConfig:
    run: RunConfig = field(default_factory=RunConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEModelConfig = field(default_factory=VAEModelConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    vae_train: VAETrainConfig = field(default_factory=VAETrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Unknown hardware preset '{name}': {path} does not exist. Choose one of {', '.join(PRESETS)} "
            f"or pass a YAML file with --config."
        )
    return path


class ConfigError(ValueError):
    """A config value or key that the schema does not accept; the message names where it came from."""


class UnknownConfigKeyError(ConfigError, ConfigKeyError):
    """A key the schema does not have (still an OmegaConf ConfigKeyError for callers that catch that)."""

    def __init__(self, message: str):
        ConfigError.__init__(self, message)
        self.msg = message

    def __str__(self) -> str:
        return self.msg


def _closest(word: str, choices: Sequence[str]) -> Optional[str]:
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def _config_error(cfg: DictConfig, exc: Exception, source: str) -> ConfigError:
    """An OmegaConf merge error as one line: the source, the full key, and the closest valid key (difflib)."""
    full_key = str(getattr(exc, "full_key", "") or "")
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ConfigKeyError) and full_key:
        parent, _, leaf = full_key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        valid = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        guess = _closest(leaf, valid)
        where = f"'{parent}'" if parent else "the top level"
        hint = (f" Did you mean '{parent + '.' if parent else ''}{guess}'?" if guess else
                f" Valid keys of {where}: {', '.join(valid)}.")
        return UnknownConfigKeyError(f"{source}: unknown config key '{full_key}'.{hint}")
    return ConfigError(f"{source}: {first_line}" + (f" (key '{full_key}')" if full_key else ""))


# Mappings whose keys are a list of candidates, not settings: replaced, never merged key by key.
REPLACED_MAPPINGS = ("study.recipes", "study.augmentations")


def merge_config(cfg: DictConfig, other, source: str) -> DictConfig:
    """``OmegaConf.merge(cfg, other)``; a key the schema lacks or a value of the wrong type is refused with a
    ConfigError that names ``source`` (the file or the --set list) and the closest valid key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(cfg, other)
        for key in REPLACED_MAPPINGS:  # candidate sets: a file that names them gives exactly those
            given = OmegaConf.select(other, key) if isinstance(other, DictConfig) else None
            if given is not None:
                OmegaConf.update(merged, key, given, merge=False)
        return merged
    except OmegaConfBaseException as exc:
        raise _config_error(cfg, exc, source) from None


def overrides_config(overrides: Sequence[str]) -> DictConfig:
    """``--set key=value`` items as a config; a malformed item is a ConfigError naming it."""
    for item in overrides:
        if "=" not in str(item):
            raise ConfigError(f"--set {item}: write key=value, e.g. --set data.image_size=64.")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:  # noqa: BLE001 - OmegaConf/YAML parse errors of a value
        raise ConfigError(f"--set {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


def load_config(
    preset: Optional[str] = None,
    config_path: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Build the resolved config; unknown keys are errors (a typo must not be silently ignored)."""
    cfg = OmegaConf.structured(PipelineConfig)
    if preset is not None:
        cfg = merge_config(cfg, OmegaConf.load(preset_path(preset)), str(preset_path(preset)))
        cfg.run.preset = preset
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        cfg = merge_config(cfg, OmegaConf.load(path), f"config file {path}")
    for item in overrides:  # one by one, so an error names the item
        cfg = merge_config(cfg, overrides_config([item]), f"--set {item}")
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """The resolved config as YAML, written whole or not at all."""
    return atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
