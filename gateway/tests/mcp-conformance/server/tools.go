//go:build tools

// Package tools records the command built from this module.
package tools

import _ "github.com/modelcontextprotocol/go-sdk/conformance/everything-server"
