"""What every stage runs on: atomic files, errors, progress, memory, child processes, model references."""
