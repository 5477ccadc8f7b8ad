"""MXNet ``-symbol.json`` files: the nnvm graph (:class:`SymbolGraph`), read from and written as text.

:func:`parse_symbol` / :func:`read_symbol` parse any nnvm-era symbol file. :func:`to_json` serialises a
graph the way MXNet 1.9's ``Symbol.tojson()`` does (nnvm node order = depth-first post-order from the
head, dmlc ``JSONWriter`` layout, attribute values as Python ``str()`` of the keyword arguments).

Which graph a fresnet config makes is :mod:`fresnet.interop.mxnet_symbol_build`; which config a graph
holds is :mod:`fresnet.interop.mxnet_symbol_infer`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from fresnet.errors import FresnetError
from fresnet.ioutil import read_text
from fresnet.validate import describe, load_json

MXNET_VERSION = 10901  # written into "attrs": {"mxnet_version": ["int", 10901]}, as MXNet 1.9.1 does
NUM_OUTPUTS = {"BatchNorm": 3, "Dropout": 2}  # for node_row_ptr; every other op here has one output

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------
# a graph: nodes in nnvm order
# ---------------------------------------------------------------------------------------------
@dataclass
class Node:
    op: str  # "null" for a variable
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    inputs: list[tuple[Node, int, int]] = field(default_factory=list)  # (node, output index, version)


@dataclass
class SymbolGraph:
    """A parsed (or built) symbol: ``nodes`` in file order, ``heads`` as (node index, output index)."""

    nodes: list[Node]
    heads: list[tuple[int, int]]
    source: str = "<graph>"

    def __post_init__(self) -> None:
        self.index = {id(node): i for i, node in enumerate(self.nodes)}
        self.by_name: dict[str, Node] = {}
        for node in self.nodes:
            self.by_name.setdefault(node.name, node)

    def node(self, name: str) -> Optional[Node]:
        return self.by_name.get(name)

    @property
    def variables(self) -> list[str]:
        return [n.name for n in self.nodes if n.op == "null"]

    @property
    def aux_names(self) -> list[str]:
        """Variables fed to an op as mutable state (BatchNorm inputs 3 and 4), in node order."""
        aux = {id(src) for n in self.nodes if n.op == "BatchNorm" for src, _, _ in n.inputs[3:5]}
        return [n.name for n in self.nodes if n.op == "null" and id(n) in aux]

    @property
    def arg_names(self) -> list[str]:
        """``list_arguments()`` minus ``data``: the trainable arrays, in node order."""
        aux = set(self.aux_names)
        return [name for name in self.variables if name not in aux and name != "data"]


# ---------------------------------------------------------------------------------------------
# serialising exactly like dmlc::JSONWriter
# ---------------------------------------------------------------------------------------------
def _str(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return '"' + out.replace("\t", "\\t") + '"'


def _int_list(values: Sequence[int], indent: str) -> str:
    """dmlc writes arrays of PODs on one line up to 10 items, else one item per line."""
    if len(values) > 10:
        inner = ", ".join(f"\n{indent}  {v}" for v in values)
        return f"[{inner}\n{indent}]"
    return "[" + ", ".join(str(v) for v in values) + "]"


def to_json(graph: SymbolGraph) -> str:
    """The text ``Symbol.tojson()`` produces in MXNet 1.9 for this graph."""
    index = graph.index
    parts = []
    for node in graph.nodes:
        fields = [f'"op": {_str(node.op)}', f'"name": {_str(node.name)}']
        if node.attrs:
            items = sorted(node.attrs.items())
            if len(items) > 1:
                body = ", ".join(f"\n        {_str(k)}: {_str(v)}" for k, v in items)
                fields.append(f'"attrs": {{{body}\n      }}')
            else:
                fields.append(f'"attrs": {{{_str(items[0][0])}: {_str(items[0][1])}}}')
        inputs = ", ".join(f"[{index[id(src)]}, {out}, {ver}]" for src, out, ver in node.inputs)
        fields.append(f'"inputs": [{inputs}]')
        parts.append("{" + ", ".join(f"\n      {f}" for f in fields) + "\n    }")
    nodes = "[" + ", ".join(f"\n    {p}" for p in parts) + "\n  ]"
    arg_nodes = [i for i, n in enumerate(graph.nodes) if n.op == "null"]
    row_ptr = [0]
    for node in graph.nodes:
        row_ptr.append(row_ptr[-1] + NUM_OUTPUTS.get(node.op, 1))
    heads = ", ".join(f"[{i}, {out}, 0]" for i, out in graph.heads)
    return (
        "{"
        f'\n  "nodes": {nodes}, '
        f'\n  "arg_nodes": {_int_list(arg_nodes, "  ")}, '
        f'\n  "node_row_ptr": {_int_list(row_ptr, "  ")}, '
        f'\n  "heads": [{heads}], '
        f'\n  "attrs": {{"mxnet_version": ["int", {MXNET_VERSION}]}}'
        "\n}"
    )


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def parse_symbol(text: str, source: str = "<symbol>") -> SymbolGraph:
    """Parse symbol JSON text (nnvm format; the pre-1.0 ``attr``/``param`` keys are accepted too)."""
    data = load_json(text, source, "symbol")
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or "heads" not in data:
        raise FresnetError(f"{source}: not an MXNet symbol file (needs 'nodes' and 'heads')")
    nodes: list[Node] = []
    raw_nodes = data["nodes"]
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or "op" not in raw or "name" not in raw:
            raise FresnetError(f"{source}: node {i} is malformed (needs 'op' and 'name')")
        attrs: dict[str, str] = {}
        for key in ("param", "attr", "attrs"):  # old and new spellings
            if isinstance(raw.get(key), dict):
                attrs.update({str(k): v if isinstance(v, str) else describe(v) for k, v in raw[key].items()})
        if not isinstance(raw["op"], str) or not isinstance(raw["name"], str):
            raise FresnetError(f"{source}: node {i} has a non-text op or name ({describe(raw['op'])}, "
                               f"{describe(raw['name'])})")
        nodes.append(Node(raw["op"], raw["name"], attrs))
    for i, raw in enumerate(raw_nodes):
        inputs = raw.get("inputs", [])
        if not isinstance(inputs, list):
            raise FresnetError(
                f"{source}: node {i} ({describe(raw['name'])}) has inputs {describe(inputs)}, not a list"
            )
        for entry in inputs:
            try:
                if not isinstance(entry, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in entry
                ):
                    raise ValueError
                src, out = entry[0], entry[1]
                version = entry[2] if len(entry) > 2 else 0
                if not 0 <= src < i or not 0 <= out < 16:
                    raise IndexError
            except (TypeError, ValueError, IndexError):
                raise FresnetError(f"{source}: node {i} ({describe(raw['name'])}) has a bad input {describe(entry)}") \
                    from None
            nodes[i].inputs.append((nodes[src], out, version))
    try:
        heads = [(int(h[0]), int(h[1])) for h in data["heads"]]
        for h, _ in heads:
            if not 0 <= h < len(nodes):
                raise IndexError
    except (TypeError, ValueError, IndexError, KeyError):
        raise FresnetError(f"{source}: bad 'heads' entry {describe(data['heads'])}") from None
    return SymbolGraph(nodes, heads, source)


def read_symbol(path: PathLike) -> SymbolGraph:
    path = Path(path)
    try:
        text = read_text(path, "MXNet -symbol.json")
    except FileNotFoundError:
        raise FresnetError(f"{path}: no such file (expected an MXNet -symbol.json)") from None
    except OSError as exc:
        raise FresnetError(f"{path}: cannot read ({exc})") from None
    return parse_symbol(text, str(path))
