"""Feedback: end-user thumbs, reviewer ratings, corrections, comparisons, flags and the review queue."""
