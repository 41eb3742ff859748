"""The loop's endpoints: sampling jobs (a policy answers the prompt pool, uncertain pairs first) and the
leaderboard of model versions from human rankings."""
