"""Streaming jobs: the near-real-time user-vector update (user_events_stream)."""
