"""`metal3 demo`: the main job, shown end to end on the embedded defaults.

For now the demo admits the example manifests as the API server would (prune, default, validate
against the generated CRD schemas), prints the hosts, and shows each invalid example being
refused with the API server's message. It exits non-zero if any valid example is refused or any
invalid one is accepted.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import metal3
from metal3.api import BareMetalHost
from metal3.api.crd import all_crds
from metal3.api.manifests import iter_folder
from metal3.api.structural import FieldError, admit


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the embedded defaults")
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="folder of example manifests (default: the examples/ folder of this source tree)",
    )
    parser.set_defaults(func=run)


def default_examples() -> Path | None:
    """The source tree's examples/ (an editable install), or ./examples."""
    for candidate in (Path(metal3.__file__).resolve().parents[2] / "examples", Path("examples")):
        if candidate.is_dir():
            return candidate
    return None


def schemas_by_kind() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for crd in all_crds().values():
        kind = crd["spec"]["names"]["kind"]
        schemas[kind] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


def admit_object(obj: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> list[FieldError]:
    schema = schemas.get(obj["kind"])
    if schema is None:
        return []
    _, errors = admit(copy.deepcopy(obj), schema)
    return errors


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(_row(header, widths))
    for row in rows:
        print(_row(row, widths))


def host_row(path: Path, host: BareMetalHost) -> list[str]:
    spec = host.spec
    assert spec is not None and host.metadata is not None
    address = spec.bmc.address if spec.bmc and spec.bmc.address else "-"
    if spec.externally_provisioned:
        workload = "externally provisioned"
    elif spec.image and spec.image.url:
        workload = f"image {spec.image.url.rsplit('/', 1)[-1]}"
    elif spec.custom_deploy:
        workload = f"custom deploy {spec.custom_deploy.method}"
    else:
        workload = "-"
    return [
        f"{host.metadata.namespace}/{host.metadata.name}",
        address.split("://", 1)[0] if "://" in address else "ipmi",
        str(bool(spec.online)).lower(),
        workload,
        path.name,
    ]


def run(args: argparse.Namespace) -> int:
    folder: Path | None = args.examples or default_examples()
    if folder is None or not folder.is_dir():
        print("demo: no examples folder found; pass --examples DIR")
        return 2
    schemas = schemas_by_kind()
    failures = 0

    rows: list[list[str]] = []
    for path, obj in iter_folder(folder):
        errors = admit_object(obj, schemas)
        if errors:
            failures += 1
            print(f"REFUSED {path.name} {obj['kind']}/{obj['metadata']['name']}:")
            for error in errors:
                print(f"    {error}")
        elif obj["kind"] == "BareMetalHost":
            rows.append(host_row(path, BareMetalHost.from_json(obj)))
    print(f"metal3 {metal3.__version__}: {len(rows)} example hosts accepted\n")
    print_table(["HOST", "BMC", "ONLINE", "WORKLOAD", "FILE"], rows)

    invalid = folder / "invalid"
    if invalid.is_dir():
        print("\ninvalid examples, refused as the API server refuses them:")
        for path, obj in iter_folder(invalid):
            errors = admit_object(obj, schemas)
            if not errors:
                failures += 1
                print(f"  ACCEPTED (wrongly) {path.name}")
            else:
                print(f"  {path.name}: {errors[0]}")
    print("\ndemo: ok" if failures == 0 else f"\ndemo: {failures} unexpected result(s)")
    return 0 if failures == 0 else 1
