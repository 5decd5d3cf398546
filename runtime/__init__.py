"""What generated programs call: attacks, data, models, schedules, checkpoints, logging, launching."""
