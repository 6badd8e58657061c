"""What each job commits per shard (the corpus, transcribe and fetch sinks), all over ``accounting``: one rule
(every input in exactly one committed shard, as kept or rejected) and one summary shape."""
