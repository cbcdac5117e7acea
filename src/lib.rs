//! Examples and tests of mcp-harden live in examples/ and tests/.
