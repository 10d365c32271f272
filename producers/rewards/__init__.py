"""Built-in rewards, selectable by name in a recipe (`[rollout] reward = "math"`; the names are
`streamrl.recipe.rewards.REWARDS`), their combinations, and the sandbox every reward call of a
producer runs in:

    math.py      math-verify: the last \\boxed{} answer against metadata["ground_truth"]
    gsm8k.py     the "#### <number>" answer, compared as a number
    exact.py     the whole response, stripped, against the ground truth
    regex.py     the answer a recipe's pattern extracts, against the ground truth
    format.py    whether the response has the expected form (a \\boxed{} answer or a pattern)
    combine.py   weighted sums and the per-row choice by data_source
    answers.py   what they share: the last \\boxed{}, numbers, the ground truth
    sandbox.py   reward worker processes: each call bounded by a timeout, errors recorded

Each reward is a frozen struct whose fields are its recipe options and whose `__call__` is a
`RewardFn`; model output is untrusted, so a garbled answer is reward 0 with a status, while a
missing or malformed ground truth (a dataset bug) raises. docs/rewards.md is the user's view.
"""
