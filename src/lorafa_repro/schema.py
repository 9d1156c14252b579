"""Typed configuration schema and the checks that run before any model is loaded.

Hydra merges every YAML file under ``conf/`` into :class:`TrainConfig` (registered in Hydra's
ConfigStore as ``train_schema``), so unknown keys and wrong types are rejected by OmegaConf.
Value checks (rank > 0, a known method, a task that fits the model, local data present, ...)
live in :func:`validate` and raise :class:`ConfigError` with a message that names the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lorafa_repro.errors import ConfigError  # re-exported: callers may import it from here
from lorafa_repro.local_models import register_resolvers


@dataclass
class ModelConfig:
    # the name results and tables show (e.g. roberta-base)
    name: str = MISSING
    # encoder (RoBERTa, BERT) | encoder_decoder (T5) | decoder (LLaMA)
    arch: str = MISSING
    # shipped: random init from src/lorafa_repro/model_configs/<path>.json (no download)
    # pretrained: Hugging Face Hub id or local directory with real weights
    source: str = "shipped"
    # shipped: a file stem under model_configs/; pretrained: a Hub id or a local directory
    path: str = MISSING
    # "byte" (a byte-level tokenizer built in code, no download) or a Hub id / local directory;
    # null = the tokenizer stored with `path`.
    tokenizer: Optional[str] = "byte"
    # a GGUF file inside `path` to load (transformers dequantizes it); null = safetensors / bin weights
    gguf_file: Optional[str] = None
    # Names of the linear layers that make up "all linear layers of the transformer blocks".
    default_target_modules: list[str] = field(default_factory=list)
    # RoPE position interpolation (LongLoRA's context extension): linear scaling by this factor (>= 1), e.g. the
    # new context / the training context; LLaMA-architecture decoders only (models.apply_rope_scaling). null = off.
    rope_scaling_factor: Optional[float] = None


@dataclass
class TaskConfig:
    # glue | wmt16 | instruct | lm
    family: str = MISSING
    # the task within its family (glue: cola, sst2, mrpc, ...)
    name: str = MISSING
    # Local folder in the original distribution layout; null = download from the Hub.
    data_dir: Optional[str] = None
    # tokens per example (longer ones are truncated)
    max_seq_len: int = 128
    # the first N training / evaluation examples only; null = all
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # --- wmt16 family (tasks/wmt16.py) ---
    # the model's arch (the task config sets ${model.arch}): decoder = decoder-only translation with a causal LM
    model_arch: Optional[str] = None
    # T5's input prefix (encoder-decoder); a causal LM reads decoder_prompt with {source} filled in instead
    source_prefix: str = "translate English to Romanian: "
    decoder_prompt: str = "Translate English to Romanian.\nEnglish: {source}\nRomanian:"
    # max_seq_len bounds the source (with its prefix / prompt); this bounds the target, EOS included
    max_target_len: int = 128
    # validation | test: the split evaluated (and scored) during training
    eval_split: str = "validation"
    # local files <data_dir>/<stem>.<lang>, line-aligned (../shared/data/wmt16_en_ro names)
    train_file: str = "corpus"
    validation_file: str = "newsdev2016"
    test_file: str = "newstest2016"
    # beam search at evaluation
    num_beams: int = 4
    max_new_tokens: int = 128

    # --- instruct family (tasks/instruct.py) ---
    # local JSON list / JSONL file inside data_dir; with data_dir=null the Hub dataset below
    train_file: Optional[str] = None
    hub_dataset: Optional[str] = None
    instruction_field: str = "instruction"
    input_field: Optional[str] = "input"
    output_field: str = "output"
    # alpaca (QLoRA's Alpaca template) | plain (instruction [+ blank line + input] verbatim)
    template: str = "alpaca"
    max_source_len: int = 384
    max_target_len: int = 128
    # MMLU evaluation (lorafa_repro.mmlu); mmlu_dir null = Hub cais/mmlu; max_seq_len = its prompt budget
    mmlu_dir: Optional[str] = None
    mmlu_split: str = "test"
    mmlu_k_shot: int = 5
    # final evaluation: null = all 57 subjects / every question
    mmlu_subjects: Optional[list[str]] = None
    mmlu_limit_per_subject: Optional[int] = None
    # every trainer.eval_every steps: null = same as the final set
    mmlu_eval_subjects: Optional[list[str]] = None
    mmlu_eval_limit_per_subject: Optional[int] = None
    # macro (mean over subjects, QLoRA's callback) | micro (over questions, lm-eval's mmlu); becomes `score`
    mmlu_average: str = "macro"

    # --- lm family (tasks/lm.py): plain language modelling on raw text, full chunks of max_seq_len tokens ---
    # local text: data_dir + train_file; Hub (data_dir null): hub_dataset, this config / split / text field
    hub_config: Optional[str] = None
    hub_split: str = "train"
    text_field: str = "text"
    # held-out perplexity also at these chunk lengths (same held-out tokens re-cut), e.g. [2048, 8192]
    eval_seq_lens: list[int] = field(default_factory=list)



@dataclass
class MethodConfig:
    """The same keys for every method, so `method=ft,lora,lora_fa method.rank=8` sweeps work."""

    # ft | lora | lora_fa | qlora | qlora_fa | lora_fa_v2 | adapter (methods/__init__.py)
    name: str = MISSING
    # LoRA rank r (adapter: the bottleneck size); unused by ft
    rank: Optional[int] = None
    # LoRA scaling alpha / r; unused by ft and adapter
    alpha: Optional[float] = None
    # The LoRA scale on B A x: standard = alpha / rank | rslora = alpha / sqrt(rank) (PEFT's use_rslora). Methods
    # with a LoRA scale only (lora, lora_fa, qlora, qlora_fa, lora_fa_v2); ft and adapter accept only standard.
    alpha_scaling: str = "standard"
    # dropout on the LoRA branch's input
    dropout: float = 0.0
    # Suffixes of module names (e.g. [query, value]); null = the model's default_target_modules.
    target_modules: Optional[list[str]] = None
    # 4-bit NF4 base weights (bitsandbytes); true exactly for qlora and qlora_fa.
    quantize_4bit: bool = False
    # method=adapter only (Houlsby): nonlinearity of the bottleneck (gelu|relu|swish|silu|tanh), and whether the
    # blocks' normalization layers are trained (Houlsby et al.) or frozen.
    adapter_nonlinearity: str = "gelu"
    adapter_train_norms: bool = True
    # method=adapter only: also train the embeddings' LayerNorm (BERT/RoBERTa; T5/LLaMA have none), as Houlsby's
    # adapter-bert code does (it trains every LayerNorm); true by default so the baseline is Houlsby's
    adapter_train_embed_norm: bool = True
    # LongLoRA (methods/long_context.py), any method on a decoder: shifted sparse attention in training, groups of
    # s2_group_fraction x the sequence (1/k); trainable_extra: [embed, norm] trained in full as well.
    s2_attn: bool = False
    s2_group_fraction: float = 0.25
    # the shifted heads' groups: offset (causal: they start at G/2, the first G/2 tokens are a short group) |
    # roll (the paper's pseudo-code; wraps around: the first G/2 tokens see the last G/2, not causal)
    s2_shift: str = "offset"
    trainable_extra: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    # AdamW (torch's fused kernel on CPU); weight decay skips 1-D tensors (biases, norms)
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # linear warmup over this fraction of the steps
    warmup_ratio: float = 0.06
    # linear | constant
    schedule: str = "linear"
    # gradient clipping by global norm; null = none
    max_grad_norm: Optional[float] = 1.0


@dataclass
class TrainerConfig:
    # examples per optimizer step and process (x grad_accum)
    batch_size: int = 32
    eval_batch_size: int = 64
    # gradient accumulation: micro-batches of batch_size per optimizer step
    grad_accum: int = 1
    # max_steps > 0 wins over epochs; -1 = no step limit (epochs decides); 0 and other negatives are errors
    max_steps: int = -1
    epochs: float = 1.0
    # evaluate every N steps (and always at the end); 0 = at the end only
    eval_every: int = 0
    # one metrics.jsonl row (and tracker point) every N steps, plus step 1 and the last
    log_every: int = 10
    # auto: fp32 on CPU, bf16 on GPUs that support it (else fp16) | fp32 | bf16 | fp16
    precision: str = "auto"
    # auto | cpu | cuda
    device: str = "auto"
    # recompute each block's activations in backward (less memory, one more forward per block)
    gradient_checkpointing: bool = False
    # a tqdm progress bar
    progress: bool = True
    # DataLoader worker processes
    num_workers: int = 0
    # Checkpoint (trainable weights, optimizer, scheduler, RNG, data position) every N steps and at the end;
    # 0 = only on SIGTERM/SIGINT. A rerun into the same run directory resumes from the newest one.
    checkpoint_every: int = 0
    # How many of the newest checkpoints to keep.
    keep_checkpoints: int = 2
    # Under torchrun with WORLD_SIZE > 1: ddp (replicated model) | fsdp (sharded). Ignored in one process.
    parallel: str = "ddp"
    # Stop the run as `diverged` when the median of the last 10 step losses exceeds this factor x the step-1 loss
    # (a NaN/Inf loss always stops it); null = off (e.g. a run whose first loss is already near 0).
    divergence_factor: Optional[float] = 10.0
    # Fault injection for testing sweeps: "<nan|oom|error|sigterm|kill>@<step>[:rank<k>]" (faults.py); null = none
    # (the env var LORAFA_FAULT is read instead).
    fault: Optional[str] = None


@dataclass
class TensorBoardLoggerConfig:
    # null = <run dir>/tensorboard; a folder = <dir>/<sweep name>/<run name> (one logdir for many sweeps)
    dir: Optional[str] = None


@dataclass
class WandbLoggerConfig:
    project: str = "lorafa-repro"
    # the W&B team or user; null = your default entity
    entity: Optional[str] = None
    # offline (no network, no account; `wandb sync` uploads later) | online | disabled
    mode: str = "offline"
    # null = the sweep directory in a multirun (one W&B group per sweep); none in a single run
    group: Optional[str] = None
    # W&B tags of the run
    tags: list[str] = field(default_factory=list)
    # null = the run directory (W&B writes <dir>/wandb/)
    dir: Optional[str] = None


@dataclass
class MlflowLoggerConfig:
    # null = a local file store: file:<sweep dir>/mlruns in a multirun, file:<run dir>/mlruns in a single run
    tracking_uri: Optional[str] = None
    # null = the sweep directory's name in a multirun (one experiment per sweep), else lorafa-repro
    experiment: Optional[str] = None


@dataclass
class LoggerConfig:
    """The ``logger`` group (conf/logger/): metrics.jsonl is always written; a tracker is on when its section is
    set, e.g. ``logger=[tensorboard,wandb]`` (lorafa_repro/loggers/)."""

    tensorboard: Optional[TensorBoardLoggerConfig] = None
    wandb: Optional[WandbLoggerConfig] = None
    mlflow: Optional[MlflowLoggerConfig] = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # model init, data order and dropout
    seed: int = 0
    # Where result.json / metrics.jsonl go; null = Hydra's run directory.
    output_dir: Optional[str] = None
    # Skip the run when output_dir already holds a finished result.json (success, failed, oom or diverged)
    # of the same resolved config and code; interrupted, killed (running) or unreadable results rerun.
    skip_if_done: bool = False
    # What a run does when output_dir holds a finished or resumable run of another config (or code), or only
    # unusable checkpoints: error (stop before writing anything, printing the differing keys) | rerun (move the
    # old run to output_dir/replaced/<UTC time>/ and start afresh).
    on_config_change: str = "error"


def register_configs() -> None:
    """The typed schema, and the resolvers the model configs use to find pip-packaged models (local_models.py)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    register_resolvers()


ARCHS = ("encoder", "encoder_decoder", "decoder")
#: trainer.max_steps meaning "no step limit" (trainer.epochs decides)
NO_STEP_LIMIT = -1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


def _positive(value: Any, key: str, example: str) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}. Fix: {key}={example}")


def validate(cfg: DictConfig | TrainConfig) -> None:
    """Check values that OmegaConf's types cannot; cheap, touches no model weights."""
    from lorafa_repro.loggers import check_installed
    from lorafa_repro.methods import METHODS
    from lorafa_repro.tasks import FAMILY_ARCHS, check_task_config, check_task_data, known_tasks

    c = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    _no_unknown_keys(c)
    m, t, mo, o, tr = c.method, c.task, c.model, c.optim, c.trainer

    if m.name not in METHODS:
        raise ConfigError(
            f"unknown method {m.name!r}. Fix: method=<one of {', '.join(sorted(METHODS))}>"
        )
    spec = METHODS[m.name]
    if spec.uses_adapters:
        _positive(m.rank, "method.rank", "8")
        if spec.uses_alpha:
            _positive(m.alpha, "method.alpha", "16")
    _check_alpha_scaling(m.alpha_scaling, spec)
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"method.dropout must be in [0, 1), got {m.dropout}. Fix: method.dropout=0.1")
    if m.quantize_4bit != spec.quantize_4bit:
        raise ConfigError(
            f"method.quantize_4bit={m.quantize_4bit} does not fit method {m.name!r}. "
            f"Fix: use method=qlora or method=qlora_fa (4-bit base) or drop the override"
        )

    _check_method_options(m, mo.arch, t.max_seq_len)

    _positive(o.lr, "optim.lr", "5e-4")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}. Fix: optim.weight_decay=0.0")
    if not 0.0 <= o.warmup_ratio < 1.0:
        raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}. Fix: optim.warmup_ratio=0.06")
    _one_of(o.schedule, "optim.schedule", ("linear", "constant"))
    _one_of(o.name, "optim.name", ("adamw",))

    _positive(tr.batch_size, "trainer.batch_size", "32")
    _positive(tr.eval_batch_size, "trainer.eval_batch_size", "64")
    _positive(tr.grad_accum, "trainer.grad_accum", "1")
    if tr.max_steps != NO_STEP_LIMIT and tr.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0, or {NO_STEP_LIMIT} for no limit (trainer.epochs "
                          f"decides), got {tr.max_steps}. Fix: trainer.max_steps=100 or trainer.max_steps=-1")
    if tr.max_steps == NO_STEP_LIMIT and tr.epochs <= 0:
        raise ConfigError("set trainer.max_steps > 0 or trainer.epochs > 0. Fix: trainer.max_steps=100")
    for key in ("eval_every", "log_every"):
        if tr[key] < 0:
            raise ConfigError(f"trainer.{key} must be >= 0, got {tr[key]}. Fix: trainer.{key}=0")
    _one_of(tr.precision, "trainer.precision", PRECISIONS)
    _one_of(tr.device, "trainer.device", DEVICES)
    _one_of(tr.parallel, "trainer.parallel", ("ddp", "fsdp"))
    if tr.checkpoint_every < 0:
        raise ConfigError(f"trainer.checkpoint_every must be >= 0, got {tr.checkpoint_every}. "
                          f"Fix: trainer.checkpoint_every=100 (or 0 for signals only)")
    _positive(tr.keep_checkpoints, "trainer.keep_checkpoints", "2")
    if tr.divergence_factor is not None and not tr.divergence_factor > 1:
        raise ConfigError(f"trainer.divergence_factor must be > 1 or null, got {tr.divergence_factor}. "
                          f"Fix: trainer.divergence_factor=10 (or null to turn the check off)")
    if tr.fault is not None:
        from lorafa_repro.faults import parse

        try:
            parse(tr.fault)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    _one_of(c.on_config_change, "on_config_change", ("error", "rerun"))
    if c.logger.wandb is not None:
        _one_of(c.logger.wandb.mode, "logger.wandb.mode", ("offline", "online", "disabled"))
    check_installed(c.logger)
    _check_device(tr.device, tr.precision, spec.name)

    _one_of(mo.arch, "model.arch", ARCHS)
    _one_of(mo.source, "model.source", ("shipped", "pretrained"))
    if mo.source == "shipped":
        from lorafa_repro.models import shipped_config_names

        if mo.path not in shipped_config_names():
            raise ConfigError(
                f"no shipped architecture config {mo.path!r}. Fix: model.path=<one of "
                f"{', '.join(shipped_config_names())}> or model.source=pretrained"
            )

    if mo.rope_scaling_factor is not None:
        if mo.rope_scaling_factor < 1:
            raise ConfigError(f"model.rope_scaling_factor must be >= 1 (the new context / the trained one), got "
                              f"{mo.rope_scaling_factor}. Fix: model.rope_scaling_factor=2.0 (or null)")
        if mo.arch != "decoder":
            raise ConfigError(f"model.rope_scaling_factor needs a decoder (LLaMA-architecture) model, this one is "
                              f"{mo.arch}. Fix: model.rope_scaling_factor=null")

    _one_of(t.family, "task.family", tuple(FAMILY_ARCHS))
    if t.name not in known_tasks(t.family):
        raise ConfigError(
            f"unknown {t.family} task {t.name!r}. Fix: task={t.family}/<one of {', '.join(known_tasks(t.family))}>"
        )
    archs = FAMILY_ARCHS[t.family]
    if mo.arch not in archs:
        raise ConfigError(
            f"task {t.family}/{t.name} needs an {' or '.join(archs)} model, but model {mo.name!r} is {mo.arch}. "
            f"Fix: pick a model with arch={archs[0]} (e.g. {_example_model(archs[0])})"
        )
    _positive(t.max_seq_len, "task.max_seq_len", "128")
    check_task_config(t.family, t)
    for key in ("max_train_samples", "max_eval_samples"):
        if t[key] is not None and t[key] <= 0:
            raise ConfigError(f"task.{key} must be > 0 or null, got {t[key]}. Fix: task.{key}=null")
    check_task_config(t.family, t)
    if t.data_dir is not None:
        check_task_data(t.family, t.name, Path(t.data_dir), t)
    _check_positions(c)


def _check_positions(c: DictConfig) -> None:
    """The longest sequence the task feeds the model must fit its learned position table (RoBERTa, BERT,
    GPT-2; rotary and relative positions have no hard limit). Reads the model's config, not its weights."""
    from lorafa_repro.models import build_config, position_limit
    from lorafa_repro.tasks import max_tokens

    try:
        limit = position_limit(build_config(c.model))
    except Exception:  # noqa: BLE001 - a config that cannot be read here fails at loading with its own message
        return
    tokens = max_tokens(c.task.family, c.task)
    if limit is not None and tokens > limit:
        raise ConfigError(f"the task feeds up to {tokens} tokens per sequence but model {c.model.name} has "
                          f"{limit} usable positions. Fix: task.max_seq_len={limit} (or lower the task's "
                          f"length keys), or pick a model with a longer context")


def _check_alpha_scaling(alpha_scaling: str, spec: Any) -> None:
    """method.alpha_scaling: a known scaling, and rslora only on a method with a LoRA scale (never ignored)."""
    from lorafa_repro.methods import ALPHA_SCALINGS

    _one_of(alpha_scaling, "method.alpha_scaling", ALPHA_SCALINGS)
    if alpha_scaling != "standard" and not spec.has_lora_scale:
        raise ConfigError(f"method.alpha_scaling={alpha_scaling} does nothing for method {spec.name!r} (no LoRA "
                          f"scale). Fix: method.alpha_scaling=standard, or method=lora / lora_fa")


def _check_method_options(m: Any, arch: str, max_seq_len: int) -> None:
    """The adapter and LongLoRA keys of ``method`` (see MethodConfig)."""
    from lorafa_repro.methods.adapter import NONLINEARITIES
    from lorafa_repro.methods.long_context import EXTRA_TRAINABLES, S2_SHIFTS, s2_groups

    _one_of(m.adapter_nonlinearity, "method.adapter_nonlinearity", tuple(NONLINEARITIES))
    for extra in m.trainable_extra:
        _one_of(extra, "method.trainable_extra[]", EXTRA_TRAINABLES)
    _one_of(m.s2_shift, "method.s2_shift", S2_SHIFTS)
    if not m.s2_attn:
        return
    if arch != "decoder":
        raise ConfigError(f"method.s2_attn=true needs a decoder (LLaMA-architecture) model, this one is {arch}. "
                          "Fix: method.s2_attn=false or model=tiny_llama / llama_7b")
    if not 0 < m.s2_group_fraction <= 1:
        raise ConfigError(f"method.s2_group_fraction must be in (0, 1], got {m.s2_group_fraction}. "
                          "Fix: method.s2_group_fraction=0.25")
    try:
        s2_groups(max_seq_len, m.s2_group_fraction)
    except ValueError as e:
        raise ConfigError(str(e).replace("Fix: ", "Fix: set task.max_seq_len accordingly; ")) from None


def _no_unknown_keys(c: DictConfig) -> None:
    """`+key=value` overrides get past OmegaConf's struct mode; catch the typo here."""
    import difflib
    import dataclasses
    from dataclasses import fields

    sections = {f.name: f.default_factory for f in fields(TrainConfig) if f.default_factory is not dataclasses.MISSING}
    known_top = {f.name for f in fields(TrainConfig)} | {"hydra"}
    for key in c.keys():
        if key not in known_top:
            raise ConfigError(f"unknown key {key!r}. Fix: remove +{key}=... from the command line")
    for section, factory in sections.items():
        known = {f.name for f in fields(factory())}
        for key in c[section].keys():
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {section}.{near[0]}?)" if near else ""
                raise ConfigError(f"unknown key {section}.{key}{hint}. Fix: remove +{section}.{key}=... ")


def _one_of(value: Any, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}. Fix: {key}={choices[0]}")


def _example_model(arch: str) -> str:
    return {"encoder": "model=roberta_base", "encoder_decoder": "model=t5_base", "decoder": "model=llama_7b"}[arch]


def _check_device(device: str, precision: str, method: str) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible. Fix: trainer.device=auto (uses the CPU)")
    on_gpu = device == "cuda" or (device == "auto" and has_cuda)
    if precision == "fp16" and not on_gpu:
        raise ConfigError("trainer.precision=fp16 needs a CUDA GPU. Fix: trainer.precision=auto (fp32 on CPU)")
