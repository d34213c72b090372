"""(response after </think>, gold, expected status) cases for LUFFY's math reward.

Expected values are the mathematically right verdict; the few places where math-verify's
documented behaviour decides (e.g. several boxes are read as a set) say so in the comment.
"""

T = "<think>work</think> "

CASES = [
    # integers and plain numbers
    (T + "The answer is \\boxed{42}.", "42", "ok"),
    (T + "\\boxed{41}", "42", "wrong"),
    (T + "\\boxed{-7}", "-7", "ok"),
    (T + "\\boxed{7}", "-7", "wrong"),
    (T + "the answer is 42", "42", "ok"),
    (T + "\\boxed{1,000}", "1000", "ok"),
    (T + "\\boxed{3.0}", "3", "ok"),
    (T + "\\boxed{0.333}", "\\frac{1}{3}", "wrong"),
    # fractions and LaTeX forms
    (T + "\\boxed{\\frac{1}{2}}", "0.5", "ok"),
    (T + "\\boxed{0.5}", "\\frac12", "ok"),
    (T + "\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", "ok"),
    (T + "\\boxed{\\tfrac{3}{4}}", "0.75", "ok"),
    (T + "\\boxed{3/4}", "\\frac{3}{4}", "ok"),
    (T + "\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", "ok"),
    (T + "\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", "wrong"),
    (T + "\\boxed{\\sqrt{2}}", "\\sqrt{2}", "ok"),
    (T + "\\boxed{2^{1/2}}", "\\sqrt{2}", "ok"),
    (T + "\\boxed{\\sqrt{8}}", "2\\sqrt{2}", "ok"),
    (T + "\\boxed{\\sqrt{3}}", "\\sqrt{2}", "wrong"),
    (T + "\\boxed{\\pi}", "\\pi", "ok"),
    (T + "\\boxed{2\\pi}", "\\pi", "wrong"),
    (T + "\\boxed{\\frac{\\pi}{2}}", "\\pi/2", "ok"),
    (T + "\\boxed{10^{3}}", "1000", "ok"),
    (T + "\\boxed{2 \\cdot 3}", "6", "ok"),
    (T + "\\boxed{\\left( 3 \\right)}", "3", "ok"),
    (T + "$x^2+2x+1$", "(x+1)^2", "ok"),
    (T + "\\boxed{x^2-1}", "(x-1)(x+1)", "ok"),
    (T + "\\boxed{x^2+1}", "(x-1)(x+1)", "wrong"),
    (T + "\\boxed{\\frac{10}{4}}", "2.5", "ok"),
    (T + "\\boxed{\\log_2 8}", "3", "ok"),
    # intervals
    (T + "\\boxed{(1,2]}", "(1,2]", "ok"),
    (T + "\\boxed{[1,2]}", "(1,2]", "wrong"),
    (T + "\\boxed{(-\\infty, 3)}", "(-\\infty,3)", "ok"),
    (T + "\\boxed{[0, \\infty)}", "[0,\\infty)", "ok"),
    (T + "\\boxed{(0,1) \\cup (2,3)}", "(0,1)\\cup(2,3)", "ok"),
    # sets and tuples
    (T + "\\boxed{\\{1,2\\}}", "\\{2,1\\}", "ok"),
    (T + "\\boxed{\\{1,2,3\\}}", "\\{1,2\\}", "wrong"),
    (T + "\\boxed{(1, 2)}", "(1,2)", "ok"),
    (T + "\\boxed{(2, 1)}", "(1,2)", "wrong"),
    (T + "\\boxed{1, 2}", "2, 1", "ok"),  # comma lists compare as sets
    # units and percent
    (T + "\\boxed{5 \\text{ cm}}", "5", "ok"),
    (T + "\\boxed{5\\text{ meters}}", "5", "ok"),
    (T + "\\boxed{12 \\mbox{ inches}}", "12", "ok"),
    (T + "\\boxed{50\\%}", "50", "ok"),
    (T + "\\boxed{50\\%}", "0.5", "ok"),
    (T + "\\boxed{40\\%}", "50", "wrong"),
    (T + "\\boxed{90^\\circ}", "90", "ok"),
    (T + "\\boxed{\\$18.90}", "18.90", "ok"),
    # equations
    (T + "\\boxed{x=2}", "2", "ok"),
    (T + "\\boxed{2}", "x=2", "ok"),
    (T + "\\boxed{x = 3}", "x=2", "wrong"),
    (T + "\\boxed{y = 2x + 1}", "y=2x+1", "ok"),
    (T + "\\boxed{y = 2x + 1}", "y=2x-1", "wrong"),
    # multiple boxes: math-verify reads all boxes as one set (LUFFY keeps this behaviour)
    (T + "\\boxed{1} and then \\boxed{2}", "\\{1, 2\\}", "ok"),
    (T + "\\boxed{1} and then \\boxed{2}", "2", "wrong"),
    (T + "first \\boxed{3}, checked: \\boxed{3}", "3", "ok"),
    # no box: the last expression-like answer is taken
    (T + "So the result is $\\frac{7}{2}$.", "3.5", "ok"),
    (T + "Therefore x equals 9", "9", "ok"),
    (T + "I do not know.", "9", "unparsable"),
    (T + "", "9", "unparsable"),
    (T + "   ", "9", "unparsable"),
    # missing or misplaced think tag
    ("\\boxed{42}", "42", "no_think_tag"),
    ("<think> \\boxed{42} and no closing tag", "42", "no_think_tag"),
    ("<think>guess \\boxed{1}</think> \\boxed{42}", "42", "ok"),  # only the part after the tag
    ("<think>the answer is \\boxed{42}</think> I give up.", "42", "unparsable"),
    # LUFFY judges what follows the first closing tag, up to a second one
    ("<think>a</think> b </think> \\boxed{42}", "42", "unparsable"),
    ("<think>a</think> \\boxed{42} </think> \\boxed{7}", "42", "ok"),
    # a gold math-verify takes only as text is compared as text, as LUFFY does (never an error)
    (T + "\\boxed{1}", "\\frac{", "wrong"),
    (T + "\\boxed{1}", "", "wrong"),
]
