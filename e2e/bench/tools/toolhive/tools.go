//go:build tools

// Package tools pins the vmcp binary that e2e/bench/mcp builds with go install.
package tools

import _ "github.com/stacklok/toolhive/cmd/vmcp"
