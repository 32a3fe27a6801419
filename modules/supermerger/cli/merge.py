"""`supermerger merge`: merge two or three checkpoints into a file (or replay a recipe, a merged
file's recipe or a merge of the history); without any model, the built-in tiny demo models.
"""

from __future__ import annotations

import argparse
import textwrap

from .common import _add_merge_args, _demo_models, _progress_bar, _recipe_from_args


EXAMPLES = textwrap.dedent("""\
    examples:
      supermerger merge -a A.safetensors -b B.safetensors --alpha 0.3 -o AB.safetensors
      supermerger merge -a A.safetensors -b B.safetensors -c C.safetensors --mode "Add difference" --alpha 1 -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --mbw-alpha GRAD_V -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --mbw-alpha "0,1,1,1,1,1,1,1,1,1,1,1,1,0.5,0,0,0,0,0,0,0,0,0,0,0,0" -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --elemental "OUT03 OUT04:attn2 attn1.to_out:0.5" --dry-run
      supermerger merge --recipe recipe.json --explain --dry-run
      supermerger merge --recipe-from merged.safetensors -o replayed.safetensors
      supermerger merge --from-history 42 --models-dir ~/models -o again.safetensors   (see `supermerger history`)
      supermerger merge -a A.safetensors -b B.safetensors -c C.safetensors --calcmode trainDifference --alpha 1 -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --random-mode R --seed -1 -o dice.safetensors
      supermerger merge            (no models: merges two built-in tiny demo models)
    """)


def _calcmode_list() -> str:
    """The calcmodes for the end of `merge --help`: one line each, from the registry."""
    from ..merge.calcmodes import CALCMODES

    width = max(len(cm.id) for cm in CALCMODES.values()) + 2
    lines = ["", "calculation modes (--calcmode NAME; details: `supermerger calcmodes`, calcmode_en.md):"]
    lines += [f"  {cm.id:<{width}}{cm.summary}" for cm in CALCMODES.values()]
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    m = sub.add_parser("merge", help="merge two or three checkpoints into a file", epilog=EXAMPLES + _calcmode_list(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Merge checkpoints. Without any model, merges two built-in tiny demo models.")
    _add_merge_args(m)


def cmd_merge(args) -> int:
    from ..api import merge, plan_merge

    recipe = _recipe_from_args(args)
    if not recipe.model_a and not recipe.model_b and not args.recipe and not args.recipe_from \
            and args.from_history is None:
        a, b = _demo_models()
        recipe = recipe.replace(model_a=a, model_b=b)
        print(f"No models given: merging the built-in demo models (tiny synthetic SD1 checkpoints)\n  {a}\n  {b}")
    plan = plan_merge(recipe)
    recipe = plan.recipe  # with the seed drawn for random ratios, so the merge below uses the same draws
    for line in plan.summary_lines():
        print(line)
    if args.explain:
        print()
        for line in plan.explain_lines():
            print(line)
    if args.save_recipe:
        from ..io.atomic import atomic_write_text

        atomic_write_text(args.save_recipe, recipe.to_json())
        print(f"recipe saved : {args.save_recipe}")
    for s in plan.sources.values():
        s.close()
    output = recipe.output
    if output is None:
        from ..merge.naming import default_filename

        output = default_filename(plan.name, variant=plan.variant, fp16=recipe.dtype == "fp16")
        print(f"output       : {output} (use --output to choose)")
    if args.dry_run:
        from ..io.atomic import check_output_path

        check_output_path(output, bool(recipe.overwrite))  # the real run would refuse it: so does the dry run
        print("dry run: nothing was read or written.")
        return 0
    progress = None if args.quiet else _progress_bar()
    try:
        result = merge(recipe, output=output, progress=progress, history=not args.no_history)
    finally:
        if progress is not None:
            progress.close()
    for n in result.notices:
        if n not in plan.notices:
            print(f"notice: {n}")
    print(f"Merged model saved in {result.path} ({result.seconds:.1f} s)")
    if result.history_id is not None:
        print(f"history ID   : {result.history_id} (supermerger history show {result.history_id})")
    return 0
