"""`medpt compare`, `medpt generate`, `medpt chat` (command) and the prompting they, `medpt serve` and
`eval --generate_eval` share (prompting)."""
