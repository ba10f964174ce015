"""Will it fit? The memory of a training step, planned from a model's config.json before anything is loaded.

`shape` reads the sizes from config.json; `memory` turns a shape and a training setup into the peak of a step, by
part, and finds the largest micro-batch that fits; `devices` knows what a device holds and costs (GPU memory, host
memory, the framework's fixed overhead, the allocator's reserve); `planner` makes the plan of a configuration;
`command` is `medpt plan` and the table `medpt train --dry_run` adds; `auto` is `medpt train --auto_batch`. Nothing
here imports torch unless a GPU is present (to ask its size), so a plan takes milliseconds.
"""
