"""Tabular data for `densedsl train`: CSV files and scikit-learn's diabetes set, encoded the way
d2l's house-price chapter (Kaggle's "House Prices") does it.

    --data csv:FILE --target COLUMN         a seeded 80/20 split of FILE (seed 0, fixed)
    --data csv:TRAIN,TEST --target COLUMN   a fixed split
    --data diabetes                         sklearn's bundled regression set (442 rows, 10 columns)

The pipeline (`Pipeline`), fitted on the training split only:
- a column is numeric when every cell that is not missing reads as a number (in both files);
  numeric columns are standardised with the training split's mean and (sample) standard
  deviation, and missing cells become 0 after standardising (the mean);
- every other column is categorical: one-hot over the training split's values (sorted), plus one
  column for "missing"; a value the training split never had encodes as all zeros;
- the target is standardised too for regression (the network learns z-scores; losses are
  reported on that scale, RMSE in the target's own units), or read as class labels (the training
  split's values, sorted) for classification.

Missing cells are pandas' defaults (empty, NA, N/A, NaN, NULL, None …), so a file reads as it
does in d2l. The pipeline is a plain dict in the checkpoint (`Pipeline.record`), so `eval` and
`compile --weights` apply exactly the transform the model was trained with.

Why the standard library's `csv` and torch rather than pandas: errors must name the line and the
column (a ragged row, a cell that is not UTF-8, an infinity), which pandas reports loosely or not
at all (a short row is silently padded with NaN); the data sets are small; and densedsl gains no
dependency. Files are untrusted: a size limit before reading, a limit on cells while parsing, and
the encoded matrix's size checked before it is allocated.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from ..core import diagnostics as d
from ..core.diagnostics import Diagnostic, SpecError
from ..core.files import require_regular
from . import loaded
from .loaded import Data, TensorSet

KINDS = ("csv", "diabetes")
TASKS = ("classification", "regression")
# pandas.read_csv's default missing-value strings: a file reads here as it does in d2l.
MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                     "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
TEST_FRACTION = 0.2
SPLIT_SEED = 0           # the seeded split is fixed, like digits': another --seed keeps the test rows
# Cells are held as Python strings while a file is parsed (~60 bytes each): 10M cells ~ 600 MB.
MAX_CELLS = 10_000_000
# A line is read whole before the CSV parser splits it: a file without line breaks would
# otherwise be read as one line of up to the file limit, then copied as text.
MAX_LINE_BYTES = 64 * 2**20
_CR_LINE = re.compile(r"(?<=\r)(?!\n)")
DIABETES_TARGET = "progression"  # sklearn: "a quantitative measure of disease progression one year after baseline"


def _fail(code: d.Code, message: str, file: str | os.PathLike | None, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, None, hint, file=str(file) if file is not None else "--data")])


# --- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Table:
    """A CSV file's header and rows (strings, whitespace kept as written) with their line numbers."""

    path: Path | None
    header: tuple[str, ...]
    rows: list[list[str]]
    lines: list[int]       # the line each row starts on (1-based), for error messages

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}"


def read_csv(path: Path, what: str = "CSV file") -> Table:
    """Read a CSV file (UTF-8, a header line, then rows of as many fields), or raise E9xx/E208.

    The file is streamed line by line into the parser: only the cells' strings are held, never
    the whole file as bytes and text besides them (a 1000 MiB file peaked at 7.5 GB that way)."""
    require_regular(path, what)
    if path.is_dir():
        raise _fail(d.IS_DIRECTORY, f"is a directory, not a {what}", path, "pass the CSV file itself")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > loaded.MAX_FILE_BYTES:
                raise _fail(d.BAD_FILE, f"the file holds {size / 2**30:.1f} GiB, more than densedsl reads "
                            f"from one data file ({loaded.MAX_FILE_BYTES / 2**30:g} GiB)", path,
                            "a table this large does not fit densedsl's in-memory tabular pipeline")
            return _parse(_text_lines(f, path, loaded.MAX_FILE_BYTES), path)
    except FileNotFoundError:
        raise _fail(d.FILE_NOT_FOUND, f"no such {what}", path,
                    "pass --data csv:FILE (or csv:TRAIN,TEST) with the path of a CSV file") from None
    except OSError as e:
        raise _fail(d.CANNOT_READ, f"cannot read the file: {e.strerror or e}", path) from None


def _text_lines(f, path: Path, limit: int) -> Iterator[str]:
    """The file's lines as text, each checked as it is read: UTF-8, no NUL byte, no longer than
    MAX_LINE_BYTES, no more commas than the cell limit allows (before the CSV parser splits the
    line into fields), and at most `limit` bytes in all."""
    read = 0
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        read += len(raw)
        if read > limit:  # it grew while it was read
            raise _fail(d.BAD_FILE, "the file grew past densedsl's limit while it was read", path)
        if len(raw) > MAX_LINE_BYTES:
            raise _fail(d.BAD_FILE, f"line {number} is longer than {MAX_LINE_BYTES // 2**20} MiB, more than "
                        "densedsl reads as one line of a CSV file", path,
                        "lines end with a line break (\\n or \\r\\n); a table this wide does not fit "
                        "densedsl's tabular pipeline")
        if raw.count(b",") >= MAX_CELLS:  # fields are counted exactly once parsed; this bounds the parse
            raise _fail(d.BAD_FILE, f"line {number} holds {raw.count(b','):,} commas: more than "
                        f"{MAX_CELLS:,} cells, more than densedsl's tabular pipeline reads", path,
                        "drop columns the model does not need")
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # Excel writes a BOM
        except UnicodeDecodeError as e:
            raise _fail(d.BAD_FILE, f"line {number} is not UTF-8 text (byte 0x{raw[e.start]:02x})", path,
                        "save the file as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)") from None
        if "\x00" in text:
            raise _fail(d.BAD_FILE, f"line {number} holds a NUL byte: this is not a text CSV file", path,
                        "pass a CSV file (comma-separated text with a header line)")
        # A lone carriage return ends a line too (old Mac files), as in universal-newline mode.
        yield from _CR_LINE.split(text) if "\r" in text else (text,)


def _parse(text: str | Iterable[str], path: Path | None) -> Table:
    """A table from CSV text, or from its lines (as `_text_lines` yields them). Header cells
    count against MAX_CELLS like every other cell."""
    lines = io.StringIO(text, newline="") if isinstance(text, str) else text
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    cells = 0
    try:
        start = 1
        for record in reader:
            if not record:  # a blank line
                start = reader.line_num + 1
                continue
            cells += len(record)
            if cells > MAX_CELLS:
                raise _fail(d.BAD_FILE, f"the file holds more than {MAX_CELLS:,} cells, more than "
                            "densedsl's tabular pipeline reads", path,
                            "sample the rows, or drop columns the model does not need")
            if header is None:
                header = record
                _check_header(header, path, start)
            elif len(record) != len(header):
                raise _fail(d.BAD_FILE, f"line {start} has {len(record)} field{'s' if len(record) != 1 else ''} "
                            f"but the header has {len(header)}", path,
                            "every row needs one value per column (an empty field is a missing value); "
                            "quote values that contain commas")
            else:
                rows.append(record)
                line_numbers.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise _fail(d.BAD_FILE, f"line {reader.line_num}: not valid CSV ({e})", path,
                    "fields are separated by commas; a field with commas, quotes or line breaks is "
                    "quoted with \" and its quotes doubled") from None
    if header is None:
        raise _fail(d.NO_DATA, "the file is empty: a CSV file needs a header line and rows", path,
                    "the first line names the columns, every further line is one example")
    if not rows:
        raise _fail(d.NO_DATA, "the file has a header but no rows", path, "add one line per example")
    return Table(path, tuple(header), rows, line_numbers)


def _check_header(header: list[str], path: Path | None, line: int) -> None:
    names = [h.strip() for h in header]
    if any(not n for n in names):
        col = names.index("") + 1
        raise _fail(d.BAD_FILE, f"line {line}: column {col} of the header has no name", path,
                    "the first line must name every column")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise _fail(d.BAD_FILE, f"line {line}: the header names column '{n}' twice", path,
                        "give every column its own name")
        seen.add(n)
    header[:] = names


def _number(cell: str) -> float | None:
    """The cell's number, or None when it is not one (float() reads 1e5, -3, 1_000, inf)."""
    try:
        return float(cell)
    except ValueError:
        return None


def _missing(cell: str) -> bool:
    return cell.strip() in MISSING


# --- the pipeline ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: str                          # "numeric" or "categorical"
    mean: float = 0.0                  # numeric: of the training split's values
    std: float = 1.0
    categories: tuple[str, ...] = ()   # categorical: the training split's values, sorted

    @property
    def width(self) -> int:
        return 1 if self.kind == "numeric" else len(self.categories) + 1  # + "missing"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What turns a table into network inputs and targets; fitted on the training split only."""

    columns: tuple[Column, ...]
    target: str
    task: str                                  # "regression" or "classification"
    target_mean: float = 0.0                   # regression: the network learns (y - mean) / std
    target_std: float = 1.0
    target_floor: float | None = None          # regression: set when every target is positive
    classes: tuple[str, ...] = ()              # classification: the target's values, sorted

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def composition(self) -> str:
        """How the width is reached: "3 numeric + one-hot colour 4 + kind 5 (…)"."""
        numeric = sum(1 for c in self.columns if c.kind == "numeric")
        onehot = [c for c in self.columns if c.kind == "categorical"]
        parts = [f"{numeric} numeric"] if numeric or not onehot else []
        shown = [f"{c.name} {c.width}" for c in onehot[:8]]
        if len(onehot) > 8:
            shown.append(f"{len(onehot) - 8} more columns {sum(c.width for c in onehot[8:])}")
        if onehot:
            parts.append("one-hot " + " + ".join(shown) + " (each column's training values + 1 for missing)")
        return " + ".join(parts)

    def feature_names(self) -> list[str]:
        """One name per encoded feature, in the model's input order: a numeric column's name, or
        COLUMN=VALUE for one-hot features (COLUMN=<missing> for the missing indicator)."""
        names = []
        for c in self.columns:
            names += [c.name] if c.kind == "numeric" else [f"{c.name}={v}" for v in c.categories] + [f"{c.name}=<missing>"]
        return names

    def record(self) -> dict:
        """A plain dict (checkpoints load it with weights_only=True; JSON writes it)."""
        return {"target": self.target, "task": self.task, "target_mean": self.target_mean,
                "target_std": self.target_std, "target_floor": self.target_floor,
                "classes": list(self.classes),
                "columns": [{"name": c.name, "kind": c.kind, "mean": c.mean, "std": c.std,
                             "categories": list(c.categories)} for c in self.columns]}

    @classmethod
    def from_record(cls, record: dict) -> "Pipeline":
        return cls(columns=tuple(Column(c["name"], c["kind"], float(c["mean"]), float(c["std"]),
                                        tuple(c["categories"])) for c in record["columns"]),
                   target=record["target"], task=record["task"], target_mean=float(record["target_mean"]),
                   target_std=float(record["target_std"]),
                   target_floor=None if record["target_floor"] is None else float(record["target_floor"]),
                   classes=tuple(record["classes"]))

    # -- applying it --

    def features(self, table: Table) -> torch.Tensor:
        """The encoded (rows, width) float32 matrix of a table that holds every column."""
        needed = 8 * len(table.rows) * self.width  # float64 while encoding
        if needed > loaded.MAX_FILE_BYTES:
            raise _fail(d.OUT_OF_MEMORY, f"{len(table.rows):,} rows of {self.width:,} encoded features would "
                        f"need {needed / 2**30:.1f} GiB, more than the {loaded.MAX_FILE_BYTES / 2**30:.0f} GiB a "
                        "data set may use", table.path,
                        f"the encoded width is {self.composition()}: drop categorical columns with many values")
        index = _column_index(table, [c.name for c in self.columns], "the model was trained with")
        out = torch.zeros(len(table.rows), self.width, dtype=torch.float64)
        at = 0
        for column in self.columns:
            cells = [row[index[column.name]] for row in table.rows]
            if column.kind == "numeric":
                values = torch.tensor([_numeric_cell(table, i, column.name, cell) for i, cell in enumerate(cells)],
                                      dtype=torch.float64)
                standard = torch.nan_to_num((values - column.mean) / column.std, nan=0.0)  # missing → 0
                _require_float32(table, standard, f"column '{column.name}'")
                out[:, at] = standard
            else:
                slot = {value: k for k, value in enumerate(column.categories)}
                missing = len(column.categories)
                for i, cell in enumerate(cells):
                    k = missing if _missing(cell) else slot.get(cell.strip())
                    if k is not None:  # a value the training split never had: all zeros
                        out[i, at + k] = 1.0
            at += column.width
        return out.to(torch.float32)

    def targets(self, table: Table) -> torch.Tensor:
        """Standardised float32 targets (regression) or int64 class indices (classification)."""
        i_target = _column_index(table, [self.target], "to predict")[self.target]
        cells = [row[i_target] for row in table.rows]
        for i, cell in enumerate(cells):
            if _missing(cell):
                raise _fail(d.BAD_FILE, f"{table.where(i)}: the target '{self.target}' is missing", table.path,
                            "remove the row, or fill in its value: a row without a target cannot be "
                            "trained on or scored")
        if self.task == "regression":
            values = torch.tensor([_target_number(table, i, self.target, c) for i, c in enumerate(cells)],
                                  dtype=torch.float64)
            standard = (values - self.target_mean) / self.target_std
            _require_float32(table, standard, f"the target '{self.target}'")
            return standard.to(torch.float32)
        slot = {value: k for k, value in enumerate(self.classes)}
        labels = []
        for i, cell in enumerate(cells):
            if cell.strip() not in slot:
                raise _fail(d.DATA_MISMATCH, f"{table.where(i)}: the target '{self.target}' is "
                            f"'{_short(cell)}', which the training split never has", table.path,
                            f"the classes are the training split's values: {_listed(self.classes)}")
            labels.append(slot[cell.strip()])
        return torch.tensor(labels, dtype=torch.int64)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _require_float32(table: Table, standard: torch.Tensor, what: str) -> None:
    """The network reads float32: a value that standardises beyond its range would reach it as
    an infinity (a test row far outside the training split's spread, say)."""
    beyond = (standard.abs() > _FLOAT32_MAX).nonzero()
    if len(beyond):
        i = int(beyond[0, 0])
        raise _fail(d.BAD_FILE, f"{table.where(i)}: {what} standardises to {float(standard[i]):.3g}, beyond "
                    "float32's range, with the training split's mean and standard deviation", table.path,
                    "rescale the column, or remove the row: it lies far outside the training data")


def _short(text: str, limit: int = 40) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(f"'{_short(n)}'" for n in names[:limit])
    return shown + (f" … ({len(names)} in all)" if len(names) > limit else "")


def _column_index(table: Table, names: Sequence[str], why: str) -> dict[str, int]:
    index = {name: i for i, name in enumerate(table.header)}
    for name in names:
        if name not in index:
            close = difflib.get_close_matches(name, table.header, n=1, cutoff=0.6)
            close = close or [h for h in table.header if h.lower() == name.lower()]
            raise _fail(d.DATA_MISMATCH, f"no column '{_short(name)}' {why} in the file; its columns "
                        f"are {_listed(table.header)}", table.path,
                        f"did you mean '{close[0]}'?" if close else "check the column's name in the header line")
    return {name: index[name] for name in names}


def _numeric_cell(table: Table, i: int, column: str, cell: str) -> float:
    if _missing(cell):
        return math.nan
    value = _number(cell)
    if value is None:
        raise _fail(d.BAD_FILE, f"{table.where(i)}: column '{column}' holds '{_short(cell)}', but the "
                    "model was trained on it as a numeric column", table.path,
                    "write a number, or leave the cell empty (missing)")
    if not math.isfinite(value):
        raise _fail(d.BAD_FILE, f"{table.where(i)}: column '{column}' holds '{_short(cell)}', which is "
                    "not a finite number", table.path,
                    "write a finite number, or leave the cell empty to mark it missing (an infinity "
                    "cannot be standardised)")
    return value


def _target_number(table: Table, i: int, target: str, cell: str) -> float:
    value = _number(cell)
    if value is None:
        raise _fail(d.DATA_MISMATCH, f"{table.where(i)}: the target '{target}' is '{_short(cell)}', not "
                    "a number, but the spec's head is a regression", table.path,
                    "pick a numeric --target, or train a classifier on it (a head with task=classification "
                    "and classes=N)")
    if not math.isfinite(value):
        raise _fail(d.BAD_FILE, f"{table.where(i)}: the target '{target}' is '{_short(cell)}', which is "
                    "not a finite number", table.path, "write a finite number, or remove the row")
    return value


def _numeric_column(table: Table, j: int | None) -> bool:
    """Whether every cell of column `j` that is not missing reads as a number (True when the
    table lacks the column, j None: `features` reports that)."""
    if j is None:
        return True
    return all(_missing(row[j]) or _number(row[j]) is not None for row in table.rows)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (pandas' .std(), as d2l standardises); a column with
    fewer than two values, or a constant one, gets std 1 (it standardises to 0)."""
    if not values:
        return 0.0, 1.0
    x = torch.tensor(values, dtype=torch.float64)
    mean = float(x.mean())
    std = float(x.std()) if len(values) > 1 else 0.0
    if not math.isfinite(mean) or not math.isfinite(std):
        raise OverflowError
    return mean, (std if std > 0 else 1.0)


def fit(train: Table, tables: Sequence[Table], target: str, task: str, drop: Sequence[str] = ()) -> Pipeline:
    """The pipeline of `train` (statistics, categories, classes from it alone). `tables` (all the
    data: train and test) decide only which columns are numeric, so that a test file's cell
    cannot turn a numeric column into a surprise later. Columns named in `drop` are left out."""
    for table in tables:
        _column_index(table, [target], "to predict (--target)")
    _column_index(train, list(drop), "to drop (--drop)")
    if target in drop:
        raise _fail(d.CONFLICT, f"--drop names the target '{_short(target)}'", train.path,
                    "leave the column to predict out of --drop")
    # Each table's columns by name, once: looking a name up in the header for every column made
    # the fit quadratic in the number of columns (8 s at 20,000).
    positions = [{name: j for j, name in enumerate(table.header)} for table in tables]
    columns = []
    for j, name in enumerate(train.header):
        if name == target or name in drop:
            continue
        if all(_numeric_column(table, where.get(name)) for table, where in zip(tables, positions)):
            values = [_numeric_cell(train, i, name, row[j]) for i, row in enumerate(train.rows)]
            try:
                mean, std = _mean_std([v for v in values if not math.isnan(v)])
            except OverflowError:
                raise _fail(d.BAD_FILE, f"column '{name}' holds numbers too large to standardise "
                            "(their squares overflow)", train.path, "rescale the column") from None
            columns.append(Column(name, "numeric", mean, std))
        else:
            seen = sorted({row[j].strip() for row in train.rows if not _missing(row[j])})
            columns.append(Column(name, "categorical", categories=tuple(seen)))
    t = train.header.index(target)
    if task == "regression":
        for table, where in zip(tables, positions):
            t_all = where[target]
            for i, row in enumerate(table.rows):
                if _missing(row[t_all]):
                    raise _fail(d.BAD_FILE, f"{table.where(i)}: the target '{target}' is missing", table.path,
                                "remove the row, or fill in its value")
                _target_number(table, i, target, row[t_all])
        try:
            mean, std = _mean_std([float(row[t]) for row in train.rows])
        except OverflowError:
            raise _fail(d.BAD_FILE, f"the target '{target}' holds numbers too large to standardise",
                        train.path, "rescale the column") from None
        everything = [float(row[where[target]]) for table, where in zip(tables, positions) for row in table.rows]
        floor = min(1.0, min(everything)) if min(everything) > 0 else None
        return Pipeline(tuple(columns), target, task, mean, std, floor)
    classes = sorted({row[t].strip() for row in train.rows if not _missing(row[t])})
    return Pipeline(tuple(columns), target, task, classes=tuple(classes))


# --- data sets ---------------------------------------------------------------------------------

# one in-memory split for tables and images alike; the name stays for the code that tests for it
TabularSet = TensorSet


def _table_set(features: torch.Tensor, targets: torch.Tensor) -> TensorSet:
    """Encoded features (float32, rows x width) and their targets as a TensorSet."""
    assert features.dim() == 2
    return TensorSet(features, targets)


def split_indices(n: int) -> tuple[list[int], list[int]]:
    """The seeded split of n rows: (training rows, test rows), each in file order. 20% (at least
    one row) are test rows, drawn with a fixed seed, so every run (and `eval`) sees the same."""
    n_test = max(1, round(TEST_FRACTION * n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return sorted(order[n_test:]), sorted(order[:n_test])


def _subset(table: Table, rows: list[int]) -> Table:
    return Table(table.path, table.header, [table.rows[i] for i in rows], [table.lines[i] for i in rows])


def tables(desc) -> tuple[Table, Table]:
    """(training table, test table) of a csv: or diabetes description."""
    if desc.kind == "diabetes":
        whole = _diabetes()
    elif desc.test_path is not None:
        train, test = read_csv(desc.path, "training CSV file"), read_csv(desc.test_path, "test CSV file")
        return train, test
    else:
        whole = read_csv(desc.path)
    if len(whole.rows) < 2:
        raise _fail(d.NO_DATA, f"the file has {len(whole.rows)} row: a training and a test split need at "
                    "least 2", whole.path, "add rows, or pass a separate test file: --data csv:TRAIN,TEST")
    train_rows, test_rows = split_indices(len(whole.rows))
    return _subset(whole, train_rows), _subset(whole, test_rows)


def _diabetes() -> Table:
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise _fail(d.MISSING_PACKAGE, "the diabetes data set comes with scikit-learn, which is not installed",
                    None, 'pip install scikit-learn (or "densedsl[train]")') from None
    bunch = load_diabetes(scaled=False)  # the measured values; densedsl standardises them itself
    header = tuple(bunch.feature_names) + (DIABETES_TARGET,)
    rows = [[repr(float(v)) for v in x] + [repr(float(y))] for x, y in zip(bunch.data, bunch.target)]
    return Table(None, header, rows, list(range(2, len(rows) + 2)))


def load(desc, *, task: str, pipeline: Pipeline | None = None):
    """Read a tabular data set and encode it: with `pipeline` (a checkpoint's) as it was trained,
    else with a pipeline fitted on the training split."""
    train_table, test_table = tables(desc)
    target = desc.target if desc.kind == "csv" else DIABETES_TARGET
    if pipeline is None:
        if target is None:
            raise _fail(d.MISSING, "csv: data needs the column to predict", desc.path,
                        f"pass --target COLUMN; the columns are {_listed(train_table.header)}")
        pipeline = fit(train_table, [train_table, test_table], target, task, desc.drop)
    train = _table_set(pipeline.features(train_table), pipeline.targets(train_table))
    test = _table_set(pipeline.features(test_table), pipeline.targets(test_table))
    classes = 1 if pipeline.task == "regression" else len(pipeline.classes)
    names = (pipeline.target,) if pipeline.task == "regression" else pipeline.classes
    return Data(description=desc, train=train, test=test, shape=(pipeline.width,), classes=classes,
                class_names=tuple(names), pixel_max=1.0, mean=(), std=(), task=pipeline.task,
                pipeline=pipeline, warnings=identifier_warnings(train_table, pipeline))


def _identifier_name(name: str) -> bool:
    """Id, ID, id, PassengerId, user_id ...: how tables name a row's identifier."""
    return name.lower() == "id" or name.lower().endswith("_id") or name.endswith(("Id", "ID"))


def identifier_warnings(table: Table, pipeline: Pipeline) -> tuple[str, ...]:
    """A feature that looks like a row identifier (an identifier's name, a different value in every
    row): standardised, it predicts nothing, and a new row's identifier lands far outside the
    training range (Kaggle's Id=9999 encodes to 21 standard deviations)."""
    found = []
    for column in pipeline.columns:
        if not _identifier_name(column.name) or len(table.rows) < 2:
            continue
        j = table.header.index(column.name)
        if len({row[j].strip() for row in table.rows}) == len(table.rows):
            found.append(f"column '{_short(column.name)}' looks like a row identifier (its name, and a different "
                         f"value in each of the {len(table.rows)} training rows) and is used as a feature; "
                         f"leave it out with --drop {column.name}")
    return tuple(found)


def synthetic(desc, *, width: int, classes: int, task: str):
    """`--data synthetic[:N]` for a vector input (`input F`): N training and N/4 test rows of F
    features, learnable, as a table already encoded (each feature standard normal, so the
    pipeline is the identity and is recorded like a CSV's). Classification: noisy copies of one
    random template per class; regression (task "regression", one output): a random linear
    function of the features plus noise, standardised with the training rows' statistics."""
    n_train = desc.size or 512
    n_test = max(classes if task == "classification" else 2, n_train // 4)
    n = n_train + n_test
    needed = 2 * 4 * n * width  # the features, and their noise while they are made
    if needed > loaded.MAX_FILE_BYTES:
        raise _fail(d.OUT_OF_MEMORY, f"synthetic:{n_train} rows of {width:,} features would need "
                    f"{needed / 2**30:.1f} GiB to generate, more than the {loaded.MAX_FILE_BYTES / 2**30:.0f} GiB "
                    "a data set may use", None, "ask for fewer rows, e.g. --data synthetic:256")
    g = torch.Generator().manual_seed(1234)
    columns = tuple(Column(f"x{i + 1}", "numeric") for i in range(width))
    if task == "regression":
        x = torch.randn(n, width, generator=g)
        y = x @ (torch.randn(width, generator=g) / math.sqrt(width)) + 0.1 * torch.randn(n, generator=g)
        mean, std = _mean_std(y[:n_train].double().tolist())
        pipeline = Pipeline(columns, "y", "regression", mean, std)
        targets = ((y.double() - mean) / std).to(torch.float32)
        names: tuple[str, ...] = ("y",)
    else:
        labels = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(classes, width, generator=g)[labels] + torch.randn(n, width, generator=g)
        names = tuple(str(i) for i in range(classes))
        pipeline = Pipeline(columns, "class", "classification", classes=names)
        targets = labels
    return Data(description=desc, train=_table_set(x[:n_train], targets[:n_train]),
                test=_table_set(x[n_train:], targets[n_train:]), shape=(width,),
                classes=1 if task == "regression" else classes, class_names=names, pixel_max=1.0,
                mean=(), std=(), task=task, pipeline=pipeline)


# --- checks against the spec -------------------------------------------------------------------

def task_of(network) -> str:
    """classification or regression: the spec's head decides (`task=`, or regression for classes=1)."""
    return getattr(network, "task", None) or "classification"


def _at(network, span_of: str) -> dict:
    span = getattr(network, span_of, None)
    return {"span": span, "file": None if span else "--data"}


def check_spec(network, desc) -> list[Diagnostic]:
    """What can be checked before reading: a vector input, a head, the task (diabetes is a
    regression) and, for diabetes, the width."""
    problems: list[Diagnostic] = []
    shape = "x".join(map(str, network.input))
    if len(network.input) != 1:
        at = _at(network, "input_span")
        problems.append(Diagnostic(d.DATA_MISMATCH, f"the spec's input is {shape}, but {desc.kind} data "
                                   "are feature vectors", at["span"], "write `input F` (F features) in the spec",
                                   file=at["file"]))
    if network.head is None:
        at = _at(network, "span")
        problems.append(Diagnostic(d.DATA_MISMATCH, "the network has no head, so it cannot be trained",
                                   at["span"], "add a head: `head classes=1` for a regression",
                                   file=at["file"]))
        return problems
    head_at = {"span": network.head.span, "file": None if network.head.span else "--data"}
    if desc.kind == "diabetes":
        if task_of(network) != "regression" or network.head.classes != 1:
            fix = "--set classes=1" if "classes" in dict(network.parameters) else "write `head classes=1`"
            problems.append(Diagnostic(d.DATA_MISMATCH, f"diabetes is a regression data set (one target), "
                                       f"but the spec's head is a {task_of(network)} with "
                                       f"{network.head.classes} output{'s' if network.head.classes != 1 else ''}",
                                       head_at["span"], f"{fix} (one output is a regression)",
                                       file=head_at["file"]))
        if len(network.input) == 1:
            problems += width_problems(network, 10, "10 numeric columns (age, sex, bmi, bp, s1 … s6)", "diabetes")
    elif task_of(network) == "regression" and network.head.classes != 1:
        problems.append(Diagnostic(d.DATA_MISMATCH, f"the spec's head regresses {network.head.classes} outputs, "
                                   "but --target names one column", head_at["span"], "use classes=1",
                                   file=head_at["file"]))
    return problems


def width_problems(network, width: int, how: str, name: str) -> list[Diagnostic]:
    """E207 when the spec's `input F` is not the encoded width; the message says how it is reached."""
    if tuple(network.input) == (width,):
        return []
    at = _at(network, "input_span")
    params = dict(network.parameters)
    fix = next((f"--set {p}={width}" for p in ("features", "inputs", "width") if p in params),
               f"write `input {width}` in the spec")
    return [Diagnostic(d.DATA_MISMATCH, f"the spec's input is {'x'.join(map(str, network.input))} features "
                       f"but {name} encodes to {width}: {how}", at["span"], fix, file=at["file"])]


def format_rmse(value: float) -> str:
    """An RMSE in the target's units: 4 significant digits, whole numbers past 10,000 (prices)."""
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"


def check_data(network, data) -> list[Diagnostic]:
    """After reading: the encoded width and, for classification, the number of classes."""
    pipeline = data.pipeline
    problems = width_problems(network, pipeline.width, pipeline.composition(), data.name)
    if pipeline.task == "classification" and network.head is not None and network.head.classes != len(pipeline.classes):
        fix = "--set classes=" if "classes" in dict(network.parameters) else "write `head classes="
        fix += f"{len(pipeline.classes)}" + ("" if fix.startswith("--") else "`")
        problems.append(Diagnostic(d.DATA_MISMATCH, f"the spec's head has {network.head.classes} classes but "
                                   f"the target '{pipeline.target}' has {len(pipeline.classes)} values in the "
                                   f"training split ({_listed(pipeline.classes)})", network.head.span, fix,
                                   file=None if network.head.span else "--data"))
    return problems


def recipe_problems(data, values: dict) -> list[Diagnostic]:
    """Settings that mean nothing for rows, refused rather than silently ignored (E116)."""
    problems = []
    if values.get("augment", "none") != "none":
        problems.append(Diagnostic(d.CONFLICT, f"--augment {values['augment']} transforms images; {data.name} "
                                   "holds table rows", None, "leave out --augment (rows are not augmented)",
                                   file="--augment"))
    if data.task == "regression" and values.get("label_smoothing"):
        problems.append(Diagnostic(d.CONFLICT, "--label-smoothing smooths class labels; this head is a "
                                   "regression (MSE)", None, "leave out --label-smoothing",
                                   file="--label-smoothing"))
    return problems


def describe_lines(data) -> list[tuple[str, str, str]]:
    """The report's rows for a tabular data set (in place of normalisation and augmentation)."""
    p = data.pipeline
    numeric = [c.name for c in p.columns if c.kind == "numeric"]
    onehot = [c for c in p.columns if c.kind == "categorical"]
    rows = [("features", f"{p.width} = {p.composition()}", ""),
            ("standardised", f"{len(numeric)} numeric column{'s' if len(numeric) != 1 else ''}, missing → 0",
             "  (training split's mean and std)")]
    if onehot:
        rows.append(("one-hot", f"{len(onehot)} categorical column{'s' if len(onehot) != 1 else ''}, "
                     "one column each for missing", "  (training split's values)"))
    if p.task == "regression":
        rows.append(("target", f"{p.target}: regression, standardised (mean {p.target_mean:.4g}, std "
                     f"{p.target_std:.4g})", "  (RMSE in its own units"
                     + (", and of log values: every target is positive)" if p.target_floor is not None else ")")))
    else:
        rows.append(("target", f"{p.target}: {len(p.classes)} classes ({_listed(p.classes, 6)})", ""))
    return rows
