"""Reaching the teacher: wire client, limiter, pool, local server, pricing, tokens, and the generate driver."""
