"""Reports built from the results store alone: leaderboards and plots."""
