"""Read paths of the labeling domain: queues, progress, agreement, gold scores, dashboard, review."""
