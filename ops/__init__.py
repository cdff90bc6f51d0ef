"""The devops MCP server: the stack's state, metrics, memory layout, benchmarks and costs as MCP
tools for an AI assistant (``python -m ops``; ops/README.md)."""
