"""A dataset benchmark: one replay per scene as Ray tasks, pooled into one table.

``diff2scene bench-dataset`` (:mod:`.cli`) resolves the scenes and what an earlier run left
(:mod:`.scenes`), runs their replays on a local or remote Ray cluster with retries and time
limits (:mod:`.runner`), and pools their outputs into ``dataset_report.{json,md,png}``
(:mod:`.report`).
"""
