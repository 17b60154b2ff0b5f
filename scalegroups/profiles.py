"""Find, load and validate cluster profiles (`clusters/*.yaml`).

A profile describes, per engine, *what* cluster to use: a local pool size, a Dask cluster class and
its arguments or a scheduler address, a Ray address. The runner factory turns one section of it into
a Prefect task runner. Profiles ship inside the wheel (`scalegroups/_profiles`); in a source checkout
they are read from the repository's `clusters/` folder. A user's own profile is any YAML path.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, create_model, field_validator

from scalegroups.engines import ENGINES, Section
from scalegroups.errors import ProfileError

_PACKAGE_DIR = Path(__file__).resolve().parent
_BLOCK_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_storage(value: str) -> Path | str:
    """A result storage setting as Prefect takes it: an absolute folder (`Path`) or a block slug.

    Raises `ValueError` for anything else (a relative path would mean a different folder in every
    worker's working directory).
    """
    text = value.strip()
    expanded = Path(text).expanduser()
    if expanded.is_absolute():
        return expanded
    if _BLOCK_SLUG.match(text):
        return text
    raise ValueError(
        f"result_storage {value!r} is neither an absolute path (a folder all workers share, e.g. "
        "/mnt/shared/results) nor a Prefect storage block slug (<block-type>/<block-name>, e.g. s3-bucket/results)"
    )


class _ProfileBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    limits: dict[str, PositiveInt] = Field(default_factory=dict)
    #: where checkpointed results go: an absolute folder every worker shares, or a storage block slug
    result_storage: str | None = None
    source: str = Field(default="<built-in>", exclude=True)

    @field_validator("result_storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is not None:
            parse_storage(value)  # its ValueError becomes the field's validation error
        return value

    def section(self, engine: str) -> Section:
        """This profile's settings for one engine."""
        return getattr(self, engine)


#: One cluster profile: a section per registered engine; missing sections take the defaults.
Profile = create_model(
    "Profile",
    __base__=_ProfileBase,
    __doc__="One cluster profile: a section per engine. Missing sections take the built-in defaults.",
    **{name: (engine.section, Field(default_factory=engine.section)) for name, engine in ENGINES.items()},
)


def profile_dirs() -> list[Path]:
    """Folders holding the packaged profiles: the wheel's copy, then a source checkout's `clusters/`."""
    candidates = [_PACKAGE_DIR / "_profiles", _PACKAGE_DIR.parent / "clusters"]
    return [d for d in candidates if d.is_dir()]


def available_profiles() -> dict[str, Path]:
    """Map each packaged profile name to its file (the first folder that has it wins)."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path


def find_profile(name_or_path: str) -> Path:
    """Resolve a profile name (`local`, `k8s`, ...) or a path to a YAML file."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ProfileError(f"profile file {str(path)!r} does not exist")
        return path
    profiles = available_profiles()
    if name_or_path not in profiles:
        names = ", ".join(sorted(profiles)) or "(none found)"
        raise ProfileError(
            f"unknown profile {name_or_path!r}; available profiles: {names} (or give the path of your own YAML file)"
        )
    return profiles[name_or_path]


def _format_validation_error(path: Path, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
        problems.append(f"{where}: {item['msg']}{shown}")
    return f"invalid profile {str(path)!r}: " + "; ".join(problems)


def parse_profile(path: Path) -> Any:
    """Read and validate one profile file; errors name the file and, for YAML, the line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(f"cannot parse profile {str(path)!r}{line}: {exc.problem or exc.context}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profile {str(path)!r}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"invalid profile {str(path)!r}: expected a mapping of engine sections, got {type(data).__name__}"
        )
    data.setdefault("name", path.stem)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation_error(path, exc)) from None
    return profile.model_copy(update={"source": str(path)})


@cache
def _load_cached(path: str, mtime_ns: int) -> Any:
    return parse_profile(Path(path))


def load_profile(name_or_path: str) -> Any:
    """Find and validate a profile by name or path (cached until the file changes)."""
    path = find_profile(name_or_path).resolve()
    return _load_cached(str(path), path.stat().st_mtime_ns)
