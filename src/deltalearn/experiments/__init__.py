"""The paper's experiments, composed from the pipeline's pieces (generate, train, utilities, stats).

- `sections`: the stylistic delta of Experiment 1 (number of bold section headers), and `deltalearn demo`.
"""
