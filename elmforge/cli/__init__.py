"""The `elmforge` command: one verb per lifecycle stage, each a thin module in this package."""
