"""Tool environments: the interface, the built-in Python tool and its sandbox."""

from .base import (
    CodeTagParser,
    FencedCodeParser,
    JSONToolCallParser,
    ToolCallParser,
    ToolEnvironment,
    ToolResult,
    get_parser,
)
from .python_tool import PythonToolEnvironment
from .persistent import PersistentPythonSession
from .sandbox import ExecutionResult, PythonSandbox, SandboxConfig, isolation_level, run_code

__all__ = [
    "ToolEnvironment", "ToolResult", "ToolCallParser", "FencedCodeParser", "CodeTagParser",
    "JSONToolCallParser", "get_parser", "PythonToolEnvironment", "PythonSandbox", "SandboxConfig",
    "ExecutionResult", "PersistentPythonSession", "isolation_level", "run_code",
]
