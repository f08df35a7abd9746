"""The leaderboard files and their validation."""
