"""The ``compressor`` console command: ``compressor compare RUN_DIR...`` (and the two apps by name)."""

import sys

from compressor.app import classifier, compare, post_train

COMMANDS = {
    "compare": (compare.main, "compare run folders: one row per run (table, csv, json, plot)"),
    "classifier": (classifier.main, "train / fine-tune / evaluate under a recipe (apps/compress_classifier.py)"),
    "post-train": (post_train.main, "calibrate and quantize a trained FP32 model (apps/post_train_quant.py)"),
}


def usage():
    lines = ["usage: compressor COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
