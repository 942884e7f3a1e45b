"""Timings shared by both engines: consumer group, commits, Redis calls, shutdown."""

from __future__ import annotations

#: Consumer-group timings. The client defaults (session 30-60 s) made a group take ~30 s to (re)join on
#: the embedded broker. The session timeout is also how long a SIGKILLed worker's partitions stay
#: unowned, so it bounds freshness after a crash: 6 s is Kafka's default minimum
#: (group.min.session.timeout.ms), heartbeats every second keep a busy worker well inside it.
BROKER_SESSION_TIMEOUT_S = 6.0
BROKER_REBALANCE_TIMEOUT_S = 10.0
BROKER_HEARTBEAT_INTERVAL_S = 1.0
#: How often offsets of written batches are committed (both engines). Shorter means less redelivery
#: after a crash (harmless anyway: the watermarks skip it).
COMMIT_INTERVAL_S = 1.0

#: How often the worker reads the store epoch marker (stream/epoch.py): one pipelined round trip.
EPOCH_CHECK_INTERVAL_S = 1.0

#: Socket timeout of the worker's Redis calls. Far above the API's (no request waits on the worker), so a
#: slow Redis delays batches instead of failing them; failures are retried anyway (stream/batch.py).
WORKER_REDIS_TIMEOUT_MS = 5000

#: Retry policy when Redis fails mid-batch: the batch is retried, never dropped or acked.
REDIS_RETRY_MAX_BACKOFF_S = 5.0
#: At shutdown, how long an interrupted Faust batch may take to finish its write before the process exits.
SHUTDOWN_WRITE_GRACE_S = 10.0
