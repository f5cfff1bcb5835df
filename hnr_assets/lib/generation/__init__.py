"""Generation stage: prompts, completion parser and validator, engines, generator weights, resumable shards."""
