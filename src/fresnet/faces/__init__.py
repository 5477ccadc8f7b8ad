"""Photos to faces: detectors (MTCNN, SCRFD, YuNet) behind one interface, alignment, the pipeline."""
