"""Checking, before torch reads it, that a ``torch.export`` archive runs no code stored in it.

``torch.export.load`` trusts its file: it unpickles weights, constants and example inputs with
``weights_only=False`` (and plain ``pickle.loads`` for opaque objects), loads AOTInductor
shared libraries, passes every shape expression to ``sympy.sympify`` (which evaluates it as
Python), ``exec``s the guards when the module is built, and resolves node targets by attribute
lookup from the ``torch``, ``operator`` and ``math`` modules. :func:`verify_export_archive`
accepts only the subset that a plain exported network uses, reading every part the way torch
reads it (through torch's own zip reader), and refuses anything else before torch sees the file.
:func:`pickle_globals_problem` reads a pickle's imports without running it.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import json
import pickletools
import re
import zipfile
from typing import Any

import torch

from neuralcleanse.backends.loading import ZIP_MAGIC, inflation_problem
from neuralcleanse.core.errors import one_line


class UnverifiedArchive(Exception):
    """A part of a ``torch.export`` archive lies outside the subset that can be verified."""


#: Globals a pickled tensor may name: the functions and storage types that rebuild tensors.
SAFE_PICKLE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    *(("torch", f"{kind}Storage") for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble")),
})

#: Python functions a graph may call on sizes (pure arithmetic on integers).
_SYM_TARGETS = frozenset({
    *(f"_operator.{name}" for name in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "eq", "ne",
        "lt", "le", "gt", "ge", "and_", "or_", "not_")),
    *(f"torch.sym_{name}" for name in ("max", "min", "int", "float", "not", "ite")),
    "math.ceil", "math.floor", "math.trunc",
})
#: Built-in operators: ``torch.ops.<aten|prims>.<name>.<overload>``.
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
#: Operators that reach outside the tensors they are given (files, raw storage).
_REFUSED_OPS = frozenset({"from_file", "set_", "set", "_assert_async", "_print"})
#: Functions a shape expression may call (sympy constructors and torch's sympy functions;
#: ``Pow`` only with a small integer exponent, at most twice, so that no huge number is made).
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "FloorDiv", "ModularIndexing",
    "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "IntTrueDiv", "FloatTrueDiv"})
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]+")
#: sympy constants a shape expression may name besides its symbols.
_SYMPY_CONSTANTS = frozenset({"true", "false", "oo"})
#: Names, fully qualified names, dict keys: what every other string of the archive must be.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]*")
_SAFE_AST = (ast.Expression, ast.Load, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp,
             ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div,
             ast.FloorDiv, ast.Mod, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
#: Keys whose presence means custom (torchbind or opaque) objects or subgraphs.
_REFUSED_KEYS = frozenset({"as_custom_obj", "custom_obj", "class_fqn", "as_graph"})
_PT2_FIXED_RECORDS = frozenset({"archive_format", "archive_version", "byteorder",
                                ".data/version", ".data/serialization_id"})
_PT2_RECORD = re.compile(
    r"models/(?P<model>\w+)\.json"
    r"|data/weights/\w+_weights_config\.json|data/constants/\w+_constants_config\.json"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/\w+\.pt"
    r"|extra/[^/].*")


def verify_export_archive(source: Any) -> None:
    """Check that loading a ``torch.export`` archive runs no code stored in it.

    Args:
        source: The archive: a path or a binary file opened for reading.

    Raises:
        UnverifiedArchive: Naming the first part that lies outside the verified subset.
    """
    try:
        reader = torch._C.PyTorchFileReader(source)
        records = set(reader.get_all_records())
    except Exception as exc:  # noqa: BLE001
        raise UnverifiedArchive(f"torch cannot read it as a zip archive ({one_line(exc)})"
                                ) from None
    if hasattr(source, "seek"):
        source.seek(0)
    with zipfile.ZipFile(source) as archive:  # what torch's fallback for old archives reads
        if "version" in archive.namelist():
            raise UnverifiedArchive("it has the layout of the old format, which torch "
                                    "unpickles without restriction")

    def text(name: str) -> str:
        try:
            return reader.get_record(name).decode("utf-8")
        except Exception as exc:  # noqa: BLE001
            raise UnverifiedArchive(f"record {name} cannot be read ({one_line(exc)})"
                                    ) from None

    def parsed(name: str) -> Any:
        try:
            return json.loads(text(name))
        except (ValueError, RecursionError):
            raise UnverifiedArchive(f"record {name} is not valid JSON") from None

    models = []
    for name in sorted(records):
        match = _PT2_RECORD.fullmatch(name)
        if name not in _PT2_FIXED_RECORDS and not match:
            raise UnverifiedArchive(f"it holds {name!r}, which is not part of a plain exported "
                                    "program (AOTInductor libraries, custom objects and "
                                    "legacy weight files are not verified)")
        if match and match["model"]:
            models.append(match["model"])
    if "archive_format" not in records or text("archive_format") != "pt2":
        raise UnverifiedArchive("its archive_format record is not 'pt2'")
    if not models:
        raise UnverifiedArchive("it holds no exported program")
    for model in models:
        where = f"models/{model}.json"
        _check_strings(parsed(where), where)
        for section, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            where = f"data/{section}/{model}_{section}_config.json"
            if where not in records:
                raise UnverifiedArchive(f"{where} is missing")
            config = parsed(where)
            _check_strings(config, where)
            entries = config.get("config") if isinstance(config, dict) else None
            if not isinstance(entries, dict):
                raise UnverifiedArchive(f"{where} has no 'config' table")
            for fqn, entry in entries.items():
                stored = entry.get("path_name") if isinstance(entry, dict) else None
                pickled = entry.get("use_pickle") if isinstance(entry, dict) else None
                if not isinstance(stored, str) or not re.fullmatch(prefix + r"\d+", stored) \
                        or not isinstance(pickled, bool):
                    raise UnverifiedArchive(f"{where}: entry {fqn!r} is not a plain tensor")
                record = f"data/{section}/{stored}"
                if record not in records:
                    raise UnverifiedArchive(f"{where}: {record} is missing")
                if pickled:
                    _check_pickled_tensors(reader.get_record(record), record)
        sample = f"data/sample_inputs/{model}.pt"
        if sample in records:
            _check_pickled_tensors(reader.get_record(sample), sample)


def _check_pickled_tensors(data: bytes, where: str) -> None:
    """Check a ``torch.save`` payload that torch will unpickle without restriction."""
    if data[:4] != ZIP_MAGIC:
        raise UnverifiedArchive(f"{where} is a raw pickle, not a torch.save archive")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            problem = inflation_problem(inner.infolist(), len(data))
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = reader.get_all_records()
    except Exception as exc:  # noqa: BLE001
        raise UnverifiedArchive(f"{where} cannot be read ({one_line(exc)})") from None
    if problem:
        raise UnverifiedArchive(f"{where}: {problem}")
    if "constants.pkl" in records:  # torch.load would hand it to torch.jit.load
        raise UnverifiedArchive(f"{where} is a TorchScript archive")
    for record in records:
        if record.endswith(".pkl"):
            problem = pickle_globals_problem(reader.get_record(record))
            if problem:
                raise UnverifiedArchive(f"{where} {problem}")


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                         "BINSTRING", "SHORT_BINSTRING"})


def pickle_globals_problem(data: bytes) -> str | None:
    """Why unpickling ``data`` could call something other than tensor rebuilders, or ``None``.

    The pickle is read opcode by opcode (:func:`pickletools.genops`), never executed. Unpickling
    can call only what a ``GLOBAL``, ``STACK_GLOBAL`` or ``INST`` opcode imports (or an ``EXT``
    opcode names through the copyreg registry), so every import must be in
    :data:`SAFE_PICKLE_GLOBALS`. A ``STACK_GLOBAL`` whose module and name are not plain string
    pushes (or memo reads of them) just before it cannot be verified and is refused too.
    """
    memo: dict[Any, str | None] = {}
    pushed: list[str | None] = []  # what each opcode left on top of the stack, if a string
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
            elif name == "STACK_GLOBAL":
                if len(pushed) < 2 or pushed[-1] is None or pushed[-2] is None:
                    return "imports an object it names indirectly"
                module, attr = pushed[-2], pushed[-1]
                del pushed[-2:]
            elif name.startswith("EXT"):
                return "imports an object through the extension registry"
            elif name in _STRING_OPS:
                pushed.append(arg if isinstance(arg, str) else None)
                continue
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
                continue
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
                continue
            elif name in ("PROTO", "FRAME", "STOP"):
                continue
            else:
                pushed.append(None)
                continue
            if (module, attr) not in SAFE_PICKLE_GLOBALS:
                return (f"imports {f'{module}.{attr}'[:80]!r}, which is not a "
                        "tensor-rebuilding function")
            pushed.append(None)
    except Exception as exc:  # noqa: BLE001 - malformed: refuse rather than guess
        return f"is not a well-formed pickle ({one_line(exc)})"
    return None


def _check_strings(doc: Any, where: str) -> None:
    """Check every string of an archive's JSON record by the field that holds it."""
    stack: list[tuple[Any, str | None, bool]] = [(doc, None, False)]
    while stack:
        value, key, in_metadata = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or not _PLAIN_NAME.fullmatch(k):
                    raise UnverifiedArchive(f"{where} has a key {str(k)[:60]!r} that is not a "
                                            "plain name")
                if k in _REFUSED_KEYS and v is not None:
                    raise UnverifiedArchive(f"{where} holds {k} entries (custom objects or "
                                            "subgraphs)")
                stack.append((v, k, in_metadata or k in ("metadata", "stack_trace")))
        elif isinstance(value, list):
            stack.extend((item, key, in_metadata) for item in value)
        elif isinstance(value, str):
            _check_string(value, key, in_metadata, where)


def _check_string(value: str, key: str | None, in_metadata: bool, where: str) -> None:
    if key == "expr_str":
        _check_expression(value, where, guard=False)
    elif key in ("target", "as_operator"):
        _check_target(value, where)
    elif key == "guards_code":
        _check_expression(value, where, guard=True)
    elif key in ("in_spec", "out_spec"):
        _check_treespec(value, where)
    elif in_metadata or key == "torch_version":
        # kept as text in node metadata; never compiled (no control characters, so that it
        # cannot end a comment line in generated code either)
        if any((ord(c) < 32 and c not in "\n\t") or c in "\x7f\x85\u2028\u2029" for c in value):
            raise UnverifiedArchive(f"{where}: {key} text holds control characters")
    elif key in ("as_string", "as_strings"):
        if any(not " " <= c <= "~" or c in "\"'\\" for c in value):
            raise UnverifiedArchive(f"{where}: string argument {value[:60]!r} holds quotes, "
                                    "backslashes or control characters")
    elif not _PLAIN_NAME.fullmatch(value):
        raise UnverifiedArchive(f"{where}: {key} {value[:60]!r} is not a plain name")


def _check_target(target: str, where: str) -> None:
    """A node may call built-in tensor operators and integer arithmetic, nothing else."""
    if target in _SYM_TARGETS:
        return
    match = _OP_TARGET.fullmatch(target)
    if match is None or match[2] in _REFUSED_OPS or match[2].startswith("_unsafe"):
        raise UnverifiedArchive(f"{where}: the graph calls {target[:80]!r}, which is not a "
                                "verified built-in tensor operator")
    packet = getattr(getattr(torch.ops, match[1]), match[2], None)
    op = getattr(packet, match[3], None) if packet is not None else None
    if not isinstance(op, torch._ops.OpOverload):
        raise UnverifiedArchive(f"{where}: the graph calls {target[:80]!r}, which is not a "
                                "registered operator")


def _check_expression(text: str, where: str, *, guard: bool) -> None:
    """A shape expression (evaluated by sympy) or a guard (compiled by torch): arithmetic only.

    Shape expressions may call the sympy constructors of :data:`_SYMPY_CALLS` and name
    symbols (``s0``); guards may index the inputs (``L['x'].size()[0]``) and compare. No
    attribute access, no other names, no strings beyond symbol names and input keys.
    """
    what = "guard" if guard else "shape expression"
    if len(text) > 2000 or any(ord(c) < 32 for c in text):
        raise UnverifiedArchive(f"{where}: a {what} is too long or holds control characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise UnverifiedArchive(f"{where}: a {what} is not a Python expression") from None
    allowed: set[int] = set()  # nodes already accepted as parts of a call or an index
    powers = 0
    for node in ast.walk(tree):
        if id(node) in allowed or isinstance(node, _SAFE_AST):
            continue
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 10**30) \
                    or (isinstance(value, float) and abs(value) < 1e300):
                continue
        elif isinstance(node, ast.Name) and not guard and (
                node.id in _SYMPY_CONSTANTS or _is_free_symbol(node.id)):
            continue
        elif isinstance(node, ast.Call) and not guard and isinstance(node.func, ast.Name) \
                and node.func.id == "Pow" and len(node.args) == 2 and not node.keywords \
                and _small_integer(node.args[1]) and powers < 2:
            powers += 1
            allowed.add(id(node.func))
            continue
        elif isinstance(node, ast.Call) and not guard and isinstance(node.func, ast.Name) \
                and node.func.id in _SYMPY_CALLS:
            allowed.add(id(node.func))
            if node.func.id == "Symbol" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) \
                    and _SYMBOL_NAME.fullmatch(node.args[0].value):
                allowed.add(id(node.args[0]))
            for keyword in node.keywords:
                if keyword.arg is None or not re.fullmatch(r"[a-z_]+", keyword.arg) or \
                        not (isinstance(keyword.value, ast.Constant)
                             and isinstance(keyword.value.value, bool)):
                    break
                allowed.update((id(keyword), id(keyword.value)))
            else:
                continue
        elif guard and isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and (isinstance(node.slice.value, int) and not isinstance(node.slice.value, bool)
                     or isinstance(node.slice.value, str)
                     and node.slice.value.isidentifier()):
            allowed.add(id(node.slice))
            if isinstance(node.value, ast.Name) and node.value.id == "L":
                allowed.add(id(node.value))
            continue
        elif guard and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and not node.keywords and len(node.args) <= 1:
            method = node.func
            if (method.attr in ("size", "stride", "storage_offset", "dim", "numel")
                    or isinstance(method.value, ast.Name) and method.value.id == "math"
                    and method.attr in ("isnan", "isinf", "floor", "ceil", "trunc")):
                allowed.add(id(method))
                if isinstance(method.value, ast.Name) and method.value.id == "math":
                    allowed.add(id(method.value))
                continue
        raise UnverifiedArchive(f"{where}: a {what} holds {ast.unparse(node)[:60]!r}, which "
                                "is not plain arithmetic")


def _small_integer(node: ast.AST) -> bool:
    """Whether ``node`` is an integer literal between -8 and 8 (``3``, ``-1``, ``Integer(2)``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "Integer" and len(node.args) == 1 and not node.keywords:
        node = node.args[0]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value <= 8


@functools.cache
def _is_free_symbol(name: str) -> bool:
    """Whether sympy would read ``name`` as a new symbol (not one of its own or Python's)."""
    import sympy

    return bool(_SYMBOL_NAME.fullmatch(name)) and not hasattr(sympy, name) \
        and not hasattr(builtins, name)


#: Container types the input/output specification of a program may name.
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict",
                             "collections.OrderedDict"})


def _check_treespec(text: str, where: str) -> None:
    """The inputs/outputs specification: plain containers (its contexts may import modules)."""
    try:
        protocol, schema = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise UnverifiedArchive(f"{where}: an input/output specification is not valid JSON"
                                ) from None
    stack = [schema]
    while stack:
        spec = stack.pop()
        if not isinstance(spec, dict) or spec.get("type") not in _TREESPEC_TYPES or \
                not isinstance(spec.get("children_spec"), list):
            raise UnverifiedArchive(f"{where}: the inputs or outputs are not plain tuples, "
                                    "lists or dicts")
        context = spec.get("context")
        if context is not None:
            try:
                parsed = json.loads(context)
            except (ValueError, TypeError, RecursionError):
                raise UnverifiedArchive(f"{where}: a specification context is not JSON"
                                        ) from None
            if "{" in context or not _plain_json(parsed):
                raise UnverifiedArchive(f"{where}: a specification context names objects")
        stack.extend(spec["children_spec"])


def _plain_json(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_json(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))
