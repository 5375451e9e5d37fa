"""A safe arithmetic calculator for the model's `calculator` tool: a parser, never `eval`.

The expression is parsed with `ast` and walked over a whitelist of node types: numbers,
+ - * / // % ** (and ^ as a power, as people write it), unary signs, parentheses, the
constants pi and e, and a few math functions. Everything else (names, attributes, calls of
anything else, strings, comprehensions) is refused. Sizes are bounded so `9**9**9` cannot
freeze the event loop.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_LENGTH = 300
MAX_DEPTH = 40
MAX_RESULT_BITS = 4096  # integers beyond about 1,200 digits are refused

Number = int | float


class CalcError(ValueError):
    """The expression is not allowed or cannot be computed; the message says why."""


BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # "2^10" means a power to people, not XOR
}
UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "min": min,
    "max": max,
}


def calculate(expression: str) -> Number:
    """The value of an arithmetic expression, or CalcError."""
    text = expression.strip().replace("×", "*").replace("÷", "/")
    if not text:
        raise CalcError("empty expression")
    if len(text) > MAX_LENGTH:
        raise CalcError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalcError("not an arithmetic expression") from None
    result = _eval(tree.body, 0)
    if isinstance(result, float) and not math.isfinite(result):
        raise CalcError("the result is not a finite number")
    return result


def _eval(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise CalcError("expression nested too deeply")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalcError(f"{node.value!r} is not a number")
        return node.value
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalcError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if type(node.op) in (ast.Pow, ast.BitXor):
            _check_power(left, right)
        try:
            result = BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except (OverflowError, ValueError) as exc:
            raise CalcError(str(exc)) from None
        if isinstance(result, complex):
            raise CalcError("the result is not a real number")
        _check_size(result)
        return result
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        function = FUNCTIONS.get(node.func.id)
        if function is None:
            raise CalcError(f"unknown function {node.func.id!r}")
        args = [_eval(arg, depth + 1) for arg in node.args]
        try:
            result = function(*args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CalcError(f"{node.func.id}: {exc}") from None
        _check_size(result)
        return result
    raise CalcError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > 10_000:
        raise CalcError("exponent too large")
    if abs(base) > 1 and abs(exponent) * math.log2(abs(base)) > MAX_RESULT_BITS:
        raise CalcError("result too large")


def _check_size(result: Number) -> None:
    if isinstance(result, int) and result.bit_length() > MAX_RESULT_BITS:
        raise CalcError("result too large")


def format_number(value: Number) -> str:
    """A readable result: integers exact, floats without float noise."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)
