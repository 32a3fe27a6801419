"""`supermerger history list | search | show | stats | ids | import`: the merge history (every merge
gets an ID and a record; `supermerger merge --from-history ID` replays one).
"""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    h = sub.add_parser("history", help="list, search and show recorded merges (every merge is recorded)",
                       description="The merge history: every merge gets an ID and a record (mergehistory.csv in "
                                   "the data folder). Replay one with `supermerger merge --from-history ID`.")
    h.set_defaults(history_parser=h)
    hs = h.add_subparsers(dest="history_command", metavar="ACTION")

    def paging(p):
        p.add_argument("--page", type=int, default=1, help="page number, 1 = newest (default 1)")
        p.add_argument("--per-page", type=int, default=20, help="records per page (default 20)")

    paging(hs.add_parser("list", help="the records, newest first, one page"))
    s = hs.add_parser("search", help="records whose text holds the words (case-insensitive), newest first")
    s.add_argument("words", nargs="*", help="words, each a substring of the record's text (names, models, hashes, "
                   "mode, weights, elemental, ...)")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--or", dest="how", action="store_const", const="or", help="any word matches (default)")
    how.add_argument("--and", dest="how", action="store_const", const="and", help="every word matches")
    s.add_argument("--model", metavar="NAME", help="only merges of a model whose name contains NAME or whose hash "
                   "starts with it")
    s.add_argument("--mode", help="only merges in this mode (weight_sum, \"Add difference\", ...)")
    s.add_argument("--calcmode", help="only merges with this calcmode")
    paging(s)
    sh = hs.add_parser("show", help="one record in full, with its recipe")
    sh.add_argument("id", type=int, help="the ID; -1 = the last merge, -2 = the one before")
    sh.add_argument("--json", action="store_true", help="print the record as JSON")
    st = hs.add_parser("stats", help="per-block mean and standard deviation of the alpha weights of some merges")
    st.add_argument("ids", nargs="+", help="IDs separated by spaces or commas, e.g. 12 15 -1 or 12,15,-1")
    ids = hs.add_parser("ids", help="the merge IDs written into PNG images' parameters (' ID <n>')")
    ids.add_argument("images", nargs="+", help="PNG files")
    imp = hs.add_parser("import", help="append the records of the original extension's mergehistory.csv")
    imp.add_argument("file", help="the original's mergehistory.csv")


def cmd_history(args) -> int:
    from .. import history

    action = args.history_command
    if action is None:
        args.history_parser.print_help()
        return 0
    hist = history.History()
    if action in ("list", "search"):
        q = " ".join(args.words) if action == "search" else ""
        page = hist.search(q, getattr(args, "how", None) or "or", getattr(args, "model", None),
                           getattr(args, "mode", None), getattr(args, "calcmode", None), args.page, args.per_page)
        _warn(hist.problems())
        if not page.records:
            if not hist.count():
                print(f"no merge recorded yet ({hist.path})")
            elif page.total:
                print(f"no result: page {page.page} is past the last page ({page.pages})")
            else:
                print("no result")
            return 0
        print(f"{'ID':>5}  {'time':<19}  {'mode':<14}  {'calcmode':<14}  name")
        for r in page.records:
            name = r.name if len(r.name) <= 90 else r.name[:89] + "…"
            print(f"{r.id:>5}  {r.time:<19}  {r.mode:<14}  {r.calcmode:<14}  {name}")
        more = f"; --page {page.page + 1} for older ones" if page.page < page.pages else ""
        print(f"page {page.page} of {page.pages} ({page.total} records, newest first){more}")
    elif action == "show":
        rec = hist.get(args.id)
        _warn(hist.problems())
        if args.json:
            print(json.dumps(rec.to_dict(), indent=2, ensure_ascii=False))
        else:
            from ..history.table import detail_lines

            print("\n".join(detail_lines(rec)))
    elif action == "stats":
        print(history.weight_stats(",".join(args.ids), hist).text())
    elif action == "ids":
        found = history.ids_from_png(args.images)
        print(",".join(map(str, found)) if found else "no merge ID in these images")
    elif action == "import":
        records, notes = history.import_original(args.file, hist)
        _warn(notes)
        if records:
            print(f"imported {len(records)} records as IDs {records[0].id}-{records[-1].id}")
        else:
            print("nothing imported")
    return 0


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
