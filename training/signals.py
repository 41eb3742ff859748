from django.dispatch import Signal

# Sent (after commit) when the last stage of a run succeeded; kwargs: run. The loop app samples from it.
training_run_succeeded = Signal()
