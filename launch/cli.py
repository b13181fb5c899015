"""The `timemae` command: one entry point, subcommands implemented next to the code they drive.

Each subcommand lives in a module that exposes ``CLI = {name: (add_arguments, run)}``; ``add_arguments(parser)``
declares the flags and ``run(args) -> int`` does the work. Modules are imported only when their command runs, so
``timemae --help`` is instant and one broken optional dependency cannot take down every command.

Bad input raises `common.errors.UserError` (or `DecodeError` for a video the user named that cannot be decoded); it is
printed as one line and the process exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from common.errors import DecodeError, UserError, one_line
from launch import config as config_lib

# name -> (module, one-line help). The order is the order `timemae --help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("data.prep.demo", "generate the embedded demo dataset: videos (RGB + depth), manifests and shards"),
    "manifest": ("data.prep.presets", "build a manifest CSV from a dataset preset (UWA3D, NTU, HMDB51, ...)"),
    "check": ("data.prep.shards", "check every video of a manifest; bad ones are listed with the reason"),
    "shards": ("data.prep.shards", "write webdataset shards from a manifest or a dataset preset"),
    "preview": ("tools.preview", "write the TIME clip of one video as PNG frames and a contact sheet"),
    "reconstruct": ("pretrain.reconstruct", "reconstructions of one video by a pretrained model, per grid N and mask "
                                            "ratio (PNG panels, errors.csv)"),
    "extract": ("finetune.features", "features of every video of some shards by a checkpoint (.npz), for probes"),
    "probe": ("finetune.features", "linear and k-NN probe accuracy of extracted features"),
    "attention": ("finetune.attention", "attention maps per layer, class-weight heatmaps and overlays, ResNet "
                                        "feature maps, of one video"),
    "protocol": ("finetune.protocol", "a dataset's evaluation protocol in one command: shards, trainings, the table"),
    "experiment": ("finetune.experiment", "experiments on the demo data: time-vs-frames (does one TIME frame carry "
                                          "time?)"),
    "compare-weights": ("launch.compare_weights", "per-layer cosine similarity of two checkpoints of one "
                                                  "architecture (CSV, bar chart)"),
    "bench-loader": ("tools.bench_loader", "benchmark clip loading (clips/s per core, decode vs. the rest)"),
    "bench-step": ("pretrain.bench_step", "benchmark a pretraining step (SDPA vs. explicit attention, checkpointing)"),
    "flops": ("launch.bench_models", "GFLOPs and parameters per view of the classifiers, next to the papers' figures"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS)) + 2
    lines = "\n".join(f"  {name:<{width}}{text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="timemae",
        allow_abbrev=False,
        description="timemae: TIME-grid video pretraining and fine-tuning.",
        epilog=f"commands:\n{lines}\n\nRun `timemae COMMAND --help` for the flags of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top.parse_args(argv[:1] or ["--help"])  # prints help, or "invalid choice" with exit code 2
        return 2
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    add_arguments, run = importlib.import_module(module_name).CLI[name]
    parser = config_lib.new_parser(prog=f"timemae {name}", description=text)
    add_arguments(parser)
    args, unknown = parser.parse_known_args(rest)
    if unknown:
        parser.error(config_lib.unknown_flags_message(parser, unknown))
    try:
        return int(run(args) or 0)
    except (UserError, DecodeError) as err:  # a DecodeError that gets here is the one video the user named
        print(f"timemae {name}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a file system refusal, most often of a path on the command line (--out under /proc)
        if err.filename is None:
            raise
        where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
        print(f"timemae {name}: error: {where}: {err.strerror or err}; check the path and its permissions "
              "(an output folder must be creatable and writable)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"timemae {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
