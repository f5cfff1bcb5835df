"""Training stage: recipes, training sets, the base encoder and fine-tuning."""
