//go:build tools

// Package tools pins Karpenter's kwok provider (the autoscaler of the test environment) for `go mod tidy`.
package tools

import _ "sigs.k8s.io/karpenter/kwok"
