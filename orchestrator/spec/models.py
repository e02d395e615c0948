"""The job spec: pydantic models, the single source of truth.

JSON Schema (``orchestrator schema``) and the Kubernetes CRD schema are generated from these
models. Models are immutable and do no I/O; file checks happen in :mod:`orchestrator.spec.loader`.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from orchestrator.spec.tpu import check_job_shape
from orchestrator.storage import check_location

#: Accelerator types the scheduler and the Kubernetes backend know by name. Other names that
#: follow the vendor-model pattern are accepted too (new hardware appears faster than releases).
KNOWN_ACCELERATORS: tuple[str, ...] = (
    "nvidia-h200-141gb",
    "nvidia-h100-80gb",
    "nvidia-a100-80gb",
    "nvidia-a100-40gb",
    "nvidia-l4",
    "nvidia-t4",
    "nvidia-v100",
    "tpu-v4-podslice",
    "tpu-v5-lite-podslice",
    "tpu-v5p-slice",
    "tpu-v6e-slice",
)
ACCELERATOR_PATTERN = re.compile(r"^(nvidia|amd|intel|tpu)-[a-z0-9][a-z0-9-]*$")

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "sine", "tokens")

_MEMORY_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_MEMORY_RE = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,20})?)\s*([a-zA-Z]{0,2})\s*$")
#: The most memory one worker may ask for (1 PiB): far above any machine, far below an overflow.
MAX_MEMORY_BYTES = 1024**5


def parse_memory(value: str | int) -> int:
    """Parse ``4Gi``, ``512Mi``, ``2GB`` or a byte count into bytes (at most :data:`MAX_MEMORY_BYTES`)."""
    if isinstance(value, bool):
        raise ValueError("not a memory size; write a number with a unit such as 512Mi, 4Gi or 2GB")
    if isinstance(value, int):
        size = value
    else:
        match = _MEMORY_RE.match(value[:100])
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _MEMORY_UNITS:
            raise ValueError(
                "not a memory size; write a number with a unit such as 512Mi, 4Gi or 2GB"
            )
        size = int(float(match.group(1)) * _MEMORY_UNITS[unit])
    if size > MAX_MEMORY_BYTES:
        raise ValueError("more than 1Pi (1024 TiB) per worker; write a size such as 512Mi, 4Gi or 2Ti")
    return size


_TOLERATION_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9./_]*(=[-A-Za-z0-9._]*)?(:(NoSchedule|PreferNoSchedule|NoExecute))?$"


def _check_accelerator(value: str) -> str:
    if value in KNOWN_ACCELERATORS or ACCELERATOR_PATTERN.match(value):
        return value
    raise ValueError(
        "not an accelerator type; use a name such as " + ", ".join(KNOWN_ACCELERATORS[:4])
    )


class CrossFieldError(ValueError):
    """A model-level check failed; carries the field path it is about (for error messages)."""

    def __init__(self, field_path: str, message: str, fix: str | None = None, *, hide_value: bool = False) -> None:
        super().__init__(message)
        self.field_path = field_path
        self.fix = fix
        #: Do not echo the value back (it may be a credential).
        self.hide_value = hide_value


class _Model(BaseModel):
    """Base for every spec section: unknown fields are errors, instances are immutable.

    Strict: an integer field takes integers only (not ``true``, ``"2"`` or ``2.0``), a boolean
    field ``true``/``false`` only, a string field strings only; a float field still takes an
    integer (``learning_rate: 1``). Floats must be finite (``.inf``/``.nan`` are refused).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


class CNNModel(_Model):
    """A convolutional classifier: conv blocks (conv, optional batch norm, ReLU, max-pool)."""

    type: Literal["cnn"] = "cnn"
    conv_filters: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[32, 64], min_length=1, max_length=8, description="Filters of each conv block."
    )
    kernel_size: int = Field(default=3, ge=1, le=15, description="Square kernel side.")
    conv_strides: list[Annotated[int, Field(ge=1, le=8)]] | None = Field(
        default=None, min_length=1, max_length=8,
        description="Stride of each conv block, one per conv_filters entry (default: 1 for every block).",
    )
    padding: Literal["same", "valid"] = Field(
        default="same",
        description="same: each conv gives ceil(side / stride) (zero padding, as Keras); valid: no padding, "
        "floor((side - kernel_size) / stride) + 1. validate refuses a model whose feature map would vanish.",
    )
    pool: bool = Field(default=True, description="2x2 max-pool after each block that fits.")
    batch_norm: bool = Field(default=True, description="Batch normalisation after each conv.")
    dropout: float = Field(default=0.25, ge=0.0, lt=1.0, description="Dropout before the head.")
    dense_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default=[128], max_length=8, description="Hidden dense layers before the output layer."
    )

    @model_validator(mode="after")
    def _strides_per_block(self) -> CNNModel:
        if self.conv_strides is not None and len(self.conv_strides) != len(self.conv_filters):
            raise CrossFieldError(
                "conv_strides", f"{len(self.conv_strides)} strides for {len(self.conv_filters)} conv blocks",
                fix=f"give one stride per conv_filters entry, e.g. conv_strides: {[1] * len(self.conv_filters)}",
            )
        return self

    @property
    def strides(self) -> list[int]:
        """Each conv block's stride (1 where conv_strides is not given)."""
        return list(self.conv_strides) if self.conv_strides is not None else [1] * len(self.conv_filters)


class EmbeddingSpec(_Model):
    """A learned vector per token id: the samples are sequences of integer ids below vocab_size."""

    vocab_size: int = Field(ge=2, le=1_000_000, description="Number of token ids (ids are 0 .. vocab_size - 1).")
    dim: int = Field(default=16, ge=1, le=4096, description="Size of each token's vector.")


class RNNModel(_Model):
    """A recurrent classifier: a sample's rows are the time steps (8x8 digits: 8 steps of 8 features)."""

    type: Literal["rnn"] = "rnn"
    cell: Literal["simple", "lstm", "gru"] = Field(default="lstm", description="Recurrent cell.")
    embedding: EmbeddingSpec | None = Field(
        default=None,
        description="Read token ids (samples shaped (steps,), e.g. data.source: tokens) through an embedding "
        "table, e.g. {vocab_size: 32, dim: 16}; needs data.preprocessing: none.",
    )
    layers: int = Field(default=1, ge=1, le=8, description="Stacked recurrent layers.")
    hidden: int = Field(default=64, ge=1, le=8192, description="Hidden units per layer and direction.")
    bidirectional: bool = Field(default=False, description="Read the sequence both ways.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout between layers and before the head.")
    dense_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default=[], max_length=8, description="Hidden dense layers before the output layer."
    )


class SequentialModel(_Model):
    """A Keras-style list of layers, built in either framework (see orchestrator/spec/layers.py)."""

    type: Literal["sequential"] = "sequential"
    layers: list[Any] = Field(
        min_length=1,
        max_length=256,
        description="Layers in order: Keras calls as text, e.g. \"Dense(128, activation='relu', "
        "input_shape=(64,))\", or one-key mappings such as {Dropout: {rate: 0.5}}.",
    )

    @model_validator(mode="after")
    def _layers_parse(self) -> SequentialModel:
        from orchestrator.spec.layers import LayerError, parse_layers

        try:
            parse_layers(self.layers)
        except LayerError as exc:
            raise CrossFieldError(f"layers.{exc.index}", exc.message, fix=exc.fix) from None
        return self


class GANModel(_Model):
    """A generative adversarial pair that learns to draw samples like the data: dense networks, or
    convolutional ones (DCGAN: transposed convolutions up, strided convolutions down) for images."""

    type: Literal["gan"] = "gan"
    architecture: Literal["dense", "dcgan"] = Field(
        default="dense",
        description="dense: fully connected networks (generator_units, discriminator_units); dcgan: a generator "
        "of stride-2 transposed convolutions with batch norm and ReLU, a discriminator of stride-2 "
        "convolutions with LeakyReLU (generator_filters, discriminator_filters); images only.",
    )
    latent: int = Field(default=32, ge=1, le=4096, description="Size of the generator's random input.")
    generator_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default=[128, 256], min_length=1, max_length=8, description="Hidden dense layers of the generator (dense)."
    )
    discriminator_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default=[256, 128], min_length=1, max_length=8,
        description="Hidden dense layers of the discriminator (dense).",
    )
    generator_filters: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[64, 32], min_length=1, max_length=6,
        description="dcgan: channels of the generator's feature maps, smallest map first; each entry is one "
        "4x4 stride-2 transposed convolution, so image sides must divide by 2 ** len (8x8 digits: at most 3).",
    )
    discriminator_filters: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[32, 64], min_length=1, max_length=6,
        description="dcgan: channels of the discriminator's 4x4 stride-2 convolutions, in order.",
    )
    generator_learning_rate: float = Field(default=0.0005, gt=0, le=1.0, description="The generator's Adam rate.")
    discriminator_learning_rate: float = Field(
        default=0.0005, gt=0, le=1.0, description="The discriminator's Adam rate (its own optimizer)."
    )
    beta1: float = Field(default=0.5, ge=0.0, lt=1.0, description="Adam's beta1 for both optimizers.")
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=0.5, description="Real labels are 1 minus this.")
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0, description="Dropout in the discriminator.")

    @model_validator(mode="after")
    def _fields_of_the_architecture(self) -> GANModel:
        other = {"dense": ("generator_filters", "discriminator_filters"),
                 "dcgan": ("generator_units", "discriminator_units")}[self.architecture]
        for name in other:
            # compared with the default, not model_fields_set: a dumped spec (the job record, the CRD)
            # carries every field and must validate again
            if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True):
                uses = "units" if self.architecture == "dense" else "filters"
                raise CrossFieldError(
                    name, f"{name} is not used by architecture {self.architecture}",
                    fix=f"drop it, or set architecture: {'dcgan' if self.architecture == 'dense' else 'dense'} "
                        f"(architecture {self.architecture} uses generator_{uses} and discriminator_{uses})",
                )
        return self


ModelSpec = Annotated[CNNModel | RNNModel | SequentialModel | GANModel, Field(discriminator="type")]


class CleaningSpec(_Model):
    """Row cleaning applied to the whole data set before it is split."""

    drop_invalid: bool = Field(default=True, description="Drop rows with NaN or inf.")
    drop_duplicates: bool = Field(default=True, description="Drop exact duplicate rows.")
    clip_outliers_z: float | None = Field(
        default=None,
        gt=0,
        description="Clip features to this many standard deviations (train statistics).",
    )


class FlipSpec(_Model):
    horizontal: float = Field(default=0.0, ge=0.0, le=1.0, description="Probability of a left-right flip.")
    vertical: float = Field(default=0.0, ge=0.0, le=1.0, description="Probability of an up-down flip.")


class AugmentSpec(_Model):
    """Random changes to training images (never validation or test), seeded per epoch, rank and step."""

    flip: FlipSpec = FlipSpec()
    rotate: float = Field(default=0.0, ge=0.0, le=180.0, description="Rotate by up to this many degrees.")
    translate: float = Field(default=0.0, ge=0.0, lt=1.0, description="Shift by up to this fraction of a side.")
    scale: list[float] | None = Field(
        default=None, min_length=2, max_length=2,
        description="Zoom by a factor drawn from [low, high], e.g. [0.9, 1.1].",
    )
    crop: int = Field(default=0, ge=0, le=64, description="Pad by this many pixels, then crop back at random.")
    noise: float = Field(default=0.0, ge=0.0, description="Standard deviation of added gaussian noise.")

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentSpec:
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise CrossFieldError("scale", "scale must be [low, high] with 0 < low <= high",
                                  fix="e.g. scale: [0.9, 1.1]")
        return self

    @property
    def active(self) -> bool:
        return bool(self.flip.horizontal or self.flip.vertical or self.rotate or self.translate or self.crop
                    or self.noise or (self.scale is not None and self.scale != [1.0, 1.0]))


DATA_FORMATS: tuple[str, ...] = ("parquet", "npz", "npy", "csv", "images")


def _bool_as_text(value: Any) -> Any:
    """YAML's true/false for a field whose values are auto, true and false (one type in the CRD schema)."""
    return ("true" if value else "false") if isinstance(value, bool) else value


class DataSpec(_Model):
    """Where the data comes from and how it is split and preprocessed."""

    source: str = Field(
        default="digits",
        max_length=1024,
        description="'digits' (scikit-learn's 8x8 digits), 'sine' (noisy sine windows: forecast the next "
        "value), 'tokens' (generated token-id sequences, 4 classes by marker tokens and their order: text "
        "classification for an rnn with an embedding), a path to one .npz file with x and y (loaded into "
        "memory), or a data set of files: a "
        "directory, a glob (data/*.parquet) or an s3:// / gs:// prefix of Parquet, CSV, .npz/.npy shards "
        "or an image folder (one sub-directory per class). docs/data.md says what each holds.",
    )
    format: Literal["auto", "parquet", "npz", "npy", "csv", "images"] = Field(
        default="auto",
        description="The files' format; auto: from their extensions (.parquet, .csv, .npz, .npy, .png/.jpg).",
    )
    label_column: str = Field(
        default="label", min_length=1, max_length=256,
        description="Parquet and CSV: the column holding the class (an integer) or the regression target.",
    )
    feature_columns: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, min_length=1, max_length=100_000,
        description="Parquet and CSV: the numeric feature columns, in order (default: every column but the label).",
    )
    image_size: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        default=None, min_length=2, max_length=2,
        description="Image folders: resize every image to [height, width] (default: the first image's size).",
    )
    image_mode: Literal["grayscale", "rgb"] = Field(
        default="rgb", description="Image folders: read images as 1-channel grayscale or 3-channel RGB.",
    )
    streaming: Annotated[Literal["auto", "true", "false"], BeforeValidator(_bool_as_text)] = Field(
        default="auto",
        description="Stream a data set of files through Ray Data (each worker reads only its part) or load "
        "it whole into memory (false). auto: stream data sets of files for the built-in classifiers and "
        "regressors (torch and tensorflow); built-ins, one .npz file, gan and entrypoint jobs load into memory.",
    )
    shuffle_buffer: int = Field(
        default=4096, ge=0, le=10_000_000,
        description="Streaming: rows in each worker's shuffle buffer (seeded by training.seed, epoch and rank).",
    )
    validation_fraction: float = Field(
        default=0.15, gt=0.0, lt=0.5, description="Share of the samples held out for validation (stratified, seeded)."
    )
    test_fraction: float = Field(
        default=0.15, ge=0.0, lt=0.5, description="Share of the samples held out for the final test (stratified, seeded)."
    )
    preprocessing: Literal["standardize", "normalize", "none"] = Field(
        default="standardize",
        description="standardize (zero mean, unit variance) or normalize (min-max to [0, 1]); statistics from the "
        "training split only.",
    )
    cleaning: CleaningSpec = CleaningSpec()
    augment: AugmentSpec = AugmentSpec()

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        value = value.strip()
        if value in BUILTIN_DATASETS or value.endswith(".npz"):
            return value
        if not value or not (value.startswith(("/", ".", "~")) or "/" in value or "://" in value
                             or any(c in value for c in "*?[")):
            raise ValueError(
                f"unknown data source; use one of {', '.join(BUILTIN_DATASETS)}, a path ending in .npz, "
                "or a directory, glob or s3:// / gs:// prefix of data files (e.g. ./data/digits-parquet)"
            )
        if "://" in value:
            check_location(value.split("*", 1)[0] if "*" in value else value)
        return value

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataSpec:
        if self.validation_fraction + self.test_fraction >= 0.8:
            raise CrossFieldError(
                "test_fraction",
                "validation_fraction + test_fraction must leave at least 20% for training",
                fix="lower data.validation_fraction or data.test_fraction",
            )
        if self.is_builtin and self.format != "auto":
            raise CrossFieldError("format", f"the built-in data set {self.source!r} has no file format",
                                  fix="drop data.format (it is for data sets of files)")
        if not self.is_file_set and self.streaming == "true":
            raise CrossFieldError(
                "streaming",
                f"{self.source!r} is loaded into memory; streaming reads data sets of files",
                fix="drop data.streaming, or point data.source at a directory, glob or s3:// prefix of files",
            )
        if self.label_column in (self.feature_columns or []):
            raise CrossFieldError("feature_columns", f"the label column {self.label_column!r} is also a feature",
                                  fix=f"remove {self.label_column!r} from data.feature_columns")
        return self

    @property
    def is_builtin(self) -> bool:
        return self.source in BUILTIN_DATASETS

    @property
    def is_file_set(self) -> bool:
        """A data set of files (a directory, glob or storage prefix) rather than a built-in or one .npz
        file (which keep today's in-memory path)."""
        if self.is_builtin:
            return False
        single_npz = self.source.endswith(".npz") and "://" not in self.source and not any(
            c in self.source for c in "*?[")
        return not single_npz


class TolerationSpec(_Model):
    """A Kubernetes toleration (core/v1 Toleration): which taints of a node pool the job accepts."""

    key: str = Field(
        default="", max_length=316, pattern=r"^([A-Za-z0-9][-A-Za-z0-9./_]*)?$",
        description="The taint key (empty with operator Exists: every taint).",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Equal: the taint's value must be `value`; Exists: any value.")
    value: str = Field(default="", max_length=63, pattern=r"^[-A-Za-z0-9._]*$",
                       description="The taint value to match (operator Equal).")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        default="", description="The taint effect to match (empty: every effect).")
    toleration_seconds: int | None = Field(
        default=None, ge=0,
        description="With effect NoExecute: how long the pod stays on a node after the taint appears.")

    @classmethod
    def short_form(cls, value: Any) -> Any:
        """A job file's ``key=value:Effect`` as fields; anything else as it is."""
        return cls.parse(value) if isinstance(value, str) else value

    @classmethod
    def parse(cls, text: str) -> dict[str, str]:
        """The short form ``key``, ``key=value``, ``key:Effect`` or ``key=value:Effect`` as fields."""
        if not re.match(_TOLERATION_PATTERN, text):
            raise ValueError(f"{text[:80]!r} is not a toleration; write key, key=value or key=value:Effect "
                             "(Effect: NoSchedule, PreferNoSchedule or NoExecute), or {key, operator, value, effect}")
        body, _, effect = text.partition(":")
        key, eq, value = body.partition("=")
        out = {"key": key, "operator": "Equal" if eq else "Exists"}
        if eq:
            out["value"] = value
        if effect:
            out["effect"] = effect
        return out

    @model_validator(mode="after")
    def _consistent(self) -> TolerationSpec:
        if self.operator == "Exists" and self.value:
            raise CrossFieldError("value", "operator Exists matches any value: give no value",
                                  fix="drop value, or set operator: Equal")
        if not self.key and self.operator != "Exists":
            raise CrossFieldError("key", "a toleration without a key must have operator Exists",
                                  fix="give the taint's key, or set operator: Exists (tolerates every taint)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise CrossFieldError("toleration_seconds", "toleration_seconds applies to effect NoExecute only",
                                  fix="set effect: NoExecute, or drop toleration_seconds")
        return self


class ResourcesSpec(_Model):
    """What each worker of the gang needs."""

    workers: int = Field(default=2, ge=1, le=4096, description="Number of training workers.")
    cpus_per_worker: float = Field(default=1.0, gt=0, le=512, description="CPUs per worker; fractions allowed.")
    gpus_per_worker: float = Field(
        default=0, ge=0, le=16,
        description="GPUs per worker (fractions share a GPU); with a TPU accelerator, TPU chips per worker.",
    )
    accelerator: str | None = Field(
        default=None, description="Accelerator type, e.g. nvidia-a100-40gb or tpu-v5-lite-podslice."
    )
    memory: str | int | None = Field(
        default=None, description="Memory per worker: bytes or a size such as 4Gi."
    )
    # Scheduling fields, read by orchestrator.scheduler (see docs/scheduler.md).
    accelerators: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Acceptable accelerator types, most preferred first (instead of `accelerator`); "
        "the scheduler takes the first type that has room.",
    )
    topology: str | None = Field(
        default=None,
        pattern=r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$",
        description="TPU slice topology such as 2x4 or 4x4x4: the gang takes one whole slice.",
    )
    queue: str = Field(
        default="default",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Scheduler queue the job joins (queues, quotas and cohorts are set per cluster).",
    )
    priority: int | str | None = Field(
        default=None,
        description="Priority class (low, normal, high, or one the cluster defines) or an integer; "
        "default: the queue's priority.",
    )
    tolerations: list[Annotated[TolerationSpec, BeforeValidator(TolerationSpec.short_form)]] = Field(
        default_factory=list, max_length=64,
        description="Node-pool taints this job tolerates, as Kubernetes tolerations (the kubernetes backend "
        "also writes them on the job's pods); a job file may also write the short form key, key=value or "
        "key=value:Effect.",
    )
    placement: Literal["pack", "spread"] = Field(
        default="pack",
        description="How Ray places the workers on a cluster's nodes: pack (as few nodes as possible: "
        "faster all-reduce) or spread (one per node where it can: a lost node takes fewer workers).",
    )

    @field_validator("accelerator")
    @classmethod
    def _accelerator_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return _check_accelerator(value)

    @field_validator("accelerators")
    @classmethod
    def _accelerator_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_accelerator(v) for v in value]

    @model_validator(mode="after")
    def _one_accelerator_field(self) -> ResourcesSpec:
        if self.accelerator is not None and self.accelerators is not None:
            raise CrossFieldError(
                "accelerators",
                "give either 'accelerator' (one type) or 'accelerators' (a list), not both",
                fix=f"move {self.accelerator!r} into the 'accelerators' list",
            )
        if self.accelerator_choices and not self.gpus_per_worker:
            # the scheduler could only place it on a pool of that type with no accelerator asked
            # for: refused here, so `validate` refuses what the driver would refuse later
            raise CrossFieldError(
                "gpus_per_worker",
                "an accelerator type is set but no accelerators per worker",
                fix="set resources.gpus_per_worker (GPUs or TPU chips per worker), or drop the accelerator type",
            )
        if self.topology is not None and not all(a.startswith("tpu-") for a in self.accelerator_choices):
            raise CrossFieldError(
                "topology",
                "a slice topology needs a TPU accelerator",
                fix="set resources.accelerator to a TPU type such as tpu-v5p-slice, or drop topology",
            )
        kinds = {a.startswith("tpu-") for a in self.accelerator_choices}
        if len(kinds) > 1:
            raise CrossFieldError(
                "accelerators",
                "mixes GPU and TPU types: a job's workers reserve either GPUs or TPU chips",
                fix="list only GPU types or only TPU types",
            )
        if kinds == {True} and self.gpus_per_worker and self.workers > 1:
            # Ray Train reserves a multi-host TPU slice only given its type and topology.
            if self.topology is None:
                issue = check_job_shape(self.accelerator_choices[0], None, self.workers, self.gpus_per_worker)
                raise CrossFieldError(
                    "topology",
                    f"{self.workers} workers on TPUs need the slice topology",
                    fix=issue.fix if issue and issue.field == "topology"
                    else "set resources.topology, e.g. 2x2x1 or 4x4 (the slice the workers share)",
                )
            if self.accelerator is None:
                raise CrossFieldError(
                    "accelerators",
                    f"{self.workers} workers on TPUs need one TPU type",
                    fix="set resources.accelerator to one TPU type instead of a list",
                )
        if kinds == {True} and self.gpus_per_worker:
            # chips per host and slice topologies per TPU generation (orchestrator/spec/tpu.py)
            for name in self.accelerator_choices:
                issue = check_job_shape(name, self.topology, self.workers, self.gpus_per_worker)
                if issue:
                    field, fix = issue.field, issue.fix
                    if self.accelerators is not None:
                        index = self.accelerator_choices.index(name)
                        field = f"accelerators[{index}]" if field == "accelerator" else field
                        if len(self.accelerators) > 1:
                            fix += f", or drop {name} from resources.accelerators"
                    raise CrossFieldError(field, issue.message, fix=fix)
        return self

    @property
    def accelerator_choices(self) -> tuple[str, ...]:
        """Acceptable accelerator types in order of preference (empty: CPU only)."""
        if self.accelerators is not None:
            return tuple(self.accelerators)
        return (self.accelerator,) if self.accelerator else ()

    @field_validator("memory")
    @classmethod
    def _memory_size(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return None
        if parse_memory(value) <= 0:
            raise ValueError("memory must be positive")
        return value

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_memory(self.memory)

    @property
    def uses_tpu(self) -> bool:
        """The accelerators per worker are TPU chips (``Ray's "TPU" resource), not GPUs."""
        return self.gpus_per_worker > 0 and any(a.startswith("tpu-") for a in self.accelerator_choices)

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0 and not self.uses_tpu

    def ray_resources_per_worker(self) -> dict[str, float]:
        """What each Ray Train worker reserves: CPUs, GPUs or TPU chips, and memory."""
        per_worker: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            per_worker["TPU" if self.uses_tpu else "GPU"] = self.gpus_per_worker
        if self.memory_bytes:
            per_worker["memory"] = float(self.memory_bytes)
        return per_worker

    @property
    def shares_gpus(self) -> bool:
        """Several workers, each with a fraction of a GPU: they share devices."""
        return self.workers > 1 and 0 < self.gpus_per_worker < 1


class TrainingSpec(_Model):
    """The optimisation loop."""

    epochs: int = Field(default=10, ge=1, le=100000, description="Epochs to train in total.")
    batch_size: int = Field(default=64, ge=1, le=1_000_000, description="Global batch size.")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(default="adam", description="The optimizer.")
    learning_rate: float = Field(default=1e-3, gt=0, le=10, description="The optimizer's learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="The optimizer's weight decay.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="For sgd and rmsprop.")
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1,
        description="Seeds the weights, the data split, the shuffling and the augmentation.",
    )


class CheckpointSpec(_Model):
    """When and where checkpoints are written."""

    every_epochs: int = Field(default=1, ge=1, description="Checkpoint at the end of every N-th epoch.")
    every_steps: int | None = Field(
        default=None,
        ge=1,
        description="Also checkpoint every N global steps (mid-epoch), so a failure loses at most N steps.",
    )
    keep: int = Field(default=3, ge=1, le=1000, description="Newest checkpoints kept on disk.")
    dir: str | None = Field(
        default=None, description="Directory for checkpoints (default: the job's directory)."
    )


class FailureSpec(_Model):
    """How many worker-group failures a job survives, and how failures are detected."""

    max_failures: int = Field(
        default=0, ge=0, le=1000, description="Worker-group restarts allowed before the job fails."
    )
    hang_timeout_s: float | None = Field(
        default=600.0,
        gt=0,
        description="A worker that makes no progress for this long is treated as failed (null: never).",
    )
    backoff_s: float = Field(
        default=1.0, ge=0, le=3600, description="Wait before the first restart; doubles each restart."
    )
    backoff_max_s: float = Field(default=60.0, ge=0, le=3600, description="Upper bound of the wait.")

    def backoff(self, restart: int) -> float:
        """Seconds to wait before restart number ``restart`` (1 for the first restart)."""
        if restart < 1:
            return 0.0
        return min(self.backoff_s * 2.0 ** (restart - 1), self.backoff_max_s)


class InjectedFailure(_Model):
    """A failure to inject on purpose (tests, demos): what, on which rank, when, which attempt."""

    kind: Literal["exception", "sigkill", "hang"] = Field(
        description="raise an exception, kill the worker process with SIGKILL, or stop making progress."
    )
    rank: int = Field(default=0, ge=0, description="The worker that fails.")
    at_step: int | None = Field(default=None, ge=1, description="After this global step.")
    at_epoch: int | None = Field(default=None, ge=1, description="At the start of this epoch.")
    attempt: int = Field(default=1, ge=1, description="Only on this attempt (1 = the first run).")

    @model_validator(mode="after")
    def _one_trigger(self) -> InjectedFailure:
        if (self.at_step is None) == (self.at_epoch is None):
            raise CrossFieldError(
                "at_step", "give exactly one of at_step or at_epoch", fix="e.g. at_step: 35"
            )
        return self


class CodeSpec(_Model):
    """The folder the ray backend uploads with a user entrypoint, and what it leaves out."""

    dir: str | None = Field(
        default=None,
        max_length=4096,
        description="The project folder to upload; absolute, or relative to the entrypoint file's folder "
        "(default: the root of the entrypoint's package, or its own folder). Never the home directory.",
    )
    exclude: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list,
        max_length=1000,
        description="More .gitignore-style patterns left out of the upload (with .orchestratorignore, "
        ".gitignore and .rayignore in the folder, and .git, .ssh, .venv, secrets).",
    )


class FaultInjectionSpec(_Model):
    """Test-only settings: failure injection."""

    inject: list[InjectedFailure] = Field(default_factory=list, max_length=32)


class SyncSpec(_Model):
    """Gradient synchronisation (all-reduce) settings."""

    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto",
        description="Collective backend; auto: nccl when each worker has a whole GPU, else gloo.",
    )
    bucket_mb: float = Field(default=25.0, gt=0, le=1024, description="DDP bucket size.")
    compression: Literal["none", "fp16"] = Field(
        default="none", description="Gradient compression through a DDP communication hook."
    )


# -- Kubernetes: what a TrainingJob's pods need to reach storage ----------------------------------

#: A DNS-1123 subdomain (Secret, ConfigMap, PersistentVolumeClaim and ServiceAccount names).
_K8S_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1123 label (volume names).
_K8S_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A container environment variable name, as Kubernetes accepts it.
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: A Kubernetes quantity in bytes (``2Gi``, ``512Mi``; not ``2GB``, which Kubernetes refuses).
_K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
#: Variables whose value is a credential: never written inline in a spec (a TrainingJob is readable
#: by everyone who may list jobs, and its spec is copied into the RayJob and printed by --dry-run).
_CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.I)
#: ... except those that hold a path to a file (AWS_WEB_IDENTITY_TOKEN_FILE and the like).
_PATH_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.I)
#: Set by the operator in every pod of a TrainingJob; a spec does not set them.
KUBERNETES_RESERVED_ENV = ("ORCHESTRATOR_HOME", "ORCHESTRATOR_CHECKPOINT_OWNER", "ORCHESTRATOR_STORAGE",
                           "ORCHESTRATOR_SPEC_YAML", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
#: Volumes the operator adds itself (the spec ConfigMap; /dev/shm), and where they are mounted.
KUBERNETES_RESERVED_VOLUMES = ("job-spec", "dshm")
KUBERNETES_RESERVED_MOUNTS = ("/etc/orchestrator", "/dev/shm")


def _under(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (both absolute and normalised)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class SecretKeyRef(_Model):
    """One key of a Secret in the job's namespace (``valueFrom.secretKeyRef``)."""

    name: str = Field(max_length=253, pattern=_K8S_SUBDOMAIN, description="The Secret's name.")
    key: str = Field(max_length=253, pattern=_SECRET_KEY, description="The key inside the Secret.")


class EnvVar(_Model):
    """An environment variable of the head and worker containers: a plain value, or a Secret's key."""

    name: str = Field(min_length=1, max_length=256, pattern=_ENV_NAME, description="The variable's name.")
    value: str | None = Field(
        default=None, max_length=32768,
        description="A plain value (never a credential: use secret_key_ref or env_from_secrets).",
    )
    secret_key_ref: SecretKeyRef | None = Field(
        default=None, description="Take the value from a key of a Secret, e.g. {name: s3-creds, key: secret}."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_key_ref is None):
            raise CrossFieldError("value", f"environment variable {self.name}: give exactly one of value or "
                                           "secret_key_ref", fix="e.g. {name: AWS_REGION, value: eu-west-1}",
                                  hide_value=True)
        if self.name in KUBERNETES_RESERVED_ENV:
            fix = ("set the job's `storage` field instead" if self.name == "ORCHESTRATOR_STORAGE"
                   else "remove it from kubernetes.env")
            raise CrossFieldError("name", f"{self.name} is set by the operator in every pod", fix=fix, hide_value=True)
        if self.value and _CREDENTIAL_NAME.search(self.name) and not _PATH_NAME.search(self.name):
            raise CrossFieldError(
                "value",
                f"{self.name} looks like a credential and is written inline: a TrainingJob's spec is readable "
                "by everyone who can list jobs, and is copied into the RayJob and printed by --dry-run",
                fix="keep it in a Secret and use secret_key_ref: {name: SECRET, key: KEY}, or list the Secret "
                    "in kubernetes.env_from_secrets (e.g. kubectl create secret generic s3-creds "
                    f"--from-literal={self.name}=...)",
                hide_value=True,
            )
        return self


class PersistentVolumeClaimSource(_Model):
    """A PersistentVolumeClaim in the job's namespace (ReadWriteMany for storage that several pods write)."""

    claim_name: str = Field(max_length=253, pattern=_K8S_SUBDOMAIN, description="The claim's name.")
    read_only: bool = Field(default=False, description="Mount the claim read-only.")


class SecretVolumeSource(_Model):
    """A Secret's keys as files (e.g. a GCS service-account key for GOOGLE_APPLICATION_CREDENTIALS)."""

    secret_name: str = Field(max_length=253, pattern=_K8S_SUBDOMAIN, description="The Secret's name.")


class ConfigMapVolumeSource(_Model):
    """A ConfigMap's keys as files."""

    name: str = Field(max_length=253, pattern=_K8S_SUBDOMAIN, description="The ConfigMap's name.")


class VolumeSpec(_Model):
    """A volume of the head and worker pods: exactly one of persistent_volume_claim, secret, config_map."""

    name: str = Field(max_length=63, pattern=_K8S_LABEL, description="The volume's name (volume_mounts refer to it).")
    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None, description="A PersistentVolumeClaim, e.g. {claim_name: training-rwx}.")
    secret: SecretVolumeSource | None = Field(default=None, description="A Secret, e.g. {secret_name: gcs-key}.")
    config_map: ConfigMapVolumeSource | None = Field(default=None, description="A ConfigMap, e.g. {name: my-config}.")

    @model_validator(mode="before")
    @classmethod
    def _no_host_path(cls, data: Any) -> Any:
        """A node's own directory would break Pod Security "restricted", which every Ray pod meets."""
        for key in ("host_path", "hostPath"):
            if isinstance(data, dict) and key in data:
                raise CrossFieldError(
                    key, f"volume {data.get('name')}: hostPath volumes are refused (the Ray pods run under Pod "
                    "Security \"restricted\", which forbids a node's directories)",
                    fix="put the data on a PersistentVolumeClaim: {name: data, persistent_volume_claim: "
                        "{claim_name: CLAIM}} (a local PersistentVolume can hold a node's disk), or in storage")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> VolumeSpec:
        given = [s for s in (self.persistent_volume_claim, self.secret, self.config_map) if s is not None]
        if len(given) != 1:
            raise CrossFieldError(
                "persistent_volume_claim", f"volume {self.name}: give exactly one of persistent_volume_claim, "
                "secret or config_map", fix="e.g. {name: shared, persistent_volume_claim: {claim_name: training-rwx}}")
        if self.name in KUBERNETES_RESERVED_VOLUMES:
            raise CrossFieldError("name", f"volume name {self.name} is used by the operator",
                                  fix="pick another name")
        return self


class VolumeMount(_Model):
    """Where a volume appears in the head and worker containers."""

    name: str = Field(max_length=63, pattern=_K8S_LABEL, description="A volume of kubernetes.volumes.")
    mount_path: str = Field(min_length=2, max_length=1024, pattern=r"^/",
                            description="Absolute path in the containers, e.g. /mnt/shared.")
    read_only: bool = Field(default=False, description="Mount it read-only.")
    sub_path: str | None = Field(default=None, min_length=1, max_length=1024,
                                 description="Mount only this folder of the volume (a relative path).")

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")) or ":" in value:
            raise ValueError("a mount path must be absolute without '.', '..' or ':'; e.g. /mnt/shared")
        normal = posixpath.normpath(value)
        for reserved in KUBERNETES_RESERVED_MOUNTS:
            if _under(normal, reserved) or normal == "/":
                raise ValueError(f"{normal} is used by the operator ({reserved}); mount the volume elsewhere "
                                 "(for /dev/shm set kubernetes.shm_size)")
        return normal

    @field_validator("sub_path")
    @classmethod
    def _sub_path(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/")):
            raise ValueError("sub_path is a relative path inside the volume without '..'; e.g. team-a/jobs")
        return value


class KubernetesSpec(_Model):
    """What a TrainingJob's head and worker pods get besides the defaults (the kubernetes backend only;
    the local and ray backends ignore this section). Credentials come from Secrets, never inline."""

    image: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=r"^[^\s]+$",
        description="The container image of the Ray pods (default: the operator's --image).",
    )
    service_account: str | None = Field(
        default=None, max_length=253, pattern=_K8S_SUBDOMAIN,
        description="The pods' ServiceAccount (default: the operator's --service-account), e.g. one bound to "
        "an IAM role (EKS IRSA) or a Google service account (GKE workload identity).",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=256,
                              description="More environment variables: a plain value, or secret_key_ref.")
    env_from_secrets: list[Annotated[str, Field(max_length=253, pattern=_K8S_SUBDOMAIN)]] = Field(
        default_factory=list, max_length=32,
        description="Secrets whose every key becomes an environment variable (envFrom), e.g. one holding "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
    )
    volumes: list[VolumeSpec] = Field(default_factory=list, max_length=64,
                                      description="Volumes: PersistentVolumeClaims, Secrets, ConfigMaps.")
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=64,
                                             description="Where the volumes appear in the containers.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=64,
        description="Node labels every pod needs (the node pool's own labels win on the worker pods).",
    )
    shm_size: str | None = Field(
        default=None, max_length=32,
        description="Size of /dev/shm (a memory-backed emptyDir, counted in the pod's memory), e.g. 2Gi; "
        "default: the container runtime's (often 64Mi).",
    )
    local_queue: str | None = Field(
        default=None, max_length=63, pattern=_K8S_LABEL,
        description="Kueue LocalQueue of the job's namespace: Kueue admits the job (the RayJob is created "
        "suspended with the kueue.x-k8s.io/queue-name label) instead of the operator's node pools.",
    )

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            prefix, _, name = key.rpartition("/")
            if not _LABEL_NAME.match(name) or (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix))):
                raise ValueError(f"{key!r} is not a Kubernetes label key; write name or prefix/name, "
                                 "e.g. cloud.google.com/gke-spot")
            if label and not _LABEL_NAME.match(label):
                raise ValueError(f"{label!r} (for {key}) is not a label value; up to 63 letters, digits, "
                                 "'-', '_' or '.', starting and ending with a letter or digit")
        return value

    @field_validator("shm_size")
    @classmethod
    def _shm_size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _K8S_QUANTITY.match(value) or parse_memory(value) <= 0:
            raise ValueError("not a Kubernetes memory quantity; write a size such as 512Mi or 2Gi")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSpec:
        names = [v.name for v in self.volumes]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise CrossFieldError(f"volumes.{i}.name", f"two volumes named {name}", fix="rename one")
        seen_env: set[str] = set()
        for i, var in enumerate(self.env):
            if var.name in seen_env:
                raise CrossFieldError(f"env.{i}.name", f"{var.name} is set twice", fix="keep one")
            seen_env.add(var.name)
        paths: set[str] = set()
        for i, mount in enumerate(self.volume_mounts):
            if mount.name not in names:
                declared = ", ".join(names) if names else "none"
                raise CrossFieldError(
                    f"volume_mounts.{i}.name", f"volume {mount.name} is not declared (volumes: {declared})",
                    fix=f"add it to kubernetes.volumes, e.g. {{name: {mount.name}, persistent_volume_claim: "
                        "{claim_name: CLAIM}}",
                )
            if mount.mount_path in paths:
                raise CrossFieldError(f"volume_mounts.{i}.mount_path", f"two volumes mounted at {mount.mount_path}",
                                      fix="give each mount its own path")
            paths.add(mount.mount_path)
        return self

    def mount_of(self, path: str) -> VolumeMount | None:
        """The mount that holds ``path`` (the deepest one), if any."""
        holding = [m for m in self.volume_mounts if _under(path, m.mount_path)]
        return max(holding, key=lambda m: len(m.mount_path), default=None)

    def writable(self, mount: VolumeMount) -> bool:
        volume = next(v for v in self.volumes if v.name == mount.name)
        return not mount.read_only and volume.persistent_volume_claim is not None \
            and not volume.persistent_volume_claim.read_only


def unmounted_paths(storage: str | None, init_from: str | None,
                    kubernetes: KubernetesSpec | None) -> list[CrossFieldError]:
    """Why a shared-path ``storage`` or ``init_from`` cannot work in a TrainingJob's pods (empty: they
    can, or they are URIs or job ids).

    A pod sees only its image and its volumes: a shared-path storage must lie on a writable
    PersistentVolumeClaim mounted by ``kubernetes.volume_mounts``; an ``init_from`` path on any mount.
    """
    problems = []
    if storage is not None and storage.startswith("/"):
        fix = ("mount a ReadWriteMany PersistentVolumeClaim there: kubernetes: {volumes: [{name: shared, "
               "persistent_volume_claim: {claim_name: CLAIM}}], volume_mounts: [{name: shared, mount_path: "
               f"{posixpath.dirname(storage.rstrip('/')) or storage}}}]}}, or use s3:// or gs:// storage")
        mount = kubernetes.mount_of(storage) if kubernetes is not None else None
        if mount is None:
            problems.append(CrossFieldError(
                "storage", f"storage {storage} is a shared path, and on Kubernetes no volume is mounted there "
                           "(the pods would write into their own disks, lost with them)", fix=fix))
        elif kubernetes is not None and not kubernetes.writable(mount):
            problems.append(CrossFieldError(
                "storage", f"storage {storage} is on volume {mount.name}, which is read-only or not a "
                           "PersistentVolumeClaim (the job writes its outputs there)",
                fix=f"mount a writable PersistentVolumeClaim at {mount.mount_path} (no read_only on the mount "
                    "or the claim)"))
    if init_from is not None and init_from.startswith("/") and (
            kubernetes is None or kubernetes.mount_of(init_from) is None):
        problems.append(CrossFieldError(
            "init_from", f"init_from {init_from} is a path, and on Kubernetes no volume is mounted there",
            fix="mount the volume that holds it (kubernetes.volumes and volume_mounts; read_only is fine), "
                "or give the job's s3:// or gs:// location"))
    return problems


def uses_embedding(model: CNNModel | RNNModel | SequentialModel | GANModel) -> bool:
    """The model reads token ids: an rnn with an embedding, or a layer list that starts with Embedding."""
    if isinstance(model, RNNModel):
        return model.embedding is not None
    if isinstance(model, SequentialModel):
        from orchestrator.spec.layers import parse_layers

        return parse_layers(model.layers)[0].kind == "Embedding"
    return False


def _embedding_vocab(model: CNNModel | RNNModel | SequentialModel | GANModel) -> tuple[str, int]:
    if isinstance(model, RNNModel) and model.embedding is not None:
        return "model.embedding.vocab_size", model.embedding.vocab_size
    from orchestrator.spec.layers import parse_layers

    assert isinstance(model, SequentialModel)  # uses_embedding: an rnn's embedding, else a layer list's
    return "model.layers.0", int(parse_layers(model.layers)[0].args["input_dim"])


def model_data_problem(model: CNNModel | RNNModel | SequentialModel | GANModel, data: DataSpec) -> CrossFieldError | None:
    """Why the model cannot take the data (None: it can, or the data's shape is known only at load).

    Token ids must reach an embedding as they are (no preprocessing, clipping or augmentation); a
    built-in data set's sample shape is known here, so a cnn or a dcgan that cannot fit it is
    refused now, with the sizes, rather than in the workers.
    """
    from orchestrator.spec.shapes import (
        BUILTIN_SAMPLE_SHAPES,
        TOKENS_VOCAB,
        ShapeError,
        check_image_shape,
        cnn_sides,
        dcgan_discriminator_sides,
        dcgan_start,
    )

    if uses_embedding(model):
        fix_source = "use data.source: tokens, or an .npz whose x holds integer token ids shaped (N, steps)"
        if data.preprocessing != "none":
            return CrossFieldError("data.preprocessing", f"an embedding reads token ids, which {data.preprocessing} "
                                   "would turn into fractions", fix="set data.preprocessing: none")
        if data.cleaning.clip_outliers_z is not None:
            return CrossFieldError("data.cleaning.clip_outliers_z", "clipping would change token ids",
                                   fix="drop data.cleaning.clip_outliers_z")
        if data.augment.active:
            return CrossFieldError("data.augment", "image augmentation would change token ids",
                                   fix="drop data.augment")
        if data.source in ("digits", "sine"):
            shape = BUILTIN_SAMPLE_SHAPES[data.source]
            return CrossFieldError("data.source", f"an embedding reads token ids, and {data.source} gives samples of "
                                   f"real values shaped {shape}", fix=fix_source)
        if data.source == "tokens":
            field, vocab = _embedding_vocab(model)
            if vocab < TOKENS_VOCAB:
                return CrossFieldError(field, f"the tokens data set has ids 0 to {TOKENS_VOCAB - 1}: a vocabulary of "
                                       f"{vocab} is too small", fix=f"set the vocabulary size to {TOKENS_VOCAB}")
    builtin = BUILTIN_SAMPLE_SHAPES.get(data.source)
    if builtin is None:
        return None
    shape = builtin
    try:
        if isinstance(model, CNNModel):
            _, h, w = check_image_shape(shape, "the cnn model")
            cnn_sides(model.conv_filters, model.kernel_size, model.strides, model.padding, model.pool, h, w)
        elif isinstance(model, GANModel) and model.architecture == "dcgan":
            _, h, w = check_image_shape(shape, "the dcgan architecture")
            dcgan_start(h, w, len(model.generator_filters))
            dcgan_discriminator_sides(h, w, len(model.discriminator_filters))
    except ShapeError as exc:
        field = "data.source" if exc.field == "type" else f"model.{exc.field}"
        return CrossFieldError(field, f"{exc.message} (data.source: {data.source})", fix=exc.fix)
    return None


class JobSpec(_Model):
    """A training job: what to train, on what data, with which resources."""

    name: str = Field(
        min_length=1,
        max_length=53,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Lower-case letters, digits and '-' (a Kubernetes name).",
    )
    framework: Literal["torch", "tensorflow"] = Field(
        default="torch",
        description="torch: Ray Train's TorchTrainer (DDP); tensorflow: TensorflowTrainer with "
        "MultiWorkerMirroredStrategy (Keras 2 through tf_keras).",
    )
    model: ModelSpec | None = None
    entrypoint: str | None = Field(
        default=None,
        pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$",
        description="A user training function, path/to/file.py:function.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Free-form values passed to a user entrypoint."
    )
    data: DataSpec = DataSpec()
    resources: ResourcesSpec = ResourcesSpec()
    training: TrainingSpec = TrainingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    code: CodeSpec = CodeSpec()
    failure: FailureSpec = FailureSpec()
    sync: SyncSpec = SyncSpec()
    testing: FaultInjectionSpec = FaultInjectionSpec()
    storage: str | None = Field(
        default=None,
        max_length=1024,
        description="Where the job's outputs live (checkpoints, model, TensorBoard events, samples, "
        "result, spec), under <storage>/<job id>/: s3://bucket/prefix (any S3-compatible endpoint; "
        "AWS_ENDPOINT_URL overrides it), gs://bucket/prefix, or an absolute shared path (NFS, a "
        "ReadWriteMany volume). Default: ORCHESTRATOR_STORAGE, else the local job directory.",
    )
    init_from: str | None = Field(
        default=None,
        max_length=1024,
        description="Start from another job's trained weights (fine-tuning): a job id, or the storage "
        "location of a job (s3://bucket/prefix/JOB_ID). The model must have the same architecture.",
    )

    kubernetes: KubernetesSpec | None = Field(
        default=None,
        description="The kubernetes backend only (ignored by local and ray): image, service account, env "
        "(plain or from Secrets), volumes and mounts, node selector and /dev/shm of the Ray pods.",
    )

    @field_validator("storage")
    @classmethod
    def _storage_location(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_location(value)

    @field_validator("init_from")
    @classmethod
    def _init_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if "://" in value or value.startswith(("/", "~")):
            return check_location(value)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("give a job id (orchestrator status lists them) or a storage location "
                             "(s3://bucket/prefix/JOB_ID, gs://..., /shared/path/JOB_ID)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if (self.model is None) == (self.entrypoint is None):
            raise CrossFieldError(
                "model",
                "give exactly one of 'model' (a built-in model) or 'entrypoint'",
                fix="add 'model: {type: cnn}' or 'entrypoint: path/to/file.py:function'",
            )
        if self.model is not None and self.model.type == "gan" and self.data.preprocessing != "normalize":
            raise CrossFieldError(
                "data.preprocessing",
                "a gan's generator draws values in [0, 1] (a sigmoid): the data must be min-max normalised",
                fix="set data.preprocessing: normalize",
            )
        if self.data.streaming == "true" and not self._can_stream:
            raise CrossFieldError(
                "data.streaming",
                "streaming input feeds the built-in classifiers and regressors (cnn, rnn, sequential; torch "
                "and tensorflow); gan and entrypoint jobs read the same files into memory",
                fix="set data.streaming: auto (or false)",
            )
        if self.training.batch_size < self.resources.workers:
            raise CrossFieldError(
                "training.batch_size",
                f"global batch size {self.training.batch_size} is smaller than "
                f"resources.workers {self.resources.workers}",
                fix=f"set training.batch_size to at least {self.resources.workers}",
            )
        for i, inj in enumerate(self.testing.inject):
            if inj.rank >= self.resources.workers:
                raise CrossFieldError(
                    f"testing.inject.{i}.rank",
                    f"rank {inj.rank} does not exist with {self.resources.workers} workers",
                    fix=f"use a rank from 0 to {self.resources.workers - 1}",
                )
            if inj.kind == "hang" and self.failure.hang_timeout_s is None:
                raise CrossFieldError(
                    "failure.hang_timeout_s",
                    "an injected hang needs hang detection, or the job hangs forever",
                    fix="set failure.hang_timeout_s, e.g. 20",
                )
        if self.failure.backoff_max_s < self.failure.backoff_s:
            raise CrossFieldError(
                "failure.backoff_max_s", "must not be below failure.backoff_s",
                fix=f"set it to at least {self.failure.backoff_s:g}",
            )
        if self.sync.backend == "nccl" and not self.resources.uses_gpu:
            raise CrossFieldError(
                "sync.backend",
                "nccl needs GPUs" + (" (TPU chips are not CUDA devices)" if self.resources.uses_tpu else ""),
                fix="set resources.gpus_per_worker >= 1, or sync.backend: gloo (or auto)",
            )
        if self.sync.backend == "nccl" and self.resources.shares_gpus:
            raise CrossFieldError(
                "sync.backend",
                f"nccl cannot run {self.resources.workers} workers on "
                f"{self.resources.gpus_per_worker:g} GPU each: workers share a GPU, and NCCL refuses "
                "two ranks on one device",
                fix="give each worker a whole GPU (resources.gpus_per_worker: 1), or use sync.backend: "
                "gloo (or auto, which picks gloo here)",
            )
        return self

    @model_validator(mode="after")
    def _model_fits_data(self) -> JobSpec:
        if self.model is not None:
            problem = model_data_problem(self.model, self.data)
            if problem is not None:
                raise problem
        return self

    @model_validator(mode="after")
    def _kubernetes_storage(self) -> JobSpec:
        # a spec with a kubernetes section is meant for Kubernetes: check its storage is reachable
        # there now (the kubernetes backend and the operator check every spec the same way)
        if self.kubernetes is not None:
            for problem in unmounted_paths(self.storage, self.init_from, self.kubernetes):
                raise problem
        return self

    @property
    def _can_stream(self) -> bool:
        return (self.entrypoint is None and self.model is not None
                and self.model.type in ("cnn", "rnn", "sequential"))

    @property
    def streams_data(self) -> bool:
        """True when the workers stream their part of a data set of files (data.streaming resolved)."""
        if self.data.streaming == "auto":
            return self.data.is_file_set and self._can_stream
        return self.data.streaming == "true"

    @property
    def per_worker_batch_size(self) -> int:
        return self.training.batch_size // self.resources.workers

    @property
    def sync_backend(self) -> str:
        """The collective backend actually used: nccl when each worker has its own GPU, else gloo.

        Workers with a fraction of a GPU share one device, and NCCL refuses two ranks on the
        same device, so they all-reduce over gloo (their tensors are copied through the CPU).
        """
        if self.sync.backend != "auto":
            return self.sync.backend
        return "nccl" if self.resources.uses_gpu and not self.resources.shares_gpus else "gloo"
