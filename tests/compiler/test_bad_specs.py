"""The bad-spec corpus: every mistake we expect a researcher to make, and the exact answer.

Each case is a small spec (or a `--set` override) and the first diagnostic advc must report
for it, written the way the user reads it -- ``file:line:col: error: message`` -- plus the
hint printed after the caret. Like the table lark's ``match_examples`` takes, it maps small bad
examples to messages: when the wording of a message changes, this file shows every place a user
sees it.

Cases are checked through ``check_file`` (so ``extends`` resolves against real files in a
temporary folder) and, all at once, through the real ``advc check`` command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from advc.compiler.check import check_file, check_text
from advc.compiler.diagnostics import SpecError, render_one
from advc.compiler.parse import MAX_BYTES, MAX_DEPTH, parse_text

# A train block that checks; appended after the objective so it never shifts the lines above.
TRAIN = """
train {
    data    digits
    model   small_cnn
    epochs  5
    optim   sgd(lr = 0.1)
}
"""


# what the language is made of: the hint of every unexpected-character error
HINT_CHARS = "specs are made of names, numbers, \"strings\", ( ) { } , = : + - * / ^ < > and # comments"


@dataclass(frozen=True)
class Bad:
    """One bad spec and the first diagnostic it must produce."""

    id: str
    text: str | bytes
    expected: str  # first line of the rendered diagnostic
    hint: str | None = None
    train: bool = True  # append TRAIN to a text spec
    overrides: tuple[str, ...] = ()  # CLI form, key=value
    files: dict[str, str] = field(default_factory=dict)  # neighbours of the spec (extends)
    file: str = "bad.adv"  # the spec's own file name
    caret: bool = True  # False where there is no line worth quoting (a 4 MiB file)
    mentions: tuple[str, ...] = ()  # paths the message names, relative to the spec's folder

    def source(self) -> str | bytes:
        if isinstance(self.text, bytes):
            return self.text
        text = textwrap.dedent(self.text).lstrip("\n")
        return text + TRAIN if self.train else text


def t(text: str) -> str:
    """A spec fragment written indented in this file, as it is on disk."""
    return textwrap.dedent(text).lstrip("\n")


def obj(*clauses: str) -> str:
    """An objective whose clauses are the defaults below, replaced or extended by `clauses`."""
    lines = {"threat": "linf(eps = 8/255)", "attack": "pgd(steps = 10, step_size = 2/255)", "loss": "ce(adv)"}
    extra = []
    for clause in clauses:
        key, _, value = clause.partition(" ")
        if key in lines:
            lines[key] = value.strip()
        else:
            extra.append((key, value.strip()))
    body = [("threat", lines["threat"]), ("attack", lines["attack"]), *extra, ("loss", lines["loss"])]
    return "objective a {\n" + "".join(f"    {k.ljust(7)} {v}\n" for k, v in body) + "}\n"


# --- syntax -----------------------------------------------------------------------------------

SYNTAX = [
    Bad("unclosed_brace", """
        objective a {
            threat  linf(eps = 8/255)
        """,
        "bad.adv:3:1: error: unexpected end of file", "a block is not closed: add '}'", train=False),
    Bad("missing_paren", """
        objective a {
            threat  linf(eps = 8/255)
            attack  pgd(steps = 10, step_size = 2/255
            loss    ce(adv)
        }
        """,
        "bad.adv:4:5: error: unexpected 'loss'", "expected ')' or ','"),
    Bad("extra_paren", """
        objective a {
            threat  linf(eps = 8/255))
        }
        """,
        "bad.adv:2:30: error: unexpected ')'", "expected 'where', '}' or a name"),
    Bad("stray_character", """
        objective a {
            threat  linf(eps = 8/255) @
        }
        """,
        "bad.adv:2:31: error: unexpected character '@'", HINT_CHARS),
    Bad("semicolon", """
        objective a {
            threat  linf(eps = 8/255);
        }
        """,
        "bad.adv:2:30: error: unexpected character ';'", HINT_CHARS),
    Bad("unterminated_string", """
        objective a {
            threat  linf(eps = 8/255)
        }
        train {
            model   "mypkg.nets:make
        }
        """,
        'bad.adv:5:13: error: unexpected character \'"\'',
        'strings are one line of plain text with no backslashes', train=False),
    Bad("backslash_in_string", r"""
        objective a {
            threat  linf(eps = 8/255)
        }
        train {
            data    imagefolder(root = "C:\data")
        }
        """,
        'bad.adv:5:32: error: unexpected character \'"\'',
        'strings are one line of plain text with no backslashes', train=False),
    Bad("extends_without_parent", """
        objective a extends {
        }
        """,
        "bad.adv:1:21: error: unexpected '{'", 'expected a name or a string', train=False),
    Bad("objective_without_name", """
        objective {
        }
        """,
        "bad.adv:1:11: error: unexpected '{'", 'expected a name', train=False),
    Bad("train_with_a_name", """
        train fast {
        }
        """,
        "bad.adv:1:7: error: unexpected 'fast'", "expected '{'", train=False),
    Bad("misspelt_keyword", """
        objectiv a {
        }
        """,
        "bad.adv:1:1: error: unexpected 'objectiv'",
        "expected 'evaluate', 'objective', 'train' or end of file", train=False),
    Bad("where_without_binding", """
        objective a {
            loss    ce(adv) where
        }
        """,
        "bad.adv:3:1: error: unexpected '}'", 'expected a name'),
    Bad("binding_without_value", """
        objective a {
            loss    ce(nat) + beta * kl(nat, adv) where beta
        }
        """,
        "bad.adv:3:1: error: unexpected '}'", "expected '='"),
    Bad("equals_sign_in_clause", """
        objective a {
            threat = linf(eps = 8/255)
        }
        """,
        "bad.adv:2:12: error: unexpected '='", "expected '(', '-', 'not', a name, a number or a string"),
    Bad("doubled_operator", """
        objective a {
            threat  linf(eps = 8 / / 255)
        }
        """,
        "bad.adv:2:28: error: unexpected '/'", "expected '(', '-', a name, a number or a string"),
    Bad("doubled_comma", """
        objective a {
            attack  pgd(steps = 10,, step_size = 2/255)
        }
        """,
        "bad.adv:2:28: error: unexpected ','", "expected '(', ')', '-', 'not', a name, a number, ..."),
    Bad("number_with_two_dots", """
        objective a {
            threat  linf(eps = 0..031)
        }
        """,
        "bad.adv:2:26: error: unexpected '.031'", "expected ')', '*', '+', ',', '-', '/', ..."),
    Bad("extra_closing_brace", """
        objective a {
            threat  linf(eps = 8/255)
        }
        }
        """,
        "bad.adv:4:1: error: unexpected '}'", "expected 'evaluate', 'objective', 'train' or end of file"),
    Bad("empty_file", "",
        'bad.adv:1:1: error: spec defines no objective', 'start with: objective NAME { ... }', train=False),
    Bad("only_comments", """
        # GAIR-FAT, to be written
        # objective gair_fat extends fat { }
        """,
        'bad.adv:1:1: error: spec defines no objective', 'start with: objective NAME { ... }', train=False),
]

# --- unknown names: each gets the closest known name -------------------------------------------

UNKNOWN = [
    Bad("unknown_attack", obj("attack pgdd(steps = 10, step_size = 2/255)"),
        "bad.adv:3:13: error: unknown attack 'pgdd'", "did you mean 'pgd'?"),
    Bad("unknown_clause", obj("lsos ce(adv)"),
        "bad.adv:4:5: error: unknown clause 'lsos'", "did you mean 'loss'?"),
    Bad("unknown_threat", obj("threat linff(eps = 8/255)"),
        "bad.adv:2:13: error: unknown threat model 'linff'", "did you mean 'linf'?"),
    Bad("unknown_form", obj("form minmix(tau = 2)"),
        "bad.adv:4:13: error: unknown form 'minmix'", "did you mean 'minmin'?"),
    Bad("unknown_weight_fn", obj("weight gair(fn = tanhh)", "loss ce(adv) * weight"),
        "bad.adv:4:23: error: unknown fn 'tanhh'", "did you mean 'tanh'?"),
    Bad("unknown_init", obj("attack pgd(steps = 10, step_size = 2/255, init = unifrom)"),
        "bad.adv:3:55: error: unknown init 'unifrom'", "did you mean 'uniform'?"),
    Bad("unknown_attack_parameter", obj("attack pgd(steps = 10, step_size = 2/255, inti = normal)"),
        "bad.adv:3:48: error: pgd has no parameter 'inti'", "did you mean 'init'?"),
    Bad("unknown_form_parameter", obj("form minmin(taus = 2)"),
        "bad.adv:4:20: error: minmin has no parameter 'taus'", "did you mean 'tau'?"),
    Bad("unknown_schedule", obj("threat linf(eps = piecwise(0: 0.01, 10: 0.03))"),
        "bad.adv:2:24: error: expected a number, got a call to 'piecwise'", "did you mean 'piecewise'?"),
    Bad("unknown_data_set", obj() + t("""
        train {
            data    cifar11
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1)
        }
        """),
        "bad.adv:7:13: error: unknown data set 'cifar11'", "did you mean 'cifar10'?", train=False),
    Bad("unknown_model", obj() + t("""
        train {
            data    cifar10
            model   preact_resnet19
            epochs  5
            optim   sgd(lr = 0.1)
        }
        """),
        "bad.adv:8:13: error: unknown model 'preact_resnet19'", "did you mean 'preact_resnet18'?",
        train=False),
    Bad("unknown_optimiser", obj() + t("""
        train {
            data    cifar10
            model   small_cnn
            epochs  5
            optim   sgdd(lr = 0.1)
        }
        """),
        "bad.adv:10:13: error: unknown optimizer 'sgdd'", "did you mean 'sgd'?", train=False),
    Bad("unknown_optimiser_parameter", obj() + t("""
        train {
            data    cifar10
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1, momentun = 0.9)
        }
        """),
        "bad.adv:10:27: error: sgd has no parameter 'momentun'", "did you mean 'momentum'?", train=False),
    Bad("unknown_train_setting", obj() + t("""
        train {
            data    cifar10
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1)
            sed     3
        }
        """),
        "bad.adv:11:5: error: unknown train setting 'sed'", "did you mean 'seed'?", train=False),
    Bad("unknown_evaluation_attack", obj() + TRAIN + t("""
        evaluate {
            natural
            pgdd(steps = 20)
        }
        """),
        "bad.adv:15:5: error: unknown evaluation attack 'pgdd'", "did you mean 'pgd'?", train=False),
    Bad("unknown_evaluation_parameter", obj() + TRAIN + t("""
        evaluate {
            pgd(step = 20)
        }
        """),
        "bad.adv:14:9: error: pgd has no parameter 'step'", "did you mean 'steps'?", train=False),
]

# --- values out of range ---------------------------------------------------------------------

RANGES = [
    Bad("eps_zero", obj("threat linf(eps = 0)"),
        "bad.adv:2:24: error: 'eps' must be > 0, got 0", None),
    Bad("eps_negative", obj("threat l2(eps = -0.5)"),
        "bad.adv:2:22: error: 'eps' must be >= 0, got -0.5", None),
    Bad("step_size_zero", obj("attack pgd(steps = 10, step_size = 0)"),
        "bad.adv:3:41: error: 'step_size' must be > 0, got 0", None),
    Bad("steps_zero", obj("attack pgd(steps = 0, step_size = 2/255)"),
        "bad.adv:3:25: error: 'steps' must be >= 1, got 0", None),
    Bad("steps_fraction", obj("attack pgd(steps = 1.5, step_size = 2/255)"),
        "bad.adv:3:25: error: 'steps' must be a whole number, got 1.5", None),
    Bad("tau_negative", obj("form minmin(tau = -1)"),
        "bad.adv:4:26: error: 'tau' must be >= 0, got -1", None),
    Bad("tau_fraction", obj("form minmin(tau = 2.5)"),
        "bad.adv:4:26: error: 'tau' must be a whole number, got 2.5", None),
    Bad("rho_negative", obj("form minmin(tau = 2, rho = -0.1)"),
        "bad.adv:4:35: error: 'rho' must be >= 0, got -0.1", None),
    Bad("noise_negative", obj("attack pgd(steps = 10, step_size = 2/255, noise = -0.001)"),
        "bad.adv:3:56: error: 'noise' must be >= 0, got -0.001", None),
    Bad("from_epoch_negative", obj("weight gair(fn = tanh, from_epoch = -1)", "loss ce(adv) * weight"),
        "bad.adv:4:42: error: 'from_epoch' must be >= 0, got -1", None),
    Bad("division_by_zero", obj("threat linf(eps = 8/0)"),
        'bad.adv:2:24: error: division by zero', None),
    Bad("overflow", obj("threat linf(eps = 1e308 * 10)"),
        'bad.adv:2:24: error: number is too large', None),
    Bad("epochs_zero", obj() + t("""
        train {
            data    digits
            model   small_cnn
            epochs  0
            optim   sgd(lr = 0.1)
        }
        """),
        "bad.adv:9:13: error: 'epochs' must be >= 1, got 0", None, train=False),
    Bad("momentum_one", obj() + t("""
        train {
            data    digits
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1, momentum = 1)
        }
        """),
        "bad.adv:10:38: error: 'momentum' must be >= 0 and < 1, got 1", None, train=False),
    Bad("lr_zero", obj() + t("""
        train {
            data    digits
            model   small_cnn
            epochs  5
            optim   adam(lr = 0)
        }
        """),
        "bad.adv:10:23: error: 'lr' must be > 0, got 0", None, train=False),
    Bad("val_fraction_above_one", obj() + t("""
        train {
            data    digits
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1)
            val     1.5
        }
        """),
        "bad.adv:11:13: error: 'val' is a fraction below 1 or a whole number of samples", None, train=False),
]

# --- values of the wrong type ---------------------------------------------------------------

TYPES = [
    Bad("string_for_number", obj('threat linf(eps = "8/255")'),
        'bad.adv:2:24: error: expected a number, got a string', None),
    Bad("name_for_number", obj("threat linf(eps = eight)"),
        "bad.adv:2:24: error: unknown name 'eight' in 'eps'", "a number may use other settings by name, epoch and progress"),
    Bad("number_for_choice", obj("attack pgd(steps = 10, step_size = 2/255, init = 0)"),
        "bad.adv:3:55: error: 'init' must be one of 'none', 'normal' or 'uniform'", None),
    Bad("string_for_choice", obj('attack pgd(steps = 10, step_size = 2/255, loss = "ce")'),
        "bad.adv:3:55: error: 'loss' must be one of 'ce', 'cw' or 'kl'", None),
    Bad("number_for_bool", obj() + t("""
        train {
            data    digits
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1, nesterov = 1)
        }
        """),
        "bad.adv:10:38: error: 'nesterov' must be true or false", None, train=False),
    Bad("positional_parameter", obj("threat linf(8/255)"),
        "bad.adv:2:13: error: linf(...) needs 'eps'", 'add eps = ...'),
    Bad("number_for_threat", obj("threat 8/255"),
        'bad.adv:2:13: error: expected threat model here, e.g. linf(...)', "one of 'l2' or 'linf'"),
    Bad("parameter_twice", obj("attack pgd(steps = 10, step_size = 2/255, steps = 20)"),
        "bad.adv:3:48: error: parameter 'steps' given twice", None),
]

# --- schedules --------------------------------------------------------------------------------

SCHEDULES = [
    Bad("epochs_not_increasing", obj("threat linf(eps = piecewise(0: 0.01, 20: 0.02, 10: 0.03))"),
        "bad.adv:2:53: error: a schedule's epochs must increase", None),
    Bad("piecewise_not_from_zero", obj("form minmin(tau = piecewise(10: 1, 50: 2))"),
        'bad.adv:4:36: error: a piecewise schedule starts at epoch 0', "add '0: value' first"),
    Bad("linear_for_integer", obj("form minmin(tau = linear(0: 0, 50: 3))"),
        "bad.adv:4:26: error: 'tau' is a whole number, so it can only follow a piecewise schedule", None),
    Bad("schedule_for_fixed_parameter",
        obj("attack pgd(steps = 10, step_size = 2/255, init = normal, init_scale = piecewise(0: 0.1, 5: 0.01))"),
        "bad.adv:3:76: error: 'init_scale' cannot follow a schedule", 'give one number'),
    Bad("linear_with_one_point", obj("threat linf(eps = linear(0: 0.031))"),
        'bad.adv:2:24: error: linear(...) needs at least two points', None),
    Bad("schedule_without_epochs", obj("threat linf(eps = piecewise(0.01, 0.03))"),
        "bad.adv:2:34: error: piecewise(...) takes 'epoch: value' pairs", 'e.g. piecewise(0: 0.1, 60: 0.01)'),
    Bad("fractional_epoch", obj("threat linf(eps = cosine(0: 0.01, 2.5: 0.03))"),
        "bad.adv:2:40: error: a schedule's epochs are whole numbers >= 0", "a fraction of an epoch needs every = step"),
    Bad("empty_schedule", obj("threat linf(eps = piecewise())"),
        "bad.adv:2:24: error: piecewise(...) needs at least one 'epoch: value' pair", None),
]

# --- weight and loss expressions --------------------------------------------------------------

EXPRESSIONS = [
    Bad("unknown_variable", obj("weight exp(-kapa / K)", "loss ce(adv) * weight"),
        "bad.adv:4:18: error: unknown variable 'kapa' in weight expression", "did you mean 'kappa'?"),
    Bad("unknown_function", obj("weight expp(-kappa / K)", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: unknown function 'expp' in weight expression", "did you mean 'exp'?"),
    Bad("too_many_arguments", obj("weight exp(kappa, K)", "loss ce(adv) * weight"),
        'bad.adv:4:13: error: exp(...) takes 1 argument, got 2', None),
    Bad("too_few_arguments", obj("weight max(kappa)", "loss ce(adv) * weight"),
        'bad.adv:4:13: error: max(...) takes 2 arguments, got 1', None),
    Bad("kl_arguments_swapped", obj("loss ce(nat) + 6 * kl(adv, nat)"),
        'bad.adv:4:27: error: kl(adv, nat) is not a loss term', 'write kl(nat, adv)'),
    Bad("loss_without_term", obj("loss beta * 2 where beta = 6"),
        'bad.adv:4:13: error: the loss uses no loss term',
        'use ce(adv), ce(nat), kl(nat, adv), bce(adv) or prob(...)'),
    Bad("weight_not_used", obj("weight gair(fn = tanh, lambda = -1)"),
        'bad.adv:5:5: error: the objective defines a weight but the loss does not use it',
        'multiply a term by weight, e.g. loss ce(adv) * weight'),
    Bad("term_without_arguments", obj("loss ce * weight"),
        "bad.adv:4:13: error: 'ce' is a loss term and needs arguments", 'e.g. ce(adv)'),
    Bad("term_of_unknown_point", obj("loss ce(x_adv)"),
        "bad.adv:4:16: error: ce(...) takes 'nat' or 'adv'", None),
    Bad("binding_twice", obj("loss ce(nat) + beta * kl(nat, adv) where beta = 6, beta = 1"),
        "bad.adv:4:59: error: 'beta' is bound twice", None),
    Bad("binding_a_builtin", obj("loss ce(adv) * kappa where kappa = 1"),
        "bad.adv:4:35: error: 'kappa' is a built-in name and cannot be bound", None),
    Bad("where_on_gair", obj("weight gair(fn = tanh) where lambda = -1", "loss ce(adv) * weight"),
        "bad.adv:4:35: error: weight gair(...) takes no 'where' bindings",
        'pass parameters inside the parentheses'),
    Bad("where_on_attack", obj("attack pgd(steps = 10, step_size = a) where a = 2/255"),
        "bad.adv:3:41: error: unknown name 'a' in 'step_size'",
        "a number may use other settings by name, epoch and progress"),
    Bad("string_in_loss", obj('loss ce(adv) * "2"'),
        'bad.adv:4:23: error: a loss expression cannot contain a string', None),
    Bad("kwargs_in_function", obj("weight clamp(kappa / K, lo = 0, hi = 1)", "loss ce(adv) * weight"),
        'bad.adv:4:13: error: clamp(...) takes plain arguments', None),
]

# --- extends and duplicates ------------------------------------------------------------------

def child_of(parent: str) -> str:
    """A complete objective `a` that extends `parent` (so only the extends can be wrong)."""
    return obj().replace("objective a {", f"objective a extends {parent} {{")


STRUCTURE = [
    Bad("unknown_parent", child_of("madyr"),
        "bad.adv:1:21: error: unknown parent objective 'madyr'", "did you mean 'madry'?",
        files={"madry.adv": obj()}),
    Bad("cycle_across_two_files", child_of("b"),
        "b.adv:1:21: error: 'extends' cycle: a -> b -> a", 'an objective cannot extend itself', file="a.adv",
        files={"b.adv": "objective b extends a {\n    form    minmax\n}\n"}),
    Bad("cycle_in_one_file", """
        objective x extends y {
            form    minmax
        }
        objective y extends x {
            threat  linf(eps = 8/255)
            attack  pgd(steps = 10, step_size = 2/255)
            loss    ce(adv)
        }
        """,
        "bad.adv:1:21: error: 'extends' cycle: y -> x -> y", 'an objective cannot extend itself'),
    Bad("extends_itself", child_of("a"),
        "bad.adv:1:21: error: 'extends' cycle: a -> a", 'an objective cannot extend itself'),
    Bad("parent_file_without_objective", child_of("base"),
        "bad.adv:1:21: error: base.adv defines no objective 'base'", None, files={"base.adv": obj()}),
    Bad("parent_file_with_syntax_error", child_of("base"),
        "base.adv:3:1: error: unexpected '}'", "expected ')' or ','",
        files={"base.adv": "objective base {\n    threat  linf(eps = 8/255\n}\n"}),
    Bad("duplicate_clause", obj("form minmax", "form minmin(tau = 2)"),
        "bad.adv:5:5: error: duplicate 'form' clause in objective 'a'",
        "keep one; a later spec overrides an earlier one through 'extends'"),
    Bad("duplicate_objective", obj() + obj(),
        "bad.adv:6:11: error: objective 'a' is defined twice in this file", None),
    Bad("second_train_block", obj() + TRAIN + TRAIN,
        "bad.adv:14:1: error: second 'train' block in this file", 'merge them into one', train=False),
    Bad("missing_loss", """
        objective a {
            threat  linf(eps = 8/255)
            attack  pgd(steps = 10, step_size = 2/255)
        }
        """,
        "bad.adv:1:11: error: objective 'a' has no 'loss' clause", 'add: loss ce(adv)'),
]

# --- --set overrides (reported against a pseudo-file named after the option) -------------------

OVERRIDES = [
    Bad("override_unknown_section", obj(),
        "--set#1:1:1: error: unknown override key 'atack.steps'", "did you mean 'attack'?",
        overrides=("atack.steps=20",)),
    Bad("override_unknown_parameter", obj(),
        "--set#1:1:1: error: 'attack' has no parameter 'stepz'", "did you mean 'steps'?",
        overrides=("attack.stepz=20",)),
    Bad("override_bad_value", obj(),
        "--set#1:1:14: error: 'steps' must be >= 1, got 0", None, overrides=("attack.steps=0",)),
    Bad("override_bad_syntax", obj(),
        '--set#1:1:16: error: unexpected end of file', "expected ')'", overrides=("attack.steps=(3",)),
    Bad("override_epochs_zero", obj(),
        "--set#1:1:14: error: 'epochs' must be >= 1, got 0", None, overrides=("train.epochs=0",)),
    Bad("override_unknown_train_setting", obj(),
        "--set#1:1:1: error: unknown train setting 'epoch'", "did you mean 'epochs'?",
        overrides=("train.epoch=3",)),
    Bad("override_missing_clause", obj(),
        "--set#1:1:1: error: spec has no 'form' clause to override",
        'set the whole clause instead: --set form=...', overrides=("form.tau=3",)),
    Bad("override_empty_value", obj(),
        '--set#1:1:1: error: empty value', 'write a number, name or call', overrides=("attack.steps=",)),
    Bad("override_without_equals", obj(),
        "error: override 'attack.steps' has no '='", 'write --set key=value, e.g. attack.steps=20',
        overrides=("attack.steps",)),
]

# --- bytes, not text ---------------------------------------------------------------------------

BYTES = [
    Bad("not_utf8", b"objective a {  # caf\xe9 au lait\n}\n",
        'bad.adv:1:21: error: spec is not valid UTF-8 (byte 0xe9)', 'save the file as UTF-8'),
    Bad("latin1_later_line", b"objective a {\n    threat  linf(eps = 8/255)  # \xb5\n}\n",
        'bad.adv:2:34: error: spec is not valid UTF-8 (byte 0xb5)', 'save the file as UTF-8'),
    Bad("nul_byte", b"objective a {\n    threat\x00  linf(eps = 8/255)\n}\n",
        'bad.adv:2:11: error: spec contains a NUL byte', 'is this a binary file?'),
    Bad("too_deep", obj("threat linf(eps = " + "-" * (MAX_DEPTH + 6) + "1)"),
        'bad.adv:2:29: error: expression nested more than 64 levels deep',
        'split it up; real objectives need only a few levels'),
    Bad("too_deep_calls", obj("weight " + "exp(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
                               "loss ce(adv) * weight"),
        'bad.adv:4:13: error: expression nested more than 64 levels deep',
        'split it up; real objectives need only a few levels'),
    Bad("too_large", b"#" * (MAX_BYTES + 1),
        f"bad.adv:1:1: error: spec is {MAX_BYTES + 1} bytes; the limit is {MAX_BYTES}",
        "a spec is a few KB; is this the right file?"),
]

# --- numbers as expressions of settings, schedules, epoch and progress (issue #14) ------------


def train_with(optim: str) -> str:
    """TRAIN with another optimiser line (line 11 of a spec built by obj())."""
    return TRAIN.replace("sgd(lr = 0.1)", optim)


NUMBERS = [
    Bad("cycle_of_two_settings", obj("threat linf(eps = step_size * 4)", "attack pgd(steps = 10, step_size = eps / 4)"),
        "bad.adv:2:24: error: settings refer to each other: eps -> step_size -> eps", "one of them must be a number"),
    Bad("cycle_of_three_settings",
        obj("threat linf(eps = noise * 100)", "attack pgd(steps = 10, step_size = eps / 4, noise = step_size / 10)"),
        "bad.adv:2:24: error: settings refer to each other: eps -> noise -> step_size -> eps",
        "one of them must be a number"),
    Bad("setting_refers_to_itself", obj("attack pgd(steps = 10, step_size = step_size / 2)"),
        "bad.adv:3:41: error: settings refer to each other: step_size -> step_size", "one of them must be a number"),
    Bad("unknown_name_in_a_number", obj("attack pgd(steps = 10, step_size = esp / 4)"),
        "bad.adv:3:41: error: unknown name 'esp' in 'step_size'", "did you mean 'eps'?"),
    Bad("unknown_name_in_a_binding", obj("loss ce(nat) + beta * kl(nat, adv) where beta = bta"),
        "bad.adv:4:56: error: unknown name 'bta' in 'beta'", "did you mean 'beta'?"),
    Bad("setting_the_spec_does_not_have", obj("attack pgd(steps = 10, step_size = tau / 40)"),
        "bad.adv:3:41: error: 'tau' is not set in this spec", "'step_size' refers to it; set it, or write the number"),
    Bad("fixed_parameter_follows_the_epoch",
        obj("attack pgd(steps = 10, step_size = 2/255, init = normal, init_scale = epoch / 1000)"),
        "bad.adv:3:76: error: 'init_scale' is one value for the whole run; it cannot follow the epoch", None),
    Bad("fixed_parameter_follows_a_scheduled_setting",
        obj("attack pgd(steps = piecewise(0: 5, 3: 10), step_size = 2/255, init = normal, init_scale = steps / 1000)"),
        "bad.adv:3:96: error: 'init_scale' is one value for the whole run; it cannot follow a schedule or the epoch",
        None),
    Bad("from_epoch_follows_the_epoch", obj("weight exp(-margin) where from_epoch = epoch", "loss ce(adv) * weight"),
        "bad.adv:4:45: error: 'from_epoch' is one value for the whole run; it cannot follow the epoch", None),
    Bad("momentum_schedule_reaching_one", obj() + train_with("sgd(lr = 0.1, momentum = linear(0: 0.5, 4: 1))"),
        "bad.adv:11:38: error: 'momentum' must be >= 0 and < 1, got 1 at epoch 4", None, train=False),
    Bad("progress_without_a_train_block", obj("threat linf(eps = progress * 8/255)"),
        "bad.adv:2:24: error: 'progress' needs a train block (epochs)",
        "progress is epoch / epochs: add a train block, or write the epoch", train=False),
    Bad("progress_in_a_weight_without_a_train_block",
        obj("weight exp(-progress * kappa / K)", "loss ce(adv) * weight"),
        "bad.adv:4:18: error: 'progress' needs a train block (epochs)",
        "progress is epoch / epochs: add a train block, or write the epoch", train=False),
    Bad("steps_not_whole_at_an_epoch", obj("attack pgd(steps = 1 + epoch / 2, step_size = 2/255)"),
        "bad.adv:3:25: error: 'steps' must be a whole number, got 1.5 at epoch 1", None),
    Bad("step_size_zero_where_eps_is_not",
        obj("threat linf(eps = linear(0: 0.01, 4: 0.03))", "attack pgd(steps = 10, step_size = linear(0: 0, 4: 0.01))"),
        "bad.adv:3:41: error: 'step_size' must be > 0 where eps is, got 0 at epoch 0 (eps 0.01)", None),
    Bad("eps_zero_at_every_epoch", obj("threat linf(eps = linear(0: 0, 4: 0))"),
        "bad.adv:2:24: error: 'eps' must be > 0, got 0 at every epoch", None),
    Bad("linf_eps_above_one", obj("threat linf(eps = 2)"),
        "bad.adv:2:24: error: 'eps' must be >= 0 and <= 1, got 2", None),
    Bad("linf_eps_above_one_at_an_epoch", obj("threat linf(eps = 0.5 + epoch / 4)"),
        "bad.adv:2:24: error: 'eps' must be >= 0 and <= 1, got 1.25 at epoch 3", None),
    Bad("linf_eps_schedule_point_above_one", obj("threat linf(eps = linear(0: 0.1, 4: 1.5))"),
        "bad.adv:2:42: error: 'eps' must be >= 0 and <= 1, got 1.5", None),
    Bad("setting_without_a_finite_value", obj("attack pgd(steps = 10, step_size = 0.01 / (epoch - 2) ^ 2)"),
        "bad.adv:3:41: error: 'step_size' has no finite value at epoch 2", "check for a division by zero or a log of 0"),
]

# --- learning rates per step ---------------------------------------------------------------------

PER_STEP = [
    Bad("every_step_outside_the_learning_rate",
        obj("attack pgd(steps = 10, step_size = linear(0: 0.01, 5: 0.02, every = step))"),
        "bad.adv:3:41: error: only the learning rate and momentum can change at every step", "give this setting an epoch schedule"),
    Bad("onecycle_outside_the_learning_rate", obj("threat linf(eps = onecycle(max = 0.1))"),
        "bad.adv:2:24: error: only the learning rate and momentum can change at every step", "give this setting an epoch schedule"),
    Bad("setting_refers_to_the_per_step_learning_rate",
        obj("attack pgd(steps = 10, step_size = lr / 10)") + train_with("sgd(lr = onecycle(max = 0.2))"),
        "bad.adv:3:41: error: 'step_size' uses the learning rate, which changes at every step", "write the number",
        train=False),
    Bad("per_step_schedule_inside_an_expression", obj() + train_with("sgd(lr = 2 * onecycle(max = 0.1))"),
        "bad.adv:11:22: error: a per-step schedule is a whole value, not part of an expression",
        "give 'lr' the schedule alone, or refer to a setting that follows it", train=False),
    Bad("per_step_rate_zero_at_every_step", obj() + train_with("sgd(lr = linear(0: 0, 4: 0, every = step))"),
        "bad.adv:11:22: error: 'lr' must be > 0 at some step, got 0 at every step", None, train=False),
    Bad("epoch_rate_zero_at_the_first_epoch", obj() + train_with("sgd(lr = linear(0: 0, 4: 0.2))"),
        "bad.adv:11:22: error: 'lr' must be > 0, got 0 at epoch 0", None, train=False),
    Bad("every_misspelt", obj() + train_with("sgd(lr = linear(0: 0.1, 4: 0.01, every = epochs))"),
        "bad.adv:11:54: error: 'every' is epoch or step", None, train=False),
    Bad("onecycle_unknown_parameter", obj() + train_with("sgd(lr = onecycle(max = 0.2, pct = 0.3))"),
        "bad.adv:11:42: error: onecycle has no parameter 'pct'",
        "it takes 'anneal', 'div', 'final_div', 'max' or 'pct_start'", train=False),
    Bad("cyclic_without_max", obj() + train_with("sgd(lr = cyclic(min = 0.1))"),
        "bad.adv:11:22: error: cyclic(...) needs 'max'", "add max = ...", train=False),
]

# --- stop rules and per-sample quantities ----------------------------------------------------

STOP_RULES = [
    Bad("stop_rule_not_a_condition", obj("form minmin(tau = 0, stop = margin)"),
        "bad.adv:4:36: error: the stop rule must be a condition", "e.g. stop = margin > 0"),
    Bad("and_on_a_number", obj("form minmin(tau = 0, stop = margin > 0 and kappa)"),
        "bad.adv:4:36: error: 'and' joins conditions, not numbers", "compare the number first, e.g. margin > 0"),
    Bad("or_on_a_number", obj("form minmin(tau = 0, stop = steps or margin > 0)"),
        "bad.adv:4:36: error: 'or' joins conditions, not numbers", "compare the number first, e.g. margin > 0"),
    Bad("not_on_a_number", obj("form minmin(tau = 0, stop = not margin)"),
        "bad.adv:4:36: error: 'not' negates conditions, not numbers", "compare the number first, e.g. margin > 0"),
    Bad("condition_used_as_a_number", obj("form minmin(tau = 0, stop = (margin > 0) + 1 > 0)"),
        "bad.adv:4:36: error: a condition cannot be used as a number", "conditions only join with and, or, not"),
    Bad("weight_a_condition", obj("weight margin > 0", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: a weight is a number, not a condition", None),
    Bad("stop_binding_never_used", obj("form minmin(tau = 0, stop = fosc <= c) where c = 0.1, d = 2"),
        "bad.adv:4:62: error: 'd' is bound but the expression never uses it", "remove it, or use it in the expression"),
    Bad("where_on_minmax", obj("form minmax where c = 1"),
        "bad.adv:4:26: error: form minmax takes no 'where' bindings", "bindings belong to a stop rule"),
    Bad("stop_rule_with_a_loss_term", obj("form minmin(stop = ce(adv) > 1)"),
        "bad.adv:4:27: error: 'ce' is a loss term, which only the loss can use",
        "the stop rule reads per-sample quantities: 'loss' is CE(f(x'), y)"),
    Bad("stop_rule_divides_by_zero", obj("form minmin(tau = 0, stop = margin / c > 1) where c = 0"),
        "bad.adv:4:36: error: division by zero in the stop rule: c is 0", "the stop rule divides by c: keep it away from 0"),
    Bad("unknown_quantity_in_a_stop_rule", obj("form minmin(tau = 0, stop = fossc <= 0.1)"),
        "bad.adv:4:36: error: unknown variable 'fossc' in stop expression", "did you mean 'fosc'?"),
    Bad("unknown_quantity_in_a_weight", obj("weight exp(-margn)", "loss ce(adv) * weight"),
        "bad.adv:4:18: error: unknown variable 'margn' in weight expression", "did you mean 'margin'?"),
    Bad("quantity_in_the_loss", obj("loss ce(adv) * exp(-margin)"),
        "bad.adv:4:28: error: the loss cannot read the per-sample quantity 'margin'",
        "read it in the weight and multiply: weight ... margin ..., loss ce(adv) * weight"),
    Bad("quantity_call_in_the_loss", obj("loss ce(adv) * grad_norm(2)"),
        "bad.adv:4:23: error: the loss cannot read the per-sample quantity 'grad_norm'",
        "read it in the weight and multiply: weight ... grad_norm ..., loss ce(adv) * weight"),
    Bad("grad_norm_of_an_unknown_order", obj("form minmin(tau = 0, stop = grad_norm(3) > 1)"),
        "bad.adv:4:36: error: grad_norm(3) is not a per-sample quantity",
        "write grad_norm(1) or grad_norm(2) or grad_norm(inf)"),
    Bad("prob_of_an_unknown_point", obj("weight prob(x)", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: prob(x) is not a per-sample quantity", "write prob(adv) or prob(nat)"),
    Bad("quantity_without_its_arguments", obj("form minmin(tau = 0, stop = prob > 0.5)"),
        "bad.adv:4:36: error: 'prob' is a per-sample quantity and needs arguments", "e.g. prob(adv)"),
    Bad("quantity_given_arguments", obj("weight exp(-margin(adv))", "loss ce(adv) * weight"),
        "bad.adv:4:18: error: 'margin' takes no arguments", "write margin"),
]

# --- weights: normalisation and sign ------------------------------------------------------------

WEIGHTS = [
    Bad("normalise_misspelt", obj("weight exp(-margin) where normalise = summ", "loss ce(adv) * weight"),
        "bad.adv:4:44: error: unknown normalise 'summ'", "did you mean 'sum'?"),
    Bad("normalise_misspelt_in_gair", obj("weight gair(normalise = means)", "loss ce(adv) * weight"),
        "bad.adv:4:30: error: unknown normalise 'means'", "did you mean 'mean'?"),
    Bad("normalise_a_number", obj("weight exp(-margin) where normalise = 1", "loss ce(adv) * weight"),
        "bad.adv:4:44: error: 'normalise' must be one of 'mean', 'none' or 'sum'", None),
    Bad("weight_zero", obj("weight 0", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: weight 0 makes every sample weigh nothing", "use weight none for no weighting"),
    Bad("weight_never_positive", obj("weight -1 - kappa", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: the weight -1 - kappa is never positive", "instance weights must be >= 0 and not all zero"),
    Bad("weight_never_positive_exp", obj("weight -exp(margin)", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: the weight -exp(margin) is never positive",
        "instance weights must be >= 0 and not all zero"),
    Bad("weight_zero_times_a_quantity", obj("weight 0 * kappa", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: the weight 0 * kappa is never positive", "instance weights must be >= 0 and not all zero"),
    Bad("weight_divides_by_a_zero_binding", obj("weight exp(-margin / T) where T = 0", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: division by zero in the weight: T is 0", "the weight divides by T: keep it away from 0"),
    Bad("weight_divides_by_zero_at_an_epoch",
        obj("weight exp(-margin / T) where T = linear(0: 1, 4: -1)", "loss ce(adv) * weight"),
        "bad.adv:4:13: error: division by zero in the weight: T is 0 at epoch 2",
        "the weight divides by T: keep it away from 0"),
    Bad("loss_divides_by_zero", obj("loss ce(adv) / beta where beta = 0"),
        "bad.adv:4:13: error: division by zero in the loss: beta is 0", "the loss divides by beta: keep it away from 0"),
]

# --- extends: missing parents -------------------------------------------------------------------

EXTENDS = [
    Bad("extends_a_name_found_nowhere", child_of("nothere"),
        "bad.adv:1:21: error: unknown parent objective 'nothere'",
        "no nothere.adv in the spec's folder, advc's packaged specs"),
    Bad("extends_a_missing_file", obj().replace("objective a {", 'objective a extends "lib/base.adv" {'),
        "bad.adv:1:21: error: no spec file lib/base.adv", "the path is relative to this spec's folder",
        mentions=("lib/base.adv",)),
    Bad("extends_a_file_without_objective", obj().replace("objective a {", 'objective a extends "empty.adv" {'),
        "bad.adv:1:21: error: empty.adv defines no objective", None, files={"empty.adv": "# nothing yet\n"}),
]

# --- whole-clause overrides: the caret points into the --set text --------------------------------

WEIGHTED = obj("weight exp(-margin / T) where T = 2", "loss ce(adv) * weight")
CLAUSE_OVERRIDES = [
    Bad("override_weight_unknown_variable", WEIGHTED,
        "--set#1:1:13: error: unknown variable 'margni' in weight expression", "did you mean 'margin'?",
        overrides=("weight=exp(-margni / T) where T = 2",)),
    Bad("override_weight_bound_twice", WEIGHTED, "--set#1:1:38: error: 'T' is bound twice", None,
        overrides=("weight=exp(-margin / T) where T = 2, T = 3",)),
    Bad("override_weight_binding_unused", WEIGHTED,
        "--set#1:1:27: error: 'T' is bound but the expression never uses it", "remove it, or use it in the expression",
        overrides=("weight=exp(-margin) where T = 2",)),
    Bad("override_weight_binding_without_value", WEIGHTED, "--set#1:1:32: error: unexpected end of file",
        "expected '='", overrides=("weight=exp(-margin / T) where T",)),
    Bad("override_weight_never_positive", WEIGHTED, "--set#1:1:8: error: the weight -exp(margin) is never positive",
        "instance weights must be >= 0 and not all zero", overrides=("weight=-exp(margin)",)),
    Bad("override_weight_binding_zero", WEIGHTED, "bad.adv:4:13: error: division by zero in the weight: T is 0",
        "the weight divides by T: keep it away from 0", overrides=("weight.T=0",)),
    Bad("override_weight_normalise_misspelt", WEIGHTED, "--set#1:1:39: error: unknown normalise 'summ'",
        "did you mean 'sum'?", overrides=("weight=exp(-margin) where normalise = summ",)),
    Bad("override_form_stop_not_a_condition", obj(), "--set#1:1:29: error: the stop rule must be a condition",
        "e.g. stop = margin > 0", overrides=("form=minmin(tau = 0, stop = margin)",)),
    Bad("override_evaluate_unknown_parameter", obj(), "--set#1:1:22: error: pgd has no parameter 'stepz'",
        "did you mean 'steps'?", overrides=("evaluate=natural pgd(stepz = 20)",)),
    Bad("override_evaluate_unknown_attack", obj(), "--set#1:1:18: error: unknown evaluation attack 'pgdd'",
        "did you mean 'pgd'?", overrides=("evaluate=natural pgdd(steps = 20)",)),
    Bad("override_train_data_unknown_parameter", obj(), "--set#1:1:19: error: digits has no parameter 'tset'",
        "did you mean 'test'?", overrides=("train.data=digits(tset = 0.25)",)),
    Bad("override_train_data_out_of_range", obj(), "--set#1:1:26: error: 'test' must be > 0 and < 1, got 1.5", None,
        overrides=("train.data=digits(test = 1.5)",)),
    Bad("override_lr_per_step_inside_an_expression", obj(),
        "--set#1:1:22: error: a per-step schedule is a whole value, not part of an expression",
        "give 'lr' the schedule alone, or refer to a setting that follows it",
        overrides=("train.optim=sgd(lr = 2 * cyclic(max = 0.2))",)),
    Bad("override_makes_a_cycle", obj(), "--set#1:1:12: error: settings refer to each other: eps -> step_size -> eps",
        "one of them must be a number", overrides=("threat.eps=step_size * 4", "attack.step_size=eps / 4")),
]

CASES = (SYNTAX + UNKNOWN + RANGES + TYPES + SCHEDULES + EXPRESSIONS + STRUCTURE + OVERRIDES + BYTES + NUMBERS
         + PER_STEP + STOP_RULES + WEIGHTS + EXTENDS + CLAUSE_OVERRIDES)


def _write(case: Bad, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in case.files.items():
        (folder / name).write_text(text, encoding="utf-8")
    source = case.source()
    (folder / case.file).write_bytes(source if isinstance(source, bytes) else source.encode("utf-8"))
    return folder / case.file


def test_the_corpus_is_large_and_every_case_has_its_own_id():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_spec_gives_the_expected_first_diagnostic(case: Bad, tmp_path, monkeypatch):
    _write(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ADVC_PATH", raising=False)  # the places `extends` searches are the default ones
    with pytest.raises(SpecError) as info:
        check_file(case.file, list(case.overrides) or None)
    diags = info.value.diagnostics
    first = diags[0]
    assert render_one(first).splitlines()[0] == case.expected
    assert first.hint == case.hint
    # every diagnostic of the case points inside the text it names, and renders with a caret
    sources = info.value.sources.texts
    for diag in diags:
        if diag.span is None or not case.caret:
            continue
        text = sources.get(diag.span.file)
        assert text is not None, f"no source kept for {diag.span.file}"
        assert 1 <= diag.span.line <= len(text.splitlines()) + 1
        assert diag.span.col >= 1
        rendered = render_one(diag, info.value.sources).splitlines()
        assert len(rendered) == 3 and rendered[2].strip().startswith("|") and "^" in rendered[2]


def test_all_problems_are_reported_at_once_in_source_order():
    text = textwrap.dedent("""\
        objective a {
            threat  linff(eps = 8/255)
            attack  pgd(steps = 0, step_size = 2/255)
            form    minmin(tau = linear(0: 0, 50: 3))
            loss    ce(adv) * kapa
        }

        train {
            data    cifar11
            model   small_cnn
            epochs  5
            optim   sgd(lr = 0.1)
        }
        """)
    with pytest.raises(SpecError) as info:
        check_text(text, "five.adv")
    heads = [render_one(d).splitlines()[0] for d in info.value.diagnostics]
    assert heads == [
        "five.adv:2:13: error: unknown threat model 'linff'",
        "five.adv:3:25: error: 'steps' must be >= 1, got 0",
        "five.adv:4:26: error: 'tau' is a whole number, so it can only follow a piecewise schedule",
        "five.adv:5:23: error: unknown variable 'kapa' in loss expression",
        "five.adv:9:13: error: unknown data set 'cifar11'",
    ]
    carets = [line for line in info.value.render().splitlines() if line.lstrip().startswith("|")]
    assert len(carets) == 5 and all("^" in line for line in carets)


def test_deep_parentheses_are_not_nesting():
    """Parentheses build no nodes, so 500 of them parse (LALR, no recursion) and check."""
    text = obj("threat linf(eps = " + "(" * 500 + "8/255" + ")" * 500 + ")") + TRAIN
    program = check_text(text, "deep.adv")
    assert abs(program.threat.eps.const - 8 / 255) < 1e-12


def test_a_long_flat_sum_is_a_depth_diagnostic_not_a_recursion_error():
    text = obj("weight " + " + ".join(["kappa"] * 5000), "loss ce(adv) * weight")
    with pytest.raises(SpecError) as info:
        parse_text(text, "flat.adv")
    assert info.value.diagnostics[0].message == f"expression nested more than {MAX_DEPTH} levels deep"


# --- the real command line ---------------------------------------------------------------------


def _advc() -> list[str]:
    script = Path(sys.executable).with_name("advc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "advc"]


def _run(args, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "ADVC_PATH"} | (env or {})
    return subprocess.run(_advc() + args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
                          env=environ)


FILE_CASES = [c for c in CASES if not c.overrides]


def test_cli_reports_every_file_case_with_location_and_caret_and_no_traceback(tmp_path):
    """All cases through one `advc check` run: each file's first problem, quoted with a caret."""
    for case in FILE_CASES:
        _write(case, tmp_path / case.id)
    done = _run(["check", *[f"{c.id}/{c.file}" for c in FILE_CASES]], tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    for case in FILE_CASES:
        head = f"{case.id}/{case.expected}"
        for name in (*case.files, *case.mentions):  # messages name neighbour files by their path too
            head = head.replace(f" {name} ", f" {case.id}/{name} ").replace(f" {name}\"", f" {case.id}/{name}\"")
            if head.endswith(f" {name}"):
                head = head[: -len(name)] + f"{case.id}/{name}"
        assert head in lines, f"{case.id}: {head!r} not in advc's output"
        at = lines.index(head)
        if not case.caret:
            continue
        gutter, caret = lines[at + 1], lines[at + 2]
        line_no = case.expected.split(":")[1]
        assert gutter.startswith(f"  {line_no} | ")
        assert caret.lstrip().startswith("|") and "^" in caret
        if case.hint:
            assert caret.endswith(" " + case.hint)


@pytest.mark.parametrize("case", [c for c in CASES if c.overrides], ids=lambda c: c.id)
def test_cli_rejects_bad_override(case: Bad, tmp_path):
    _write(case, tmp_path)
    args = ["check", case.file]
    for item in case.overrides:
        args += ["--set", item]
    done = _run(args, tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines()[0] == case.expected
    if case.expected.startswith("--set#"):
        assert done.stderr.splitlines()[1] == f"  1 | {case.overrides[0]}"
        assert "^" in done.stderr.splitlines()[2]


def test_cli_missing_file_and_folder_are_one_line_errors(tmp_path):
    (tmp_path / "folder.adv").mkdir()
    done = _run(["check", "missing.adv"], tmp_path)
    assert (done.returncode, done.stderr) == (2, "error: no such spec file: missing.adv\n  hint: check the path\n")
    done = _run(["fmt", "folder.adv"], tmp_path)
    assert (done.returncode, done.stderr) == (2, "error: folder.adv is a folder, not a spec file\n")


# --- regressions: front-end bugs found by this corpus, now fixed (minimal reproducers) ----------

BIG = "1" + "0" * 400  # an integer literal beyond float range


def test_unknown_parent_is_reported_once(tmp_path, monkeypatch):
    (tmp_path / "madry.adv").write_text(obj())
    (tmp_path / "e.adv").write_text("objective e extends madyr {\n}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        check_file("e.adv")
    heads = [render_one(d).splitlines()[0] for d in info.value.diagnostics]
    assert heads == ["e.adv:1:21: error: unknown parent objective 'madyr'"]


@pytest.mark.parametrize("value", [f"-{BIG}", f"momentum = {BIG}"], ids=["eps", "momentum"])
def test_huge_integer_out_of_range_is_a_diagnostic(value):
    if value.startswith("momentum"):
        text = obj() + TRAIN.replace("lr = 0.1", f"lr = 0.1, {value}")
    else:
        text = obj(f"threat linf(eps = {value})") + TRAIN
    with pytest.raises(SpecError):
        check_text(text, "big.adv")


def test_integer_literal_longer_than_python_allows_is_a_diagnostic():
    with pytest.raises(SpecError):
        check_text(obj("threat linf(eps = 1" + "0" * 5000 + ")") + TRAIN, "long.adv")


def test_power_tower_is_rejected_quickly(tmp_path):
    spec = tmp_path / "tower.adv"
    spec.write_text(obj("threat linf(eps = 9^9^9)") + TRAIN)
    try:
        done = subprocess.run(_advc() + ["check", str(spec)], capture_output=True, text=True, timeout=5,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("advc check did not answer within 5 s")
    assert done.returncode == 2


def test_literal_overflowing_to_infinity_is_rejected():
    with pytest.raises(SpecError):
        check_text(obj("threat linf(eps = 1e999)") + TRAIN, "inf.adv")


def test_python_override_of_model_with_module_callable():
    program = check_text(obj() + TRAIN, "m.adv", {"train.model": "mypkg.nets:make"})
    assert program.train.model == "mypkg.nets:make"


def test_check_of_a_folder_says_it_is_a_folder(tmp_path):
    (tmp_path / "folder.adv").mkdir()
    with pytest.raises(SpecError) as info:
        check_file(tmp_path / "folder.adv")
    assert "is a folder" in info.value.diagnostics[0].message


@pytest.mark.parametrize("sep", ["\f", "\r", "\u2028"], ids=["formfeed", "cr", "u2028"])
def test_diagnostic_quotes_the_line_it_points_at(sep):
    text = "objective a {" + sep + " threat @ }\n"
    with pytest.raises(SpecError) as info:
        parse_text(text, "ff.adv")
    assert info.value.diagnostics[0].span.line == 1
    quoted = info.value.render().splitlines()[1]
    assert "threat @ }" in quoted  # the line the caret is under, not only its first part


def test_missing_train_setting_points_at_the_train_block():
    text = obj() + t("""
        train {
            data    digits
            model   small_cnn
            optim   sgd(lr = 0.1)
        }
        """)
    with pytest.raises(SpecError) as info:
        check_text(text, "bad.adv")
    diag = info.value.diagnostics[0]
    assert diag.message == "the train block has no 'epochs'"
    assert diag.span.line == 6


def test_overlong_parent_name_is_a_diagnostic(tmp_path):
    text = "objective a extends " + "x" * 300 + " {\n}\n"
    with pytest.raises(SpecError):
        check_text(text, str(tmp_path / "long.adv"))


def test_override_of_a_misspelt_binding_is_rejected():
    text = obj("loss ce(nat) + beta * kl(nat, adv) where beta = 6") + TRAIN
    with pytest.raises(SpecError):
        check_text(text, "trades.adv", ["loss.betta=1"])


def test_cli_shows_no_traceback_for_a_huge_literal(tmp_path):
    (tmp_path / "big.adv").write_text(obj(f"threat linf(eps = -{BIG})") + TRAIN)
    done = _run(["check", "big.adv"], tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2


def test_bad_binding_does_not_hide_an_unknown_variable():
    text = obj("weight sigmoid(margni / T) where T = 2, from_epoch = 59.5", "loss ce(adv) * weight") + TRAIN
    with pytest.raises(SpecError) as info:
        check_text(text, "bad.adv")
    assert [d.message for d in info.value.diagnostics] == [
        "unknown variable 'margni' in weight expression",
        "'from_epoch' must be a whole number, got 59.5",
    ]


# --- settings that refer to each other: every one of them is shown ---------------------------------


def test_a_cycle_is_reported_at_every_setting_on_it():
    text = obj("threat linf(eps = noise * 100)", "attack pgd(steps = 10, step_size = eps / 4, noise = step_size / 10)")
    with pytest.raises(SpecError) as info:
        check_text(text + TRAIN, "bad.adv")
    rendered = [render_one(d, info.value.sources).splitlines() for d in info.value.diagnostics]
    cycle = "settings refer to each other: eps -> noise -> step_size -> eps"
    assert [r[0] for r in rendered] == [f"bad.adv:2:24: error: {cycle}", f"bad.adv:3:41: error: {cycle}",
                                        f"bad.adv:3:58: error: {cycle}"]
    carets = [r[2].split("|", 1)[1] for r in rendered]  # under noise * 100, eps / 4 and step_size / 10
    assert [c.strip().split()[0] for c in carets] == ["^" * len("noise * 100"), "^" * len("eps / 4"),
                                                      "^" * len("step_size / 10")]


def test_an_unknown_parent_names_every_folder_searched(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "env").mkdir()
    (tmp_path / "bad.adv").write_text(child_of("nothere") + TRAIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVC_PATH", str(tmp_path / "env"))
    with pytest.raises(SpecError) as info:
        check_file("bad.adv", spec_path=[str(tmp_path / "lib")])
    diag = info.value.diagnostics[0]
    assert diag.message == "unknown parent objective 'nothere'"
    assert diag.hint == (f"no nothere.adv in the spec's folder, {tmp_path / 'lib'} (--spec-path), "
                         f"{tmp_path / 'env'} ($ADVC_PATH), advc's packaged specs")


# --- warnings: one spec per code, the exact line, --allow and --strict -------------------------------

WARNINGS = {
    "unreachable-schedule": (
        obj("form minmin(tau = piecewise(0: 0, 3: 1, 8: 2))") + TRAIN,
        "w.adv:4:26: warning[unreachable-schedule]: 'tau' changes at epoch 8, but the run has 5 epochs (0 to 4): "
        "that piece never takes effect", "shorten the schedule or train longer"),
    "weights-never-start": (
        obj("weight gair(fn = tanh, from_epoch = 5)", "loss ce(adv) * weight") + TRAIN,
        "w.adv:4:5: warning[weights-never-start]: weights start at epoch 5, but the run ends at epoch 4: every "
        "weight stays 1", "lower from_epoch or train longer"),
    "constant-weight": (
        obj("weight 1 + epoch", "loss ce(adv) * weight") + TRAIN,
        "w.adv:4:5: warning[constant-weight]: the weight 1 + epoch is the same for every sample: normalised to "
        "mean 1 it is 1 everywhere", "use per-sample quantities (kappa, margin, pm, ...) or normalise = none"),
    "eval-eps-not-final": (
        obj("threat linf(eps = linear(0: 0.01, 5: 0.03))") + TRAIN,
        "w.adv:2:24: warning[eval-eps-not-final]: evaluation runs at eps = 0.026 (its value at the last epoch, 4), "
        "below the 0.03 the schedule reaches", "train until the schedule ends, or evaluate with pgd(eps = ...)"),
    "eval-eps-large": (
        obj() + TRAIN + "\nevaluate {\n    natural\n    pgd(eps = 0.2)\n}\n",
        "w.adv:16:5: warning[eval-eps-large]: PGD-20 (ε=0.2) evaluates at 6.38 times the largest training eps "
        "(0.03137)", "intended for a robustness curve? then silence this warning"),
    "shadowed-binding": (
        obj("loss ce(nat) + momentum * kl(nat, adv) where momentum = 6") + TRAIN,
        "w.adv:4:53: warning[shadowed-binding]: the binding 'momentum' hides the setting of that name in this clause",
        "rename the binding to use both"),
    "large-lr": (
        obj() + train_with("sgd(lr = onecycle(max = 20))"),
        "w.adv:11:22: warning[large-lr]: a learning rate of 20 rarely trains anything", "typical rates are 0.001 to 0.2"),
}


def test_every_warning_code_has_a_case():
    from advc.compiler.warn import CODES

    assert set(WARNINGS) == set(CODES)


@pytest.mark.parametrize("code", sorted(WARNINGS))
def test_a_warning_is_one_line_with_its_code_a_caret_and_a_hint(code, tmp_path, monkeypatch):
    text, first, hint = WARNINGS[code]
    (tmp_path / "w.adv").write_text(text)
    monkeypatch.chdir(tmp_path)
    program = check_file("w.adv")
    assert [w.code for w in program.warnings] == [code]
    lines = program.warnings[0].rendered.splitlines()
    assert lines[0] == first
    assert "^" in lines[2] and lines[2].endswith(" " + hint)


def test_cli_prints_warnings_allow_silences_one_and_strict_fails(tmp_path):
    for code, (text, _, _) in WARNINGS.items():
        (tmp_path / f"{code}.adv").write_text(text.replace("w.adv", f"{code}.adv"))
    files = [f"{code}.adv" for code in sorted(WARNINGS)]
    done = _run(["check", *files], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{f}: ok (objective a)" for f in files]
    for code, (_, first, _) in WARNINGS.items():
        assert first.replace("w.adv", f"{code}.adv") in done.stderr.splitlines()

    for code in sorted(WARNINGS):  # --allow CODE: that warning is gone, the spec is ok
        done = _run(["check", f"{code}.adv", "--allow", code], tmp_path)
        assert (done.returncode, done.stderr) == (0, ""), code
        assert done.stdout == f"{code}.adv: ok (objective a)\n"

    done = _run(["check", *files, "--strict"], tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    for f in files:
        assert f"{f}: 1 warning(s) with --strict" in done.stderr.splitlines()

    done = _run(["check", files[0], "--strict", "--allow", sorted(WARNINGS)[0]], tmp_path)
    assert (done.returncode, done.stderr) == (0, "")  # allowed warnings do not count for --strict


def test_cli_allow_of_an_unknown_code_is_a_one_line_error(tmp_path):
    (tmp_path / "a.adv").write_text(obj() + TRAIN)
    from advc.compiler.warn import CODES

    done = _run(["check", "a.adv", "--allow", "unreachable-schedul"], tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"error: unknown warning 'unreachable-schedul' (--allow) -- hint: warnings: "
                           f"{', '.join(CODES)}\n")


# --- what only the run can know: weights the checker could not prove, a spec without training ---------


def test_a_weight_of_unknown_sign_is_checked_where_it_runs():
    """The checker proves `weight 1 + kappa` positive, cannot prove `margin` (either sign) or
    `kappa` (0 for every sample is possible): those get a one-line error when they run."""
    import torch

    from advc.api import CompiledObjective
    from advc.compiler.codegen import generate
    from advc.errors import UserError

    def compiled(weight: str) -> CompiledObjective:
        program = check_text(obj(f"weight {weight}", "loss ce(adv) * weight") + TRAIN, "w.adv")
        return CompiledObjective(program, generate(program))

    proven = compiled("1 + kappa where normalise = none")
    assert "check_weights(" not in proven.source and proven.program.weight.sign == "positive"
    kappa = torch.tensor([0, 2, 1])
    margin = torch.tensor([0.5, -1.0, 2.0])
    margin_weight = compiled("margin where normalise = none")
    result = margin_weight.AttackResult(torch.zeros(3, 2), kappa, kappa, 0, margin=margin)
    with pytest.raises(UserError) as info:
        margin_weight.weights(result, epoch=3)
    assert info.value.render() == ("error: the weight margin is negative for 1 of 3 samples at epoch 3 (w.adv:4) -- "
                                   "hint: instance weights must be >= 0 and not all zero: change the weight "
                                   "expression")
    kappa_weight = compiled("kappa")
    zero = kappa_weight.AttackResult(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), kappa, 0)
    with pytest.raises(UserError) as info:
        kappa_weight.weights(zero, epoch=0)
    assert info.value.render().split(" -- ")[0] == "error: the weight kappa is zero for every sample at epoch 0 (w.adv:4)"
    assert torch.equal(kappa_weight.weights(result, epoch=0), kappa.float())  # mean 1 already: unchanged


def test_run_without_a_train_block_says_what_is_missing_in_one_line(tmp_path):
    (tmp_path / "alone.adv").write_text(obj())
    done = _run(["check", "alone.adv"], tmp_path)
    assert (done.returncode, done.stdout) == (0, "alone.adv: ok (objective a)\n")  # a valid objective
    done = _run(["compile", "alone.adv"], tmp_path)
    assert done.returncode == 0 and "def main(" not in done.stdout and "def train_step(" in done.stdout
    done = _run(["run", "alone.adv", "--out", str(tmp_path / "run")], tmp_path)
    assert done.returncode != 0
    assert done.stderr == ("error: objective 'a' has no train block: advc run needs its data, model, epochs and "
                           "optim (alone.adv) -- hint: add: train { data digits  model small_cnn  epochs 10  "
                           "optim sgd(lr = 0.1) }\n")


def test_a_spec_path_that_never_ends_is_read_bounded_and_refused():
    """``advc check /dev/zero`` (or a huge file) reads at most the limit plus one byte."""
    with pytest.raises(SpecError) as info:
        check_file("/dev/zero")
    first = info.value.diagnostics[0]
    assert first.message == f"spec is more than {MAX_BYTES} bytes; the limit is {MAX_BYTES}"


def test_a_spec_larger_than_the_limit_says_its_real_size(tmp_path):
    big = tmp_path / "big.adv"
    big.write_bytes(b"#" * (4 * MAX_BYTES))
    with pytest.raises(SpecError) as info:
        check_file(big)
    assert info.value.diagnostics[0].message == f"spec is {4 * MAX_BYTES} bytes; the limit is {MAX_BYTES}"
