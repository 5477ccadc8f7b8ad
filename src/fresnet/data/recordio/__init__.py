"""InsightFace RecordIO training sets (``train.rec``, ``train.idx``, ``property``) without MXNet.

Three layers, bottom up:

* dmlc framing: ``[magic][cflag<<29 | length][payload][pad to 4]``, where a payload that contains the
  magic number at a 4-byte-aligned position is split into chunks flagged 1 (first), 2 (middle) and
  3 (last), and the magic itself is dropped from the chunks (the reader puts it back).
* ``mx.recordio.pack``: an ``IRHeader`` (``<IfQQ``: flag, label, id, id2), then ``flag`` float32 labels
  when the label is an array, then the image bytes.
* InsightFace's layout: record 0 is a header whose labels are the half-open range of identity keys;
  each identity record's labels are the half-open range of its image keys; record 0 is written last.
  Files without that header (shuffled ``im2rec`` output) are plain lists of image records.

One module per job:

* ``format`` -- the first two layers and the files' names: framing, ``IRHeader`` records, random
  access to a ``.rec`` (:class:`~fresnet.data.recordio.format.RecFile`), the ``.idx`` index (read,
  rebuilt by scanning, written) and the ``property`` file.
* ``dataset`` -- :class:`~fresnet.data.recordio.dataset.RecordIODataset` reads InsightFace's layout
  with ``os.pread`` on a file descriptor opened lazily in each process, so it is safe in DataLoader
  workers and random access is one or two reads.
* ``writer`` -- :class:`~fresnet.data.recordio.writer.RecordIOWriter` writes it byte-for-byte as
  InsightFace's ``RecBuilder`` does, into temp files renamed only when complete;
  :func:`~fresnet.data.recordio.writer.pack_images` packs an image folder or list with it.

The main names are exported by :mod:`fresnet.data`.
"""
