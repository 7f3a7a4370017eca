"""Model monitoring in the cloud: alert rules (versioned), metrics from ML jobs, API keys, and
the loop that evaluates rules (common.rules) and turns episodes into alerts and notifications.
"""
