"""Method steps of ``rlhfkit demo``: each module has ``run(ctx) -> {method name: summary entry}``."""
