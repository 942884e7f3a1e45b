"""The stream worker: ``member-events`` folded into member state in Redis (entry point
:func:`stream.worker.run_worker`; the steps of one batch in :mod:`stream.batch`)."""
