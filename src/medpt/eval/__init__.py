"""`medpt eval` and `medpt verify`: command (eval's entry), verify (verify's entry), metrics (the token sums, the
metrics derived from them, their tables), mcq / mcq_suite (multiple-choice benchmarks), answers (scored generated
answers), textmetrics (chrF, BLEU, ROUGE-L), stats (paired bootstrap CIs, McNemar)."""
