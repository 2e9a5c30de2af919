"""eval: accuracy and recovery against the base model, as the cards report them.

    perplexity  perplexity, KL divergence and top-1 agreement over held text (`llmpress ppl`)
    lm          our engine as an lm-evaluation-harness model
    tasks, bbh, humaneval   the offline MMLU-, GSM-, BBH-style and HumanEval tasks
    run         `llmpress eval`: the tasks on the model and its base, results cached per model content
    report      the recovery table (Markdown, JSON, PNG), every score with its standard error
    commands    the cards' lm_eval command lines
"""
