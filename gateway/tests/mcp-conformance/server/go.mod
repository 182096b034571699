// Pins the MCP Go SDK's conformance server (conformance/everything-server):
// the server the official MCP conformance suite's server scenarios are written
// against (test_simple_text, the resources test://..., the input-required
// tools), published with the SDK and served by the Go module proxy. The
// gateway's conformance test aggregates it.
module tenantgate.dev/tests/mcp-conformance-server

go 1.25.0

require github.com/modelcontextprotocol/go-sdk v1.8.0

require (
	github.com/google/jsonschema-go v0.4.3 // indirect
	github.com/segmentio/asm v1.1.3 // indirect
	github.com/segmentio/encoding v0.5.4 // indirect
	github.com/yosida95/uritemplate/v3 v3.0.2 // indirect
	golang.org/x/oauth2 v0.35.0 // indirect
	golang.org/x/sync v0.20.0 // indirect
	golang.org/x/sys v0.41.0 // indirect
	golang.org/x/time v0.15.0 // indirect
)
