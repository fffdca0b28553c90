"""GZ_WORKERS: one service instance as N processes, so that it uses N cores (docs/workers.md).

``supervisor.py`` starts and watches the workers; ``link.py`` is a worker's line to it;
``side.py`` and ``exposition.py`` make the instance's one /metrics; ``count.py`` reads ``auto``.
"""
