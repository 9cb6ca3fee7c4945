"""``ticketclf``: split, train, export, evaluate, predict, serve and manage models from the command line.

Each command parses its arguments, calls one library function and prints the result.
A :class:`~classifier.errors.UserError` becomes one line on stderr and exit code 2.
Heavy libraries are imported inside the commands, so ``ticketclf --help`` is instant.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import logging
import os
import select
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from classifier.errors import ModelError, UserError, counted, first_of, one_line
from classifier.options import DEFAULT_EPOCHS, ENGINES, MIN_STEPS, DataOptions
from classifier.text import TextOptions, ticket_text

if TYPE_CHECKING:
    from classifier.feedback import WindowStats
    from classifier.predict import Prediction, Predictor
    from classifier.repository import ModelRepository, Version

Command = Callable[[argparse.Namespace], int]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks and show each option's default (where there is one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A flag's default (True for --no-baseline) reads as if the flag were on by default; a help that
        # states its default in words ("1 each") needs no "(default: {})" after it.
        if action.default is None or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv: Sequence[str] | None = None) -> int:
    # Whichever way it starts (console script, python -m, scripts/): processes fork here (gunicorn
    # workers, data loaders), and the tokenizer's thread pool must not be running when they do.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and args.command == "predict" and not any(extra.startswith("-") for extra in extras):
        # argparse gives "texts" its (empty) share before an option that follows the bundle:
        # "predict runs/model --top-k 2 'text'" leaves 'text' over. It is a ticket text all the same.
        args.texts += extras
    elif extras:
        parser.parse_args(argv)  # argparse's own message and exit code for arguments nobody takes
    _configure_logging(args.verbose)
    # A SIGTERM (kill, a CI timeout, Kubernetes) unwinds like Ctrl-C, so that half-written
    # exports and staged bundles are removed on the way out. gunicorn sets its own handler.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = args.run(args)
        sys.stdout.flush()  # inside the try: a reader gone before the last buffered lines is handled too
        return code
    except UserError as error:
        print(f"ticketclf {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError as error:
        if not _stdout_gone():  # another pipe (a FIFO given as an output file): an error like any
            print(f"ticketclf {args.command}: error: {_os_problem(error)}", file=sys.stderr)
            return UserError.exit_code
        # The reader left early (`ticketclf feedback stats ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the exit flush must not fail again
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as error:  # a path that cannot be written (a folder under a file, no permission, disk full)
        print(f"ticketclf {args.command}: error: {_os_problem(error)}", file=sys.stderr)
        return UserError.exit_code
    except Exception as error:
        if not any(sign in str(error) for sign in _WRITE_FAILED):  # a library's own error for a failed write
            raise
        print(f"ticketclf {args.command}: error: writing a file failed; is the disk full? ({one_line(error)})",
              file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"ticketclf {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"ticketclf {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() may run inside a longer-lived process (tests)


# How libraries word a write that failed, mostly on a full disk: safetensors passes the OS's message on;
# torch.save does not ("PytorchStreamWriter failed writing file", or "unexpected pos" at its end).
_WRITE_FAILED = (os.strerror(errno.ENOSPC), "PytorchStreamWriter failed writing", "unexpected pos")


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has left."""
    try:
        poller = select.poll()
        poller.register(1, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _os_problem(error: OSError) -> str:
    """An OSError as one line. ``shutil.copytree`` gathers its failures into one error whose message is the
    list of them all: the first one's reason and its file are what a person needs."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        source, target, why = error.args[0][0]
        more = f" (and {len(error.args[0]) - 1} more files)" if len(error.args[0]) > 1 else ""
        return f"cannot copy {source} to {target}: {why}{more}"
    return one_line(error)


class _Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt: ``except Exception`` in a library must not
    swallow it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise _Terminated


def _configure_logging(verbose: bool) -> None:
    """Our own progress messages (the data report, export warnings) always; library chatter with -v."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("classifier").setLevel(logging.INFO)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketclf", description="Ticket classification: split, train, "
                                     "export, evaluate, predict, serve and manage models.",
                                     formatter_class=_HelpFormatter, epilog=WORKFLOW_EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_split, _add_review_labels, _add_train, _add_export, _add_evaluate, _add_predict, _add_serve,
                _add_models, _add_retrain, _add_bundle, _add_feedback):
        add(commands)
    return parser


def _subcommand(commands: argparse._SubParsersAction, name: str, help: str, run: Command,
                description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=description or help, epilog=epilog,
                                 formatter_class=_HelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _column_name(value: str) -> str:
    """One column name, as given or in double quotes, as the list options take a name holding a comma."""
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value


def _csv_file(value: str) -> Path:
    """A file to write as CSV: named .csv or .tsv, as reading it back (train, evaluate) tells a file's format by
    its name; "review.json" would be CSV that no command reads."""
    path = Path(value)
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise argparse.ArgumentTypeError(f"{value}: the file is written as CSV; name it .csv (or .tsv for tabs)")
    return path


def _refuse_to_replace(args: argparse.Namespace, *outputs: Path, source: Path | None = None) -> None:
    """A file a command writes whole replaces one already there only with ``--overwrite``: it may be a user's own
    (an export, a review file half corrected). The input itself is refused by the command, overwrite or not."""
    for output in outputs:
        if not args.overwrite and output.exists() and (source is None or output.resolve() != source.resolve()):
            raise UserError(f"{output} exists; choose another file name, or pass --overwrite to replace it")


def _csv_list(value: str) -> tuple[str, ...]:
    """Comma-separated names; one with a comma of its own in double quotes, as a CSV writes it."""
    try:
        parts = next(csv.reader([value], skipinitialspace=True), [])
    except csv.Error as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated column names ({error})") from None
    items = tuple(part.strip() for part in parts if part.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return items


def _as_option(value: str | Sequence[str]) -> str:
    """Column names as the list options take them back: comma-separated, one holding a comma in double quotes."""
    names = [value] if isinstance(value, str) else list(value)
    return ",".join(f'"{name}"' if "," in name or '"' in name else name for name in names)


def _field_weights(value: str) -> dict[str, float]:
    weights = {}
    for part in _csv_list(value):
        name, sign, weight = part.rpartition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            weights[name.strip()] = -1.0
        if not sign or not name.strip() or not weights[name.strip()] >= 0:
            raise argparse.ArgumentTypeError(f"expected COLUMN=WEIGHT with a weight of 0 or more, got {part!r}")
    return weights


TEXT_COLUMNS_FOR_MODEL_HELP = ("the file's columns for the model's text fields, comma-separated in the model's "
                               "order (e.g. title,description for a model trained on subject,body), or one "
                               "column with the whole ticket (default: the model's field names)")

# ---------------------------------------------------------------- train

WORKFLOW_EPILOG = """\
example, from a helpdesk export to a running service:
  ticketclf split data/tickets.csv --output-train train.csv --output-test test.csv
  ticketclf train train.csv --output runs/model
  ticketclf export runs/model
  ticketclf evaluate runs/model --data test.csv --output runs/report
  ticketclf serve runs/model --port 8000

'ticketclf COMMAND --help' shows each command's options and examples."""

TRAIN_EPILOG = """\
examples:
  ticketclf train data/tickets.csv --output runs/model
  ticketclf train export.jsonl.gz --text-columns subject,description --label-column queue \\
      --output runs/model --lora --epochs 10
  ticketclf train train.csv --validation val.csv --base-model bert-base-uncased --output runs/bert
  ticketclf train train.csv --repository models --name tickets    # adds models/tickets/N ('ticketclf models')

Text columns are joined in the order given, each cleaned, separated by a newline.
On several GPUs, Trainer needs no change: torchrun --nproc_per_node 4 -m classifier.cli train ...
"""


def _add_train(commands: argparse._SubParsersAction) -> None:
    from classifier.options import (
        FULL_LEARNING_RATE,
        LORA_LEARNING_RATE,
        PRECISIONS,
        TrainingOptions,
        default_learning_rate,
    )

    defaults, data_defaults = TrainingOptions(), DataOptions()
    p = _subcommand(commands, "train", "fine-tune an encoder on a labelled ticket export", _run_train,
                    epilog=TRAIN_EPILOG)
    p.add_argument("data", type=Path, help="labelled tickets: .csv, .tsv, .jsonl or .json, optionally .gz")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", "-o", type=Path, help="bundle directory to create")
    where.add_argument("--repository", type=Path, metavar="REPO", help="add the bundle as the next version of "
                       "REPO/NAME (see 'ticketclf models'): the first version serves, later ones are challengers")
    p.add_argument("--name", help=f"with --repository: the model's name (default: {DEFAULT_MODEL_NAME})")
    p.add_argument("--overwrite", action="store_true", help="replace the bundle directory at --output, all of "
                   "it (never a file or a directory that is not a bundle), and start over from an interrupted "
                   "run's checkpoints")
    g = p.add_argument_group("data")
    g.add_argument("--validation", type=Path, help="validation file (default: a stratified split of DATA)")
    g.add_argument("--validation-fraction", type=float, default=data_defaults.validation_fraction,
                   help="share held out when no --validation (default: 10 %%, raised to 50 tickets where that is "
                        "at most 25 %%: what calibration and the blend with TF-IDF need to be fitted)")
    g.add_argument("--text-columns", type=_csv_list, help="comma-separated text columns, in joining order "
                   "(default: detected, e.g. subject,body or text)")
    g.add_argument("--label-column", type=_csv_list, metavar="COLUMNS", help="label column (default: detected, "
                   "e.g. category, label, queue); more comma-separated columns (category,priority) are predicted "
                   "too, by heads of their own on the same encoder")
    g.add_argument("--tags-column", type=_column_name, metavar="COLUMN", help="a column of tags to predict (several "
                   "per ticket): a JSON list, or text split by --tags-delimiter")
    g.add_argument("--tags-delimiter", metavar="CHAR", help="what separates the tags in a --tags-column cell "
                   "(default: detected among | ; ,)")
    g.add_argument("--min-class-count", type=int, default=data_defaults.min_class_count,
                   help="fewest tickets a class may have")
    g.add_argument("--merge-rare-classes", action="store_true", help="merge classes below --min-class-count "
                   "into 'other' (or the data's own 'Other' class) instead of failing")
    g.add_argument("--drop-rare-classes", action="store_true", help="train without the tickets of classes below "
                   "--min-class-count (one-off queues) instead of failing; the data report lists them")
    g.add_argument("--keep-quoted-replies", action="store_true", help="do not cut quoted previous replies")
    g.add_argument("--keep-signatures", action="store_true", help="do not cut e-mail signatures")
    g.add_argument("--keep-html", action="store_true", help="do not convert HTML and Jira's wiki markup to text")
    m = p.add_argument_group("model and training")
    m.add_argument("--base-model", help="hub id or local path of the encoder (default: packaged all-MiniLM-L6-v2)")
    m.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    m.add_argument("--lora-rank", type=int, help=f"with --lora: rank of the LoRA adapters (alpha is twice it; "
                   f"default {defaults.lora_rank})")
    m.add_argument("--epochs", type=float, default=defaults.epochs,
                   help=f"maximum epochs (early stopping may end sooner); default {DEFAULT_EPOCHS:g}, or as many as "
                        f"make {MIN_STEPS} optimisation steps on a small export")
    m.add_argument("--learning-rate", type=float, help=f"peak learning rate, decayed linearly (default: "
                   f"{FULL_LEARNING_RATE:g} for the packaged encoder, {default_learning_rate(768):g} for 768-wide ones "
                   f"such as BERT-base, {default_learning_rate(1024):g} wider; with --lora {LORA_LEARNING_RATE:g})")
    m.add_argument("--batch-size", type=int, default=defaults.batch_size, help="tickets per training step")
    m.add_argument("--max-length", type=int, help="tokens per ticket (default: 99th percentile of the data)")
    m.add_argument("--seed", type=int, default=defaults.seed, help="seed for the split, shuffling and the new head")
    m.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    m.add_argument("--train-word-embeddings", action="store_true", help="also update the vocabulary embeddings")
    m.add_argument("--layer-lr-decay", type=float, default=defaults.layer_lr_decay, metavar="FACTOR",
                   help="each encoder layer learns FACTOR times the rate of the layer above it; 1: one rate for "
                        "all (default %(default)s)")
    m.add_argument("--patience", type=int, default=defaults.early_stopping_patience,
                   help="epochs without validation macro-F1 gain before the learning rate decays to 0 over one "
                        "more epoch and training stops")
    m.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="auto: bf16 on GPUs and CPUs that support it, else fp32")
    m.add_argument("--resume", action="store_true", help="continue an interrupted run from the last checkpoint "
                   "of --output (same data and options)")
    m.add_argument("--field-weights", type=_field_weights, default={}, metavar="COLUMN=W,...",
                   help="loss weight of each predicted field, e.g. priority=0.5,tags=2 (default: 1 each)")
    m.add_argument("--oos-abstention", type=float, default=defaults.oos_abstention, metavar="SHARE",
                   help="share of in-scope validation tickets the out-of-scope threshold flags for review "
                   "(default %(default)s)")


def _run_train(args: argparse.Namespace) -> int:
    from classifier.options import TrainingOptions
    from classifier.train import checkpoint_dir, train

    if args.validation_fraction is not None and args.validation is not None:
        raise UserError("--validation-fraction sizes a split held out of the export, and --validation FILE "
                        "replaces that split: give one of them")
    if args.lora_rank is not None and not args.lora:
        raise UserError("--lora-rank goes with --lora: without it, all weights are trained and there are no adapters")
    lora_rank = TrainingOptions.lora_rank if args.lora_rank is None else args.lora_rank
    options = TrainingOptions(
        base_model=args.base_model, epochs=args.epochs, learning_rate=args.learning_rate,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, lora=args.lora,
        lora_rank=lora_rank, lora_alpha=2 * lora_rank, class_weighted_loss=args.class_weights,
        freeze_word_embeddings=not args.train_word_embeddings, early_stopping_patience=args.patience,
        layer_lr_decay=args.layer_lr_decay, precision=args.precision, resume=args.resume,
        oos_abstention=args.oos_abstention, field_weights=args.field_weights)
    data_options = DataOptions(
        text=TextOptions(fields=args.text_columns or (), strip_html=not args.keep_html,
                         strip_quoted_replies=not args.keep_quoted_replies, strip_signatures=not args.keep_signatures),
        label_column=args.label_column[0] if args.label_column else None,
        field_columns=tuple(args.label_column[1:]) if args.label_column else (), tags_column=args.tags_column,
        tags_delimiter=args.tags_delimiter, validation_path=str(args.validation) if args.validation else None,
        validation_fraction=args.validation_fraction, min_class_count=args.min_class_count,
        merge_rare_classes=args.merge_rare_classes, drop_rare_classes=args.drop_rare_classes)
    _check_positive(args, "epochs", "learning_rate", "batch_size", "max_length", "lora_rank", "patience",
                    "min_class_count")
    if args.repository is not None:
        return _train_into_repository(args, lambda path: train(args.data, path, options, data_options))
    if args.name is not None:
        raise UserError("--name names a model in a --repository; give one, or leave --name out")
    try:
        bundle_dir = train(args.data, args.output, options, data_options, overwrite=args.overwrite)
    except (KeyboardInterrupt, _Terminated):
        checkpoints = checkpoint_dir(args.output)
        if any(checkpoints.glob("checkpoint-*")):
            print(f"ticketclf train: the run's checkpoints are in {checkpoints}; run the same command with --resume "
                  "to continue from the last one, or with --overwrite to start over", file=sys.stderr)
        raise
    if bundle_dir is None:  # a torchrun process other than rank 0: rank 0 writes and reports the bundle
        return 0
    _print_training_summary(bundle_dir)
    return 0


def _train_into_repository(args: argparse.Namespace, build: Callable[[Path], object]) -> int:
    from classifier.repository import ModelRepository

    for flag in ("resume", "overwrite"):
        if getattr(args, flag):
            raise UserError(f"--{flag} goes with --output: a new version of a repository starts afresh")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("under torchrun, train to --output, then add the bundle with 'ticketclf models add'")
    repository = ModelRepository(args.repository)
    name = args.name or DEFAULT_MODEL_NAME
    version = repository.add_version(name, build, reason="ticketclf train")
    _print_training_summary(version.path)
    print(_aliases_line(repository, version))
    return 0


def _print_training_summary(bundle_dir: Path) -> None:
    from classifier.bundle import DATA_REPORT, REPORTS_DIR, read_manifest

    manifest = read_manifest(bundle_dir)
    metrics = manifest.training.validation_metrics
    report = bundle_dir / REPORTS_DIR / f"{DATA_REPORT}.json"
    print(f"bundle written to {bundle_dir}")
    merged = manifest.data.merged_into_other
    print(f"  labels: {len(manifest.labels)}"
          + (f" ({first_of(merged, 5)} merged into {manifest.data.other_label!r})" if merged else "")
          + f", max length: {manifest.max_length}, training time: {manifest.training.train_seconds} s")
    alone = f"validation accuracy {metrics['accuracy']:.4f}, macro-F1 {manifest.training.label_macro_f1:.4f}"
    if manifest.blend_weight > 0:  # what serves first: the fine-tuned model alone can read far worse early on
        served_accuracy = manifest.baseline.blend_metrics.get("blend_accuracy") if manifest.baseline else None
        served_f1 = manifest.served_validation_macro_f1
        print(f"  served (blended with TF-IDF at weight {manifest.blend_weight}): validation accuracy "
              f"{_figure(served_accuracy)}" + (f", macro-F1 {served_f1:.4f}" if served_f1 is not None else ""))
        print(f"  the fine-tuned model alone: {alone}")
    else:
        print(f"  served (the fine-tuned model): {alone}")
    if manifest.baseline and manifest.baseline.validation_metrics:
        baseline = manifest.baseline.validation_metrics
        print(f"  {manifest.baseline.name}: validation accuracy {baseline['accuracy']:.4f}, "
              f"macro-F1 {baseline['macro_f1']:.4f}")
    for field in manifest.fields or []:
        # The tags' thresholds were chosen on these tickets: say so, evaluate's test figures are the fair ones.
        shown = ("micro-F1 {micro_f1:.4f}, macro-F1 {macro_f1:.4f} (the tickets its thresholds were chosen on)"
                 if field.kind == "tags" else
                 "accuracy {accuracy:.4f}, macro-F1 {macro_f1:.4f}").format(**field.validation_metrics) \
            if "macro_f1" in field.validation_metrics else "no validation ticket has a value"
        left_out = f" ({len(field.left_out)} too rare, left out)" if field.left_out else ""
        print(f"  field {field.name!r}: {len(field.labels)} {'tags' if field.kind == 'tags' else 'labels'}"
              f"{left_out}, validation {shown}")
    if manifest.out_of_scope:
        section = manifest.out_of_scope
        print(f"  out-of-scope detector: {section.method} on {section.training_tickets} training tickets; threshold "
              f"{section.threshold_for('torch'):.4f}, aimed at flagging {section.target_abstention:.1%} of in-scope "
              f"tickets (chosen on {section.validation_tickets} validation tickets)"
              + (f"; flagged tickets go to '{section.route_to}'" if section.route_to else ""))
    print(f"  data report: {report}")


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


# ---------------------------------------------------------------- export


def _add_export(commands: argparse._SubParsersAction) -> None:
    from classifier.export import QUANTIZATION_TARGETS, ExportOptions

    defaults = ExportOptions()
    p = _subcommand(commands, "export", "export a bundle to ONNX (fp32 + int8) and check drift", _run_export,
                    epilog="example:\n  ticketclf export runs/model\n\n"
                           "Writes BUNDLE/onnx/model.onnx and model_int8.onnx; the manifest records sizes,\n"
                           "opset, the drift check and which model the predictor and service use.")
    p.add_argument("bundle", type=Path, help="model bundle directory (from 'ticketclf train')")
    p.add_argument("--quantization", choices=QUANTIZATION_TARGETS, default=defaults.quantization,
                   help="int8 kernel target; auto: detected from this CPU")
    p.add_argument("--no-per-channel", dest="per_channel", action="store_false",
                   help="one weight scale per tensor instead of per output channel")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="skip Optimum's ORTOptimizer graph fusions for the fp32 model")
    p.add_argument("--opset", type=int, help="ONNX opset (default: Optimum's choice for the model)")
    p.add_argument("--max-accuracy-drop", type=float, default=defaults.max_accuracy_drop,
                   help="accuracy points int8 may lose against fp32: int8 serves when its agreement with fp32 "
                   "bounds the loss within this (95 %% Wilson interval), and unless a paired test on the "
                   "validation tickets shows it losing more (p < 0.05); fp32 serves then")


def _run_export(args: argparse.Namespace) -> int:
    from classifier.export import ExportOptions, export

    section = export(args.bundle, ExportOptions(opset=args.opset, quantization=args.quantization,
                                                per_channel=args.per_channel, optimize=args.optimize,
                                                max_accuracy_drop=args.max_accuracy_drop))
    drift = section.drift
    sizes = ", ".join(f"{name} {info.bytes / 2**20:.1f} MiB" for name, info in section.files.items())
    print(f"exported {args.bundle}/onnx: {sizes} (opset {section.opset}, int8 for {section.quantization.target})")
    print(f"  drift on {drift.examples} validation tickets: fp32 max |logit diff| "
          f"{drift.fp32_max_abs_logit_diff:.2e}, argmax agreement {drift.fp32_argmax_agreement:.2%}; "
          f"int8 agreement {drift.int8_argmax_agreement:.2%}, "
          f"int8 accuracy {0.0 - drift.int8_accuracy_drop_points:+.2f} points against fp32")
    for name, field in drift.fields.items():
        print(f"  field {name!r}: fp32 max |logit diff| {field['fp32_max_abs_logit_diff']:.2e}, same answer as "
              f"PyTorch {field['fp32_agreement']:.2%}; int8 {field['int8_agreement']:.2%}, int8 as fp32 on "
              f"{field['int8_fp32_agreement']:.2%} of {sum(drift.agreement_tickets.values())} tickets")
    decision = drift.decision
    assert decision is not None  # every export decides
    print(f"  {decision.basis}")
    print(f"  serving: {decision.engine}")
    return 0


# ---------------------------------------------------------------- evaluate


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(commands, "evaluate", "write an accuracy report with a confusion matrix", _run_evaluate,
                    epilog="example:\n  ticketclf evaluate runs/model --data test.csv --output runs/report\n"
                           "  ticketclf evaluate runs/model --data test.csv --output runs/report "
                           "--apply-threshold-for-precision 0.95")
    p.add_argument("bundle", type=Path, help="model bundle directory")
    p.add_argument("--data", type=Path, required=True, help="labelled test tickets (same formats as train)")
    p.add_argument("--output", "-o", type=Path, required=True, help="directory for the report files")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: the model that would be served")
    p.add_argument("--label-column", type=_column_name, help="label column (default: the one the model was trained on)")
    p.add_argument("--text-columns", type=_csv_list, metavar="COLUMNS",
                   help=TEXT_COLUMNS_FOR_MODEL_HELP)
    p.add_argument("--id-column", type=_column_name, metavar="COLUMN", help="the column of the tickets' ids in "
                   "misclassified.csv (default: detected as predict does, else the row number)")
    p.add_argument("--target-precision", type=float, default=0.95,
                   help="precision the recommended confidence threshold must reach")
    p.add_argument("--apply-threshold-for-precision", type=float, metavar="P",
                   help="write per-class thresholds reaching precision P into the bundle manifest")
    p.add_argument("--compare", type=Path, metavar="OTHER_BUNDLE", help="also evaluate another bundle, side by side")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the TF-IDF + logistic regression baseline")
    p.add_argument("--oos-label", metavar="LABEL", help="test tickets with this label are out of scope (as are "
                   "labels the model was not trained on): the report measures the out-of-scope detector on them "
                   "(default: the data's \"Other\" class, when the model has one)")


def _run_evaluate(args: argparse.Namespace) -> int:
    from classifier.evaluate import EvaluationOptions, evaluate, summary_table

    report = evaluate(args.bundle, args.data, args.output, EvaluationOptions(
        engine=args.engine, label_column=args.label_column, text_columns=args.text_columns or (),
        id_column=args.id_column,
        target_precision=args.target_precision,
        apply_threshold_for_precision=args.apply_threshold_for_precision, compare_bundle=args.compare,
        baseline=args.baseline, oos_label=args.oos_label))
    print(summary_table(report))
    print(f"report written to {args.output} (open {args.output / 'report.html'} in a browser)")
    return 0


# ---------------------------------------------------------------- predict

PREDICT_CHUNK = 1024  # tickets per predict() call in `ticketclf predict --file`


def _add_predict(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(commands, "predict", "classify tickets with a bundle; prints JSON lines or writes a CSV",
                    _run_predict,
                    epilog='example:\n  ticketclf predict runs/model "I was charged twice this month"\n'
                           '  ticketclf predict runs/model --file new_tickets.jsonl\n'
                           '  export_tickets | ticketclf predict runs/model --file -\n'
                           '  ticketclf predict runs/model --file new.csv --csv classified.csv\n'
                           "  ticketclf predict runs/model --input 'exports/*.jsonl.gz' --output runs/classified  "
                           "# on Ray: pip install \"ticket-classifier[ray]\"")
    p.add_argument("bundle", type=Path, help="model bundle directory")
    p.add_argument("texts", nargs="*", help="ticket texts to classify, each argument one ticket's whole text "
                   "(records with subject, body, ... go in a --file)")
    p.add_argument("--file", help="classify every ticket in a CSV/TSV/JSONL/JSON file "
                   "('-': standard input, its format told by its content)")
    p.add_argument("--text-columns", type=_csv_list, metavar="COLUMNS",
                   help="with --file or --input: " + TEXT_COLUMNS_FOR_MODEL_HELP)
    p.add_argument("--id-column", type=_column_name, metavar="COLUMN", help="with --file or --input: the column of "
                   "the tickets' ids (default: detected: id, ticket_id, issue key, case number, number, ...; else the "
                   "row number)")
    p.add_argument("--csv", type=_csv_file, metavar="FILE", help="write the predictions to this CSV file for Excel or "
                   "Sheets, a row per ticket (id, text, predicted_label, confidence, needs_review, ..., the next "
                   "labels), instead of printing JSON lines")
    p.add_argument("--top-k", type=int, help="how many labels to list per ticket (default: 3, or all if fewer)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: the model the bundle marks for serving")
    batch = p.add_argument_group("on Ray, for many or large files (the ray extra)")
    batch.add_argument("--input", metavar="PATH_OR_GLOB", help="ticket files to classify on Ray: a file, a folder or "
                       "a glob ('exports/**/*.csv'); CSV/TSV/JSON/JSONL (optionally .gz) or Parquet")
    batch.add_argument("--output", type=Path, metavar="DIR", help="with --input: the folder for the output shards, "
                       "rejects.jsonl and batch.json; a rerun of the same command resumes there")
    batch.add_argument("--ray", metavar="ADDRESS", help="with --input: the Ray cluster to run on (host:port, or auto); "
                       "default: a local Ray on this machine")
    batch.add_argument("--actors", type=int, help="with --input: model copies classifying side by side, one CPU "
                       "each (default: one per CPU of the Ray cluster)")
    batch.add_argument("--format", choices=("parquet", "jsonl"), help="with --input: the shards' format "
                       "(default: parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace the --csv file if it exists; with --input: start "
                   "over in an --output that holds another run's output (bundle, input or options differ)")


def _run_predict(args: argparse.Namespace) -> int:
    from classifier.data import read_tickets_to_classify
    from classifier.predict import Predictor

    if args.input or args.output:
        return _run_batch(args)
    batch_options = [name for name in ("ray", "actors", "format") if getattr(args, name)]
    if batch_options:
        raise UserError(f"--{batch_options[0]} goes with --input and --output (classifying on Ray)")
    if not args.texts and not args.file:
        raise UserError("give ticket texts as arguments or a file with --file")
    if args.overwrite and not args.csv:
        raise UserError("--overwrite goes with --csv, or with --input and --output")
    if args.csv:  # before the model loads; the input file itself is refused with or without --overwrite
        _refuse_to_replace(args, Path(args.csv), source=Path(args.file) if args.file and args.file != "-" else None)
    predictor = Predictor.load(args.bundle, engine=args.engine)
    labels = len(predictor.labels)
    if args.top_k is not None and not 1 <= args.top_k <= labels:
        raise UserError(f"--top-k must be between 1 and {labels} (the model's labels), got {args.top_k}")
    top_k = args.top_k or min(3, labels)
    for option in ("text_columns", "id_column"):
        if getattr(args, option) and not args.file:
            raise UserError(f"--{option.replace('_', '-')} names the columns of a --file; give one")
    if args.texts and args.file:  # arguments are numbered 1, 2, ... and file rows from 2: ids would collide
        raise UserError("give ticket texts as arguments or a --file, not both")
    # Arguments are numbered 1, 2, ...; file rows keep their ids. A bad file fails before any output.
    rows: list[tuple[str | None, str]] = [(str(number), ticket_text(text, predictor.text_options))
                                          for number, text in enumerate(args.texts, 1)]
    cut: list[int] = []  # the file's rows with a cell cut when read (none of the arguments can be that long)
    rows += read_tickets_to_classify(args.file, predictor.text_options, args.text_columns or (),
                                     id_column=args.id_column, cut=cut) if args.file else []
    if args.csv:
        empty = _write_csv(args.csv, Path(args.file) if args.file and args.file != "-" else None, predictor, rows,
                           top_k, set(cut))
    else:
        empty = _write_predictions(predictor, rows, top_k, _print_json_line, set(cut))
    # A file's empty tickets are its rows' business (each line says so); an argument with no text is a mistake.
    if empty and args.texts:
        others = " (the others are answered)" if len(rows) > len(empty) else ""
        print(f"ticketclf predict: error: {'argument' if len(empty) == 1 else 'arguments'} {first_of(empty, 10)} "
              f"had no text after cleaning{others}", file=sys.stderr)
        return UserError.exit_code
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    from classifier.batch import BatchOptions, classify_files

    if not (args.input and args.output):
        raise UserError("--input and --output go together: the files to classify on Ray, and the folder for the output")
    if args.texts or args.file:
        raise UserError("give ticket texts, a --file, or --input and --output, not several")
    if args.csv:
        raise UserError("--csv writes the predictions of ticket texts or a --file; --input writes --output's shards")
    options = BatchOptions(format=args.format or "parquet", top_k=args.top_k, actors=args.actors, engine=args.engine,
                           text_columns=args.text_columns or (), id_column=args.id_column, overwrite=args.overwrite,
                           ray_address=args.ray)
    summary = classify_files(args.bundle, args.input, args.output, options)
    print("\n".join(summary.lines()))
    return UserError.exit_code if summary.stopped else 0  # a file not read to its end: an input mistake


NO_TEXT = "no text after cleaning"
Answer = Callable[[str | None, str, "Prediction | None"], None]  # (id, cleaned text, prediction or None: no text)


def _print_json_line(ticket_id: str | None, text: str, prediction: Prediction | None) -> None:
    print(json.dumps({"id": ticket_id, **(prediction.to_dict() if prediction else {"error": NO_TEXT})},
                     ensure_ascii=False))


class _CsvPredictions:
    """``predict --csv``: the JSON line's answer in flat columns, a row per ticket, for a spreadsheet to sort
    and filter: the label and its confidence, the next ``top_k - 1`` labels, each field's label, the tags."""

    def __init__(self, writer: Any, predictor: Predictor, top_k: int) -> None:
        from classifier.data import decimal_cell

        self.writer, self.top_k = writer, top_k
        self.number = lambda value: "" if value is None else decimal_cell(value, writer.dialect.delimiter)
        self.fields = [spec.name for spec in predictor.fields if spec.kind == "single"]
        self.tags = any(spec.kind == "tags" for spec in predictor.fields)
        # "predicted_...": merged back into the export, a column must not pass for the agents' own "Priority".
        writer.writerow(["id", "text", "predicted_label", "confidence", "needs_review", "review_reason",
                         "out_of_scope_score", "truncated", *(f"{name}_{rank}" for rank in range(2, top_k + 1)
                                                              for name in ("label", "confidence")),
                         *(name.format(field) for field in self.fields
                           for name in ("predicted_{}", "{}_confidence", "{}_needs_review")),
                         *(["predicted_tags"] if self.tags else []), "error"])

    def write(self, ticket_id: str | None, text: str, prediction: Prediction | None) -> None:
        from classifier.data import spreadsheet_safe

        cells: list[Any] = [spreadsheet_safe(ticket_id or ""), spreadsheet_safe(text)]
        if prediction is None:
            columns = 6 + 2 * (self.top_k - 1) + 3 * len(self.fields) + self.tags
            self.writer.writerow([*cells, *[""] * columns, NO_TEXT])
            return
        cells += [spreadsheet_safe(prediction.label), self.number(prediction.confidence),
                  _yes_no(prediction.needs_review), prediction.review_reason or "",
                  self.number(prediction.out_of_scope_score), _yes_no(prediction.truncated)]
        for rank in range(1, self.top_k):  # top_k[0] is the label itself
            cells += [spreadsheet_safe(prediction.top_k[rank]["label"]), self.number(prediction.top_k[rank]["score"])]
        for name in self.fields:
            answer = (prediction.fields or {})[name]
            cells += [spreadsheet_safe(answer["label"]), self.number(answer["confidence"]),
                      _yes_no(answer["needs_review"])]
        if self.tags:
            cells.append(spreadsheet_safe("; ".join(tag["tag"] for tag in prediction.tags or [])))
        self.writer.writerow([*cells, ""])


def _write_csv(path: Path, input_file: Path | None, predictor: Predictor, rows: list[tuple[str | None, str]],
               top_k: int, cut: set[int]) -> list[str | None]:
    """``predict --csv``: separated as the input file, for the same Excel to open. Written beside ``path`` and
    moved there when whole, so a run that fails halfway leaves no file that looks complete."""
    from classifier.data import csv_writer

    if input_file is not None and path.resolve() == input_file.resolve():
        raise UserError(f"{path}: is the input file; write the predictions to another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix kept: .tsv is tab-separated
    try:
        with csv_writer(partial, input_file, for_spreadsheets=True) as writer:
            empty = _write_predictions(predictor, rows, top_k, _CsvPredictions(writer, predictor, top_k).write, cut)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{len(rows) - len(empty)} of {len(rows)} tickets classified; written to {path}", file=sys.stderr)
    return empty


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _write_predictions(predictor: Predictor, rows: list[tuple[str | None, str]], top_k: int,
                       answer: Answer, cut: set[int]) -> list[str | None]:
    """``answer`` each (id, cleaned text), in order: with the prediction, or None where there is none (the
    ids of those tickets are returned). The rows at the positions ``cut`` had a cell cut when read: their
    predictions say ``truncated``.

    Tickets are predicted PREDICT_CHUNK at a time, so lines flow out as they are ready, and a file of any
    length needs the memory of one chunk's scores."""
    from classifier.data import ids_are, repeated_ids

    empty = []
    for start in range(0, len(rows), PREDICT_CHUNK):
        chunk = rows[start:start + PREDICT_CHUNK]
        texts = [text for _, text in chunk if text]
        try:
            predictions = iter(predictor.predict(texts, top_k=top_k, cleaned=True) if texts else [])
        except ModelError as error:  # it counts positions in `texts`; name the tickets' own ids
            ids = [ticket_id for ticket_id, text in chunk if text]
            raise ModelError([ids[cast(int, position)] for position in error.tickets]) from None
        for position, (ticket_id, text) in enumerate(chunk, start):
            prediction = next(predictions) if text else None
            if prediction is not None and position in cut:
                prediction.truncated = True
            answer(ticket_id, text, prediction)
            if not text:
                empty.append(ticket_id)
    if repeated := repeated_ids([ticket_id for ticket_id, _ in rows], [text for _, text in rows]):
        print(f"ticketclf predict: warning: {ids_are(len(repeated))} on more than one ticket, each of another text "
              f"({first_of(repeated, 5)}): match the predictions to tickets by their order, not their id",
              file=sys.stderr)
    if unnamed := sum(ticket_id is None for ticket_id, _ in rows):
        print(f"ticketclf predict: warning: {unnamed} of {len(rows)} rows have no value in the id column; their "
              "predictions have no id (they are in the file's order)", file=sys.stderr)
    if empty:
        shown = first_of(["null" if i is None else i for i in empty], 10)
        print(f"ticketclf predict: warning: {len(empty)} of {len(rows)} tickets have no text after "
              f"cleaning (ids {shown}); their predictions carry an error instead of a label", file=sys.stderr)
    return empty


# ---------------------------------------------------------------- serve


def _add_serve(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(commands, "serve", "serve POST /classify over HTTP with gunicorn", _run_serve,
                    epilog="example:\n  ticketclf serve runs/model --port 8000\n"
                           "  curl -s localhost:8000/classify -H 'Content-Type: application/json' "
                           "-d '{\"text\": \"I was charged twice\"}'")
    # Not default=SUPPRESS: with type=Path, argparse (3.11 measured) turns that marker into Path("==SUPPRESS==").
    p.add_argument("bundle", type=Path, nargs="?",
                   help="model bundle directory (default: $TICKETCLF_BUNDLE)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 to expose it")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, help="gunicorn worker processes (default: from service/gunicorn_conf.py)")
    p.add_argument("--dev", action="store_true", help="run Flask's development server instead of gunicorn")


def _run_serve(args: argparse.Namespace) -> int:
    from classifier.cpus import worker_count

    worker_count()  # checked before gunicorn's import, which reads WEB_CONCURRENCY with int(), in a traceback
    from service.server import serve

    bundle_dir = args.bundle or os.environ.get("TICKETCLF_BUNDLE")
    if not bundle_dir:
        raise UserError("give a bundle directory or set TICKETCLF_BUNDLE")
    return serve(Path(bundle_dir), host=args.host, port=args.port, workers=args.workers, dev=args.dev)


# ---------------------------------------------------------------- models

DEFAULT_MODEL_NAME = "tickets"  # train --repository without --name

MODELS_EPILOG = """\
A model repository holds numbered versions of a model, REPO/NAME/1, 2, ... (each a bundle), and
which one serves (the champion). MODEL is REPO/NAME as one path, e.g. models/tickets.

examples:
  ticketclf train export.csv --repository models --name tickets   # adds a version
  ticketclf models list models/tickets
  ticketclf models show models/tickets 3
  ticketclf models promote models/tickets 3 --reason "better on the March holdout"
  ticketclf models rollback models/tickets
  ticketclf models remove models/tickets 2
  ticketclf evaluate models/tickets/3 --data test.csv --output models/tickets/3/reports/evaluation
      (list then shows the test figures)
"""


def _add_models(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("models", help="list, promote, roll back and remove versions in a model repository",
                            description="Manage a model repository.", epilog=MODELS_EPILOG,
                            formatter_class=_HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, run: Command, version: bool = False, default: str | None = None
               ) -> argparse.ArgumentParser:
        parser = _subcommand(actions, name, help, run, epilog=MODELS_EPILOG)  # each action's --help: the examples
        parser.add_argument("model", type=Path, metavar="MODEL", help="REPO/NAME, e.g. models/tickets")
        if version:
            parser.add_argument("version", nargs="?" if default else None, default=default,
                                help="version number, or an alias (champion, challenger)"
                                + (f"; default: {default}" if default else ""))
        return parser

    action("list", "each version with its figures, aliases and which one serves", _run_models_list)
    show = action("show", "one version's manifest summary", _run_models_show, version=True,
                  default="champion")  # repository.CHAMPION: the version that serves
    show.add_argument(
        "--json", action="store_true", help="print the summary and the whole manifest as JSON")
    action("promote", "make a version the champion: it serves", _run_models_promote, version=True).add_argument(
        "--reason", default="", help="why, for the history")
    action("rollback", "serve again the version that served before", _run_models_rollback).add_argument(
        "--reason", default="", help="why, for the history")
    action("remove", "delete a version (never the one that serves)", _run_models_remove, version=True).add_argument(
        "--reason", default="", help="why, for the history")
    action("history", "promotions, rollbacks, additions and removals, oldest first", _run_models_history)
    add = action("add", "add a finished bundle as the next version (copied)", _run_models_add)
    add.add_argument("bundle", type=Path, help="bundle directory (from 'ticketclf train --output')")
    add.add_argument("--reason", default="", help="why, for the history (default: the command)")


RETRAIN_EPILOG = """\
examples:
  ticketclf retrain models/tickets --data export.csv      # + corrections in the service's feedback database
  ticketclf retrain models/tickets --data export.csv --feedback postgresql+psycopg://user@db/feedback
  ticketclf retrain models/tickets --data export.csv --corrections corrections.csv --no-promote

The challenger is trained with the champion's settings on the export plus the agents' corrections
(by default from the database 'ticketclf serve' keeps them in: $TICKETCLF_FEEDBACK_DB, else
REPO/NAME/feedback.sqlite),
evaluated side by side with the champion on the repository's fixed holdout (holdout.csv, made on the
first retrain) and recent corrected tickets neither trained on, and promoted only if it is better by
--margin and no label with --min-support test tickets loses more than --tolerance F1, nor any field
(priority, tags) more than --tolerance of its accuracy (tags: micro-F1) beyond chance. The decision,
with both models' figures, goes to the repository's history; the report to the new version's
reports/evaluation/.
"""


def _add_retrain(commands: argparse._SubParsersAction) -> None:
    from classifier.retrain import MARGIN_RANGE, TOLERANCE_RANGE, PromotionPolicy

    policy = PromotionPolicy()
    p = _subcommand(commands, "retrain", "train a challenger on new data and corrections; promote it if better",
                    _run_retrain, epilog=RETRAIN_EPILOG)
    p.add_argument("model", type=Path, metavar="MODEL", help="REPO/NAME, e.g. models/tickets")
    p.add_argument("--data", type=Path, required=True, help="the helpdesk's labelled export (what train reads)")
    corrections = p.add_mutually_exclusive_group()
    corrections.add_argument("--feedback", metavar="DB_URL", help="the feedback database with the agents' "
                             "corrections (a SQLite file or postgresql+psycopg://...); default: the service's, "
                             "where it exists")
    corrections.add_argument("--no-feedback", action="store_true", help="train on the export alone")
    corrections.add_argument("--corrections", type=Path, help="corrections as 'ticketclf feedback export' writes "
                             "them (ticket id, label, text fields, received_at)")
    p.add_argument("--holdout", type=Path, help="set the repository's fixed holdout to this labelled file "
                                                "(kept once the challenger was trained and scored on it)")
    p.add_argument("--margin", type=_share_in(MARGIN_RANGE), default=policy.margin,
                   help="accuracy the challenger must gain, as a share (default: %(default)s, half a point; "
                        "-1 with --tolerance 1 promotes whatever the figures)")
    p.add_argument("--tolerance", type=_share_in(TOLERANCE_RANGE), default=policy.tolerance,
                   help="F1 a label may lose, and accuracy (tags: micro-F1) a field may, as a share "
                        "(default: %(default)s)")
    p.add_argument("--min-support", type=int, default=policy.min_support,
                   help="test tickets a label or field needs for --tolerance to apply to it")
    p.add_argument("--epochs", type=float, help="override the champion's number of epochs")
    p.add_argument("--no-promote", action="store_true", help="stage the challenger only, whatever the decision")


def _share_in(bounds: tuple[float, float]) -> Callable[[str], float]:
    """An argparse type for a share within ``bounds`` (retrain's MARGIN_RANGE, TOLERANCE_RANGE): ``--margin 5``
    meant as points could never be met; the help gives the unit, and the decision prints the margin in points."""
    low, high = bounds

    def share(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a share between {low:g} and {high:g} (0.005 is half a "
                                             f"point), got {value!r}")
        return number
    return share


def _run_retrain(args: argparse.Namespace) -> int:
    from classifier.evaluate import summary_table
    from classifier.retrain import PromotionPolicy, corrections_from_file, retrain

    corrections = corrections_from_file(args.corrections) if args.corrections else _feedback_corrections(args)
    result = retrain(args.model, args.data, corrections, holdout_path=args.holdout,
                     policy=PromotionPolicy(args.margin, args.tolerance, args.min_support),
                     promote=not args.no_promote,
                     training_overrides={"epochs": args.epochs} if args.epochs is not None else None)
    for line in result.merge.lines():
        print(line)
    print(summary_table(result.report))
    verdict = "promoted: it serves now" if result.decision.promoted else "not promoted: it stays the challenger"
    print(f"version {result.version.number} {verdict} ({'; '.join(result.decision.reasons)})")
    print(f"report: {result.version.path / 'reports' / 'evaluation' / 'report.html'}")
    return 0


def _feedback_corrections(args: argparse.Namespace) -> list[Any]:
    """The corrections in --feedback's database, else in the one the service keeps them in where it exists:
    a retrain that silently left out the agents' work would undo it."""
    from classifier.feedback import (
        DB_VARIABLE,
        corrections_for_retraining,
        default_location,
        is_off,
        resolve_url,
        shown,
    )

    if args.no_feedback:
        return []
    if args.feedback is None:
        if is_off(os.environ.get(DB_VARIABLE)):
            print(f"feedback is off ({DB_VARIABLE}=off): the export alone")
            return []
        if not os.environ.get(DB_VARIABLE) and not default_location(args.model).is_file():
            print(f"no feedback database at {default_location(args.model)}: the export alone")
            return []
    corrections = corrections_for_retraining(args.feedback, args.model)
    print(f"{len(corrections)} tickets labelled by agents in {shown(resolve_url(args.feedback, args.model))}")
    return corrections


def _model(args: argparse.Namespace) -> tuple[ModelRepository, str]:
    from classifier.repository import open_model

    return open_model(args.model)


def _run_models_list(args: argparse.Namespace) -> int:
    repository, name = _model(args)
    summaries = repository.describe(name)
    header = ("", "VERSION", "CREATED (UTC)", "DATA SHA256", "ROWS", "VAL ACC", "VAL F1", "TEST ACC", "TEST F1",
              "TEST N", "ENGINE", "ALIASES")
    rows = [header] + [(
        "*" if s.serving else "", str(s.version), (s.created_at or "")[:19].replace("T", " ") or "-",
        (s.data_sha256 or "-")[:12], _figure(s.train_rows, "d"), _figure(s.validation_accuracy),
        _figure(s.validation_macro_f1), _figure(s.evaluation.accuracy if s.evaluation else None),
        _figure(s.evaluation.macro_f1 if s.evaluation else None),
        _figure(s.evaluation.tickets if s.evaluation else None, "d"), s.engine or "-",
        ", ".join(s.aliases) + (f" (unreadable: {s.problem})" if s.problem else "")) for s in summaries]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) if column in (0, 2, 3, 10, 11) else cell.rjust(width)
                        for column, (cell, width) in enumerate(zip(row, widths))).rstrip())
    serving = repository.serving_state(name)
    print(f"* serves: version {serving.version} ({serving.path}); TEST: reports/evaluation/report.json in the "
          "version, where there is one, on TEST N tickets (figures on other test files do not compare)")
    if not any(summary.version == serving.version for summary in summaries):  # removed by hand
        print(f"ticketclf models list: warning: version {serving.version}, the champion, is gone from "
              f"{serving.path}: the service serves nothing once restarted; 'ticketclf models promote' another",
              file=sys.stderr)
    return 0


def _figure(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _run_models_show(args: argparse.Namespace) -> int:
    from classifier.data import training_file_path

    repository, name = _model(args)
    version = repository.version(name, args.version)
    summary = repository.summary(version)
    manifest = version.manifest()
    if args.json:
        print(json.dumps({**summary.model_dump(mode="json"), "manifest": manifest.to_json()}, indent=2,
                         ensure_ascii=False))
        return 0
    aliases = ", ".join(summary.aliases) or "no alias"
    train, validation = manifest.data.train, manifest.data.validation
    print(f"version {version.number} of {args.model} ({aliases}{'; serves' if summary.serving else ''})")
    print(f"  path: {version.path}")
    print(f"  bundle: {manifest.bundle_version}, created {manifest.created_at}")
    print(f"  labels ({len(manifest.labels)}): {', '.join(manifest.labels)}")
    weights = ", ".join(f"{key.removeprefix('base-model ')} {value[:12]}" for key, value in manifest.versions.items()
                        if key.startswith("base-model "))
    print(f"  base model: {manifest.base_model}{f', {weights}' if weights else ''}; max length {manifest.max_length}")
    if train:
        kept = training_file_path(manifest, version.path) or f"{train.path} (changed or gone)"
        print(f"  training data: {kept} (sha256 {train.sha256}), {train.rows_used} tickets used"
              + (f"; validation: {validation.rows_used} tickets" if validation else ""))
    print(f"  validation accuracy {_figure(summary.validation_accuracy)}, macro-F1 "
          f"{_figure(summary.validation_macro_f1)}; training time {manifest.training.train_seconds} s")
    if summary.evaluation:
        print(f"  evaluation ({version.path / 'reports' / 'evaluation' / 'report.json'}): accuracy "
              f"{summary.evaluation.accuracy:.4f}, macro-F1 {summary.evaluation.macro_f1:.4f} on "
              f"{summary.evaluation.tickets} tickets")
    print(f"  serves with: {manifest.engine}; calibration temperature {manifest.temperature:.3f}; review "
          f"threshold {manifest.thresholds.global_} ({len(manifest.thresholds.per_class)} per class)")
    if manifest.out_of_scope is not None:
        section = manifest.out_of_scope
        chosen = ("set by hand" if section.threshold is not None
                  else f"flags {section.target_abstention:.0%} of in-scope validation tickets")
        print(f"  out of scope above score {section.threshold_for(manifest.engine):.4g} ({chosen})")
    for field in manifest.fields or []:
        accuracy = field.validation_metrics.get("accuracy", field.validation_metrics.get("micro_f1"))
        measured = "accuracy" if "accuracy" in field.validation_metrics else "micro-F1"
        if field.kind == "tags":
            review = f"{len(field.per_class)} tag thresholds"
        elif field.threshold > 1 and not field.per_class:  # training's verdict on a field that is no guide
            review = "every answer needs review"
        else:
            review = f"review threshold {field.threshold} ({len(field.per_class)} per class)"
        kind = "labels" if field.kind == "single" else "tags"
        print(f"  field {field.name} ({field.kind}, {len(field.labels)} {kind}): validation {measured} "
              f"{_figure(accuracy)}; {review}")
    return 0


def _run_models_promote(args: argparse.Namespace) -> int:
    repository, name = _model(args)
    event = repository.promote(name, args.version, reason=args.reason)
    before = f"version {event.champion_before}" if event.champion_before is not None else "none"
    print(f"{args.model}: version {event.champion_after} serves now (before: {before})")
    return 0


def _run_models_rollback(args: argparse.Namespace) -> int:
    repository, name = _model(args)
    event = repository.rollback(name, reason=args.reason)
    print(f"{args.model}: rolled back to version {event.champion_after} (from version {event.champion_before})")
    return 0


def _run_models_remove(args: argparse.Namespace) -> int:
    repository, name = _model(args)
    event = repository.remove(name, args.version, reason=args.reason)
    print(f"{args.model}: version {event.version} removed")
    return 0


def _run_models_history(args: argparse.Namespace) -> int:
    repository, name = _model(args)
    for event in repository.history(name):
        before, after = (number if number is not None else "none"
                         for number in (event.champion_before, event.champion_after))
        change = f"champion {before} -> {after}" if before != after else f"champion {after}"
        print(f"{event.time}  {event.action:<8}  version {event.version}  {change}  {event.user}@{event.host}"
              + (f"  {event.reason}" if event.reason else ""))
    return 0


def _run_models_add(args: argparse.Namespace) -> int:
    repository, name = _model(args)
    version = repository.add_version(name, args.bundle, reason=args.reason or f"ticketclf models add {args.bundle}")
    print(f"{args.bundle} added as {version.path}; {_aliases_line(repository, version)}")
    added = version.manifest().bundle_version
    same = [other.number for other in repository.versions(name)
            if other.number != version.number and other.manifest().bundle_version == added]
    if same:  # allowed (e.g. to serve it again under a new number), but most often a mistake
        print(f"note: {'versions' if len(same) > 1 else 'version'} {' and '.join(map(str, same))} "
              f"{'hold' if len(same) > 1 else 'holds'} the same bundle ({added})")
    return 0


def _aliases_line(repository: ModelRepository, version: Version) -> str:
    from classifier.repository import CHAMPION

    aliases = [alias for alias, number in repository.aliases(version.model).items() if number == version.number]
    return f"version {version.number}: {', '.join(aliases) or 'no alias'}" + (
        " (it serves)" if CHAMPION in aliases else "; 'ticketclf models promote' makes it serve")


# ---------------------------------------------------------------- bundle

BUNDLE_EPILOG = """\
Training and export seal a bundle: the manifest records the size and sha256 of every file at its
top level and in onnx/. Loading a model (predict, evaluate, serve, a live swap) checks the files it
reads against that record and that labels, tokenizer, config and max_length agree, and refuses the
bundle with one line naming the file or field otherwise.

examples:
  ticketclf bundle verify runs/model    # every file, the agreement, each model loads; exit 2 on a problem
  ticketclf bundle seal runs/model      # after a deliberate hand edit (or for an unsealed, older bundle)
"""


def _add_bundle(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("bundle", help="verify a bundle's files and agreement, or seal a deliberate edit",
                            description="Check or seal a model bundle's files.", epilog=BUNDLE_EPILOG,
                            formatter_class=_HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help, run in (
            ("verify", "check every sealed file's size and sha256, that labels, tokenizer, config and "
                       "max_length agree, and that each model loads; one line per problem", _run_bundle_verify),
            ("seal", "record the size and sha256 of the bundle's files as they are now, saying what changed "
                     "(only if the bundle would load)", _run_bundle_seal)):
        _subcommand(actions, name, help, run, epilog=BUNDLE_EPILOG).add_argument("bundle", type=Path,
                                                                                 help="model bundle directory")


def _run_bundle_verify(args: argparse.Namespace) -> int:
    from classifier.integrity import verify_bundle

    verification = verify_bundle(args.bundle)
    for problem in verification.problems:
        print(f"ticketclf bundle verify: {problem}", file=sys.stderr)
    if verification.problems:
        return UserError.exit_code
    print(verification.summary)
    return 0


def _run_bundle_seal(args: argparse.Namespace) -> int:
    from classifier.integrity import seal_bundle

    sealed = seal_bundle(args.bundle)
    for change in sealed.changes:
        print(f"  {change}")
    if not sealed.was_sealed:
        print(f"{args.bundle}: sealed {sealed.files} files (it was unsealed)")
    elif sealed.changes:
        print(f"{args.bundle}: sealed {sealed.files} files; {len(sealed.changes)} changed since the last seal")
    else:
        print(f"{args.bundle}: all {sealed.files} files as sealed already; nothing changed")
    return 0


# ---------------------------------------------------------------- feedback

FEEDBACK_EPILOG = """\
The feedback database holds the labels agents set (POST /feedback and the helpdesk webhooks,
docs/feedback.md). Name it with --db (a URL or a SQLite file), $TICKETCLF_FEEDBACK_DB, or the
model the service serves, whose default database is used (REPO/NAME/feedback.sqlite, or
BUNDLE.feedback.sqlite beside a bundle).

examples:
  ticketclf feedback stats models/tickets --window 1h --window 1d --window all
  ticketclf feedback stats --db postgresql+psycopg://ticketclf@db/feedback --json
  ticketclf feedback export models/tickets --output corrections.csv    # train / retrain --corrections read it
  ticketclf feedback delete models/tickets --ticket 4711 --ticket 4712   # a ticket's labels and text
  ticketclf feedback delete models/tickets --ticket 4711 --text-only     # only its text
"""


def _add_feedback(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("feedback", help="online accuracy, export and deletion of agents' feedback",
                            description="Read and manage the feedback database.", epilog=FEEDBACK_EPILOG,
                            formatter_class=_HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, run: Command) -> argparse.ArgumentParser:
        parser = _subcommand(actions, name, help, run, epilog=FEEDBACK_EPILOG)
        parser.add_argument("model", type=Path, nargs="?", metavar="MODEL",
                            help="the model the service serves (REPO/NAME or a bundle), for its default database")
        parser.add_argument("--db", metavar="URL", help="the feedback database: a URL (sqlite:///..., "
                            "postgresql+psycopg://...) or a SQLite file (default: $TICKETCLF_FEEDBACK_DB, else "
                            "MODEL's)")
        return parser

    stats = action("stats", "agreement of the model with the agents, per label, model version and window",
                   _run_feedback_stats)
    stats.add_argument("--window", action="append", metavar="WINDOW", help="tickets whose label arrived in the "
                       "last WINDOW (30m, 12h, 1d, 2w) or 'all'; repeat for several (default: 1d, 7d, all)")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    export = action("export", "write the agents' labels as a training file (CSV)", _run_feedback_export)
    export.add_argument("--output", "-o", type=_csv_file, required=True, help="the CSV file to write")
    export.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    export.add_argument("--label-column", default="label", help="name of the label column")
    export.add_argument("--since", type=_utc_time, metavar="TIME", help="only labels received since then (ISO 8601)")
    delete = action("delete", "delete what is stored of tickets (their labels and text)", _run_feedback_delete)
    delete.add_argument("--ticket", action="append", required=True, metavar="ID", help="a ticket id; repeat")
    delete.add_argument("--text-only", action="store_true", help="delete the tickets' text, keep their labels")


def _utc_time(value: str) -> datetime:
    from classifier.retrain import instant

    try:
        if not value.strip():
            raise ValueError(value)
        return instant(value.strip())  # a Z as UTC on Python 3.10 too
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a time in ISO 8601 (2026-11-30T12:00:00Z), got {value!r}") from None


def _run_feedback_stats(args: argparse.Namespace) -> int:
    from classifier.feedback import Window, open_store

    windows = [Window.parse(text) for text in args.window or ("1d", "7d", "all")]
    with open_store(args.db, args.model) as store:
        results = store.stats(windows)
        where = store.describe()
    if args.json:
        print(json.dumps({"database": where, "windows": [r.to_dict() for r in results]}, indent=2))
        return 0
    print(f"feedback database: {where}")
    for result in results:
        _print_window(result)
    return 0


def _print_window(result: WindowStats) -> None:
    overall = result.overall
    since = f" (since {result.since:%Y-%m-%d %H:%M} UTC)" if result.since else ""
    print(f"\nwindow {result.window}{since}: {overall.tickets} ticket{'s' * (overall.tickets != 1)}, "
          f"{overall.predicted} with a known prediction, agreement {_percent(overall.rate)}")
    if not overall.tickets:
        return
    if result.review_known:  # predictions sent without the flag are not in the share
        known = result.review_known
        print(f"  needs_review: {_percent(result.needs_review_share)} of the {known} prediction{'s' * (known != 1)} "
              "sent with the flag; agreement "
              f"{_percent(result.confident.rate)} when not flagged, {_percent(result.needs_review.rate)} when flagged")
    for title, groups in (("agents' label", result.per_label), ("model version", result.per_model),
                          ("predicted label", result.per_predicted)):
        if not groups:
            continue
        # Only an agents' label counts tickets sent without a prediction: agreement is of those with one.
        by_label = title == "agents' label"
        width = max(len(title), *(len(name) for name in groups))
        print(f"  {title:<{width}}  {'TICKETS':>7}  " + ("WITH A PREDICTION  " if by_label else "")
              + f"{'AGREED':>6}  AGREEMENT" + ("  SHARE" if title == "predicted label" else ""))
        for name in sorted(groups, key=lambda n: (-groups[n].tickets, n)):
            group = groups[name]
            predicted = f"{group.predicted:>17}  " if by_label else ""
            share = f"  {_percent(group.tickets / overall.predicted)}" if title == "predicted label" else ""
            print(f"  {name:<{width}}  {group.tickets:>7}  {predicted}{group.agreed:>6}  {_percent(group.rate):>9}"
                  f"{share}")
    if result.new_labels:
        print("  new labels (not the model's): " + ", ".join(f"{label} ({count})"
                                                            for label, count in result.new_labels.most_common()))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _run_feedback_export(args: argparse.Namespace) -> int:
    from classifier.feedback import export_csv, open_store

    _refuse_to_replace(args, args.output)
    with open_store(args.db, args.model) as store:
        rows, without_text, columns = export_csv(store, args.output, label_column=args.label_column,
                                                 since=args.since)
    print(f"{rows} tickets' labels written to {args.output} (text columns: {', '.join(columns)}, label column: "
          f"{args.label_column})")
    if without_text:
        print(f"  {without_text} of them without text (never sent): train leaves them out; retrain --corrections "
              "matches them to the export by ticket id")
    return 0


def _run_feedback_delete(args: argparse.Namespace) -> int:
    from classifier.feedback import open_store

    with open_store(args.db, args.model) as store:
        stored = store.stored(args.ticket)
        changed = store.delete(args.ticket, text_only=args.text_only)
    events = f"{changed} event{'s' * (changed != 1)}"
    what = f"text deleted from {events}" if args.text_only else f"{events} deleted"
    print(f"{what} (tickets {', '.join(args.ticket)})")
    # Deleting is done either way; a mistyped id would otherwise pass for a deletion.
    unknown = [ticket for ticket in dict.fromkeys(args.ticket) if ticket not in stored]
    if unknown:
        print(f"ticketclf feedback delete: warning: nothing is stored of ticket{'s' * (len(unknown) > 1)} "
              f"{', '.join(unknown)}: check the id{'s' * (len(unknown) > 1)}", file=sys.stderr)
    elif not changed:  # --text-only, of tickets whose text is gone already
        print("ticketclf feedback delete: warning: no text was stored of these tickets (their labels are kept)",
              file=sys.stderr)
    return 0


# ---------------------------------------------------------------- split

SPLIT_EPILOG = """\
examples:
  ticketclf split data/tickets.csv --output-train runs/train.csv --output-test runs/test.csv
  ticketclf split export.jsonl.gz --label-column queue --test-fraction 0.1 \\
      --output-train train.csv --output-test test.csv

Stratified by label, with the seeded split training uses for validation. Reads every format
train reads and finds the columns the same way; both outputs are CSV with all the input's
columns (a JSON object's fields as dotted columns), so the test file reads like the export.
A class with a single ticket, rows without a label, and copies of a training ticket (the same
text once cleaned) go to the training file: nothing in the test file was trained on. So do copies
drawn for testing together: the test file scores each text once.
"""


def _add_split(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(commands, "split", "hold out a test file from a labelled ticket export", _run_split,
                    epilog=SPLIT_EPILOG)
    p.add_argument("data", type=Path, help="labelled tickets: CSV, TSV, JSONL or JSON, optionally .gz")
    p.add_argument("--output-train", type=_csv_file, required=True, metavar="TRAIN", help="CSV file for training")
    p.add_argument("--output-test", type=_csv_file, required=True, metavar="TEST", help="CSV file held out for testing")
    p.add_argument("--overwrite", action="store_true", help="replace the output files if they exist")
    p.add_argument("--label-column", type=_column_name,
                   help="label column (default: detected as train does: category, label, queue, ...)")
    p.add_argument("--text-columns", type=_csv_list, metavar="COLUMNS",
                   help="comma-separated text columns (default: detected as train does)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of each class held out")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified shuffle")


def _run_split(args: argparse.Namespace) -> int:
    from classifier.data import split_file

    _refuse_to_replace(args, args.output_train, args.output_test, source=args.data)
    split = split_file(args.data, args.output_train, args.output_test, label_column=args.label_column,
                       text_columns=args.text_columns, test_fraction=args.test_fraction, seed=args.seed)
    print(f"{split.train} training and {split.test} test tickets from {args.data} (text from "
          f"{', '.join(split.mapping.text_columns)}; {split.mapping.label_line()})")
    if split.unlabelled:
        print(f"  {counted(split.unlabelled, 'row')} without a label went to the training file: training leaves "
              "such rows out and lists them; 'ticketclf review-labels' suggests a label")
    if split.copies:
        print(f"  {counted(split.copies, 'ticket')} drawn for testing had the text of a training ticket or of "
              "another test ticket: kept for training")
    return 0


# ---------------------------------------------------------------- review-labels

REVIEW_LABELS_EPILOG = """\
examples:
  ticketclf review-labels export.csv --output review.csv
  ticketclf review-labels export.jsonl.gz --text-columns subject,description --label-column queue \\
      --output review.csv --folds 10

Scores every ticket with the TF-IDF baseline fitted on the other folds (stratified) and flags those
whose given label looks wrong: another class's out-of-fold probability reaches that class's threshold
(its mean probability on the tickets labelled with it) and beats the given label's. Near-duplicate
tickets labelled otherwise (word TF-IDF cosine >= 0.95) are listed too.

The output is a CSV with every row of DATA and its columns, the findings first (most likely mislabelled
first), plus suggested_label, confidence (the out-of-fold probability of the suggestion), reason, and
corrected_label, left empty. Fill corrected_label where the label is wrong (the suggestion, or another
label), then train on the file as it is: where corrected_label has a value, train (and evaluate) read
it in place of the label.
  ticketclf train review.csv --output runs/model
"""


def _add_review_labels(commands: argparse._SubParsersAction) -> None:
    from classifier.label_review import DEFAULT_FOLDS

    p = _subcommand(commands, "review-labels", "list tickets whose label looks wrong, in a file to correct",
                    _run_review_labels, epilog=REVIEW_LABELS_EPILOG)
    p.add_argument("data", type=Path, help="labelled tickets: CSV, TSV, JSONL or JSON, optionally .gz")
    p.add_argument("--output", "-o", type=_csv_file, required=True, help="the CSV file to write")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists (and with it any "
                   "corrections made in it)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="folds of the out-of-fold scores")
    p.add_argument("--text-columns", type=_csv_list, metavar="COLUMNS",
                   help="comma-separated text columns (default: detected as train does)")
    p.add_argument("--label-column", type=_column_name,
                   help="label column (default: detected as train does: category, label, queue, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds")


def _run_review_labels(args: argparse.Namespace) -> int:
    from classifier.label_review import entry_line, write_review

    _refuse_to_replace(args, args.output, source=args.data)
    written = write_review(args.data, args.output, TextOptions(fields=args.text_columns or ()), args.label_column,
                           folds=args.folds, seed=args.seed)
    review = written.review
    print(f"{review.tickets} tickets reviewed ({review.folds}-fold TF-IDF out-of-fold; {written.labels_from}): "
          f"{len(review.flagged)} look mislabelled, {len(review.duplicates)} more have a near-duplicate labelled "
          "otherwise")
    for finding in review.findings()[:5]:
        print(entry_line(finding.entry(written.texts, written.ids), 60))
    if (unreviewed := written.rows - review.tickets) > 0:
        print(f"  {counted(unreviewed, 'row')} without a label or text: not reviewed, written after the findings "
              "(a corrected_label trains on it)")
    options = "".join(f" {option} {shlex.quote(_as_option(value))}" for option, value in (
        ("--text-columns", args.text_columns), ("--label-column", args.label_column)) if value)
    least = DataOptions().min_class_count
    if small := sorted((n, label) for label, n in written.class_sizes.items() if n < least):
        print(f"  note: train needs {least} tickets a class: {first_of([f'{label!r} ({n})' for n, label in small], 5)}"
              " have fewer; correct or add tickets, or train with --merge-rare-classes or --drop-rare-classes")
    print(f"{written.rows} rows written to {args.output}, those first; fill corrected_label where a label is wrong, "
          f"then train on it: ticketclf train {shlex.quote(str(args.output))}{options} --output runs/model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
