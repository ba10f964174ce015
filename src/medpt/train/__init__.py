"""`medpt train`: command (the entry), recipe (the run, top to bottom), trainer (the transformers Trainer with medpt's
metrics and staged checkpoints), lora (the PEFT config), dropout, compiling, allocator (what each flag of those
names turns on)."""
