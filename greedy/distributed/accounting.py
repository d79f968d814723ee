"""How many bytes each phase of a distributed run moves, and where.

Three figures per phase:

- ``to_sites_bytes``: the task arguments the coordinator sends (centroids, a preprocessing map, a
  frozen block), computed from the arrays sent (``payload_bytes``); Dask counts them nowhere.
- ``to_coordinator_bytes``: what the workers send back, from each worker's
  ``transfer_outgoing_log`` (entries whose ``who`` is not a worker); ``results_bytes`` is the same
  computed from the arrays received, a check that needs no Dask internals.
- ``between_workers_bytes``: from each worker's ``transfer_incoming_log`` (every entry is data
  from another worker). Raw data never moves, so this stays 0.
"""
import time

import numpy as np


def payload_bytes(obj):
    """Bytes of the numpy arrays (and sparse matrices) in ``obj``, found through tuples, lists, dicts and
    objects' attributes (a Sequential's layers and params, RegionCodes' parts)."""
    seen = set()

    def walk(o):
        if id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            return o.nbytes
        if isinstance(o, (np.generic, int, float, bool, str, bytes, type(None))):
            return 8 if not isinstance(o, (str, bytes)) else len(o)
        if hasattr(o, "tocsr") and hasattr(o, "indptr"):
            return o.data.nbytes + o.indices.nbytes + o.indptr.nbytes
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, (list, tuple, set)):
            return sum(walk(v) for v in o)
        if hasattr(o, "__dict__"):
            return walk(vars(o))
        return 0
    return walk(obj)


def _worker_totals(dask_worker):
    """On a worker: (bytes received from other workers, {requester: bytes sent})."""
    sent = {}
    for e in list(dask_worker.transfer_outgoing_log):
        sent[e["who"]] = sent.get(e["who"], 0) + int(e["total"])
    return int(sum(e["total"] for e in list(dask_worker.transfer_incoming_log))), sent


class Ledger:
    """Bytes per phase. ``sent``/``received`` are called by ``Sites.run``; ``close_phase`` reads the
    workers' transfer logs and returns the phase's record (also kept in ``phases``)."""

    def __init__(self, client=None):
        self.client = client
        self.phases = {}
        self._open = self._empty()
        self._seen = {}  # worker address -> (incoming, outgoing to non-workers) at the last close

    @staticmethod
    def _empty():
        return {"rounds": 0, "tasks": 0, "to_sites_bytes": 0, "results_bytes": 0, "t0": time.perf_counter()}

    def sent(self, step, args_per_task):
        self._open["rounds"] += 1
        self._open["tasks"] += len(args_per_task)
        self._open["to_sites_bytes"] += sum(payload_bytes(a) for a in args_per_task)

    def received(self, step, results):
        self._open["results_bytes"] += payload_bytes(results)

    def _transfers(self):
        if self.client is None:
            return 0, 0
        logs = self.client.run(_worker_totals)
        workers = set(logs)
        between = to_coordinator = 0
        for addr, (incoming, sent) in logs.items():
            out = sum(v for who, v in sent.items() if who not in workers)
            last_in, last_out = self._seen.get(addr, (0, 0))
            between += max(incoming - last_in, 0)
            to_coordinator += max(out - last_out, 0)
            self._seen[addr] = (incoming, out)
        return between, to_coordinator

    def close_phase(self, name):
        """The record of the calls since the last close, under ``name`` (added to an earlier record of that name)."""
        between, to_coordinator = self._transfers()
        rec = self._open
        rec = {"rounds": rec["rounds"], "tasks": rec["tasks"], "to_sites_bytes": rec["to_sites_bytes"],
               "results_bytes": rec["results_bytes"], "to_coordinator_bytes": to_coordinator,
               "between_workers_bytes": between, "seconds": round(time.perf_counter() - rec["t0"], 3)}
        total = self.phases.setdefault(name, dict.fromkeys(rec, 0))
        for k, v in rec.items():
            total[k] = round(total[k] + v, 3) if k == "seconds" else total[k] + v
        self._open = self._empty()
        return rec

    def totals(self):
        keys = ("rounds", "tasks", "to_sites_bytes", "results_bytes", "to_coordinator_bytes", "between_workers_bytes")
        return {k: sum(p[k] for p in self.phases.values()) for k in keys}
