"""Enrolment and 1:N search over face embeddings: a durable SQLite store, exact search by default,
FAISS and Milvus as explicit options, the embedding contract, and thresholds calibrated from data.

``Gallery`` (gallery.py) is the public class; docs/gallery.md is its guide.
"""
