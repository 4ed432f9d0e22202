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
"""Attempt-1 instruction for HumanEval (ours: the paper shows no HumanEval prompt; it asks for a fenced block)."""

MBPP_SHOTS = (
    ("Write a function to find the similar elements from the given two tuple lists.",
     ("assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"),
     "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) "),
    ("Write a python function to identify non-prime numbers.",
     ("assert is_not_prime(2) == False",
      "assert is_not_prime(10) == True",
      "assert is_not_prime(35) == True"),
     "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
     "        if n % i == 0:\n            result = True\n    return result"),
    ("Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
     ("assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"),
     "import heapq as hq\ndef heap_queue_largest(nums,n):\n  largest_nums = hq.nlargest(n, nums)\n  return largest_nums"),
)
"""The three prompt examples of Austin et al. (2021), MBPP task ids 2, 3 and 4 (text, tests, reference code;
the dataset's CRLF line ends as LF).  The SCoRe paper prompts MBPP with this 3-shot form."""


def mbpp_query(text: str, tests: "list[str] | tuple[str, ...]") -> str:
    """One MBPP task in Austin et al.'s words: the description, then the asserts the code must pass."""
    listed = "\n".join(t.strip() for t in tests)
    return (f"You are an expert Python programmer, and here is your task: {text} "
            f"Your code should pass these tests:\n\n{listed}\n")


def mbpp_three_shot(text: str, tests: "list[str] | tuple[str, ...]") -> str:
    """Austin et al.'s 3-shot MBPP prompt: three solved examples, each answer between [BEGIN] and [DONE],
    then the task (a chat model answers it in its own turn)."""
    shots = "".join(f"{mbpp_query(t, ts)}[BEGIN]\n{code}\n[DONE]\n\n" for t, ts, code in MBPP_SHOTS)
    return shots + mbpp_query(text, tests)

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

STRING_INSTRUCTION = (
    "Give the result. End your reply with \"The final answer is S.\" where S is the string."
)
"""Attempt-1 instruction for the string tasks (ours; ``count`` asks for "N ... the number" instead)."""

STRING_CORRECTION = (
    "There might be an error in the solution above because of lack of understanding "
    "of the question. Please correct the error, if any, and rewrite the solution. "
    "End your reply with \"The final answer is S.\" where S is the string."
)
"""Self-correction instruction for the string tasks: the paper's MATH wording, our answer form.  Like the
paper's, it says nothing about whether attempt 1 was right."""

STRING_CORRECTION_REDO = (
    "There might be an error in the solution above. Read the question again and solve it from the start. "
    "End your reply with \"The final answer is S.\" where S is the string."
)
"""The string tasks' ``correction="redo"`` turn (ours): like the paper's it never says whether attempt 1 was
right, but it asks for the work again instead of a rewrite, which a small model otherwise answers by
copying its first answer, mistakes included."""
