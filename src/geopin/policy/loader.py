"""Reading a policy directory: YAML with positions, schema validation, merging, compiling.

Every problem is collected before anything is reported, so an author sees them all at once;
a policy with any error is never compiled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from geopin.errors import PolicyError
from geopin.policy.model import (
    DefaultsSpec,
    EndpointSpec,
    JurisdictionSpec,
    Metadata,
    ModelSpec,
    PolicyFile,
    RuleSpec,
    TenantSpec,
)
from geopin.policy.problems import Position, Problem, Severity, did_you_mean, sort_key

PathKey = tuple[str | int, ...]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Positions:
    """Where each value (and each mapping key) of one file is, by its path in the data."""

    file: str
    values: dict[PathKey, tuple[int, int]]
    keys: dict[PathKey, tuple[int, int]]

    def at(self, path: PathKey, *, key: bool = False) -> Position:
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            found = table.get(path[:end]) or self.values.get(path[:end])
            if found:
                return Position(self.file, found[0], found[1])
        return Position(self.file)


@dataclass(frozen=True)
class Located(Generic[T]):
    """A spec and where it was written."""

    spec: T
    positions: Positions
    path: PathKey

    def at(self, *sub: str | int, key: bool = False) -> Position:
        return self.positions.at(self.path + sub, key=key)


@dataclass
class PolicySource:
    """All files of a policy merged, each part remembering where it came from."""

    root: str
    files: list[str] = field(default_factory=list)
    digest: str = ""
    metadata: Metadata | None = None
    jurisdictions: dict[str, Located[JurisdictionSpec]] = field(default_factory=dict)
    endpoints: list[Located[EndpointSpec]] = field(default_factory=list)
    models: dict[str, Located[ModelSpec]] = field(default_factory=dict)
    data_classes: dict[str, Position] = field(default_factory=dict)
    rules: list[Located[RuleSpec]] = field(default_factory=list)
    tenants: dict[str, Located[TenantSpec]] = field(default_factory=dict)
    defaults: Located[DefaultsSpec] | None = None
    broken: set[str] = field(default_factory=set)  # names of entries that failed the schema

    def tenant_rules(self) -> Iterator[tuple[str, Located[RuleSpec]]]:
        for name, tenant in self.tenants.items():
            for i, rule in enumerate(tenant.spec.rules):
                yield name, Located(rule, tenant.positions, tenant.path + ("rules", i))


def policy_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def read_source(path: str | Path) -> tuple[PolicySource, list[Problem]]:
    """Read and merge every policy file under ``path``; return what was read and the problems."""
    root = Path(path)
    source = PolicySource(root=str(root))
    problems: list[Problem] = []
    if not root.exists():
        problems.append(Problem(Position(str(root)), "not-found", "no such file or directory"))
        return source, problems
    files = policy_files(root)
    if not files:
        problems.append(
            Problem(Position(str(root)), "empty-policy", "no *.yaml policy files found here")
        )
        return source, problems
    digest = hashlib.sha256()
    for file in files:
        shown = _display(file)
        try:
            raw = file.read_bytes()
        except OSError as exc:
            problems.append(Problem(Position(shown), "unreadable", exc.strerror or str(exc)))
            continue
        digest.update(file.name.encode() + b"\0" + raw + b"\0")
        source.files.append(shown)
        parsed = _parse_file(shown, raw, problems)
        if parsed is not None:
            doc, positions, broken, kept = parsed
            source.broken |= broken
            _merge(source, doc, positions, kept, problems)
    source.digest = digest.hexdigest()
    return source, problems


def load_policy(path: str | Path):  # -> CompiledPolicy (imported lazily to keep modules small)
    """Load, validate and compile a policy; raise PolicyError listing every error."""
    policy, problems = load_with_problems(path)
    if policy is None:
        raise PolicyError([p for p in problems if p.severity is Severity.ERROR])
    return policy


def load_with_problems(path: str | Path):
    """Return ``(CompiledPolicy | None, problems)``: None whenever there is any error."""
    from geopin.policy.check import check_source
    from geopin.policy.compile import compile_source
    from geopin.policy.coverage import coverage_warnings

    source, problems = read_source(path)
    if source.files:
        problems.extend(check_source(source))
    if any(p.severity is Severity.ERROR for p in problems):
        return None, sorted(problems, key=sort_key)
    policy = compile_source(source)
    problems.extend(coverage_warnings(policy, source))
    problems.sort(key=sort_key)
    policy = policy.with_warnings(tuple(problems))
    return policy, problems


def _display(file: Path) -> str:
    try:
        return str(file.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def _parse_file(
    shown: str, raw: bytes, problems: list[Problem]
) -> tuple[PolicyFile, Positions, set[str], dict[str, list[int]]] | None:
    parsed = parse_yaml(shown, raw, problems)
    if parsed is None:
        return None
    data, positions = parsed
    doc, broken, kept = _validate_sections(data, positions, problems)
    return doc, positions, broken, kept


def validate_as(
    model: type[M], data: Any, positions: Positions, problems: list[Problem]
) -> M | None:
    """Validate parsed YAML as ``model``, adding each schema problem with its position."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_schema_problems(exc, positions, model))
        return None


def parse_yaml(shown: str, raw: bytes, problems: list[Problem]) -> tuple[Any, Positions] | None:
    """Parse one YAML mapping with the position of every value; on failure add problems."""
    if len(raw) > MAX_FILE_BYTES:
        problems.append(Problem(Position(shown), "too-large", "policy file over 4 MiB"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(Position(shown), "not-utf8", f"not UTF-8 text: {exc.reason}"))
        return None
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = Position(shown, mark.line + 1, mark.column + 1) if mark else Position(shown)
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        problems.append(Problem(position, "yaml-syntax", message))
        return None
    except YAMLError as exc:
        problems.append(Problem(Position(shown), "yaml-syntax", " ".join(str(exc).split())))
        return None
    if data is None:  # an empty file, or only comments: a mapping with nothing to index
        return {}, Positions(shown, {}, {})
    positions = Positions(shown, {}, {})
    _index(data, (), positions)
    if not isinstance(data, dict):
        problems.append(
            Problem(positions.at(()), "invalid-value", "a policy file must be a mapping")
        )
        return None
    return _plain(data), positions


def _validate_sections(
    data: dict, positions: Positions, problems: list[Problem]
) -> tuple[PolicyFile, set[str], dict[str, list[int]]]:
    """Validate each entry on its own, so one broken rule hides no problem elsewhere.

    Entries that fail are left out, and their names are remembered (``broken``) so that
    references to them are not reported a second time as unknown. ``kept`` gives, per list
    section, the index in the file of each entry kept, so positions still point at it.
    """
    clean: dict[str, Any] = {}
    broken: set[str] = set()
    kept: dict[str, list[int]] = {}
    fields = PolicyFile.model_fields
    for key, value in data.items():
        info = fields.get(key)
        if info is None:
            problems.extend(_schema_problems(_extra_error(key), positions, PolicyFile))
            continue
        origin, args = get_origin(info.annotation), get_args(info.annotation)
        item_model = args[-1] if origin in (list, dict) and args else None
        if isinstance(item_model, type) and issubclass(item_model, BaseModel):
            if not isinstance(value, list if origin is list else dict):
                kind = "list" if origin is list else "mapping"
                problems.append(
                    Problem(positions.at((key,)), "invalid-value", f"'{key}' must be a {kind}")
                )
                continue
            items: Iterable[tuple[Any, Any]] = (
                enumerate(value) if isinstance(value, list) else value.items()
            )
            good: Any = [] if origin is list else {}
            for name, item in items:
                try:
                    parsed = item_model.model_validate(item)
                except ValidationError as exc:
                    problems.extend(_schema_problems(exc, positions, item_model, (key, name)))
                    broken.update(_names_in(name, item))
                    continue
                if origin is list:
                    good.append(parsed)
                    kept.setdefault(key, []).append(name)
                else:
                    good[name] = parsed
            clean[key] = good
        else:
            try:
                clean[key] = TypeAdapter(info.annotation or Any).validate_python(value)
            except ValidationError as exc:
                problems.extend(_schema_problems(exc, positions, info.annotation, (key,)))
    return PolicyFile.model_validate(clean), broken, kept


def _names_in(name: str | int, item: Any) -> set[str]:
    names = {name} if isinstance(name, str) else set()
    if isinstance(item, dict):
        if isinstance(item.get("id"), str):
            names.add(item["id"])
        if isinstance(item.get("models"), dict):
            names.update(str(m) for m in item["models"])
    return names


def _extra_error(key: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "PolicyFile", [{"type": "extra_forbidden", "loc": (key,), "input": None}]
    )


def _index(node: Any, path: PathKey, positions: Positions) -> None:
    if isinstance(node, CommentedMap):
        positions.values.setdefault(path, (node.lc.line + 1, node.lc.col + 1))
        for key in node:
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            positions.keys[path + (str(key),)] = (kline + 1, kcol + 1)
            positions.values[path + (str(key),)] = (vline + 1, vcol + 1)
            _index(node[key], path + (str(key),), positions)
    elif isinstance(node, CommentedSeq):
        positions.values.setdefault(path, (node.lc.line + 1, node.lc.col + 1))
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            positions.values[path + (i,)] = (line + 1, col + 1)
            _index(item, path + (i,), positions)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _model_at(root: Any, loc: PathKey) -> type[BaseModel] | None:
    """The schema model that describes the mapping at ``loc``, for "allowed keys" hints."""
    current: Any = root
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return None
    current = _unwrap(current, None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, part: str | int | None) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if part is None:
            return annotation
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        for arg in args:
            if arg is not type(None):
                found = _unwrap(arg, part)
                if found is not None:
                    return found
        return None
    if origin is list and args:
        return args[0] if part is not None else None
    if origin is dict and len(args) == 2:
        return args[1] if part is not None else None
    if origin is Annotated:
        return _unwrap(args[0], part)
    return None


def _schema_problems(
    exc: ValidationError, positions: Positions, root: Any, prefix: PathKey = ()
) -> list[Problem]:
    """``root`` is the schema (a model or an annotation) of what is at ``prefix``."""
    problems = []
    for error in exc.errors():
        loc = prefix + tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(root, loc[len(prefix) : -1])
            names = [f.alias or n for n, f in model.model_fields.items()] if model else []
            problems.append(
                Problem(
                    positions.at(loc, key=True),
                    "unknown-key",
                    f"unknown key '{key}'" + (f" in {_where(loc[:-1])}" if loc[:-1] else ""),
                    hint=did_you_mean(key, names)
                    or (f"allowed: {', '.join(sorted(names))}" if names else None),
                )
            )
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = f"missing required key '{loc[-1]}'"
            loc = loc[:-1]
        elif error["type"] == "string_pattern_mismatch":
            message = f"'{error['input']}' is not a valid value here"
        where = _where(loc)
        problems.append(
            Problem(
                positions.at(loc),
                "invalid-value",
                f"{where}: {message}" if where else message,
            )
        )
    return problems


def _where(loc: PathKey) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _merge(
    source: PolicySource,
    doc: PolicyFile,
    positions: Positions,
    kept: dict[str, list[int]],
    problems: list[Problem],
) -> None:
    def duplicate(path: PathKey, what: str, name: str, first: Position) -> None:
        problems.append(
            Problem(
                positions.at(path, key=True),
                "duplicate-id",
                f"{what} '{name}' is defined twice (first at {first})",
            )
        )

    if doc.metadata is not None:
        source.metadata = doc.metadata
    for name, spec in doc.jurisdictions.items():
        path = ("jurisdictions", name)
        if name in source.jurisdictions:
            duplicate(path, "jurisdiction", name, source.jurisdictions[name].at(key=True))
            continue
        source.jurisdictions[name] = Located(spec, positions, path)
    for i, endpoint in zip(kept.get("endpoints", []), doc.endpoints, strict=True):
        source.endpoints.append(Located(endpoint, positions, ("endpoints", i)))
    for name, model in doc.models.items():
        path = ("models", name)
        if name in source.models:
            duplicate(path, "model", name, source.models[name].at(key=True))
            continue
        source.models[name] = Located(model, positions, path)
    for i, name in enumerate(doc.data_classes):
        if name in source.data_classes:
            duplicate(("data_classes", i), "data class", name, source.data_classes[name])
            continue
        source.data_classes[name] = positions.at(("data_classes", i))
    for i, rule in zip(kept.get("rules", []), doc.rules, strict=True):
        source.rules.append(Located(rule, positions, ("rules", i)))
    for name, tenant in doc.tenants.items():
        path = ("tenants", name)
        if name in source.tenants:
            duplicate(path, "tenant", name, source.tenants[name].at(key=True))
            continue
        source.tenants[name] = Located(tenant, positions, path)
    if doc.defaults is not None:
        if source.defaults is not None:
            first = source.defaults.at(key=True)
            duplicate(("defaults",), "section", "defaults", first)
        else:
            source.defaults = Located(doc.defaults, positions, ("defaults",))
