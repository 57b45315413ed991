"""Composition root: assembles the domains into the web app and the `hitl` command."""
