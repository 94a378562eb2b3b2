"""Training utilities shared by every trainer: device selection (device), mixed precision, channels_last and
compilation (accel), the epoch loop's clock and running means (loop), optimizers and schedules (optim), DDP
(distributed) and weight averaging (ema)."""
