"""Outgrow one machine: batch prediction and per-layer statistics on a Ray cluster, same results as one process.

``cluster`` starts or joins Ray (no dashboard, no usage reporting) and turns sources into the
sorted photo list; ``predict`` runs today's engine in one stateful actor per worker and writes resumable JSON
Lines shards; ``stats`` gathers per-worker channel statistics and merges them exactly. Ray is optional
(``pip install -e '.[scale]'``): nothing here imports it until a ``--ray`` run starts.

Examples:
    cardamage predict --weights best.pt photos/ list.txt --out runs/p --ray --workers 2
    cardamage inspect photos/ --out runs/i --stats-only --ray 10.0.0.5:6379
"""
