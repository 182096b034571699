//go:build tools

// Package tools records the commands built from this module.
package tools

import (
	_ "github.com/coredns/coredns"
)
