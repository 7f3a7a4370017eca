"""Alert notifications for the cloud aggregator: channels, formatting, senders, durable outbox.

The flow (seed "Model Monitoring Alert Flow"): an alert event is *enqueued* in the outbox, one
row per (alert, channel, event), in the same database as the alert; the `NotificationWorker`
claims due rows, formats them per channel type, sends them, and records the outcome. A failed
send is logged, scheduled again with exponential backoff and full jitter, and shows as
`retrying` in the alert's notification status until it is `sent` or `failed` after N attempts.

Delivery is at-least-once (see `outbox.py`): receivers dedupe on the `Idempotency-Key` header
(webhooks) or the Message-ID (email), both derived from the notification id.
"""
