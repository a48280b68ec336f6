"""Parameter-efficient adaptation: LoRA, prompt tuning, freezing, loading pre-trained weights."""
