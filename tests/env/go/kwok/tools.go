//go:build tools

// Package tools pins the kwok commands for `go mod tidy`.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
	_ "sigs.k8s.io/kwok/cmd/kwokctl"
)
