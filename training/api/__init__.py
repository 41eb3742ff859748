"""The training app's endpoints: training runs with their stages (launch, watch, cancel, resume, retry)."""
