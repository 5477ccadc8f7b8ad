"""Model files in and out: MXNet checkpoints (``mxnet``, with ``mxnet_symbol*``, ``mxnet_params`` and
``names``), arcface_torch state dicts, fresnet's own safetensors (``native``), ONNX export, and
``formats``, which tells them apart by file name and reads or writes any of them."""
