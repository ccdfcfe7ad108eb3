//! The policy engine: ordered rules deciding each MCP message.
