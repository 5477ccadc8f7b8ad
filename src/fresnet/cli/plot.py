"""``fresnet plot NAME -o net.svg``: draw the network, like the original's ``mx.viz.plot_network``."""
from __future__ import annotations

import argparse

from fresnet.cli.common import add_model_args, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw the network as a graph (.svg/.png/.pdf through graphviz's dot, or the .dot source)",
        description="Draw the network's real dataflow: one node per layer (op type, kernel/stride, filters), "
        "edges labelled with tensor shapes, each residual unit boxed; or one node per unit (--collapse). "
        "Without graphviz's `dot` binary the .dot source is written instead.",
    )
    add_model_args(p)
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="output file; the suffix picks the format: .svg .png .pdf .dot .gv (default NAME.svg)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--collapse", dest="collapse", action="store_true", default=None,
                      help="one node per residual unit (default for networks with more than 16 units)")
    view.add_argument("--expand", dest="collapse", action="store_false",
                      help="one node per layer, whatever the depth")
    p.add_argument("--title", default=None, help="caption drawn above the graph (default: NAME)")
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from fresnet.inspection.viz import plot_network

    model = model_from_args(args)
    output = args.output or f"{args.name}.svg"
    result = plot_network(model, output, collapse=args.collapse, title=args.title or args.name)
    view = "one node per unit" if result.collapsed else "one node per layer"
    if result.rendered:
        print(f"wrote {result.path} ({view})")
    elif str(result.path) == str(output):
        print(f"wrote {result.path} ({view}); render it with: dot -Tsvg {result.path} -o {args.name}.svg")
    else:
        print(
            f"graphviz's `dot` program is not installed, so wrote the graph source {result.path} ({view}) "
            f"instead of {output}.\nInstall it (`apt-get install graphviz`, or `brew install graphviz`) and render: "
            f"dot -T{output.rsplit('.', 1)[-1]} {result.path} -o {output}"
        )
    return 0
