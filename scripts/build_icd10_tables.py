#!/usr/bin/env python3
"""Build-time check (and expansion) of the ICD-10-CM rows of fhir_mappings/tables against the tabular.

The service matches ICD-10-CM prefix rows ("C50" covers C50.912) at run time and never imports the
tabular (``simple-icd-10-cm`` takes ~1.7 s and ~170 MB to load). This script, run by hand after a table
edit or a new tabular release, proves that every ICD-10-CM code in the tables exists in the April 1,
2026 tabular with the display the table gives, and can write every billable code a prefix row covers
to a CSV for a reviewer to read.

    pip install simple-icd-10-cm==1.5.0        # not a service dependency
    python scripts/build_icd10_tables.py --check
    python scripts/build_icd10_tables.py --expand /tmp/icd10-expanded.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "fhir_mappings" / "tables"
#: Every policy pack's tables are checked too (each pack folder under cds_service/policies has tables/).
PACK_TABLES = sorted((ROOT / "cds_service" / "policies").glob("*/tables"))
ICD_TABLES = ("conditions.csv", "receptor_status.csv")


def icd_rows(tables: Path) -> Iterator[tuple[str, int, dict[str, str]]]:
    """(file, line, row) of every ICD-10-CM row in the tables that carry ICD-10-CM codes."""
    for name in ICD_TABLES:
        candidates = [d / name for d in (tables, *PACK_TABLES) if (d / name).is_file()]
        if not candidates:
            continue
        with candidates[0].open(encoding="utf-8", newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                if row.get("system") == "icd-10-cm":
                    yield name, line, row


def check(tables: Path, icd: Any) -> list[str]:
    """Problems found: codes missing from the tabular, or displays that differ from its description."""
    problems = []
    for name, line, row in icd_rows(tables):
        code = row["code"]
        if not icd.is_valid_item(code):
            problems.append(f"{name}:{line}: {code} is not in the ICD-10-CM tabular")
            continue
        expected = icd.get_description(code)
        if row.get("display") and row["display"] != expected:
            problems.append(f"{name}:{line}: {code} display {row['display']!r} != tabular {expected!r}")
        if row.get("match") == "exact" and not icd.is_leaf(code):
            problems.append(f"{name}:{line}: {code} is a header; use match=prefix or a billable child")
    return problems


def expand(tables: Path, icd: Any, out: Path) -> int:
    """Write every billable code each prefix row covers; returns the number of codes written."""
    written = 0
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["code", "description", "tags", "certainty", "table_row_code", "table"])
        for name, _, row in icd_rows(tables):
            codes = [row["code"]]
            if row.get("match") == "prefix":
                codes += list(icd.get_descendants(row["code"]))
            for code in codes:
                if icd.is_leaf(code):
                    writer.writerow(
                        [
                            code,
                            icd.get_description(code),
                            row.get("tags", ""),
                            row.get("certainty", ""),
                            row["code"],
                            name,
                        ]
                    )
                    written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=TABLES)
    parser.add_argument("--check", action="store_true", help="verify codes and displays against the tabular")
    parser.add_argument("--expand", type=Path, metavar="CSV", help="write the billable codes each row covers")
    args = parser.parse_args(argv)
    try:
        import simple_icd_10_cm as icd
    except ImportError:
        print("needs PyPI simple-icd-10-cm (pip install simple-icd-10-cm==1.5.0)", file=sys.stderr)
        return 2
    status = 0
    if args.check or not args.expand:
        problems = check(args.tables, icd)
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in the ICD-10-CM rows")
        status = 1 if problems else 0
    if args.expand:
        print(f"wrote {expand(args.tables, icd, args.expand)} codes to {args.expand}")
    return status


if __name__ == "__main__":
    sys.exit(main())
