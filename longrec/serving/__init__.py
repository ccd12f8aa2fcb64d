"""Serving: the promoted model behind a BentoML ranker (see serving/service.py for the service graph)."""
