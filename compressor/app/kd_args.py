"""Distiller's knowledge-distillation flags, turned into a recipe section so flags and recipes share one path."""

from compressor.app.common import number
from compressor.core.errors import UsageError

KD_INSTANCE = "kd_from_flags"


def add_kd_arguments(parser):
    g = parser.add_argument_group("knowledge distillation (Distiller's --kd-* flags)")
    g.add_argument("--kd-teacher", metavar="ARCH", default=None, help="teacher model architecture (enables KD)")
    g.add_argument(
        "--kd-resume", metavar="PATH", default=None, help="the teacher's checkpoint (required with --kd-teacher)"
    )
    g.add_argument(
        "--kd-temperature",
        "--kd-temp",
        dest="kd_temperature",
        default=1.0,
        type=number("--kd-temperature", expected="a number > 0", lo_open=True),
        help="softmax temperature (default 1)",
    )
    g.add_argument(
        "--kd-distill-wt",
        "--kd-dw",
        dest="kd_distill_wt",
        default=0.5,
        type=number("--kd-distill-wt"),
        help="weight of the student-vs-teacher loss (default 0.5)",
    )
    g.add_argument(
        "--kd-student-wt",
        "--kd-sw",
        dest="kd_student_wt",
        default=0.5,
        type=number("--kd-student-wt"),
        help="weight of the student-vs-labels loss (default 0.5)",
    )
    g.add_argument(
        "--kd-teacher-wt",
        "--kd-tw",
        dest="kd_teacher_wt",
        default=0.0,
        type=number("--kd-teacher-wt"),
        help="teacher-vs-labels weight; only 0 (frozen teacher)",
    )
    g.add_argument(
        "--kd-start-epoch",
        dest="kd_start_epoch",
        default=0,
        type=number("--kd-start-epoch", int, expected="an integer >= 0"),
        help="first epoch with KD (default 0)",
    )


def kd_requested(args):
    return getattr(args, "kd_teacher", None) is not None or getattr(args, "kd_resume", None) is not None


def has_kd_from_flags(recipe):
    return recipe is not None and KD_INSTANCE in (recipe.data.get("distillers") or {})


def add_kd_to_recipe(data, args):
    """``data`` (plain recipe, possibly None) with a distiller and its policy from the flags."""
    if args.kd_teacher is None or args.kd_resume is None:
        raise UsageError(
            "knowledge distillation needs both --kd-teacher ARCH and --kd-resume PATH (the teacher's "
            "checkpoint; pretrained teachers cannot be downloaded here)"
        )
    if args.kd_teacher_wt != 0:
        raise UsageError(f"--kd-teacher-wt {args.kd_teacher_wt}: only 0 is supported (the teacher is frozen)")
    if args.kd_start_epoch >= args.epochs:
        raise UsageError(f"--kd-start-epoch {args.kd_start_epoch} is not before --epochs {args.epochs}")
    data = dict(data or {})
    if any("distiller" in p for p in data.get("policies") or []):
        raise UsageError("the recipe already has a distiller policy; drop the --kd-* flags or the recipe's")
    data["distillers"] = {
        **(data.get("distillers") or {}),
        KD_INSTANCE: {
            "class": "KnowledgeDistillation",
            "teacher_checkpoint": args.kd_resume,
            "teacher_arch": args.kd_teacher,
            "temperature": args.kd_temperature,
            "distill_wt": args.kd_distill_wt,
            "student_wt": args.kd_student_wt,
        },
    }
    data["policies"] = list(data.get("policies") or []) + [
        {
            "distiller": {"instance_name": KD_INSTANCE},
            "starting_epoch": args.kd_start_epoch,
            "ending_epoch": args.epochs,
        }
    ]
    return data
