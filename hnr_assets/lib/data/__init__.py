"""Dataset stage: BEIR-layout readers and validators, training pairs, dataset sources and downloads."""
