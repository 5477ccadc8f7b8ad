"""InsightFace RecordIO training sets (``train.rec``, ``train.idx``, ``property``) without MXNet."""
