"""Valid ranges (inclusive) of the numbers a user gives, shared by the study config and the command line."""

CTX = (4, 1 << 20)  # 4: the smallest context with a scored token (llama.scored_range)
THREADS = (1, 4096)
CHUNKS = (1, 1 << 20)
TRIALS = (0, 1 << 30)  # 0: create the study, measure the references and presets only
BANDS = (2, 64)
GPU_LAYERS = (-1, 1 << 20)  # -1: every layer
