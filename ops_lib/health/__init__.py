"""Checks for the service_health runbook: is the app up, is its database answering quickly and
kept safe (replicas, WAL archiving), are its migrations applied, is Stripe reachable with the
expected key, and are its TLS certificates far from expiring. One function per check; each
returns a Finding."""
