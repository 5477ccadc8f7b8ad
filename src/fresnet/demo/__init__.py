"""``fresnet demo``: the whole package in one run, offline, in minutes on a laptop CPU.

Steps (each timed, each recorded in the report):

1. data -- synthetic identities (:mod:`fresnet.data.synthetic`) written as an InsightFace RecordIO
   training set plus a ``.bin`` verification pack of *held-out* identities;
2. model -- the network of the training config: summary (parameters, MACs) and a drawing of its graph;
3. untrained -- the same network with its initial random weights, evaluated on the held-out pairs;
4. train -- :func:`fresnet.train.run` on the RecordIO set (config ``synthetic-r18``);
5. evaluate -- the trained model on the held-out pairs with InsightFace's protocol; ROC plot;
6. export -- ONNX export, onnxruntime parity (max abs diff) and accuracy of the ONNX graph.

Everything lands in one folder with ``report.md``, ``report.html`` and ``results.json``. Pictures are
optional (a missing ``dot`` binary or plotting failure is written into the report); data, training,
evaluation and export failures stop the demo with :class:`DemoFailed`.

One module per job: ``state`` (options, the run's shared state), ``stages`` (one function per step),
``report`` (the Markdown/HTML/JSON report), ``run`` (the steps in order, timed).
"""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "DemoFailed": "fresnet.demo.state",
    "DemoOptions": "fresnet.demo.state",
    "DemoResult": "fresnet.demo.state",
    "run_demo": "fresnet.demo.run",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
