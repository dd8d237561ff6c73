"""The experiment config: the Flower run config parsed once into a typed, validated object.

Every other module takes an `ExperimentConfig`; none reads the run config itself.
Errors are one line and name the key and the value at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multifcl.client_schedule import ClientSchedule
from multifcl.errors import ConfigError

PARTITIONS = ("dirichlet", "quality", "iid")
DEVICES = ("auto", "cpu", "cuda")
ADAPTERS = ("bottleneck", "lora")
ADAPTER_POLICIES = ("first-task", "per-task")
KD_WEIGHTINGS = ("entropy", "inverse-kl", "uniform")
INFERENCES = ("final", "ensemble")
PROTOTYPE_REFINES = ("per-epoch", "running-mean", "halving")
TASK1_SCHEDULES = ("two-phase", "joint")
CLIENT_TASK_ORDERS = ("shared", "per-client")
OPTIMIZERS = ("sgd", "adamw", "msam", "msam-adamw", "sam")
HEADS = ("default", "etf")
ETF_LOSSES = ("dr", "ce")
ETF_MAPS = ("batchnorm-linear", "linear", "batchnorm")
LR_SCHEDULES = ("constant", "cosine", "tempbalance")
LWF_CE_CLASSES = ("task", "seen")
LOGGERS = ("none", "tensorboard", "wandb")  # `logger`: one, or several joined by commas
PRECISIONS = ("auto", "fp32", "bf16")
TRANSMIT_DTYPES = ("float32", "float16")
EVAL_CANONICALIZATIONS = ("none", "equizero")
ROBUST_MERGES = ("none", "trimmed-mean", "median", "norm-clip")
AUGMENTS = ("none", "standard")
AUTO_RIDGE = "auto"  # `analytic-ridge`: chosen per task on held-out samples, as RanPAC does
FORCE_CACHE = "force"  # `cache-features`: keep caching frozen-encoder features under `augment`
SPLIT_FILE_DATASETS = ("imagefolder", "imagenet-r")
PROMPT_METHODS = ("l2p", "coda-prompt")  # prompts in a transformer's tokens
CNN_BACKBONE = "efficientnet-lite0"  # the one CNN backbone, known by name before loading


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; a run is reproducible from this object alone."""

    method: str = "prototypes"
    dataset: str = "digits"
    data_root: Path | None = None
    split_file: Path | None = None  # a published train/test split (imagefolder, imagenet-r)
    backbone: str = "vit-tiny"
    num_tasks: int = 5
    class_order_seed: int = 1993
    rounds_per_task: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    partition: str = "dirichlet"
    beta: float = 0.5
    alpha: int = 2
    seed: int = 0
    max_train_per_class: int | None = None
    val_fraction: float = 0.0  # share of each class's training samples held out for validation
    output_dir: Path | None = None
    logger: str = "none"  # "tensorboard", "wandb" or "tensorboard,wandb" (run_loggers.py)
    logger_group: str = ""  # the run's group in W&B; empty: the method (compare: the row)
    device: str = "auto"
    torch_threads: int = 1  # CPU threads per process (client or server); results depend on it
    image_size: int = 0  # 0: the backbone's own input size
    augment: str = "none"  # "standard": PILOT's random resized crop and flip while training
    # Performance (README "Performance"): none of these changes results, except bf16/float16
    precision: str = "auto"  # bf16 autocast for no-grad backbone passes on CUDA; fp32 on CPU
    tf32: bool = True  # CUDA float32 matmuls may use TF32 tensor cores
    extract_batch_size: int = 0  # no-grad feature passes; 0: batch-size (CPU), most that fit (CUDA)
    eval_batch_size: int = 0  # server evaluation batches; 0 as extract-batch-size
    compile: bool = False  # torch.compile the backbone's stem and blocks
    cache_features: bool | str = True  # frozen encoder: one pass per sample per task; "force"
    feature_cache_mb: int = 4096  # cached features kept in memory per process; more spill to disk
    transmit_dtype: str = "float32"  # float arrays of client uploads on the wire
    # MultiFCL (NeurIPS 2025); ignored by the other methods
    adapter: str = "bottleneck"
    adapter_rank: int = 8
    adapter_policy: str = "first-task"
    text_encoder: str = "auto"
    text_init_topk: int = 1
    prototype_refine: str = "per-epoch"  # Algorithm 1 line 24, once per local epoch
    prototype_lr: float = 0.01  # learning rate of the experts' (unit-norm) prototypes
    task1_schedule: str = "two-phase"  # adapters alone, frozen, then experts (Algorithm 1)
    num_experts: int = 4
    temperature: float = 0.0625
    kd_lambda: float = 0.5
    kd_weighting: str = "entropy"
    inference: str = "final"
    use_adapters: bool = True
    use_text_init: bool = True
    use_experts: bool = True
    use_self_kd: bool = True
    # Plug-ins from neighbouring papers, for every method that trains
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    rho: float = 0.0  # 0: the optimizer's documented default (msam 3.0, msam-adamw 3.0, sam 0.2)
    head: str = "default"
    etf_loss: str = "dr"
    etf_map: str = "batchnorm-linear"  # the trained signed map in front of the ETF head
    etf_dr_balance: bool = True  # dot regression weights classes by in-batch frequency (GivenEw)
    lr_schedule: str = "constant"
    tb_min: float = 0.5
    tb_max: float = 1.5
    # Baselines; each key is read only by its method
    pilora_rank: int = 4  # rank of each task's LoRA
    pilora_ortho_lambda: float = 0.5  # weight of the orthogonality to earlier tasks' LoRA
    pilora_pull_lambda: float = 0.001  # weight of the pull of features to their prototype
    pilora_l1_lambda: float = 0.01  # weight of the L1 norm of the current task's LoRA A
    pilora_prototype_lr: float = 2e-3  # Adam rate of the prototypes (cosine over the rounds)
    pilora_lora_lr: float = 1e-5  # Adam rate of the LoRA (cosine over the rounds)
    pilora_weight_decay: float = 1e-5  # Adam's L2 weight decay, prototypes and LoRA
    pilora_reweight: bool = True  # server: softmax re-weighting of the clients' prototypes
    lwf_temperature: float = 2.0  # distillation temperature
    lwf_lambda: float = 3.0  # weight of the distillation towards the previous task's model
    lwf_ce_classes: str = "task"  # cross-entropy over the current task's classes, or "seen"
    analytic_projection_dim: int = 1024  # random ReLU features (0: the backbone's features)
    analytic_ridge: float | str = AUTO_RIDGE  # ridge lambda of the analytic solve, or "auto"
    fedproto_lambda: float = 1.0  # weight of the pull of features to the global prototypes
    l2p_pool_size: int = 10  # prompts in L2P's pool
    l2p_prompt_length: int = 5  # tokens per L2P prompt
    l2p_top_k: int = 5  # prompts chosen per image
    l2p_pull_weight: float = 0.1  # weight of the pull of the chosen keys to the query
    coda_pool_size: int = 100  # CODA-Prompt components per layer, num-tasks shares of them
    coda_prompt_length: int = 8  # tokens per component: half keys, half values
    coda_prompt_layers: int = 5  # prefix-tuned blocks: the first ones (at most all)
    lorm_rank: int = 16  # rank of each task's LoRA (LoRM's official code: r=16)
    lorm_regmean_alpha: float = 0.5  # RegMean's share of the Grams' off-diagonal
    # Fault tolerance and resume (README "Fault tolerance and resume")
    round_timeout: float = 86400.0  # seconds a round waits for replies
    min_fit_fraction: float = 0.5  # share of the round's sampled clients whose replies must merge
    fraction_train: float = 1.0  # share of the run's clients sampled for each round (Flower's name)
    min_train_clients: int = 1  # each round samples at least this many clients
    clients_per_task: str = ""  # "10,15,20" or "4+2": only the first k_t clients train task t
    client_task_order: str = "shared"  # "per-client": each client its own task order
    client_start_delay_rounds: int = 0  # D: each client starts 0..D rounds late
    max_round_retries: int = 2  # re-sends of a round that got too few usable replies
    expected_clients: int = 0  # 0: any federation size; else the run refuses another size
    allow_missing_partitions: bool = False  # true: run when no node holds some partitions
    resume_from: Path | None = None  # a run folder to continue from its last checkpoint
    save_task_checkpoints: bool = False  # keep task-checkpoints/task-<t>.npz after each task
    # Poisoned updates (README "Fault tolerance, validated updates and resume")
    robust_merge: str = "none"  # per-class rows and dense arrays: "trimmed-mean", "median", ...
    robust_trim_fraction: float = 0.25  # trimmed-mean: share of the senders cut at each end
    max_row_norm_ratio: float = 10.0  # a feature row's norm at most this far from the median
    max_change_ratio: float = 100.0  # a dense array's change at most this x the median change
    # Test-time canonicalization (README "Looking inside a run")
    eval_canonicalize: str = "none"  # "equizero": also report accuracy under equizero
    eval_group: str = "flip-rot90"  # the transforms equizero tries: flip, rot90, flip-rot90
    eval_local: bool = False  # true: every client scores the global and its own model each task

    def __post_init__(self) -> None:
        """Refuse a bad value with a one-line ConfigError naming its run config key; the
        checks run in this order, so the first bad key is the one reported."""
        self._check_choices()
        self._check_ranges()
        self._check_combinations()

    def _check_choices(self) -> None:
        """Keys that take one of a fixed set of names."""
        # method, dataset and eval-group are names the registries check where they resolve
        # them (multifcl.config_names.check_names asks all three at once)
        _check_choice("partition", self.partition, PARTITIONS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("adapter", self.adapter, ADAPTERS)
        _check_choice("adapter-policy", self.adapter_policy, ADAPTER_POLICIES)
        _check_choice("kd-weighting", self.kd_weighting, KD_WEIGHTINGS)
        _check_choice("inference", self.inference, INFERENCES)
        _check_choice("prototype-refine", self.prototype_refine, PROTOTYPE_REFINES)
        _check_choice("task1-schedule", self.task1_schedule, TASK1_SCHEDULES)
        _check_choice("client-task-order", self.client_task_order, CLIENT_TASK_ORDERS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("head", self.head, HEADS)
        if self.method == "pilora":
            self._check_pilora_plugins()
        if self.method == "lorm":
            self._check_lorm()
        _check_choice("etf-loss", self.etf_loss, ETF_LOSSES)
        _check_choice("etf-map", self.etf_map, ETF_MAPS)
        if self.head == "etf" and self.method == "multifcl" and self.etf_map != "batchnorm-linear":
            raise ConfigError(
                f"run config key 'etf-map': {self.method}'s ETF experts always use a "
                f"width-preserving linear projection, got {self.etf_map!r}"
            )
        _check_choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("lwf-ce-classes", self.lwf_ce_classes, LWF_CE_CLASSES)
        _check_loggers(self.logger)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("transmit-dtype", self.transmit_dtype, TRANSMIT_DTYPES)
        _check_choice("eval-canonicalize", self.eval_canonicalize, EVAL_CANONICALIZATIONS)
        _check_choice("augment", self.augment, AUGMENTS)
        if isinstance(self.cache_features, str) and self.cache_features != FORCE_CACHE:
            raise ConfigError(
                "run config key 'cache-features': expected true, false or "
                f"{FORCE_CACHE!r}, got {self.cache_features!r}"
            )

    def _check_ranges(self) -> None:
        """Numbers that must be positive, not negative, or within a range."""
        positive = ("num-tasks", "rounds-per-task", "local-epochs", "batch-size", "alpha")
        positive += ("adapter-rank", "num-experts", "text-init-topk", "feature-cache-mb")
        positive += ("lr", "beta", "temperature", "pilora-rank", "lwf-temperature", "tb-min")
        positive += ("round-timeout", "torch-threads", "prototype-lr", "min-train-clients")
        positive += ("pilora-prototype-lr", "pilora-lora-lr")
        positive += ("l2p-pool-size", "l2p-prompt-length", "l2p-top-k", "coda-pool-size")
        positive += ("coda-prompt-length", "coda-prompt-layers")
        positive += ("lorm-rank",)
        for key in positive:
            _check_positive(key, getattr(self, _attribute(key)))
        if isinstance(self.analytic_ridge, str) and self.analytic_ridge != AUTO_RIDGE:
            raise ConfigError(
                f"run config key 'analytic-ridge': expected a number or {AUTO_RIDGE!r}, "
                f"got {self.analytic_ridge!r}"
            )
        if self.analytic_ridge != AUTO_RIDGE:
            _check_positive("analytic-ridge", self.analytic_ridge)
        not_negative = ("image-size", "kd-lambda", "momentum", "weight-decay", "rho")
        not_negative += ("pilora-ortho-lambda", "pilora-pull-lambda", "lwf-lambda")
        not_negative += ("pilora-l1-lambda", "pilora-weight-decay")
        not_negative += ("expected-clients", "max-round-retries", "analytic-projection-dim")
        not_negative += ("fedproto-lambda", "l2p-pull-weight")
        not_negative += ("client-start-delay-rounds",)
        not_negative += ("extract-batch-size", "eval-batch-size")
        for key in not_negative:
            if getattr(self, _attribute(key)) < 0:
                raise ConfigError(
                    f"run config key '{key}': must be >= 0, got {getattr(self, _attribute(key))}"
                )
        for key in ("seed", "class-order-seed"):
            if not 0 <= getattr(self, _attribute(key)) < 2**32:
                raise ConfigError(
                    f"run config key '{key}': must be in [0, 2**32), "
                    f"got {getattr(self, _attribute(key))}"
                )
        if self.tb_max < self.tb_min:
            raise ConfigError(
                f"run config key 'tb-max': must be >= tb-min ({self.tb_min}), got {self.tb_max}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(
                f"run config key 'val-fraction': must be in [0, 1), got {self.val_fraction!r}"
            )
        for key in ("min-fit-fraction", "fraction-train"):
            if not 0 < getattr(self, _attribute(key)) <= 1:
                raise ConfigError(
                    f"run config key '{key}': must be in (0, 1], "
                    f"got {getattr(self, _attribute(key))!r}"
                )

    def _check_combinations(self) -> None:
        """Keys that depend on other keys, the data source, and the robust merge."""
        if self.use_self_kd and not self.use_experts:
            raise ConfigError(
                "run config key 'use-self-kd': self-distillation needs several experts; "
                "set use-experts=true or use-self-kd=false"
            )
        self._check_two_phase()
        if self.method in PROMPT_METHODS:
            self._check_prompts()
        self._check_asynchronous()
        schedule = ClientSchedule.parse(self.clients_per_task, self.num_tasks)  # or raises
        if self.expected_clients:  # the federation's size is known now
            schedule.check_federation(self.expected_clients)
        if self.max_train_per_class is not None:
            _check_positive("max-train-per-class", self.max_train_per_class)
        if not self.backbone:
            raise ConfigError("run config key 'backbone': must name a preset, a model id or a path")
        if self.dataset == "imagefolder" and self.data_root is None:
            raise ConfigError(
                "run config key 'data-root': dataset 'imagefolder' needs a folder with "
                "train/<class>/* and test/<class>/* (or <class>/* and a split-file)"
            )
        if self.data_root is not None and self.dataset == "imagefolder":
            _check_folder("data-root", self.data_root)
        if self.split_file is not None:
            self._check_split_file()
        _check_choice("robust-merge", self.robust_merge, ROBUST_MERGES)
        if (
            self.method == "pilora"
            and self.pilora_reweight
            and self.robust_merge
            in (
                "trimmed-mean",
                "median",
            )
        ):
            raise ConfigError(
                f"run config key 'robust-merge': {self.robust_merge!r} ignores the weights, and "
                "pilora's prototype merge is weighted by its softmax re-weighting; use 'none' "
                "or 'norm-clip', or pilora-reweight=false"
            )
        if not 0 < self.robust_trim_fraction < 0.5:
            raise ConfigError(
                "run config key 'robust-trim-fraction': must be in (0, 0.5), "
                f"got {self.robust_trim_fraction!r}"
            )
        for key in ("max-row-norm-ratio", "max-change-ratio"):
            ratio = getattr(self, _attribute(key))
            if ratio != 0 and not ratio > 1:
                raise ConfigError(f"run config key '{key}': must be > 1 (or 0: off), got {ratio!r}")

    def _check_split_file(self) -> None:
        if self.dataset not in SPLIT_FILE_DATASETS:
            raise ConfigError(
                f"run config key 'split-file': dataset {self.dataset!r} has its own split; "
                f"a split file applies to {', '.join(SPLIT_FILE_DATASETS)}"
            )
        if not self.split_file.exists():
            raise ConfigError(
                f"run config key 'split-file': {str(self.split_file)!r} does not exist"
            )

    def _check_pilora_plugins(self) -> None:
        """PiLoRA trains as its official code does: Adam at its own rates and schedule, and
        classifies by distance to prototypes; the plug-ins that would change this are refused."""
        if self.head != "default":
            raise ConfigError(
                f"run config key 'head': pilora classifies by distance to learnable prototypes "
                f"(its official code); it has no {self.head!r} head"
            )
        for key in ("optimizer", "lr-schedule", "lr", "weight-decay"):
            name = _attribute(key)
            default = ExperimentConfig.__dataclass_fields__[name].default
            if getattr(self, name) != default:
                raise ConfigError(
                    f"run config key '{key}': pilora trains with Adam at pilora-prototype-lr and "
                    "pilora-lora-lr (pilora-weight-decay), cosine over each task's rounds; "
                    f"leave {key} at its default {default!r}"
                )

    def _check_prompts(self) -> None:
        """The prompt methods: a transformer backbone, a linear head, prompt sizes that fit."""
        if self.backbone == CNN_BACKBONE:
            raise prompts_need_tokens(self.method, self.backbone)
        if self.head != "default":
            raise ConfigError(
                f"run config key 'head': {self.method} trains a linear head; it has no "
                f"{self.head!r} head"
            )
        if self.l2p_top_k > self.l2p_pool_size:
            raise ConfigError(
                f"run config key 'l2p-top-k': at most l2p-pool-size ({self.l2p_pool_size}), "
                f"got {self.l2p_top_k}"
            )
        if self.coda_prompt_length % 2:
            raise ConfigError(
                "run config key 'coda-prompt-length': must be even (half keys, half values), "
                f"got {self.coda_prompt_length}"
            )
        if self.coda_pool_size < self.num_tasks:
            raise ConfigError(
                "run config key 'coda-pool-size': needs at least one component per task "
                f"(num-tasks = {self.num_tasks}), got {self.coda_pool_size}"
            )

    def _check_lorm(self) -> None:
        """LoRM's merge is the clients' least squares, with a linear head; a robust rule or
        another head has no place in it."""
        if not 0 < self.lorm_regmean_alpha <= 1:
            raise ConfigError(
                "run config key 'lorm-regmean-alpha': must be in (0, 1], "
                f"got {self.lorm_regmean_alpha!r}"
            )
        if self.head != "default":
            raise ConfigError(
                f"run config key 'head': lorm trains a linear head merged by least squares; "
                f"it has no {self.head!r} head"
            )
        if self.robust_merge != "none":
            raise ConfigError(
                f"run config key 'robust-merge': lorm merges by closed-form least squares "
                f"from the clients' Gram sums, not by {self.robust_merge!r}; use 'none'"
            )

    def _check_asynchronous(self) -> None:
        """An asynchronous stream (docs/asynchronous.md): every client must end within the
        run's rounds, and the per-task schedules it cannot combine with are refused."""
        delay, rounds = self.client_start_delay_rounds, self.num_tasks * self.rounds_per_task
        if delay >= rounds:
            raise ConfigError(
                f"run config key 'client-start-delay-rounds': must be below num-tasks x "
                f"rounds-per-task = {rounds} (a later start leaves rounds without any client "
                f"training), got {delay}"
            )
        if self.client_task_order == "shared" and not delay:
            return
        key = (
            "client-task-order"
            if self.client_task_order != "shared"
            else ("client-start-delay-rounds")
        )
        value = self.client_task_order if key == "client-task-order" else delay
        for other, clash in (
            ("clients-per-task", self.clients_per_task),
            ("eval-local", self.eval_local),
        ):
            if clash:
                raise ConfigError(
                    f"run config key '{key}': {value!r} gives an asynchronous stream, which "
                    f"does not combine with {other} (set {other} back to its default)"
                )

    def _check_two_phase(self) -> None:
        """Two phases need two rounds, and every holder in the experts' round: the rows it
        re-sets to the frozen adapters would otherwise stay stale for unsampled holders."""
        if not (self.method == "multifcl" and self.use_adapters):
            return
        if self.task1_schedule == "two-phase" and self.rounds_per_task < 2:
            raise ConfigError(
                "run config key 'task1-schedule': 'two-phase' trains the adapters alone and "
                "then the experts on the frozen adapters, so it needs rounds-per-task >= 2, "
                f"got {self.rounds_per_task}; raise rounds-per-task or set task1-schedule='joint'"
            )
        if self.task1_schedule == "two-phase" and self.fraction_train < 1:
            raise ConfigError(
                "run config key 'fraction-train': multifcl's 'two-phase' task 1 re-sets every "
                "class's prototypes to the frozen adapters in one round, which unsampled "
                f"clients would miss (got {self.fraction_train}); use fraction-train=1 or "
                "task1-schedule='joint'"
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ExperimentConfig:
        """Build the config from a Flower run config (keys with dashes, flat values)."""
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = _attribute(key)
            if name not in FIELD_TYPES:
                raise ConfigError(f"run config key {key!r}: unknown key{_nearest_key(key)}")
            values[name] = _convert(key, value, FIELD_TYPES[name])
        return cls(**values)

    @classmethod
    def from_saved_run(cls, saved: Mapping[str, Any]) -> ExperimentConfig:
        """The config of a run's saved config.json: what the server stores beside the run
        config (class order, names, client count) is skipped, and so is `resume-from` (where
        a run came from does not change what it is)."""
        run_config = {k: v for k, v in saved.items() if _attribute(k) in FIELD_TYPES}
        run_config.pop("resume-from", None)
        return cls.from_run_config(run_config)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The flat run-config form of this object (the inverse of `from_run_config`)."""
        flat: dict[str, bool | int | float | str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                value = 0 if field.name == "max_train_per_class" else ""
            flat[field.name.replace("_", "-")] = str(value) if isinstance(value, Path) else value
        return flat


FIELD_TYPES = {field.name: str(field.type) for field in dataclasses.fields(ExperimentConfig)}


def _attribute(key: str) -> str:
    return key.replace("-", "_")


def _nearest_key(key: str) -> str:
    """` (did you mean 'x'?)` for the closest known key, or nothing when none is close."""
    close = _nearest(key.replace("_", "-"), [name.replace("_", "-") for name in FIELD_TYPES])
    return f" (did you mean {close!r}?)" if close else ""


def _nearest(name: str, known: Collection[str]) -> str | None:
    """The known name closest to `name`, or None when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def _convert(key: str, value: Any, type_name: str) -> Any:
    """Turn a run-config value into the field's type, with a one-line error when it can't."""
    if type_name == "Path | None":
        if not isinstance(value, str):
            raise ConfigError(f"run config key '{key}': expected a path string, got {value!r}")
        if not value.strip():
            return None
        try:
            return Path(value).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as error:  # e.g. an embedded NUL byte
            raise ConfigError(f"run config key '{key}': invalid path {value!r}: {error}") from None
    if type_name == "int | None":  # a cap: 0 means none
        number = _convert(key, value, "int")
        if number < 0:
            raise ConfigError(f"run config key '{key}': must be >= 0 (0 = no cap), got {number}")
        return number or None
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"run config key '{key}': expected an integer, got {value!r}")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"run config key '{key}': expected true or false, got {value!r}")
        return value
    if type_name == "bool | str":  # a switch or a named mode, checked by the config itself
        if not isinstance(value, (bool, str)):
            raise ConfigError(
                f"run config key '{key}': expected true, false or a name, got {value!r}"
            )
        return value
    if type_name == "float | str":  # a number or a named mode, checked by the config itself
        return value if isinstance(value, str) else _convert(key, value, "float")
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"run config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"run config key '{key}': expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"run config key '{key}': expected a string, got {value!r}")
    return value


def logger_names(value: str) -> tuple[str, ...]:
    """The loggers a `logger` value names: "tensorboard,wandb" -> both, "none" -> none."""
    return tuple(name.strip() for name in value.split(",") if name.strip() != "none")


def _check_loggers(value: str) -> None:
    names = [name.strip() for name in value.split(",")]
    for name in names:
        _check_choice("logger", name, LOGGERS)
    if len(names) > 1 and ("none" in names or len(set(names)) < len(names)):
        raise ConfigError(
            f"run config key 'logger': name each logger once and not with 'none', got {value!r}"
        )


def prompts_need_tokens(method: str, backbone: str) -> ConfigError:
    """The one-line refusal of a prompt method on a CNN backbone."""
    return ConfigError(
        f"run config keys 'method' and 'backbone': method {method!r} puts prompts into a "
        f"transformer's tokens; backbone {backbone!r} is a CNN (use a ViT or CLIP backbone)"
    )


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    check_name(f"run config key '{key}'", "value", value, choices)


def check_name(where: str, kind: str, name: str, names: Collection[str]) -> None:
    """Refuse a `name` that `names` (the choices, or a registry's keys) lacks, in one line:
    `where` it was given ("run config key 'method'", "--group"), the known names and the
    nearest of them, for example `run config key 'method': unknown method 'multifl'
    (choose from prototypes, ..., lwf; did you mean 'multifcl'?)`."""
    if name in names:
        return
    close = _nearest(name, names)
    hint = f"; did you mean {close!r}?" if close else ""
    raise ConfigError(f"{where}: unknown {kind} {name!r} (choose from {', '.join(names)}{hint})")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"run config key '{key}': must be > 0, got {value!r}")


def _check_folder(key: str, folder: Path) -> None:
    if not folder.is_dir():
        raise ConfigError(f"run config key '{key}': folder {str(folder)!r} does not exist")
    if not any(folder.iterdir()):
        raise ConfigError(f"run config key '{key}': folder {str(folder)!r} is empty")
