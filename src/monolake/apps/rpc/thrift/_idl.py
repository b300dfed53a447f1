"""A Thrift service read from IDL at run time (thriftpy2's loader), as a method table.

thriftpy2 turns an IDL file into a module whose service classes carry, per method,
an ``<name>_args`` and an ``<name>_result`` struct class (with ``thrift_spec``: field
id -> (type, name, ...)); the result's field 0 is ``success`` unless the method
returns void, the others are the declared exceptions, and ``oneway`` is a class
attribute. ``ServiceDef`` reads that once, at build time, so a call only looks its
method up in a dict.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

from ....core.errors import ConfigError

_counter = itertools.count(1)


class MethodDef:
    """One method of a service: its struct classes and what its result may carry."""

    __slots__ = ("arg_names", "args_cls", "exceptions", "name", "oneway", "result_cls", "void")

    def __init__(self, name: str, args_cls: Any, result_cls: Any) -> None:
        self.name = name
        self.args_cls = args_cls
        self.result_cls = result_cls
        spec = args_cls.thrift_spec
        # IDL declaration order (thriftpy2 keeps it), which is how handlers take them.
        self.arg_names: tuple[str, ...] = tuple(item[1] for item in spec.values())
        rspec = result_cls.thrift_spec
        self.void = 0 not in rspec
        self.exceptions: tuple[tuple[str, type], ...] = tuple(
            (rspec[k][1], rspec[k][2]) for k in sorted(rspec) if k != 0
        )
        self.oneway = bool(getattr(result_cls, "oneway", False))

    def __repr__(self) -> str:
        return f"<MethodDef {self.name}({', '.join(self.arg_names)})>"


class ServiceDef:
    """A service's methods by name. ``module`` is the thriftpy2 module (its structs and exceptions)."""

    __slots__ = ("methods", "module", "name", "service")

    def __init__(self, service: Any, module: Any, name: str) -> None:
        self.service = service
        self.module = module
        self.name = name
        self.methods: dict[str, MethodDef] = {
            m: MethodDef(m, getattr(service, m + "_args"), getattr(service, m + "_result"))
            for m in service.thrift_services
        }

    def __repr__(self) -> str:
        return f"<ServiceDef {self.name} {sorted(self.methods)}>"


def load_module(idl: str, where: str = "idl", *, include_dirs: Sequence[str] = ()) -> Any:
    """The thriftpy2 module of the IDL file ``idl``. Raises ConfigError naming ``where``."""
    import thriftpy2

    if not os.path.isfile(idl):
        raise ConfigError(where, f"no such IDL file: {idl}")
    stem = os.path.splitext(os.path.basename(idl))[0]
    # A unique module name per load: a reload's module must not replace the running one's
    # classes under the same name (thriftpy2 registers the module for pickling).
    name = f"{stem}_{next(_counter)}_thrift"  # thriftpy2 wants the suffix
    try:
        return thriftpy2.load(idl, module_name=name, include_dirs=list(include_dirs))
    except Exception as exc:
        raise ConfigError(where, f"cannot load {idl}: {type(exc).__name__}: {exc}") from None


def service_def(module: Any, service: str | None, where: str = "service") -> ServiceDef:
    """The service named ``service`` in a thriftpy2 module (None: its only one). Raises ConfigError."""
    found = {k: v for k, v in vars(module).items() if isinstance(v, type) and hasattr(v, "thrift_services")}
    if service is None:
        if len(found) != 1:
            names = ", ".join(sorted(found)) or "none"
            raise ConfigError(where, f"the IDL defines {len(found)} services ({names}); name one")
        service = next(iter(found))
    if service not in found:
        raise ConfigError(where, f"the IDL has no service {service!r} (it has {', '.join(sorted(found)) or 'none'})")
    return ServiceDef(found[service], module, service)


def load_service(idl: str, service: str | None = None, *, where: str = "idl") -> ServiceDef:
    """``service`` (None: the only one) of the IDL file ``idl``. Raises ConfigError."""
    return service_def(load_module(idl, where), service, where)


def as_service_def(service: Any) -> ServiceDef:
    """A ``ServiceDef`` from itself or from a thriftpy2 service class."""
    if isinstance(service, ServiceDef):
        return service
    if isinstance(service, type) and hasattr(service, "thrift_services"):
        import sys

        return ServiceDef(service, sys.modules.get(service.__module__), service.__name__)
    raise TypeError(f"{service!r} is neither a ServiceDef nor a thriftpy2 service class")
