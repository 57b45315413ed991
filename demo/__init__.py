"""`hitl demo`: a scripted scenario (end users, reviewers, corpus data) that drives hitl through its HTTP API."""
