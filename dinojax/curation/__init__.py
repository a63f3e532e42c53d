"""Automatic data curation (DINOv2 §3; Vo et al., 2024): embed an image pool, deduplicate it, retrieve
neighbours of curated query sets, and rebalance it with hierarchical k-means and balanced sampling.

Steps, each reading the previous one's files from the workdir: `embed`, `dedup`, `retrieve`,
`cluster`, `sample` (see `dinojax/curate.py` and docs/curation.md).
"""
