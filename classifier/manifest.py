"""The bundle manifest (``manifest.json``): what every stage records about one model, typed.

Sections, in the order the stages write them::

    schema_version, bundle_version, created_at, name     identity (train)
    labels, max_length, base_model, text                 what reading a ticket needs (train)
    data         the files, the data options, what was merged (train)
    training     hyper-parameters, time, precision, validation metrics (train)
    calibration  the softmax temperature and how it was chosen (train)
    baseline     the TF-IDF baseline kept in the bundle, and its weight in the served blend (train; None
                 in bundles from before)
    export       ONNX files, quantization, the drift check (export)
    serving      which model the predictor and the service run, and why (export)
    thresholds   review thresholds, global and per class, and where they came from (evaluate)
    out_of_scope the out-of-scope detector's file and thresholds (train; export adds its models'
                 thresholds); None: no detector (bundles from before schema version 4)
    fields       the fields predicted besides the label, each with its head's labels and thresholds
                 (train); absent for a bundle of the label alone
    versions     library versions (train)
    integrity    sha256 and size of every file the bundle serves from (train, export, 'ticketclf bundle
                 seal'); None: an unsealed bundle, from before schema version 3 (classifier.integrity)

``bundle.read_manifest`` / ``bundle.write_manifest`` are the one way in and out. Reading is
strict (JSON types as written: ``"no"`` is not a boolean, ``"subject"`` not a list) and migrates
manifests of older schema versions. Sections that are records for people (metrics, library
versions, file details) accept fields this release does not know.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from classifier.options import SERVING_ENGINES, DataOptions, ServingEngine, TrainingOptions
from classifier.text import CLEANING_VERSION, TextOptions

SCHEMA_VERSION = 5
MIGRATES_FROM = (1, 2, 3, 4)  # older schema versions read_manifest migrates
DEFAULT_THRESHOLD = 0.5
# A review threshold above any confidence (float32 can round to exactly 1.0): every answer goes to review.
ALWAYS_REVIEW = 1.01


class Section(BaseModel):
    """A manifest section: no unknown fields (a typo in a hand edit is an error), read strictly (the JSON
    types as written: see bundle.read_manifest). A field's ``description`` is what an error message says
    is expected of it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Record(Section):
    """A section kept for people (figures, details): fields from other releases are kept as they are."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=True)


class DataFile(Record):
    path: str
    sha256: str | None = None
    rows_read: int | None = None
    rows_used: int
    label_column: str | None = None  # evaluation reads the same column


class DataSection(Section):
    options: DataOptions = Field(default_factory=DataOptions)  # as given (the validation path absolute)
    seed: int = 42  # of the validation split
    train: DataFile | None = None
    validation: DataFile | None = None
    merged_into_other: list[str] = Field(default_factory=list)  # rare classes --merge-rare-classes merged
    other_label: str = "other"  # the data's own spelling of the class they went into


class TrainingSection(Section):
    options: TrainingOptions = Field(default_factory=TrainingOptions)  # as given
    learning_rate: float | None = None  # the peak learning rate used
    train_seconds: float | None = None
    precision_used: str | None = None
    validation_metrics: dict[str, float] = Field(default_factory=dict)  # the kept epoch's, from Trainer

    @property
    def label_macro_f1(self) -> float | None:
        """The label's validation macro-F1: with fields, ``macro_f1`` is the mean over the label and the fields
        (what early stopping watches) and the label's own is ``label_macro_f1``."""
        return self.validation_metrics.get("label_macro_f1", self.validation_metrics.get("macro_f1"))


class Calibration(Record):
    temperature: float | None = Field(None, description="a positive number")  # None: 1, written by hand
    tickets: int = 0
    method: str | None = None
    why: str | None = None
    skipped: str | None = None
    target_confidence: float | None = None
    validation_nll: dict[str, float] | None = None

    @field_validator("temperature")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"a positive number expected, found {value}")
        return value


class Baseline(Section):
    name: str
    file: str  # in the bundle
    validation_metrics: dict[str, float] = Field(default_factory=dict)
    # The weight of this model's logits in the served scores (classifier.blend), fitted on the validation
    # split; 0: the fine-tuned model alone (and bundles from before the blend).
    blend_weight: float = Field(default=0.0, ge=0.0, le=1.0, description="a number from 0 to 1")
    blend_scale: float = Field(default=1.0, gt=0.0, description="a positive number")  # the blend's sharpness
    # Validation accuracy and log-loss of the model alone, the TF-IDF model alone and the blend.
    blend_metrics: dict[str, float] = Field(default_factory=dict)


class OnnxFile(Record):
    path: str
    bytes: int


class Quantization(Section):
    target: str
    mode: str = "dynamic"
    per_channel: bool = True


class Int8Decision(Record):
    """Whether the export serves int8 or fp32, and the evidence: int8's agreement with fp32 (a Wilson
    interval: accuracy can drop by at most the disagreement) and a paired test on accuracy."""

    engine: ServingEngine = Field(description=" or ".join(SERVING_ENGINES))
    basis: str  # the reason in one line, as the export prints it
    limit_points: float  # --max-accuracy-drop
    confidence: float  # of the interval; the test refuses int8 at p below 1 - confidence
    agreement: float  # int8's label equal to fp32's, over the tickets of Drift.agreement_tickets
    agreement_low: float  # the Wilson interval of the agreement
    agreement_high: float
    max_drop_points: float  # 100 x (1 - agreement_low): the most accuracy int8 can lose, at that confidence
    test: str  # the paired test on the validation tickets only one of the two models answers right
    p_value: float  # of int8's accuracy drop being within the limit


class Drift(Record):
    examples: int  # labelled validation tickets
    fp32_max_abs_logit_diff: float
    fp32_argmax_agreement: float
    int8_max_abs_logit_diff: float
    int8_argmax_agreement: float
    accuracy: dict[str, float]
    int8_accuracy_drop_points: float
    # The evidence for int8 (None in bundles exported before it was recorded):
    agreement_tickets: dict[str, int] = Field(default_factory=dict)  # scored by int8 and fp32, by source
    int8_fp32_agreeing: int | None = None  # of them, those int8 and fp32 gave the same label
    only_fp32_right: int | None = None  # validation tickets only fp32 answers right
    only_int8_right: int | None = None  # and only int8
    decision: Int8Decision | None = None
    # Per field besides the label (classifier.fields): logit differences and agreements, as for the label.
    fields: dict[str, dict[str, float]] = Field(default_factory=dict)


class ExportSection(Section):
    opset: int
    optimized: bool
    last_layer_first_token_only: bool = False
    quantization: Quantization
    files: dict[str, OnnxFile]
    drift: Drift
    max_accuracy_drop_points: float


class Serving(Section):
    engine: ServingEngine = Field(description=" or ".join(SERVING_ENGINES))
    reason: str = ""


class ThresholdSource(Record):
    """Where per-class thresholds came from: ``evaluate --apply-threshold-for-precision``."""

    target_precision: float
    engine: str
    served_engine: str
    data: dict[str, str | None] = Field(default_factory=dict)  # the test file's path and sha256
    tickets: int
    set_at: str
    expected: dict[str, Any] = Field(default_factory=dict)  # routing with these thresholds, as evaluated


class Thresholds(Section):
    global_: float = Field(DEFAULT_THRESHOLD, alias="global", description="a number")  # below it: review
    per_class: dict[str, float] = Field(default_factory=dict)
    source: ThresholdSource | None = None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    def threshold_of(self, label: str) -> float:
        return self.per_class.get(label, self.global_)


class OutOfScope(Section):
    """The out-of-scope detector (``classifier.oos``) and the score above which a ticket is flagged."""

    method: str = Field(description="a string")
    feature: str = Field(description="a string")
    file: str = Field(description="a file name in the bundle")
    target_abstention: float = Field(ge=0, lt=1, description="a share of in-scope tickets, at least 0 and below 1")
    # By the model that scores: torch (chosen at training), fp32 and int8 (chosen again by the export,
    # whose models' features differ a little), each on the validation split for the target abstention.
    thresholds: dict[str, float] = Field(description="an object of numbers by engine")
    threshold: float | None = Field(default=None, description="a number")  # set by hand: overrides ``thresholds``
    route_to: str | None = None  # the data's "Other" class: flagged tickets are labelled with it
    training_tickets: int = 0
    validation_tickets: int = 0

    def threshold_for(self, engine: str) -> float:
        """The threshold for the model ``engine`` runs: the hand-set one, else its own, else PyTorch's."""
        if self.threshold is not None:
            return self.threshold
        return self.thresholds.get(engine, self.thresholds["torch"])

    @field_validator("thresholds")
    @classmethod
    def _has_torch(cls, thresholds: dict[str, float]) -> dict[str, float]:
        if "torch" not in thresholds:
            raise ValueError("a threshold for torch (the model as trained) expected")
        return thresholds


def _known(where: str, per_class: dict[str, float], labels: list[str], whose: str) -> None:
    """A threshold for a label the model lacks would never apply, silently (a typo, or a label renamed)."""
    if unknown := [label for label in per_class if label not in labels]:
        raise ValueError(f"{where}: {unknown[0]!r} is not one of {whose} (renamed? rename it here too)")


class FieldHead(Section):
    """A field the bundle predicts besides its label (classifier.fields): a single-label column or the tags."""

    name: str = Field(description="a column name")
    kind: Literal["single", "tags"] = Field(description="single or tags")
    labels: list[str] = Field(min_length=1, description="a list of label (or tag) names")
    output: str = Field(description="an ONNX output name")  # the field's logits in the exported graph
    loss_weight: float = 1.0
    # single: below ``threshold`` (or the class's in ``per_class``), the field needs review; tags: a tag is
    # given when its sigmoid score reaches its ``per_class`` threshold (chosen on validation for F1).
    threshold: float = Field(default=DEFAULT_THRESHOLD, description="a number")
    per_class: dict[str, float] = Field(default_factory=dict, description="an object of numbers by label")
    left_out: dict[str, int] = Field(default_factory=dict)  # classes or tags too rare to learn: training tickets
    delimiter: str | None = None  # tags: how the training file's cells were split (None: JSON lists, or one tag)
    validation_metrics: dict[str, Any] = Field(default_factory=dict)

    def threshold_of(self, label: str) -> float:
        return self.per_class.get(label, self.threshold)

    @model_validator(mode="after")
    def _thresholds_of_its_labels(self) -> FieldHead:
        _known("per_class", self.per_class, self.labels, f"field {self.name!r}")
        return self


class FileDigest(Section):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="64 lowercase hexadecimal digits")
    size: int = Field(ge=0, description="a whole number of bytes")


class Integrity(Section):
    """The bundle's files as sealed: what loading a model checks the files it reads against."""

    sealed_by: str = Field(description="a string")  # train, export, or 'ticketclf bundle seal' (a hand edit)
    sealed_at: str = Field(description="a string")  # UTC, ISO 8601
    files: dict[str, FileDigest]  # by path inside the bundle, '/'-separated: config.json, onnx/model.onnx

    @field_validator("files")
    @classmethod
    def _inside(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for name in files:
            path = PurePosixPath(name)
            if not name or path.is_absolute() or ".." in path.parts or str(path) != name:
                raise ValueError(f"{name!r} is not a path inside the bundle")
        return files


class Manifest(Section):
    schema_version: int = SCHEMA_VERSION
    bundle_version: str = Field(description="a string")
    created_at: str = ""
    name: str | None = None  # what the service reports; None: the bundle directory's name
    labels: list[str] = Field(min_length=1, description="a list of label names")
    max_length: int = Field(ge=2, description="a whole number >= 2")  # tokens per ticket
    base_model: str | None = None
    text: TextOptions = Field(default_factory=TextOptions)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    calibration: Calibration | None = None  # None: bundles from before calibration (temperature 1)
    baseline: Baseline | None = None
    export: ExportSection | None = None  # None until 'ticketclf export'
    serving: Serving | None = None  # None: the torch model (not exported)
    thresholds: Thresholds = Field(default_factory=lambda: Thresholds.model_validate({}))
    out_of_scope: OutOfScope | None = None  # None: no detector (trained before it, or without features)
    fields: list[FieldHead] | None = None  # None: the label alone (classifier.fields); the heads in FIELD_HEADS_FILE
    versions: dict[str, str] = Field(default_factory=dict)
    integrity: Integrity | None = None  # None: unsealed (schema 2 and before), its files cannot be verified

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once")
        return labels

    @model_validator(mode="after")
    def _names_its_labels(self) -> Manifest:
        route_to = self.out_of_scope.route_to if self.out_of_scope else None
        if route_to is not None and route_to not in self.labels:
            raise ValueError(f"out_of_scope.route_to: {route_to!r} is not one of the labels")
        _known("thresholds.per_class", self.thresholds.per_class, self.labels, "the labels")
        return self

    @property
    def temperature(self) -> float:
        """The softmax temperature: 1 for bundles without calibration."""
        return (self.calibration.temperature if self.calibration else None) or 1.0

    @property
    def blend_weight(self) -> float:
        """The TF-IDF model's weight in the served scores (classifier.blend); 0: the model alone."""
        return self.baseline.blend_weight if self.baseline else 0.0

    @property
    def served_validation_accuracy(self) -> float | None:
        """Validation accuracy of what the bundle serves: the blend where it blends, else the model alone."""
        blended = self.baseline.blend_metrics.get("blend_accuracy") if self.baseline and self.blend_weight > 0 else None
        return blended if blended is not None else self.training.validation_metrics.get("accuracy")

    @property
    def served_validation_macro_f1(self) -> float | None:
        """The label's validation macro-F1 of what the bundle serves, beside :attr:`served_validation_accuracy`
        (None for a blending bundle trained before it was recorded: the model alone's would not match)."""
        if self.baseline and self.blend_weight > 0:
            return self.baseline.blend_metrics.get("blend_macro_f1")
        return self.training.label_macro_f1

    @property
    def cleaning_note(self) -> str | None:
        """What to say where the model learnt from tickets cleaned otherwise than this release cleans them
        (:data:`classifier.text.CLEANING_VERSION`); None where alike."""
        trained = self.versions.get("cleaning")
        if trained == CLEANING_VERSION:
            return None
        how = f"version {trained} of the cleaning" if trained else "a release before the cleaning was versioned"
        return (f"the model learnt from tickets cleaned by {how}, and this release cleans them by version "
                f"{CLEANING_VERSION} (mail forwards, disclaimers, ...): train it again, so that it is served "
                "tickets as it learnt them")

    @property
    def engine(self) -> str:
        """The model the bundle marks for serving: torch until it is exported."""
        return self.serving.engine if self.serving else "torch"

    def to_json(self) -> dict[str, Any]:
        """The manifest as manifest.json holds it."""
        # A bundle of the label alone keeps the manifest it always had: no ``fields`` key.
        return self.model_dump(mode="json", by_alias=True, exclude={"fields"} if self.fields is None else None)


# ---------------------------------------------------------------- older schema versions


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """A manifest of an older schema version in this version's layout (the file is left as it is)."""
    if raw.get("schema_version") == 1:
        raw = _from_v1(raw)
    if raw.get("schema_version") == 2:  # version 3 added ``integrity``: without it the bundle is unsealed
        raw = {**raw, "schema_version": 3}
    if raw.get("schema_version") == 3:  # version 4 added ``out_of_scope``: without it, no detector
        raw = {**raw, "schema_version": 4}
    if raw.get("schema_version") == 4:
        raw = _from_v4(raw)
    return raw


def _from_v4(old: dict[str, Any]) -> dict[str, Any]:
    """Version 5 lets ``data.options.validation_fraction`` be null (sized to the data, the new default); 4 wrote
    the default of its time, 0.1, as if given. Read as the default it was, so that a retrain sizes its split."""
    data = old.get("data")
    if isinstance(data, dict) and isinstance(data.get("options"), dict) \
            and data["options"].get("validation_fraction") == 0.1:
        old = {**old, "data": {**data, "options": {**data["options"], "validation_fraction": None}}}
    return {**old, "schema_version": 5}


def _from_v1(old: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (releases before the typed manifest): data options, validation metrics and the ONNX
    section at the top level, training options flattened into ``training``."""
    new = {key: value for key, value in old.items()
           if key not in ("data_options", "validation_metrics", "onnx", "data", "training")}
    new["schema_version"] = 2
    options = dict(old.get("data_options") or {})
    files = old.get("data") or {}
    new["data"] = {
        "options": {key: options[key] for key in ("label_column", "validation_path", "validation_fraction",
                                                  "min_class_count", "merge_rare_classes") if key in options},
        "seed": options.get("seed", 42),
        **{split: files[split] for split in ("train", "validation") if split in files},
        "merged_into_other": options.get("merged_into_other", []),
        "other_label": options.get("other_label", "other"),
    }
    training = dict(old.get("training") or {})
    known = TrainingOptions.__dataclass_fields__
    new["training"] = {"options": {key: value for key, value in training.items() if key in known},
                       "learning_rate": training.get("learning_rate"),
                       "train_seconds": training.get("train_seconds"),
                       "precision_used": training.get("precision_used"),
                       "validation_metrics": old.get("validation_metrics") or {}}
    if "onnx" in old:
        new["export"] = old["onnx"]
    return new


# ---------------------------------------------------------------- errors a person can act on

_EXPECTED = {"missing": "a value", "string_type": "a string", "int_type": "a whole number", "float_type": "a number",
             "bool_type": "true or false", "list_type": "a list", "tuple_type": "a list", "dict_type": "an object",
             "model_type": "an object", "model_attributes_type": "an object", "dataclass_type": "an object",
             "finite_number": "a number"}


def problems(error: ValidationError) -> list[str]:
    """One ``field: what is expected, found what`` per problem in a manifest."""
    lines = []
    for problem in error.errors():
        location = [part for part in problem["loc"] if isinstance(part, str)]
        name = ".".join(str(part) for part in problem["loc"])
        field = _field(location)
        if problem["type"] == "value_error":  # our own validators' messages say it all (a check of the whole
            message = str(problem["ctx"]["error"])  # manifest names its fields itself)
            lines.append(f"{name}: {message}" if name else message)
            continue
        if problem["type"] == "extra_forbidden":
            lines.append(f"{name}: not a manifest field (a typo?)")
            continue
        expected = field.description if field and field.description else \
            _EXPECTED.get(problem["type"], problem["msg"].lower())
        found = None if problem["type"] == "missing" else problem["input"]
        lines.append(f"{name}: {expected} expected, found {json.dumps(found, default=str)[:40]}")
    return lines


def _field(location: list[str]) -> FieldInfo | None:
    """The field a validation error's location names, if it is a field of a manifest section (the keys of
    a mapping of sections, such as ``integrity.files``'s file names, passed over)."""
    model: Any = Manifest
    field = None
    keyed = False  # the last field is a mapping: the next part is one of its keys
    for part in location:
        fields = getattr(model, "model_fields", None)
        if not fields:
            return None
        named = next((info for key, info in fields.items() if part in (key, info.alias)), None)
        if named is None:
            if not keyed:
                return None
            keyed = False
            continue
        field, keyed = named, get_origin(named.annotation) is dict
        model = next((arg for arg in (field.annotation, *getattr(field.annotation, "__args__", ()))
                      if isinstance(arg, type) and issubclass(arg, BaseModel)), None)
    return field
