"""What runs inside training workers: data, sessions, checkpoints, framework loops."""
