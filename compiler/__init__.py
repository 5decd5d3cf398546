"""The advc compiler: parse -> AST -> check -> lower (IR) -> codegen."""
