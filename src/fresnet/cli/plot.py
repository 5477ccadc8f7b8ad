"""``fresnet plot NAME -o net.svg``: draw the network, like the original's ``mx.viz.plot_network``."""
from __future__ import annotations

import argparse

from fresnet.cli.common import add_model_args, model_from_args, model_label


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw the network as a graph (.svg/.png/.pdf, or the graphviz .dot source)",
        description="Draw the network's real dataflow: one node per layer (op type, kernel/stride, filters), "
        "edges labelled with tensor shapes, each residual unit boxed; or one node per unit (--collapse). "
        "Pictures are drawn by graphviz's `dot` program when it is installed, else by matplotlib.",
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
    p.add_argument("--renderer", choices=("auto", "dot", "matplotlib"), default="auto",
                   help="who draws a picture: graphviz's dot, matplotlib, or auto (default: dot when installed)")
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from fresnet.inspection.viz import plot_network

    model = model_from_args(args)
    label = model_label(args)
    output = args.output or f"{label}.svg"
    result = plot_network(model, output, collapse=args.collapse, title=args.title or label, renderer=args.renderer)
    view = "one node per unit" if result.collapsed else "one node per layer"
    if not result.rendered:
        print(f"wrote {result.path} ({view}); render it with: dot -Tsvg {result.path} -o {label}.svg")
    elif result.renderer == "matplotlib" and args.renderer == "auto":
        print(f"wrote {result.path} ({view}; drawn with matplotlib, as graphviz's `dot` program is not installed)")
    else:
        print(f"wrote {result.path} ({view}; drawn with {result.renderer})")
    return 0
