//go:build tools

// Package tools records the commands built from this module.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
