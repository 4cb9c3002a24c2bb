"""Property-based tests (hypothesis) of every user-facing input: formulas, CIF text, CLI arguments.

Each property runs on >= 1,000 generated cases. The claim under test is the one the
README makes: an invalid input gets a named error (``FormulaError`` / ``InputProblem`` /
an ``error`` column and exit code 1), never a traceback and never a number; a valid input
gets the same canonical key however it is written.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition, Element, Lattice, Structure

from featurizers.chemistry import FormulaError, element_fractions, parse_formula, reduced_formula
from featurizers.inputs import InputProblem, ParsedInput, parse_cif_text, parse_formula_input

MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SYMBOLS = [Element.from_Z(z).symbol for z in range(1, 104)]
NOT_ELEMENTS = sorted(
    s for s in {a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "abcdefghijklmnopqrstuvwxyz"}
    if not Element.is_valid_symbol(s)
)

amount = st.one_of(
    st.just(""),
    st.integers(1, 60).map(str),
    st.integers(1, 999).map(lambda k: f"{k / 100:.2f}".rstrip("0").rstrip(".")),
)
element_list = st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=6, unique=True)


@st.composite
def formulas(draw):
    """A valid formula as (text, {element: amount})."""
    els = draw(element_list)
    amts = [draw(amount) for _ in els]
    text = "".join(f"{e}{a}" for e, a in zip(els, amts, strict=True))
    return text, {e: float(a) if a else 1.0 for e, a in zip(els, amts, strict=True)}


def _assume_nonzero(amounts: dict[str, float]) -> None:
    assume(all(v > 0 for v in amounts.values()))


# ---------------------------------------------------------------- formulas


@MANY
@given(formulas())
def test_valid_formula_parses_to_its_elements(case):
    text, amounts = case
    _assume_nonzero(amounts)
    comp = parse_formula(text)
    assert {el.symbol for el in comp} == set(amounts)
    for el, amt in comp.items():
        assert amt == pytest.approx(amounts[el.symbol])
    fractions = element_fractions(text)
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert all(0 < f <= 1 for f in fractions.values())


@MANY
@given(formulas(), st.randoms(use_true_random=False), st.integers(2, 7))
def test_reduced_formula_ignores_order_and_multiples(case, rnd, factor):
    text, amounts = case
    _assume_nonzero(amounts)
    key = reduced_formula(text)
    items = list(amounts.items())
    rnd.shuffle(items)
    shuffled = "".join(f"{e}{a:g}" for e, a in items)
    assert reduced_formula(shuffled) == key
    if all(float(a).is_integer() for a in amounts.values()):
        scaled = "".join(f"{e}{int(a) * factor}" for e, a in items)
        assert reduced_formula(scaled) == key
    assert reduced_formula(key) == key  # a canonical key is a fixed point


@MANY
@given(formulas(), st.sampled_from(NOT_ELEMENTS), st.integers(0, 6))
def test_unknown_element_is_named(case, bogus, where):
    text, _ = case
    parts = re.findall(r"[A-Z][a-z]?[0-9.]*", text)
    parts.insert(min(where, len(parts)), bogus + "2")
    bad = "".join(parts)
    with pytest.raises(FormulaError, match=rf"unknown element .*'{bogus}'"):
        parse_formula(bad)
    problem = parse_formula_input(bad)
    assert isinstance(problem, InputProblem) and bogus in problem.reason


@MANY
@given(formulas(), st.sampled_from(["0", "0.0", "-1", "1e5", "nan", "inf", "½", "\x00", "→", ";rm", "$(x)"]))
def test_zero_negative_and_foreign_amounts_are_refused(case, junk):
    text, amounts = case
    first = next(iter(amounts))
    bad = first + junk + text[len(first):].lstrip("0123456789.")
    with pytest.raises(FormulaError):
        parse_formula(bad)


formula_alphabet = st.sampled_from([*"NaClFeOHSiCuSZnGaAs()[]{}·* .0123456789", "Xx", "\t", "\n", "-", "é", "😀"])


@MANY
@given(st.one_of(st.text(max_size=40), st.lists(formula_alphabet, max_size=30).map("".join)))
def test_any_text_gives_a_composition_or_a_named_error(text):
    """No input crashes the parser with anything but FormulaError, and a success is real chemistry."""
    try:
        comp = parse_formula(text)
    except FormulaError as exc:
        assert str(exc)  # a message, shown to the user
        problem = parse_formula_input(text)
        assert isinstance(problem, InputProblem) and problem.kind == "formula" and problem.reason == str(exc)
        return
    assert isinstance(comp, Composition) and len(comp) >= 1
    for el, amt in comp.items():
        assert isinstance(el, Element)
        assert math.isfinite(amt) and amt > 0
    parsed = parse_formula_input(text)
    assert isinstance(parsed, ParsedInput) and parsed.formula == reduced_formula(comp)


@MANY
@given(st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=10), st.lists(st.text(max_size=3))))
def test_non_string_formula_is_a_named_error(value):
    with pytest.raises(FormulaError, match="formula must be a string"):
        parse_formula(value)
    assert isinstance(parse_formula_input(value), InputProblem)


# ---------------------------------------------------------------- CIF text

NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
NACL_CIF = NACL.to(fmt="cif")
NACL_LINES = NACL_CIF.splitlines()
NUMBER = re.compile(r"-?\d+\.\d+|\b\d+\b")
JUNK_VALUES = ["nan", "inf", "-inf", "-5.64", "0", "0.0", "1e308", "1e-308", "?", ".", "'x'", "", "NaN", "1/0", "Xx"]


@st.composite
def mutated_cifs(draw):
    """The NaCl CIF with 1-4 random edits: lines dropped/duplicated/swapped, numbers replaced, text cut."""
    lines = list(NACL_LINES)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "number", "cut", "insert", "element"]))
        k = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if not lines:
            break
        if op == "drop":
            lines.pop(k)
        elif op == "dup":
            lines.insert(k, lines[k])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
        elif op == "number":
            matches = list(NUMBER.finditer(lines[k]))
            if matches:
                m = matches[draw(st.integers(0, len(matches) - 1))]
                value = draw(st.one_of(st.sampled_from(JUNK_VALUES),
                                       st.floats(allow_nan=True, allow_infinity=True).map(repr)))
                lines[k] = lines[k][: m.start()] + value + lines[k][m.end():]
        elif op == "cut":
            lines[k] = lines[k][: draw(st.integers(0, len(lines[k])))]
            lines = lines[: k + 1]
        elif op == "insert":
            lines.insert(k, draw(st.text(max_size=30)))
        elif op == "element":
            lines[k] = lines[k].replace("Na", draw(st.sampled_from(["Xx", "Q", "", "D", "Na0.5", "Og"])))
    return "\n".join(lines) + "\n"


def _check_cif_outcome(result, name: str) -> None:
    assert result.input == name
    if isinstance(result, InputProblem):
        assert result.kind == "cif" and result.reason
        return
    assert isinstance(result, ParsedInput) and result.kind == "cif"
    s = result.structure
    assert s.is_ordered and 1 <= len(s) <= 500
    assert math.isfinite(s.volume) and s.volume > 0
    assert result.formula == reduced_formula(result.formula)  # a canonical key of real elements


@MANY
@given(mutated_cifs())
def test_mutated_cif_is_parsed_or_refused_with_a_reason(text):
    _check_cif_outcome(parse_cif_text(text, name="in.cif"), "in.cif")


@MANY
@given(st.one_of(st.text(max_size=200), st.text(max_size=200).map(lambda t: "data_x\n_cell_length_a 5\n" + t)))
def test_arbitrary_text_as_cif_never_raises(text):
    _check_cif_outcome(parse_cif_text(text, name="in.cif"), "in.cif")


@SOME
@given(
    st.lists(st.sampled_from(SYMBOLS[:86]), min_size=1, max_size=3),
    st.floats(3.0, 9.0), st.floats(3.0, 9.0), st.floats(3.0, 9.0),
)
def test_generated_ordered_cif_round_trips_to_its_formula(species, a, b, c):
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0.25]][: len(species)]
    structure = Structure(Lattice.orthorhombic(a, b, c), species, coords)
    result = parse_cif_text(structure.to(fmt="cif"), name="gen.cif")
    assert isinstance(result, ParsedInput), getattr(result, "reason", None)
    assert result.formula == reduced_formula(structure.composition.formula.replace(" ", ""))
    assert len(result.structure) == len(species)


# ---------------------------------------------------------------- CLI inputs


class _FakePredictor:
    """Stands in for a trained model: the property is about the CLI's input handling, not the model."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def refused(self, items) -> dict[str, str]:
        return {}  # every formula that parses can be featurized (the real featurizer is tested elsewhere)

    def bad_dft_value(self, item) -> str | None:
        return None  # these inputs carry no DFT value (a user's dft_value is tested in tests/pipeline/test_predict.py)

    def predict(self, items, *, coverage=None):
        self.seen += [i.formula for i in items]
        n = len(items)
        return pd.DataFrame({
            "prediction": [1.5] * n, "lower": [1.0] * n, "upper": [2.0] * n, "coverage": 0.9, "bag_spread": [0.1] * n,
            "view": "composition", "structure_used": "none", "dft_value": float("nan"), "ad_score": 50.0,
            "ad_warning": False,
        })


cli_token = st.one_of(
    formulas().map(lambda c: c[0]),
    st.text(max_size=12),
    st.sampled_from(["Xx2", "", "NaCl)(", "H-1", "Na0", "GaAs", "Fe2O3", "--", "-", "ZnO ", " ", "\x00"]),
)


@MANY
@given(st.lists(cli_token, min_size=1, max_size=5))
def test_cli_predict_flags_exactly_the_invalid_inputs(tokens):
    from pipeline import cli
    from pipeline import predict as predict_mod
    from pipeline.cli import main

    fake = _FakePredictor()
    expected_bad = [isinstance(parse_formula_input(t), InputProblem) for t in tokens]
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        mp.setattr(predict_mod, "load_predictor", lambda model, *, property, params=None, metal=True, polymorph_window=0.2, metal_threshold=None: fake)
        mp.setattr(cli, "build_parser", _PARSER)  # built once: 1,000 runs of main() stay fast
        try:
            code = main(["predict", "--", *tokens])
        except SystemExit as exc:  # argparse usage errors exit 2 with a message
            code = exc.code
    assert "Traceback" not in err.getvalue()
    assert code == (1 if any(expected_bad) else 0)
    assert len(fake.seen) == sum(not b for b in expected_bad)  # no number is computed for a bad input
    table = out.getvalue().splitlines()[2:]
    assert len(table) == len(tokens)
    for line, bad in zip(table, expected_bad, strict=True):
        assert ("ERROR:" in line) == bad
        assert ("1.500 eV" in line) == (not bad)


@SOME
@given(st.lists(st.one_of(st.text(max_size=10), st.sampled_from(
    ["--property", "band_gap", "formation_enthalpy", "--max-sites", "-3", "x", "--output", "o.txt", "--cif",
     "--input", "--debug", "-q", "--model", "NaCl", "--metal-threshold", "0.7"])), max_size=6))
def test_cli_predict_arguments_never_give_a_traceback(argv):
    from pipeline import cli
    from pipeline import predict as predict_mod
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    assume("--debug" not in argv)  # --debug deliberately shows tracebacks
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        mp.chdir(_EMPTY_DIR)
        mp.setattr(predict_mod, "load_predictor", lambda model, *, property, params=None, metal=True, polymorph_window=0.2, metal_threshold=None: _FakePredictor())
        mp.setattr(cli, "build_parser", _PARSER)
        try:
            code = main(["predict", *argv])
        except SystemExit as exc:
            code = exc.code
    assert code in (0, 1, 2)
    assert "Traceback" not in err.getvalue() and "unexpected error" not in err.getvalue()
    if code != 0:
        assert err.getvalue().strip()  # a failure always says why


_EMPTY_DIR = None


_BUILD_PARSER = __import__("pipeline.cli", fromlist=["build_parser"]).build_parser
_BUILT: dict = {}


def _PARSER(*args):  # stands in for pipeline.cli.build_parser
    if args not in _BUILT:
        _BUILT[args] = _BUILD_PARSER(*args)
    return _BUILT[args]


@pytest.fixture(autouse=True, scope="module")
def _empty_dir(tmp_path_factory):
    global _EMPTY_DIR
    _EMPTY_DIR = tmp_path_factory.mktemp("cli")
    yield


def test_mutation_generator_really_breaks_cifs():
    """Guard against a vacuous property: many mutated CIFs must be refused, and the pristine one accepted."""
    assert isinstance(parse_cif_text(NACL_CIF, name="x"), ParsedInput)
    rnd = random.Random(0)
    refused = 0
    for _ in range(60):
        lines = list(NACL_LINES)
        k = rnd.randrange(len(lines))
        lines[k] = NUMBER.sub("nan", lines[k])
        lines = lines[: rnd.randrange(len(lines)) + 1]
        refused += isinstance(parse_cif_text("\n".join(lines), name="x"), InputProblem)
    assert refused >= 30
