"""What every pixlab trainer stands on: configs, runs, tracking, data, models and the CLI."""
