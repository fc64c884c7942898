"""Code tables loaded once from ``fhir_mappings/tables/*.csv`` into fast lookups.

The tables are the only place where a code means something to the policy: Python here knows how to
read and match them, not what any code stands for. Every row names its public source; a row with an
undeclared tag, an unknown system, a bad family or no source stops the service at start-up
(``CodeTableError``) rather than mis-deciding a request later.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from .model import LineOfBusiness
from .normalize import Code

#: Tables every policy shares (code systems, coverage, routes, specialties, receptor tests). A policy pack's own
#: tables (products, indications, companions, its tags) live in the pack folder and are read first.
TABLES_DIR = Path(__file__).with_name("tables")
#: The package's default pack (CP.PHAR.63) tables, for callers that ask for "the" code tables.
DEFAULT_PACK_TABLES = Path(__file__).resolve().parent.parent / "cds_service" / "policies" / "cp-phar-63" / "tables"

#: The shared table of dose forms (a pack's products name one of its ``form`` tags).
DOSE_FORMS_TABLE = "dose_forms.csv"
RESULTS = frozenset({"positive", "negative", "equivocal"})
RECEPTORS = frozenset({"er", "pr", "her2"})
TEST_KINDS = frozenset({"status", "percent", "interpretation-only"})
TAG_KINDS = frozenset({"diagnosis", "ingredient", "medication-group", "receptor", "specialty"})
#: What a status / response observation says about the therapy (therapy_response.csv ``meaning``).
RESPONSE_MEANINGS = frozenset({"responding", "progressing", "undetermined"})
RESPONSE_TABLE = "therapy_response.csv"
#: Lab tests a pack names (loinc -> tag) and the units their values are compared in (UCUM, with factors).
LAB_TESTS_TABLE = "lab_tests.csv"
UNITS_TABLE = "units.csv"


class CodeTableError(ValueError):
    """A code table is malformed; raised at load time, never per request."""


@dataclass(frozen=True)
class ProductRow:
    """One RxNorm concept of the drug and what the policy needs to know about it."""

    rxcui: str
    tty: str
    display: str
    family: str | None
    is_brand: bool
    strength_mg: float | None
    dose_form: str | None
    generic_rxcui: str | None
    generic_available: bool


@dataclass(frozen=True)
class ProductName:
    """A text token that marks an order as the drug (and, for brands, which product)."""

    text: str
    is_brand: bool
    family: str | None
    dose_form: str | None


@dataclass(frozen=True)
class TextProduct:
    """What the words of a medication name say about the product of the drug."""

    is_drug: bool
    is_brand: bool | None
    family: str | None
    strength_mg: float | None
    dose_form: str | None


@dataclass(frozen=True)
class ConditionMatch:
    """Diagnosis tags a code carries, and whether the code only suggests them."""

    tags: frozenset[str]
    possible: bool


@dataclass(frozen=True)
class CodeRow:
    """One coded concept of a table, for value sets a questionnaire offers (system is the table's system name)."""

    system: str
    code: str
    display: str
    tags: frozenset[str]


@dataclass(frozen=True)
class PossibleRule:
    """If every tag in ``if_all`` is present, the ``then`` tags are possible diagnoses."""

    if_all: frozenset[str]
    then: frozenset[str]
    #: "specific" (TSC plus a site-specific finding) or "generic" (TSC alone): how strongly it points at a pathway.
    strength: str = "specific"


@dataclass(frozen=True)
class Combination:
    """Tags that, on one Condition, together mean more (clear-cell histology + a kidney site = clear-cell RCC)."""

    if_all: frozenset[str]
    then: frozenset[str]


@dataclass(frozen=True)
class QualifierPhrase:
    """A phrase of a chart note that documents a qualifier the codes cannot carry ("not requiring immediate
    surgery"), or (``contrary``) one that says the opposite ("requires immediate surgery")."""

    qualifier: str
    phrase: str
    contrary: bool


@dataclass(frozen=True)
class DrugProduct:
    """A drug-level RxNorm concept (SCD/SBD) of a companion or history drug: ingredient, route and release."""

    rxcui: str
    tty: str
    display: str
    ingredient: str
    route: str | None
    release: str | None


@dataclass(frozen=True)
class IngredientForm:
    """A form of an ingredient the policy names on its own (octreotide LAR), and how an order shows it."""

    ingredient: str
    tag: str
    release: str
    routes: frozenset[str]
    #: Dosing intervals (days between doses) that only this form has: at least / at most.
    min_interval_days: float | None
    max_interval_days: float | None
    words: frozenset[str]


@dataclass(frozen=True)
class ReceptorTest:
    """A LOINC receptor test: which receptor, and how its value is read."""

    loinc: str
    receptor: str
    kind: str  # "status" | "percent" | "interpretation-only"
    positive_at_least: float | None


# ----------------------------------------------------------------------------- reading


def _rows(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of one CSV with stripped values; checks the header and that every row has a source.

    ``utf-8-sig``: a table saved by Excel starts with a byte-order mark, which must not become part of the first
    column's name."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(required) | {"source"}
        missing -= set(reader.fieldnames or ())
        if missing:
            raise CodeTableError(
                f"{path.name}: missing columns {sorted(missing)} (the header has {list(reader.fieldnames or ())})"
            )
        for line, raw in enumerate(reader, start=2):
            row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            if not row.get("source"):
                raise CodeTableError(f"{path.name}:{line}: row has no source")
            yield line, row


def _split(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(";") if part.strip())


def _bool(value: str, where: str) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise CodeTableError(f"{where}: expected true/false, got {value!r}")


def _float(value: str, where: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise CodeTableError(f"{where}: not a number: {value!r}") from exc


def _family(value: str, where: str) -> str | None:
    if not value:
        return None
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", value):
        raise CodeTableError(f"{where}: malformed product family {value!r}")
    return value


@dataclass(frozen=True)
class DoseForm:
    """A dose form of the shared table: what one unit of it is, the words a Dosage or a name uses, its codes."""

    form: str  # the tag products.csv uses: "tablet", "capsule", "oral-solution" ...
    unit: str  # one unit of the form: "tablet", "capsule", "mL" (strength_mg is mg per this unit)
    unit_words: frozenset[str]  # Dosage doseQuantity units meaning one unit (lower case)
    text_words: tuple[str, ...]  # words naming the form in a medication name ("oral solution")
    rxnorm_df: str  # the RxNorm dose form (DF) name ("Oral Tablet")
    snomed: str  # the SNOMED CT dose form code

    @property
    def liquid(self) -> bool:
        """Measured by volume: a dose in mL converts to mg through the strength per mL."""
        return self.unit.lower() == "ml"


@lru_cache(maxsize=1)
def dose_forms() -> Mapping[str, DoseForm]:
    """The shared dose-form table, in table order (the more specific forms first: a name is read by the first
    form whose words it contains)."""
    forms: dict[str, DoseForm] = {}
    for line, row in _rows(
        TABLES_DIR / DOSE_FORMS_TABLE, ("form", "unit", "unit_words", "text_words", "rxnorm_df", "snomed")
    ):
        where = f"{DOSE_FORMS_TABLE}:{line}"
        if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", row["form"]) or row["form"] in forms:
            raise CodeTableError(f"{where}: malformed or duplicate form {row['form']!r}")
        forms[row["form"]] = DoseForm(
            row["form"],
            row["unit"],
            frozenset(w.lower() for w in _split(row["unit_words"])),
            tuple(sorted((w.lower() for w in _split(row["text_words"])), key=len, reverse=True)),
            row["rxnorm_df"],
            row["snomed"],
        )
    return forms


def form_in_text(text: str) -> str | None:
    """The first dose form (table order) whose words appear in a medication name; None when none does."""
    for form, pattern in _form_patterns():
        if pattern.search(text):
            return form
    return None


@lru_cache(maxsize=1)
def _form_patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """One case-insensitive word pattern per form (any run of spaces between a phrase's words)."""
    return tuple(
        (
            form.form,
            re.compile(
                r"\b(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in form.text_words) + r")\b",
                re.IGNORECASE,
            ),
        )
        for form in dose_forms().values()
        if form.text_words
    )


def _dose_form(value: str, where: str) -> str | None:
    if value and value not in dose_forms():
        accepted = ", ".join(dose_forms())
        raise CodeTableError(
            f"{where}: unknown dose form {value!r} (accepted: {accepted}; the shared table "
            f"fhir_mappings/tables/{DOSE_FORMS_TABLE} lists them)"
        )
    return value or None


_STRENGTH_VALUE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:(MG)(?:\s*/\s*(ML))?)?\s*", re.IGNORECASE)


def _strength(value: str, form: str | None, where: str) -> float | None:
    """products.csv ``strength_mg``: mg per unit of the product's form; a liquid may say it as RxNorm does
    ("20 MG/ML"), which must then be a liquid form."""
    if not value:
        return None
    match = _STRENGTH_VALUE.fullmatch(value)
    if match is None:
        raise CodeTableError(f"{where}: strength {value!r} is not mg per unit (e.g. 10, or 20 MG/ML for a liquid)")
    per_ml = match.group(3) is not None
    liquid = form is not None and dose_forms()[form].liquid
    if per_ml and not liquid:
        raise CodeTableError(f"{where}: strength {value!r} is per mL but dose form {form!r} is not a liquid")
    return float(match.group(1))


def _fold_unit(text: str) -> str:
    """A unit as people type it, for a lenient match: "ng/ml", "µg/L", "mcg/L" find "ng/mL", "ug/L"."""
    folded = text.strip().replace("µ", "u").replace("μ", "u").replace("mcg", "ug").replace(" ", "")
    return folded.lower()


def normalize_icd10cm(code: str) -> str:
    """Upper case, and the dot after the category that claims files often leave out (C50912 -> C50.912)."""
    code = code.strip().upper()
    if "." not in code and len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code


def normalize_icdo3(code: str) -> str:
    """ICD-O-3 as registries and EHRs write it: morphology "M-8310/3", "M83103" or "83103" -> "8310/3"; topography
    "C649" -> "C64.9" (upper case, the dot after the category)."""
    code = code.strip().upper()
    morphology = re.fullmatch(r"M?-?(\d{4})/?(\d)", code)
    if morphology:
        return f"{morphology.group(1)}/{morphology.group(2)}"
    if re.fullmatch(r"C\d{3}", code):
        return f"{code[:3]}.{code[3:]}"
    return code


def _words_pattern(texts: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive, word-bounded alternation, longest text first so phrases win over words."""
    ordered = sorted({t.lower() for t in texts if t}, key=lambda t: (-len(t), t))
    if not ordered:
        return None
    body = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in ordered)
    return re.compile(rf"(?<![\w+])(?:{body})(?![\w+])", re.IGNORECASE)


def _key(match: re.Match[str]) -> str:
    """The table key of a text match: lower case, runs of white space as one space."""
    return " ".join(match.group(0).lower().split())


#: A negation before a diagnosis name ("no evidence of", "ruled out", "r/o") means the name is not a diagnosis.
_NEGATED = re.compile(
    r"\b(?:no|not|without|denies|negative\s+for|ruled\s+out|rule\s+out|r/o|excluded|free\s+of)\b", re.IGNORECASE
)
_STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(?:mg|milligrams?)\b", re.IGNORECASE)


# ----------------------------------------------------------------------------- the tables


class CodeTables:
    """Every code table, indexed for per-request lookups (dicts; prefixes by progressive shortening)."""

    def __init__(self, directory: Path | Sequence[Path]) -> None:
        #: Folders searched in order: a pack's own tables first, then the shared ones.
        self.directories: tuple[Path, ...] = (directory,) if isinstance(directory, Path) else tuple(directory)
        self.directory = self.directories[0]
        #: Memoised text and code lookups (the tables never change after loading); bounded, see ``_remember``.
        self._text_products: dict[str, TextProduct] = {}
        self._text_ingredients: dict[str, frozenset[str]] = {}
        self._condition_rows: dict[tuple[str, str], tuple[ConditionMatch, ...]] = {}
        #: Start-up warnings: nothing wrong enough to refuse, but a pack author should hear of it (logged).
        self.warnings: list[str] = []
        self._load_systems()
        self._load_tags()
        self._load_products()
        self._load_ingredients()
        self._load_drug_forms()
        self._load_conditions()
        self._load_procedures()
        self._load_receptors()
        self._load_specialties()
        self._load_coverage()
        self._load_therapy_response()
        self._load_labs()

    # -- loading ---------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        for directory in self.directories:
            path = directory / name
            if path.is_file():
                return path
        raise CodeTableError(f"missing code table {name}")

    def _all_paths(self, name: str) -> list[Path]:
        """Every folder's copy of a table whose rows add up (tags.csv: the pack's and the shared ones)."""
        paths = [d / name for d in self.directories if (d / name).is_file()]
        if not paths:
            raise CodeTableError(f"missing code table {name}")
        return paths

    def _merged_rows(self, name: str, required: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
        """Rows of a table every folder may hold, shared rows first: a pack's copy adds rows, it replaces none.

        Yields ``(where, row)`` with ``where`` = "<file>:<line>" (the full path when the pack and the shared folder
        both hold the table, so a conflict names both files)."""
        paths = list(reversed(self._all_paths(name)))
        for path in paths:
            label = str(path) if len(paths) > 1 else path.name
            for line, row in _rows(path, required):
                yield f"{label}:{line}", row

    @staticmethod
    def _claim(owners: dict[object, tuple[object, str]], key: object, meaning: object, where: str) -> bool:
        """Record what a key means; False for a repeat of the same meaning, a refusal for a different one.

        A pack that extends a shared table may repeat a shared row (harmless) but never give its key another
        meaning: that would silently change every other pack's decisions."""
        known = owners.get(key)
        if known is None:
            owners[key] = (meaning, where)
            return True
        if known[0] != meaning:
            raise CodeTableError(
                f"{where}: {key!r} means {meaning!r} here but {known[0]!r} in {known[1]}: a pack's table adds rows "
                "to the shared one of the same name and may not change one"
            )
        return False

    def _system(self, name: str, where: str) -> str:
        if name not in self.system_names:
            raise CodeTableError(
                f"{where}: unknown system {name!r} (known: {', '.join(sorted(self.system_names))}; "
                "a pack adds one in its systems.csv)"
            )
        return name

    def _tags(self, value: str, kinds: Iterable[str], where: str) -> frozenset[str]:
        tags = _split(value)
        if not tags:
            raise CodeTableError(f"{where}: no tag")
        allowed: set[str] = set()
        for kind in kinds:
            allowed |= self._vocabulary[kind]
        unknown = tags - allowed
        if unknown:
            raise CodeTableError(
                f"{where}: unknown tag(s) {sorted(unknown)}: declare them in the pack's tags.csv "
                f"(kind {' or '.join(kinds)})"
            )
        return tags

    def _load_systems(self) -> None:
        self.systems: dict[str, str] = {}
        # The shared systems, plus any a pack adds in its own systems.csv (e.g. a local code system it needs).
        for path in reversed(self._all_paths("systems.csv")):
            for line, row in _rows(path, ("uri", "name")):
                if self.systems.setdefault(row["uri"], row["name"]) != row["name"]:
                    raise CodeTableError(
                        f"{path}:{line}: {row['uri']} already names system {self.systems[row['uri']]!r}"
                    )
        self.system_names = frozenset(self.systems.values()) | {"text", "her2-ihc-score"}

    def _load_tags(self) -> None:
        self._vocabulary: dict[str, set[str]] = {kind: set() for kind in TAG_KINDS}
        for path in self._all_paths("tags.csv"):
            for line, row in _rows(path, ("kind", "tag")):
                if row["kind"] not in TAG_KINDS:
                    raise CodeTableError(
                        f"{path}:{line}: unknown kind {row['kind']!r} (one of {', '.join(sorted(TAG_KINDS))})"
                    )
                if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", row["tag"]):
                    raise CodeTableError(f"{path}:{line}: malformed tag {row['tag']!r}")
                self._vocabulary[row["kind"]].add(row["tag"])
        #: Vocabularies the policy engine validates its file against.
        self.diagnosis_tags = frozenset(self._vocabulary["diagnosis"])
        self.ingredient_tags = frozenset(self._vocabulary["ingredient"])
        self.medication_group_tags = frozenset(self._vocabulary["medication-group"])
        self.medication_tags = self.ingredient_tags | self.medication_group_tags
        self.receptor_tags = frozenset(self._vocabulary["receptor"])
        self.specialty_tags = frozenset(self._vocabulary["specialty"])

    def _load_products(self) -> None:
        self.products: dict[str, ProductRow] = {}
        name = "products.csv"
        drugs: set[str] = set()
        for line, row in _rows(
            self._path(name),
            (
                "rxcui",
                "drug",
                "tty",
                "display",
                "family",
                "is_brand",
                "strength_mg",
                "dose_form",
                "generic_rxcui",
                "generic_available",
            ),
        ):
            where = f"{name}:{line}"
            drugs.add(row["drug"])
            if row["rxcui"] in self.products:
                raise CodeTableError(f"{where}: duplicate rxcui {row['rxcui']}")
            self.products[row["rxcui"]] = ProductRow(
                rxcui=row["rxcui"],
                tty=row["tty"],
                display=row["display"],
                family=_family(row["family"], where),
                is_brand=_bool(row["is_brand"], where),
                strength_mg=_strength(row["strength_mg"], _dose_form(row["dose_form"], where), where),
                dose_form=_dose_form(row["dose_form"], where),
                generic_rxcui=row["generic_rxcui"] or None,
                generic_available=_bool(row["generic_available"], where),
            )
        if len(drugs) != 1 or not next(iter(drugs)):
            raise CodeTableError(f"{name}: a pack orders one drug: the drug column must hold one ingredient tag")
        #: The ingredient tag of the drug this pack's policy covers (products.csv "drug"), e.g. an mTOR inhibitor.
        self.drug_tag: str = drugs.pop()
        #: The product families of that drug (products.csv "family").
        self.families = frozenset(p.family for p in self.products.values() if p.family is not None)
        for rxcui, product in self.products.items():
            if product.generic_rxcui and product.generic_rxcui not in self.products:
                raise CodeTableError(f"{name}: {rxcui} names generic {product.generic_rxcui} that is not in the table")
        #: (strength, form) -> the generic clinical drug (SCD) of that strength and form.
        self._generic_by_strength_form: dict[tuple[float, str], ProductRow] = {
            (p.strength_mg, p.dose_form): p
            for p in self.products.values()
            if p.tty == "SCD" and p.strength_mg is not None and p.dose_form is not None
        }
        self.product_names: list[ProductName] = []
        for line, row in _rows(self._path("product_names.csv"), ("text", "is_brand", "family", "dose_form")):
            where = f"product_names.csv:{line}"
            self.product_names.append(
                ProductName(
                    row["text"],
                    _bool(row["is_brand"], where),
                    _family(row["family"], where),
                    _dose_form(row["dose_form"], where),
                )
            )
        self._product_names_by_text = {n.text.lower(): n for n in self.product_names}
        self._product_pattern = _words_pattern(self._product_names_by_text)

    def _load_ingredients(self) -> None:
        self.ingredient_by_rxcui: dict[str, str] = {}
        self.ingredient_groups: dict[str, frozenset[str]] = {}
        names: dict[str, str] = {}
        for line, row in _rows(self._path("ingredients.csv"), ("tag", "rxcui", "name", "groups")):
            where = f"ingredients.csv:{line}"
            tags = self._tags(row["tag"], ("ingredient",), where)
            if len(tags) != 1:
                raise CodeTableError(f"{where}: one ingredient tag per row")
            (tag,) = tags
            groups = _split(row["groups"])
            unknown = groups - self.medication_group_tags
            if unknown:
                raise CodeTableError(f"{where}: unknown group(s) {sorted(unknown)}")
            if self.ingredient_groups.setdefault(tag, groups) != groups:
                raise CodeTableError(f"{where}: groups of {tag} differ from an earlier row")
            if row["rxcui"] and self.ingredient_by_rxcui.setdefault(row["rxcui"], tag) != tag:
                raise CodeTableError(f"{where}: rxcui {row['rxcui']} already maps to another tag")
            if not row["name"]:
                raise CodeTableError(f"{where}: no name")
            if not row["rxcui"] and tag not in self.medication_group_tags:
                self.warnings.append(
                    f"ingredients.csv:{line}: {tag} has no RxNorm code: orders are recognised by its name only, "
                    "and DTR answer lists (value sets of ingredient codes) leave it out"
                )
            names[row["name"].lower()] = tag
        self._ingredient_display: dict[str, str] = {}
        for text, tag in names.items():  # the ingredient's own name, before any synonym is added
            self._ingredient_display.setdefault(tag, text)
        self._ingredient_brands: dict[str, list[str]] = {}
        for line, row in _rows(self._path("ingredient_synonyms.csv"), ("text", "tag")):
            where = f"ingredient_synonyms.csv:{line}"
            (tag,) = self._tags(row["tag"], ("ingredient",), where)
            if tag not in self.ingredient_groups:
                raise CodeTableError(f"{where}: {tag} has no row in ingredients.csv")
            if names.setdefault(row["text"].lower(), tag) != tag:
                raise CodeTableError(f"{where}: {row['text']!r} already names another ingredient")
            if row["text"][:1].isupper():  # brand names are capitalised; generic synonyms are not
                self._ingredient_brands.setdefault(tag, []).append(row["text"])
        self._ingredient_names = names
        self._ingredient_pattern = _words_pattern(names)
        #: Ingredient codes with their tags and groups, in table order (answer lists of questionnaires).
        self.ingredient_codes: list[CodeRow] = [
            CodeRow("rxnorm", rxcui, self._ingredient_display.get(tag, tag), self.with_groups((tag,)))
            for rxcui, tag in self.ingredient_by_rxcui.items()
        ]

    def _load_drug_forms(self) -> None:
        self.drug_products: dict[str, DrugProduct] = {}
        for line, row in _rows(
            self._path("drug_products.csv"), ("rxcui", "tty", "display", "ingredient", "route", "release")
        ):
            where = f"drug_products.csv:{line}"
            (tag,) = self._tags(row["ingredient"], ("ingredient",), where)
            if row["release"] not in ("", "long-acting", "short-acting"):
                raise CodeTableError(f"{where}: release must be long-acting, short-acting or empty")
            if row["rxcui"] in self.drug_products or row["rxcui"] in self.products:
                raise CodeTableError(f"{where}: duplicate rxcui {row['rxcui']}")
            self.drug_products[row["rxcui"]] = DrugProduct(
                row["rxcui"], row["tty"], row["display"], tag, row["route"] or None, row["release"] or None
            )
        self.route_codes: dict[tuple[str, str], str] = {}
        route_words: dict[str, str] = {}
        owners: dict[object, tuple[object, str]] = {}
        for where, row in self._merged_rows("routes.csv", ("system", "code", "route")):
            system = "text" if row["system"] == "text" else self._system(row["system"], where)
            code = row["code"].lower() if system == "text" else row["code"]
            if not self._claim(owners, (system, code), row["route"], where):
                continue
            if system == "text":
                route_words[code] = row["route"]
            else:
                self.route_codes[(system, code)] = row["route"]
        self._route_words = route_words
        self._route_pattern = _words_pattern(route_words)
        self.ingredient_forms: dict[str, list[IngredientForm]] = {}
        for line, row in _rows(
            self._path("ingredient_forms.csv"),
            ("ingredient", "form_tag", "release", "routes", "min_interval_days", "max_interval_days", "words"),
        ):
            where = f"ingredient_forms.csv:{line}"
            (ingredient,) = self._tags(row["ingredient"], ("ingredient",), where)
            (tag,) = self._tags(row["form_tag"], ("ingredient",), where)
            form = IngredientForm(
                ingredient,
                tag,
                row["release"],
                _split(row["routes"]),
                _float(row["min_interval_days"], where),
                _float(row["max_interval_days"], where),
                frozenset(w.lower() for w in _split(row["words"])),
            )
            self.ingredient_forms.setdefault(ingredient, []).append(form)
        #: form tag -> its ingredient, for predicates that must tell "another form" from "form not stated".
        self.form_parents: dict[str, str] = {
            f.tag: ingredient for ingredient, forms in self.ingredient_forms.items() for f in forms
        }
        self._form_word_patterns = {
            f.tag: _words_pattern(f.words) for forms in self.ingredient_forms.values() for f in forms
        }
        #: Ingredients whose orders' dosage is read (the drug for the dose, form-specific ones for the form).
        self.dosage_read_tags = frozenset({self.drug_tag}) | frozenset(self.ingredient_forms)

    def ingredient_label(self, tag: str) -> str:
        """ "ripretinib (Qinlock)": the ingredient's name and, when the tables know one, its brand."""
        name = self._ingredient_display.get(tag, tag)
        brands = self._ingredient_brands.get(tag)
        return f"{name} ({brands[0]})" if brands else name

    def drug_product(self, rxcui: str | None) -> DrugProduct | None:
        return self.drug_products.get(rxcui.strip()) if rxcui else None

    def route_of(self, system: str | None, code: str | None) -> str | None:
        if not system or not code:
            return None
        return self.route_codes.get((system, code.strip()))

    def routes_in_text(self, text: str) -> frozenset[str]:
        return frozenset(self._route_words[_key(m)] for m in self._iter(self._route_pattern, text))

    def forms_in_text(self, ingredient: str, text: str) -> list[IngredientForm]:
        """The forms of ``ingredient`` whose words appear in ``text``."""
        return [
            f
            for f in self.ingredient_forms.get(ingredient, ())
            if any(True for _ in self._iter(self._form_word_patterns[f.tag], text))
        ]

    def _load_conditions(self) -> None:
        self._condition_exact: dict[tuple[str, str], list[ConditionMatch]] = {}
        self._condition_prefix: dict[tuple[str, str], list[ConditionMatch]] = {}
        #: Confirmed diagnosis codes in table order: what a questionnaire may offer as answers.
        self.condition_codes: list[CodeRow] = []
        for line, row in _rows(self._path("conditions.csv"), ("system", "code", "match", "tags", "certainty")):
            where = f"conditions.csv:{line}"
            system = self._system(row["system"], where)
            code = normalize_icd10cm(row["code"]) if system == "icd-10-cm" else row["code"]
            if row["certainty"] not in ("confirmed", "possible"):
                raise CodeTableError(f"{where}: certainty must be confirmed or possible")
            match = ConditionMatch(self._tags(row["tags"], ("diagnosis",), where), row["certainty"] == "possible")
            if not match.possible:
                self.condition_codes.append(CodeRow(system, row["code"], row.get("display") or row["code"], match.tags))
            if row["match"] == "exact":
                self._condition_exact.setdefault((system, code), []).append(match)
            elif row["match"] == "prefix":
                self._condition_prefix.setdefault((system, code), []).append(match)
            else:
                raise CodeTableError(f"{where}: match must be exact or prefix")
        self.condition_status: dict[tuple[str, str], frozenset[str]] = {}
        for line, row in _rows(self._path("condition_status.csv"), ("system", "code", "tags")):
            where = f"condition_status.csv:{line}"
            key = (self._system(row["system"], where), row["code"])
            self.condition_status[key] = self._tags(row["tags"], ("diagnosis",), where)
        self.possible_rules: list[PossibleRule] = []
        for line, row in _rows(self._path("possible.csv"), ("if_all", "then_possible", "strength")):
            where = f"possible.csv:{line}"
            if row["strength"] not in ("specific", "generic"):
                raise CodeTableError(f"{where}: strength must be specific or generic")
            self.possible_rules.append(
                PossibleRule(
                    self._tags(row["if_all"], ("diagnosis",), where),
                    self._tags(row["then_possible"], ("diagnosis",), where),
                    row["strength"],
                )
            )
        words: dict[str, frozenset[str]] = {}
        for line, row in _rows(self._path("condition_words.csv"), ("text", "tags")):
            where = f"condition_words.csv:{line}"
            if not row["text"]:
                raise CodeTableError(f"{where}: no text")
            if row["text"].lower() in words:
                raise CodeTableError(f"{where}: duplicate text {row['text']!r}")
            words[row["text"].lower()] = self._tags(row["tags"], ("diagnosis",), where)
        self._condition_words = words
        self._condition_word_pattern = _words_pattern(words)
        self._text_conditions: dict[str, frozenset[str]] = {}
        self._load_diagnosis_reading()

    def _optional_path(self, name: str) -> Path | None:
        """A table a pack may leave out (it then reads nothing of that kind)."""
        try:
            return self._path(name)
        except CodeTableError:
            return None

    def _load_diagnosis_reading(self) -> None:
        """Body sites, per-Condition combinations, mutually exclusive tags and qualifier phrases (issue #14)."""
        self._site_exact: dict[tuple[str, str], frozenset[str]] = {}
        self._site_prefix: dict[tuple[str, str], frozenset[str]] = {}
        path = self._optional_path("body_sites.csv")
        for line, row in _rows(path, ("system", "code", "match", "tags")) if path else ():
            where = f"body_sites.csv:{line}"
            key = (self._system(row["system"], where), row["code"].upper())
            if row["match"] not in ("exact", "prefix"):
                raise CodeTableError(f"{where}: match must be exact or prefix")
            (self._site_exact if row["match"] == "exact" else self._site_prefix)[key] = self._tags(
                row["tags"], ("diagnosis",), where
            )
        self.combinations: list[Combination] = []
        path = self._optional_path("combinations.csv")
        for line, row in _rows(path, ("if_all", "then")) if path else ():
            where = f"combinations.csv:{line}"
            self.combinations.append(
                Combination(
                    self._tags(row["if_all"], ("diagnosis",), where), self._tags(row["then"], ("diagnosis",), where)
                )
            )
        #: tag -> {tag it excludes: scope}; scope "record" (any two counted Conditions disagree) or "condition" (only
        #: one Condition coding both is a contradiction: two tumours may well be on record).
        self.exclusive: dict[str, dict[str, str]] = {}
        path = self._optional_path("exclusive_tags.csv")
        for line, row in _rows(path, ("tag_a", "tag_b", "scope")) if path else ():
            where = f"exclusive_tags.csv:{line}"
            (a,) = self._tags(row["tag_a"], ("diagnosis",), where)
            (b,) = self._tags(row["tag_b"], ("diagnosis",), where)
            if a == b:
                raise CodeTableError(f"{where}: a tag cannot exclude itself")
            if row["scope"] not in ("record", "condition"):
                raise CodeTableError(f"{where}: scope must be record or condition")
            self.exclusive.setdefault(a, {})[b] = row["scope"]
            self.exclusive.setdefault(b, {})[a] = row["scope"]
        phrases: dict[str, QualifierPhrase] = {}
        path = self._optional_path("qualifier_phrases.csv")
        for line, row in _rows(path, ("qualifier", "phrase", "kind")) if path else ():
            where = f"qualifier_phrases.csv:{line}"
            if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", row["qualifier"]) or not row["phrase"]:
                raise CodeTableError(f"{where}: malformed qualifier or empty phrase")
            if row["kind"] not in ("affirm", "contrary"):
                raise CodeTableError(f"{where}: kind must be affirm or contrary")
            phrase_key = " ".join(row["phrase"].lower().split())
            if phrase_key in phrases:
                raise CodeTableError(f"{where}: duplicate phrase {row['phrase']!r}")
            phrases[phrase_key] = QualifierPhrase(row["qualifier"], row["phrase"], row["kind"] == "contrary")
        self._qualifier_phrases = phrases
        self._qualifier_pattern = _words_pattern(phrases)
        #: Qualifiers the phrase table documents (the vocabulary of ``qualifier_documented``).
        self.qualifier_tags = frozenset(p.qualifier for p in phrases.values() if not p.contrary)
        #: (system, code) -> the table's display of a diagnosis code, for notes that name a coding.
        self.condition_display: dict[tuple[str, str], str] = {
            (row.system, row.code): row.display for row in self.condition_codes
        }

    def _load_procedures(self) -> None:
        """procedures.csv (optional: a pack without one reads no procedures): code -> diagnosis tags it shows."""
        self._procedure_codes: dict[tuple[str, str], frozenset[str]] = {}
        paths = [d / "procedures.csv" for d in self.directories if (d / "procedures.csv").is_file()]
        for path in paths[:1]:
            for line, row in _rows(path, ("system", "code", "tags", "source")):
                where = f"procedures.csv:{line}"
                key = (self._system(row["system"], where), row["code"])
                self._procedure_codes[key] = self._tags(row["tags"], ("diagnosis",), where)

    def procedure_tags(self, system: str | None, code: str | None) -> frozenset[str]:
        """Diagnosis tags a procedure code shows (a kidney transplant procedure -> kidney-transplant)."""
        if not system or not code:
            return frozenset()
        return self._procedure_codes.get((system, code.strip()), frozenset())

    def _load_receptors(self) -> None:
        self.receptor_status: dict[tuple[str, str], frozenset[str]] = {}
        owners: dict[object, tuple[object, str]] = {}
        for where, row in self._merged_rows("receptor_status.csv", ("system", "code", "tags")):
            system = self._system(row["system"], where)
            code = normalize_icd10cm(row["code"]) if system == "icd-10-cm" else row["code"]
            tags = self._tags(row["tags"], ("receptor",), where)
            if self._claim(owners, ("receptor_status", system, code), sorted(tags), where):
                self.receptor_status[(system, code)] = tags
        self.receptor_tests: dict[str, ReceptorTest] = {}
        for where, row in self._merged_rows("receptor_tests.csv", ("loinc", "receptor", "kind", "positive_at_least")):
            if row["receptor"] not in RECEPTORS or row["kind"] not in TEST_KINDS:
                raise CodeTableError(
                    f"{where}: unknown receptor or kind (receptor: {', '.join(sorted(RECEPTORS))}; "
                    f"kind: {', '.join(sorted(TEST_KINDS))})"
                )
            threshold = _float(row["positive_at_least"], where)
            if (row["kind"] == "percent") != (threshold is not None):
                raise CodeTableError(f"{where}: percent tests (and only they) need positive_at_least")
            test = ReceptorTest(row["loinc"], row["receptor"], row["kind"], threshold)
            if self._claim(owners, ("receptor_tests", row["loinc"]), test, where):
                self.receptor_tests[row["loinc"]] = test
        self.receptor_values: dict[tuple[str, str], str] = {}
        texts: dict[str, str] = {}
        for where, row in self._merged_rows("receptor_values.csv", ("system", "code", "result")):
            system = self._system(row["system"], where)
            if row["result"] not in RESULTS:
                raise CodeTableError(f"{where}: result must be one of {sorted(RESULTS)}")
            key = row["code"].lower() if system == "text" else row["code"]
            if not self._claim(owners, ("receptor_values", system, key), row["result"], where):
                continue
            if system == "text":
                texts[key] = row["result"]
            else:
                self.receptor_values[(system, key)] = row["result"]
        self._result_texts = texts
        self._result_pattern = _words_pattern(texts)

    def _load_specialties(self) -> None:
        self.specialties: dict[tuple[str, str], frozenset[str]] = {}
        owners: dict[object, tuple[object, str]] = {}
        for where, row in self._merged_rows("specialties.csv", ("system", "code", "tags")):
            key = (self._system(row["system"], where), row["code"].upper())
            tags = self._tags(row["tags"], ("specialty",), where)
            if self._claim(owners, key, sorted(tags), where):
                self.specialties[key] = tags

    def _load_coverage(self) -> None:
        self.coverage_prefixes: dict[tuple[str, str], LineOfBusiness] = {}
        owners: dict[object, tuple[object, str]] = {}
        for where, row in self._merged_rows("coverage.csv", ("system", "prefix", "line_of_business")):
            try:
                lob = LineOfBusiness(row["line_of_business"])
            except ValueError as exc:
                known = ", ".join(v.value for v in LineOfBusiness)
                raise CodeTableError(f"{where}: unknown line of business (one of {known})") from exc
            key = (self._system(row["system"], where), row["prefix"])
            if self._claim(owners, key, lob.value, where):
                self.coverage_prefixes[key] = lob

    def _load_therapy_response(self) -> None:
        """Disease-status / response observations and their values; a pack's own table adds rows to the shared one."""
        self.response_observations: frozenset[tuple[str, str]] = frozenset()
        self.response_values: dict[tuple[str, str], str] = {}
        observations: set[tuple[str, str]] = set()
        for path in self._all_paths(RESPONSE_TABLE):
            for line, row in _rows(path, ("role", "system", "code", "meaning")):
                where = f"{path.name}:{line}"
                key = (self._system(row["system"], where), row["code"])
                if row["role"] == "observation":
                    if row["meaning"]:
                        raise CodeTableError(f"{where}: an observation row has no meaning (its value has)")
                    observations.add(key)
                elif row["role"] == "value":
                    if row["meaning"] not in RESPONSE_MEANINGS:
                        raise CodeTableError(f"{where}: meaning must be one of {sorted(RESPONSE_MEANINGS)}")
                    if self.response_values.setdefault(key, row["meaning"]) != row["meaning"]:
                        raise CodeTableError(f"{where}: {key[1]} already means {self.response_values[key]!r}")
                else:
                    raise CodeTableError(f"{where}: role must be observation or value")
        self.response_observations = frozenset(observations)

    def _load_labs(self) -> None:
        """Lab tests a pack's criteria name (lab_tests.csv, optional, rows add up) and the unit factors (units.csv)."""
        self.lab_tests: dict[tuple[str, str], str] = {}
        self.lab_test_display: dict[str, str] = {}
        owners: dict[object, tuple[object, str]] = {}
        present = [d for d in self.directories if (d / LAB_TESTS_TABLE).is_file()]
        for where, row in self._merged_rows(LAB_TESTS_TABLE, ("loinc", "tag", "display")) if present else ():
            if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", row["tag"]) or not row["loinc"]:
                raise CodeTableError(f"{where}: malformed lab test tag {row['tag']!r} or empty loinc")
            if self._claim(owners, ("loinc", row["loinc"]), row["tag"], where):
                self.lab_tests[("loinc", row["loinc"])] = row["tag"]
                self.lab_test_display.setdefault(row["tag"], row["display"] or row["tag"])
        #: Lab test tags the policy may name (``lab_value`` / ``lab_trend`` ``tests``).
        self.lab_test_tags = frozenset(self.lab_tests.values())
        self.units: dict[str, tuple[str, float]] = {}
        for where, row in self._merged_rows(UNITS_TABLE, ("unit", "dimension", "factor")):
            factor = _float(row["factor"], where)
            if not row["unit"] or not row["dimension"] or factor is None or factor <= 0:
                raise CodeTableError(f"{where}: a unit row needs a unit, a dimension and a positive factor")
            if self._claim(owners, ("unit", row["unit"]), (row["dimension"], factor), where):
                self.units[row["unit"]] = (row["dimension"], factor)
        folded: dict[str, set[str]] = {}
        for unit in self.units:
            folded.setdefault(_fold_unit(unit), set()).add(unit)
        #: Lenient spellings, only where they name one unit of the table (never guess between two).
        self._units_folded = {key: next(iter(units)) for key, units in folded.items() if len(units) == 1}

    # -- lookups ---------------------------------------------------------------------------

    def lab_test_tag(self, system: str | None, code: str | None) -> str | None:
        """The lab test tag of an Observation coding (lab_tests.csv), None when no table names it."""
        if system is None or code is None:
            return None
        return self.lab_tests.get((system, code.strip()))

    def unit(self, text: str | None) -> str | None:
        """A unit as units.csv writes it (UCUM code), from the code or the human unit an Observation carries."""
        if not text:
            return None
        if text in self.units:
            return text
        return self._units_folded.get(_fold_unit(text))

    def convert(self, value: float, unit: str | None, to_unit: str) -> float | None:
        """``value`` in ``unit`` expressed in ``to_unit``; None when either is unknown or their dimensions differ."""
        source = self.units.get(self.unit(unit) or "")
        target = self.units.get(to_unit)
        if source is None or target is None or source[0] != target[0]:
            return None
        return float(f"{value * source[1] / target[1]:.12g}")  # 0.1 ng/mL is 0.1 ug/L, not 0.09999999999

    def is_response_observation(self, system: str | None, code: str | None) -> bool:
        """Whether an Observation code is a disease-status / response-to-therapy assessment (therapy_response.csv)."""
        return system is not None and code is not None and (system, code) in self.response_observations

    def response_meaning(self, system: str | None, code: str | None) -> str | None:
        """responding / progressing / undetermined for a status value code; None when the tables do not know it."""
        if system is None or code is None:
            return None
        return self.response_values.get((system, code))

    def response_search_codes(self) -> list[str]:
        """``system|code`` tokens of every response observation, for a FHIR ``code=`` search (sorted)."""
        return sorted(f"{self.system_uri(system)}|{code}" for system, code in self.response_observations)

    def system_uri(self, name: str) -> str | None:
        """The canonical URI of a table system name ("icd-10-cm" -> http://hl7.org/fhir/sid/icd-10-cm)."""
        for uri, known in self.systems.items():
            if known == name:
                return uri
        return None

    def codes_for(self, kind: str, tags: Iterable[str]) -> list[CodeRow]:
        """The table codes carrying any of ``tags``: kind "diagnosis" (conditions) or "ingredient"."""
        wanted = frozenset(tags)
        rows = self.condition_codes if kind == "diagnosis" else self.ingredient_codes
        return [row for row in rows if row.tags & wanted]

    def system_name(self, uri: str | None) -> str | None:
        """Short name of a code system URI ("icd-10-cm", "snomed" ...), None when not one we read."""
        return self.systems.get(uri) if uri else None

    def product(self, rxcui: str | None) -> ProductRow | None:
        return self.products.get(rxcui.strip()) if rxcui else None

    def generic_for(self, strength_mg: float | None, dose_form: str | None) -> ProductRow | None:
        """The generic SCD of a strength and form, when RxNorm has one in the table."""
        if strength_mg is None or dose_form is None:
            return None
        return self._generic_by_strength_form.get((strength_mg, dose_form))

    def family_for(self, strength_mg: float | None, dose_form: str | None) -> str | None:
        """The one family whose generics have this strength and/or form; None when none or several do."""
        if strength_mg is None and dose_form is None:
            return None
        families = {
            p.family
            for p in self._generic_by_strength_form.values()
            if (strength_mg is None or p.strength_mg == strength_mg) and (dose_form is None or p.dose_form == dose_form)
        }
        return families.pop() if len(families) == 1 else None

    def text_product(self, text: str) -> TextProduct:
        """Read a medication name: the drug or a brand, brand or not, strength and dose form.

        A brand token that fixes its product (one naming a single product family) decides the family; otherwise the strength
        and form do (generics count as the brand they share both with); a brand alone means its plain tablets.
        """
        known = self._text_products.get(text)
        if known is None:
            known = _remember(self._text_products, text, self._read_text_product(text))
        return known

    def _read_text_product(self, text: str) -> TextProduct:
        names = [self._product_names_by_text[_key(m)] for m in self._iter(self._product_pattern, text)]
        if not names:
            return TextProduct(False, None, None, None, None)
        brands = [n for n in names if n.is_brand]
        strength_match = _STRENGTH.search(text)
        strength = float(strength_match.group(1)) if strength_match else None
        form = form_in_text(text)
        if form is None:
            implied_forms = {n.dose_form for n in brands if n.dose_form}
            form = implied_forms.pop() if len(implied_forms) == 1 else None
        fixed = {n.family for n in brands if n.family is not None and n.dose_form is not None}
        family = fixed.pop() if len(fixed) == 1 else self.family_for(strength, form)
        if family is None and brands and form != "tablet-for-suspension" and strength is None:
            hinted = {n.family for n in brands if n.family is not None}
            family = hinted.pop() if len(hinted) == 1 else None
        return TextProduct(True, bool(brands), family, strength, form)

    def ingredient_tags_for_code(self, rxcui: str | None) -> frozenset[str]:
        """Ingredient tag of an RxNorm code: an ingredient row, or a product row of the drug."""
        if not rxcui:
            return frozenset()
        tag = self.ingredient_by_rxcui.get(rxcui.strip())
        if tag:
            return frozenset({tag})
        drug = self.drug_products.get(rxcui.strip())
        if drug is not None:
            return frozenset({drug.ingredient})
        if rxcui.strip() in self.products:
            return frozenset({self.drug_tag})
        return frozenset()

    def ingredient_tags_in_text(self, text: str) -> frozenset[str]:
        """Ingredient tags whose names (or brand synonyms) appear as words in a medication text."""
        known = self._text_ingredients.get(text)
        if known is None:
            tags = {self._ingredient_names[_key(m)] for m in self._iter(self._ingredient_pattern, text)}
            if self.text_product(text).is_drug:
                tags.add(self.drug_tag)
            known = _remember(self._text_ingredients, text, frozenset(tags))
        return known

    def with_groups(self, tags: Iterable[str]) -> frozenset[str]:
        """Ingredient tags plus the group tags they belong to."""
        out: set[str] = set()
        for tag in tags:
            out.add(tag)
            out |= self.ingredient_groups.get(tag, frozenset())
        return frozenset(out)

    def condition_matches(self, system: str | None, code: str | None) -> list[ConditionMatch]:
        """Every table row a condition code falls under: its exact row and every prefix row above it."""
        if not system or not code:
            return []
        known = self._condition_rows.get((system, code))
        if known is None:
            known = _remember(self._condition_rows, (system, code), tuple(self._condition_rows_for(system, code)))
        return list(known)

    def _condition_rows_for(self, system: str, code: str) -> list[ConditionMatch]:
        if system == "icd-10-cm":
            code = normalize_icd10cm(code)
        elif system == "icd-o-3":
            code = normalize_icdo3(code)
        out = list(self._condition_exact.get((system, code), ()))
        candidate = code
        while candidate:
            out.extend(self._condition_prefix.get((system, candidate), ()))
            candidate = candidate[:-1].rstrip(".")
        return out

    def diagnosis_words(self, codes: Iterable[Code], texts: Iterable[str]) -> frozenset[str]:
        """Diagnosis tags named in a concept's words (its text and displays), unless its codes already speak: an
        ICD-10-CM code (the tables cover the policy's ICD-10-CM categories whole, so one they leave out was left out
        on purpose) or any code the tables list. A text-only problem, a local code or a SNOMED concept the tables
        lack is read by its words, as a suggestion only. The record filter passes a raw concept's codes and words,
        the facts a validated one's: one rule for both."""
        if any(
            self.system_name(c.system) == "icd-10-cm"
            or self.condition_code_relevant(self.system_name(c.system), c.code)
            for c in codes
        ):
            return frozenset()
        tags: set[str] = set()
        for text in texts:
            tags |= self.condition_tags_in_text(text)
        return frozenset(tags)

    def condition_tags_in_text(self, text: str) -> frozenset[str]:
        """Diagnosis tags a free-text problem name suggests (never confirms); negated mentions are ignored."""
        if not text:
            return frozenset()
        known = self._text_conditions.get(text)
        if known is None:
            tags: set[str] = set()
            for match in self._iter(self._condition_word_pattern, text):
                if not _NEGATED.search(text[: match.start()]):
                    tags |= self._condition_words[_key(match)]
            known = _remember(self._text_conditions, text, frozenset(tags))
        return known

    def body_site_tags(self, system: str | None, code: str | None) -> frozenset[str]:
        """Site tags of a Condition.bodySite coding: its exact row, else its longest listed prefix."""
        if not system or not code:
            return frozenset()
        code = normalize_icdo3(code) if system == "icd-o-3" else code.strip().upper()
        exact = self._site_exact.get((system, code))
        if exact is not None:
            return exact
        candidate = code
        while candidate:
            found = self._site_prefix.get((system, candidate))
            if found is not None:
                return found
            candidate = candidate[:-1].rstrip(".")
        return frozenset()

    def qualifier_matches(self, text: str) -> list[tuple[QualifierPhrase, int, int]]:
        """Listed qualifier phrases in a text, longest first where they overlap: (phrase, start, end)."""
        out: list[tuple[QualifierPhrase, int, int]] = []
        for match in self._iter(self._qualifier_pattern, text):
            out.append((self._qualifier_phrases[_key(match)], match.start(), match.end()))
        return out

    def receptor_status_tags(self, system: str | None, code: str | None) -> frozenset[str]:
        if not system or not code:
            return frozenset()
        if system == "icd-10-cm":
            code = normalize_icd10cm(code)
        return self.receptor_status.get((system, code), frozenset())

    def condition_code_relevant(self, system: str | None, code: str | None) -> bool:
        """Whether a Condition coding matters to the policy (diagnosis, stage or receptor status)."""
        return bool(self.condition_matches(system, code) or self.receptor_status_tags(system, code))

    def result_of_code(self, system: str | None, code: str | None) -> str | None:
        if not system or not code:
            return None
        return self.receptor_values.get((system, code))

    def result_of_text(self, text: str) -> str | None:
        """positive / negative / equivocal from words in a result text; None when absent or contradictory."""
        results = {self._result_texts[_key(m)] for m in self._iter(self._result_pattern, text)}
        return results.pop() if len(results) == 1 else None

    def her2_ihc_result(self, score: str) -> str | None:
        return self.receptor_values.get(("her2-ihc-score", score))

    def specialty_tags_for(self, system: str | None, code: str | None) -> frozenset[str]:
        if not system or not code:
            return frozenset()
        return self.specialties.get((system, code.strip().upper()), frozenset())

    def line_of_business_for(self, system: str | None, code: str | None) -> LineOfBusiness | None:
        """Payer-type code -> line of business by its longest listed prefix (SOPT is hierarchical)."""
        if not system or not code:
            return None
        candidate = code.strip()
        while candidate:
            lob = self.coverage_prefixes.get((system, candidate))
            if lob is not None:
                return lob
            candidate = candidate[:-1]
        return None

    @staticmethod
    def _iter(pattern: re.Pattern[str] | None, text: str) -> Iterator[re.Match[str]]:
        if pattern is None or not text:
            return iter(())
        return pattern.finditer(text)

    @property
    def vocabulary(self) -> Mapping[str, frozenset[str]]:
        """Every declared tag by kind (diagnosis, ingredient, medication-group, receptor, specialty)."""
        return {kind: frozenset(tags) for kind, tags in self._vocabulary.items()}


#: Entries per memo (medication names and condition codes a worker has seen); a full memo starts over.
MEMO_SIZE = 4096

K = TypeVar("K")
V = TypeVar("V")


def _remember(memo: dict[K, V], key: K, value: V) -> V:
    """Store a pure lookup's answer; emptying a full memo keeps memory bounded without LRU bookkeeping."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value


def table_file(name: str, pack: Path | None = None) -> Path:
    """The file a table is read from for a pack (default CP.PHAR.63): the pack's own, else the shared one."""
    for directory in (pack or DEFAULT_PACK_TABLES, TABLES_DIR):
        if (directory / name).is_file():
            return directory / name
    raise CodeTableError(f"missing code table {name}")


def table_names(pack: Path | None = None) -> list[str]:
    """Every table name a pack reads (its own and the shared ones)."""
    return sorted({p.name for d in (pack or DEFAULT_PACK_TABLES, TABLES_DIR) for p in d.glob("*.csv")})


@lru_cache(maxsize=16)
def _load(directories: tuple[Path, ...]) -> CodeTables:
    return CodeTables(directories)


def load_code_tables(path: Path | None = None, *, pack: Path | None = None) -> CodeTables:
    """A pack's code tables over the shared ones, parsed and checked once per process.

    ``pack`` is a pack's tables folder (default: the package's CP.PHAR.63); ``path`` replaces the shared folder
    when it holds every table itself (tests pass a copied, edited folder).
    """
    if path is not None and pack is None:
        resolved = path.resolve()
        if (resolved / "products.csv").is_file():
            return _load((resolved,))
        return _load((DEFAULT_PACK_TABLES.resolve(), resolved))
    return _load(((pack or DEFAULT_PACK_TABLES).resolve(), (path or TABLES_DIR).resolve()))
