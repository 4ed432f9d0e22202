"""Default prompts, verbatim from the SCoRe paper (Appendix C) where it has one.

Every task lets the user override these (``instruction=...``,
``correction_instruction=...``); the defaults below are what reproduces the
paper's protocol.
"""

MATH_INSTRUCTION = (
    "You are a math expert. When you respond, respond only with the Solution of the "
    "final Problem, thinking step by step. At the end of the Solution, when you give "
    "your final answer, write it in the form \"Final Answer: The final answer is "
    "$answer$. I hope it is correct.\""
)
"""Attempt-1 instruction for MATH-style problems (paper, Appendix C)."""

MATH_CORRECTION = (
    "There might be an error in the solution above because of lack of understanding "
    "of the question. Please correct the error, if any, and rewrite the solution. Only "
    "output the final solution! At the end of the Solution, when you give your final "
    "answer, write it in the form \"Final Answer: The final answer is $answer$. I hope "
    "it is correct.\""
)
"""Self-correction instruction for MATH-style problems (paper, Appendix C)."""

CODE_INSTRUCTION = (
    "Complete the following Python function. Respond with the complete function in a "
    "single ```python code block."
)
"""Attempt-1 instruction for code problems (the paper gives none; ours asks for a fenced block)."""

CODE_CORRECTION = (
    "# There might be an error in the code above because of lack of understanding of "
    "the question. Please correct the error, if any, and rewrite the solution. Only "
    "output the final correct Python program!"
)
"""Self-correction instruction for code problems (paper, Appendix C)."""

ARITHMETIC_INSTRUCTION = (
    "Give the result. End your reply with \"The final answer is N.\" where N is the number."
)
"""Attempt-1 instruction for the procedural arithmetic task (ours).

Deliberately terse: with "think step by step" the 135M default model rambles
and drops from 30% to 13% first-attempt accuracy on the default task (measured,
128 problems, greedy)."""

ARITHMETIC_CORRECTION = (
    "There might be an error in the solution above because of lack of understanding "
    "of the question. Please correct the error, if any, and rewrite the solution. "
    "End your reply with \"The final answer is N.\" where N is the number."
)
"""Self-correction instruction for arithmetic: the paper's MATH wording, our answer format."""
