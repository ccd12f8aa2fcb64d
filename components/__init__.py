"""KFP v2 components: one lightweight Python component per module, each a thin call into `longrec`."""
